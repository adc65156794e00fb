"""Package data: official BigEarthNet lists (from the bigearthnet-common package, Apache-2.0)."""
