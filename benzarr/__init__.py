"""benzarr: BigEarthNet as a sharded Zarr v3 store, with ingest, splits, a fast loader and a trainer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("benzarr")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
