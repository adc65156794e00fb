"""benzarr examples: the real bigearthnet-common patches, unpacked as the official downloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from benzarr.archive import open_archive
from benzarr.errors import InvalidArgumentError
from benzarr.examples import extract_examples


def test_examples_unpack_as_a_v1_download_root_with_s1(tmp_path: Path) -> None:
    written = extract_examples(tmp_path / "real")
    assert [len(v) for v in written.values()] == [6, 6]
    archive = open_archive(tmp_path / "real")
    assert archive.version == "1" and archive.modalities == ("s2", "s1")
    assert all(ref.s1_name for ref in archive.refs.values()) and archive.unpaired_s1 == []
    with pytest.raises(InvalidArgumentError, match="exists"):
        extract_examples(tmp_path / "real")


def test_an_error_names_the_folder_asked_for_not_a_temporary_one(tmp_path: Path) -> None:
    from benzarr.errors import FileSystemError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileSystemError) as caught:
        extract_examples(tmp_path / "afile" / "sub")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'afile' / 'sub' / 'BigEarthNet-v1.0'}: a file is in the way"), message
    assert "partial" not in message


def test_examples_are_never_unpacked_into_an_archive_or_a_store(synth_archive_64: Path, synth_store_64: Path,
                                                                 tmp_path: Path) -> None:
    """`benzarr examples arch` unpacked into a synthetic archive: the next ingest called its 64
    synthetic patches bad (no S1 pair from the real S1 folder) and left the six real ones out."""
    from tests.conftest import copy_tree

    for folder in (copy_tree(synth_archive_64, tmp_path / "arch"), copy_tree(synth_store_64, tmp_path / "s.zarr")):
        before = sorted(p.name for p in folder.iterdir())
        with pytest.raises(InvalidArgumentError, match=rf"^{folder}: holds a .*(archive|store).*: choose an empty or "
                                                       r"new folder \(nothing was written\)$"):
            extract_examples(folder)
        assert sorted(p.name for p in folder.iterdir()) == before


def test_a_folder_of_the_users_own_files_takes_the_examples(tmp_path: Path) -> None:
    """Only an archive or a store refuses them: the check once read describe()'s words, and a
    file whose name held "store" (my_store_notes.txt) refused the folder as a store."""
    (tmp_path / "my_store_notes.txt").write_text("notes")
    written = extract_examples(tmp_path)
    assert [len(v) for v in written.values()] == [6, 6]
