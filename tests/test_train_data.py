"""Training data: RecordIO in mxnet's binary format, dataset forms, the resumable uint8 cache."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fr_bench.data import image_cache
from fr_bench.data.image_cache import BAD, OK, build_cache
from fr_bench.data.recordio import RecordIOReader, read_index
from fr_bench.data.train_set import open_train_set
from fr_bench.errors import InputError
from trainkit import REC_MAGIC, encode, identity_images, make_folder_dataset, make_rec_dataset, rec_payload, write_rec


def test_recordio_reader_reads_insightface_face_set(tmp_path: Path) -> None:
    folder, offsets, labels = make_rec_dataset(tmp_path / "rec", n_ids=3, per_id=2)
    with RecordIOReader(folder / "train.rec") as r:
        assert r.image_keys == [1, 2, 3, 4, 5, 6]  # record 0 is the index header (flag > 0)
        assert [r.offset(k) for k in r.image_keys] == [offsets[k] for k in range(1, 7)]
        label, img = r.read_image(5)
    assert label == labels[4] == 2
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    want = cv2.cvtColor(cv2.imdecode(np.frombuffer(encode(identity_images(3, 2, 1)[2][0]), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(decoded, want)


def test_recordio_joins_records_split_at_an_embedded_magic_word(tmp_path: Path) -> None:
    magic = struct.pack("<I", REC_MAGIC)
    image = b"abcd" + magic + b"efgh" + magic + b"xyz"  # two aligned magic words inside the payload
    payload = rec_payload(7.0, image)
    rec, _, offsets = write_rec(tmp_path, [(0, rec_payload(3.0, b"first")), (1, payload), (2, rec_payload(1.0, b"last"))])
    raw = rec.read_bytes()
    assert raw.count(magic) == 5  # three records, the middle one in three parts; no magic left inside
    flags, pos = [], offsets[1]
    while pos < offsets[2]:
        _, lrec = struct.unpack("<II", raw[pos : pos + 8])
        flags.append(lrec >> 29)
        pos += 8 + (((lrec & (2**29 - 1)) + 3) & ~3)
    assert flags == [1, 2, 3]
    with RecordIOReader(rec) as r:
        assert r.image_keys == [0, 1, 2]  # no index header: every key is an image
        assert r.read_image(1) == (7, image)
        assert r.read_image(2) == (1, b"last")


def test_array_label_uses_its_first_value(tmp_path: Path) -> None:
    rec, _, _ = write_rec(tmp_path, [(0, rec_payload(2.0, b"a")), (1, rec_payload([5.0, 9.0], b"img"))])
    with RecordIOReader(rec) as r:
        assert r.read_image(1) == (5, b"img")


def test_corrupt_record_is_reported_with_its_offset(tmp_path: Path) -> None:
    folder, offsets, _ = make_rec_dataset(tmp_path / "rec", n_ids=2, per_id=2)
    blob = bytearray((folder / "train.rec").read_bytes())
    blob[offsets[3] : offsets[3] + 4] = b"\xde\xad\xbe\xef"
    (folder / "train.rec").write_bytes(bytes(blob))
    with RecordIOReader(folder / "train.rec") as r:
        with pytest.raises(InputError, match=rf"train.rec: corrupt record 3 at offset {offsets[3]}: bad magic 0xefbeadde"):
            r.read(3)


def test_truncated_rec_and_bad_index_lines_are_named(tmp_path: Path) -> None:
    folder, offsets, _ = make_rec_dataset(tmp_path / "rec", n_ids=2, per_id=2)
    rec = folder / "train.rec"
    rec.write_bytes(rec.read_bytes()[: offsets[4] + 12])
    with RecordIOReader(rec) as r:
        with pytest.raises(InputError, match=rf"corrupt record 4 at offset {offsets[4]}: payload of \d+ bytes truncated"):
            r.read(4)
    (folder / "train.idx").write_text("0\t0\n1 oops\n")
    with pytest.raises(InputError, match=r"train.idx: line 2: expected 'key<TAB>offset'"):
        read_index(folder / "train.idx")


def test_folder_dataset_lists_identities_in_sorted_order(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "ds", n_ids=3, per_id=2)
    (root / "id001" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    ts = open_train_set(root)
    assert ts.kind == "folder" and ts.identities == ["id000", "id001", "id002"]
    assert ts.labels.tolist() == [0, 0, 1, 1, 2, 2] and len(ts) == 6 and ts.empty_identities == 1


def test_manifest_dataset_reads_identity_and_path_and_confines_paths(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "gen", n_ids=2, per_id=2)
    rows = [{"identity": i, "path": f"id{i:03d}/{k:02d}.jpg"} for i in (1, 0) for k in range(2)]
    skipped = {"identity": 1, "path": None}  # `frbench align` lists inputs it found no face in
    pd.DataFrame(rows[:1] + [skipped] + rows[1:]).to_parquet(root / "manifest.parquet")
    ts = open_train_set(root)
    assert ts.kind == "manifest" and ts.labels.tolist() == [1, 1, 0, 0] and len(ts) == 4
    pd.DataFrame(rows + [{"identity": 0, "path": "../escape.jpg"}]).to_parquet(root / "manifest.parquet")
    with pytest.raises(InputError, match=r"row 4: path '../escape.jpg' points outside"):
        open_train_set(root)


def test_cache_decodes_in_worker_processes_and_marks_unreadable_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder_dataset(tmp_path / "ds", n_ids=2, per_id=3)
    (root / "id001" / "01.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    ts = open_train_set(root)
    monkeypatch.setattr(image_cache, "PROCESS_THRESHOLD", 0)  # spawn processes even for 6 images
    cache = build_cache(ts, tmp_path / "cache", workers=2, chunk=2)
    assert cache.status.tolist() == [OK, OK, OK, OK, BAD, OK]
    src = cv2.cvtColor(cv2.imread(ts.paths[2]), cv2.COLOR_BGR2RGB)
    assert np.array_equal(cache.images[2], src)
    assert cache.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_interrupted_cache_build_resumes_with_only_the_missing_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _, labels = make_rec_dataset(tmp_path / "rec", n_ids=3, per_id=4)
    ts = open_train_set(folder)
    calls: list[int] = []
    real = image_cache.decode_task

    def dies_after_first_chunk(task):
        if calls:
            raise KeyboardInterrupt  # the build is killed after one chunk
        calls.append(len(task["indices"]))
        return real(task)

    monkeypatch.setattr(image_cache, "decode_task", dies_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        build_cache(ts, tmp_path / "cache", workers=1, chunk=5)
    d = image_cache.cache_dir(tmp_path / "cache", ts)
    assert not (d / "DONE.json").exists()
    assert int((np.fromfile(d / "status.u8", np.uint8) == OK).sum()) == 5
    seen: list[list[int]] = []
    monkeypatch.setattr(image_cache, "decode_task", lambda task: (seen.append(task["indices"]), real(task))[1])
    cache = build_cache(ts, tmp_path / "cache", workers=1, chunk=5)
    assert sorted(i for chunk in seen for i in chunk) == list(range(5, 12))
    assert (cache.status == OK).all() and cache.labels.tolist() == labels
