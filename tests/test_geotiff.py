"""The pure-numpy GeoTIFF writer reads back exactly through rasterio (GDAL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benzarr._geotiff import geotiff_bytes, write_geotiff


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    epsg=st.sampled_from([32629, 32631, 32633, 32635, 32701, 32760]),
    ulx=st.integers(100_000, 900_000),
    uly=st.integers(0, 9_000_000),
    pixel=st.sampled_from([10.0, 20.0, 60.0, 0.5, 30.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_rasters_read_back_exactly(
    tmp_path: Path, height: int, width: int, epsg: int, ulx: int, uly: int, pixel: float, seed: int
) -> None:
    pixels = np.random.default_rng(seed).integers(0, 65536, size=(height, width), dtype=np.uint16)
    path = tmp_path / f"r_{height}_{width}_{seed}.tif"
    size = write_geotiff(path, pixels, epsg, ulx, uly, pixel)
    assert size == path.stat().st_size
    with rasterio.open(path) as ds:
        assert ds.count == 1
        assert ds.dtypes == ("uint16",)
        assert ds.shape == (height, width)
        assert ds.crs.to_epsg() == epsg
        assert ds.transform == Affine(pixel, 0.0, ulx, 0.0, -pixel, uly)
        assert ds.nodata is None
        assert ds.compression is None
        assert ds.tags().get("AREA_OR_POINT") == "Area"
        np.testing.assert_array_equal(ds.read(1), pixels)


def test_rectangular_pixels_and_fractional_origin(tmp_path: Path) -> None:
    pixels = np.arange(35 * 17, dtype=np.uint16).reshape(35, 17)
    path = tmp_path / "rect.tif"
    write_geotiff(path, pixels, 32632, 412345.25, 5123456.75, (10.0, 20.0))
    with rasterio.open(path) as ds:
        assert ds.transform == Affine(10.0, 0.0, 412345.25, 0.0, -20.0, 5123456.75)
        np.testing.assert_array_equal(ds.read(1), pixels)


def test_rejects_non_uint16_or_non_2d() -> None:
    with pytest.raises(ValueError):
        geotiff_bytes(np.zeros((4, 4), np.int16), 32633, 0, 0, 10)
    with pytest.raises(ValueError):
        geotiff_bytes(np.zeros((1, 4, 4), np.uint16), 32633, 0, 0, 10)


def test_reproduces_real_bigearthnet_files_byte_for_byte(real_s2_archive: Path) -> None:
    files = sorted(real_s2_archive.glob("*/*.tif"))
    assert files
    for path in files:
        with rasterio.open(path) as ds:
            pixels = ds.read(1)
            t = ds.transform
            epsg = ds.crs.to_epsg()
        assert geotiff_bytes(pixels, epsg, t.c, t.f, t.a) == path.read_bytes(), path.name
