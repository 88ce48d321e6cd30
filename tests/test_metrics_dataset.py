"""The image-folder dataset reader behind `frbench metrics`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fr_bench.data.dataset import iter_batches, open_dataset, read_rgb, select
from fr_bench.errors import InputError
from metrics_helpers import write_dataset


def test_identities_are_sorted_subfolders_and_files_sorted_images(tmp_path: Path) -> None:
    for name in ("b", "a", "c", ".hidden"):
        (tmp_path / name).mkdir()
    for rel in ("b/2.png", "b/10.png", "a/x.jpg", "a/y.JPEG", "c/z.png", "a/notes.txt", "a/.dot.png", ".hidden/q.png"):
        cv2.imwrite(str(tmp_path / rel), np.zeros((8, 8, 3), np.uint8)) if rel.lower().endswith(("png", "jpg", "jpeg")) \
            else (tmp_path / rel).write_text("x")
    ds = open_dataset(tmp_path)
    assert [(i.index, i.name) for i in ds.identities] == [(0, "a"), (1, "b"), (2, "c")]
    assert ds.identities[0].files == ["a/x.jpg", "a/y.JPEG"]
    assert ds.identities[1].files == ["b/10.png", "b/2.png"]  # string order, as the reference folder reader


def test_selection_skips_empty_and_single_image_identities_and_keeps_indices(tmp_path: Path) -> None:
    write_dataset(tmp_path, 5, 3, size=(16, 16), manifest=False)
    for f in (tmp_path / "00001").iterdir():
        f.unlink()
    for f in sorted((tmp_path / "00003").iterdir())[1:]:
        f.unlink()
    sel = select(open_dataset(tmp_path), identities=2, per_identity=2)
    assert [i.name for i in sel.identities] == ["00000", "00002"]
    assert sel.labels.tolist() == [0, 0, 2, 2]  # folder index, not rank among kept
    assert sel.files == ["00000/000.png", "00000/001.png", "00002/000.png", "00002/001.png"]
    assert sel.skipped == [{"identity": "00001", "index": 1, "reason": "empty folder"}]
    full = select(open_dataset(tmp_path))
    assert {s["identity"]: s["reason"] for s in full.skipped} == {"00001": "empty folder", "00003": "1 image (< 2)"}


def test_manifest_rows_attach_context_rows_by_path(tmp_path: Path) -> None:
    write_dataset(tmp_path, 3, 2, size=(16, 16))
    df = pd.read_parquet(tmp_path / "manifest.parquet")
    df.loc[df.identity == 2, "context_row"] = 7
    df.to_parquet(tmp_path / "manifest.parquet", index=False)
    ds = open_dataset(tmp_path)
    assert ds.manifest == tmp_path / "manifest.parquet"
    assert ds.meta["00002/001.png"].context_row == 7 and ds.meta["00000/001.png"].seed == 1


def test_manifest_paths_must_stay_inside_the_dataset(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds", 2, 2, size=(16, 16))
    cv2.imwrite(str(tmp_path / "outside.png"), np.zeros((8, 8, 3), np.uint8))
    df = pd.read_parquet(tmp_path / "ds" / "manifest.parquet")
    df.loc[0, "path"] = "../outside.png"
    df.to_parquet(tmp_path / "ds" / "manifest.parquet", index=False)
    with pytest.raises(InputError, match=r"row 0: path '../outside.png' points outside"):
        open_dataset(tmp_path / "ds")


def test_manifest_naming_a_missing_file_is_an_error_and_rows_without_path_are_ignored(tmp_path: Path) -> None:
    write_dataset(tmp_path, 2, 2, size=(16, 16), manifest=False)
    pd.DataFrame({"identity": ["00000", "00000"], "path": [None, "00000/009.png"]}).to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(InputError, match="row 1: 00000/009.png not found"):
        open_dataset(tmp_path)
    pd.DataFrame({"identity": ["00000"], "path": [None]}).to_parquet(tmp_path / "manifest.parquet")  # align's skipped rows
    assert open_dataset(tmp_path).meta == {}


def test_batches_are_rgb_resized_and_in_order(tmp_path: Path) -> None:
    red = np.zeros((200, 150, 3), np.uint8)
    red[..., 2] = 255  # BGR on disk
    cv2.imwrite(str(tmp_path / "a.png"), red)
    cv2.imwrite(str(tmp_path / "b.jpg"), np.full((60, 60, 3), 128, np.uint8))
    assert read_rgb(tmp_path / "a.png")[0, 0].tolist() == [255, 0, 0]
    batches = list(iter_batches([tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "a.png"], 2, workers=2))
    assert [b.shape for b in batches] == [(2, 112, 112, 3), (1, 112, 112, 3)]
    assert batches[0][0, 50, 50].tolist() == [255, 0, 0] and abs(int(batches[0][1, 5, 5, 0]) - 128) <= 2
    native = list(iter_batches([tmp_path / "b.jpg", tmp_path / "a.png"], 4, size=None))
    assert native[0].shape == (2, 60, 60, 3)  # the first image's size


def test_unreadable_image_names_its_path(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="bad.png: unreadable image"):
        list(iter_batches([tmp_path / "bad.png"], 4))


def test_missing_or_flat_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset folder not found"):
        open_dataset(tmp_path / "nope")
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="no identity sub-folders"):
        open_dataset(tmp_path)
