"""Package data: official BigEarthNet v1.0 patch lists.

The files come from the data files of the ``bigearthnet-common`` package (Apache-2.0,
copyright Kai Norman Clasen; see ``LICENSE-bigearthnet-common``): the lists stored
bz2-compressed, one S2 patch name per line; the S1/S2 name table with country and season
(``s1_s2_name_country_season.csv``) converted to zstd parquet, sorted by S2 name.
"""

from __future__ import annotations

import bz2
from functools import lru_cache
from importlib import resources

#: Official list name -> file in this package.
OFFICIAL_LISTS: dict[str, str] = {
    "cloud-shadow": "patches_with_cloud_and_shadow.csv.bz2",
    "seasonal-snow": "patches_with_seasonal_snow.csv.bz2",
    "no-clc19": "patches_with_no_19_class_targets.csv.bz2",
    "train": "train.csv.bz2",
    "val": "val.csv.bz2",
    "test": "test.csv.bz2",
}


@lru_cache(maxsize=None)
def read_official_list(name: str) -> tuple[str, ...]:
    """Patch names of an official list (``cloud-shadow``, ``seasonal-snow``, ``no-clc19``,
    ``train``, ``val``, ``test``), in file order.

    Raises:
        KeyError: unknown list name.
    """
    filename = OFFICIAL_LISTS[name]
    data = resources.files(__name__).joinpath(filename).read_bytes()
    lines = bz2.decompress(data).decode("utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())
