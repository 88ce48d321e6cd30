"""The .bin reader: insightface's pack format in all its historical encodings, and nothing else."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import face_like_images, jpeg_bytes
from fr_bench.data.binfile import load_pack, read_pack, safe_unpickle, write_pack
from fr_bench.errors import InputError


def _py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """Opcodes as Python 2's cPickle protocol 2 writes them: byte strings are BINSTRING (str)."""
    out = io.BytesIO()
    out.write(b"\x80\x02")  # PROTO 2
    out.write(b"]q\x00(")  # EMPTY_LIST, BINPUT, MARK
    for b in bins:
        out.write(b"T" + struct.pack("<i", len(b)) + b)  # BINSTRING
    out.write(b"e")  # APPENDS
    out.write(b"]q\x01(")
    for s in issame:
        out.write(b"\x88" if s else b"\x89")  # NEWTRUE / NEWFALSE
    out.write(b"e")
    out.write(b"\x86q\x02.")  # TUPLE2, BINPUT, STOP
    return out.getvalue()


def test_reads_py2_pickles_with_byte_strings(tmp_path: Path) -> None:
    imgs = face_like_images(4)
    path = tmp_path / "old.bin"
    path.write_bytes(_py2_pickle([jpeg_bytes(i) for i in imgs], [True, False]))
    pack = load_pack(path)
    assert pack.images.shape == (4, 112, 112, 3)
    assert pack.issame.tolist() == [True, False]


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_reads_numpy_uint8_buffer_elements(tmp_path: Path, protocol: int) -> None:
    # CFP/AgeDB packers stored cv2.imencode results: numpy uint8 arrays, not bytes
    imgs = face_like_images(2)
    bufs = [np.frombuffer(jpeg_bytes(i), np.uint8) for i in imgs]
    write_pack(tmp_path / "np.bin", bufs, [True], protocol=protocol)
    pack = load_pack(tmp_path / "np.bin")
    assert pack.pairs == 1
    assert np.abs(pack.images[0].astype(int) - imgs[0].astype(int)).mean() < 4  # JPEG round trip


def test_decodes_to_rgb_not_bgr(tmp_path: Path) -> None:
    red = np.zeros((112, 112, 3), np.uint8)
    red[..., 0] = 220
    write_pack(tmp_path / "c.bin", [jpeg_bytes(red), jpeg_bytes(red)], [True])
    img = load_pack(tmp_path / "c.bin").images[0]
    assert img[..., 0].mean() > 200 and img[..., 2].mean() < 30


def test_resizes_non_112_images(tmp_path: Path) -> None:
    imgs = face_like_images(2, size=128)
    write_pack(tmp_path / "big.bin", [jpeg_bytes(i) for i in imgs], [False])
    assert load_pack(tmp_path / "big.bin").images.shape == (2, 112, 112, 3)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_calls_code_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Evil(str(marker)), b"x"], [True])))
    with pytest.raises(InputError, match="unsafe pickle.*posix.system|unsafe pickle.*os.system"):
        read_pack(path)
    assert not marker.exists()


@pytest.mark.parametrize("global_name", ["builtins\neval", "subprocess\nPopen", "numpy\nload"])
def test_any_other_global_is_refused(global_name: str) -> None:
    payload = b"\x80\x02c" + global_name.encode() + b"\nq\x00."
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        safe_unpickle(payload)


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    imgs = face_like_images(2)
    write_pack(tmp_path / "full.bin", [jpeg_bytes(i) for i in imgs], [True])
    data = (tmp_path / "full.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        read_pack(tmp_path / "cut.bin")


def test_corrupt_jpeg_is_reported_by_index(tmp_path: Path) -> None:
    imgs = [jpeg_bytes(i) for i in face_like_images(6)]
    imgs[3] = b"\xff\xd8\xff\xe0" + b"\x00" * 40
    write_pack(tmp_path / "bad.bin", imgs, [True, False, True])
    with pytest.raises(InputError, match=r"image 3 \(pair 1\)"):
        load_pack(tmp_path / "bad.bin")


def test_label_count_must_match_image_count(tmp_path: Path) -> None:
    imgs = [jpeg_bytes(i) for i in face_like_images(6)]
    write_pack(tmp_path / "mismatch.bin", imgs, [True, False])
    with pytest.raises(InputError, match="6 images but 2 labels"):
        read_pack(tmp_path / "mismatch.bin")


def test_non_pack_structure_is_reported(tmp_path: Path) -> None:
    (tmp_path / "dict.bin").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(InputError, match="not an insightface verification pack"):
        read_pack(tmp_path / "dict.bin")
