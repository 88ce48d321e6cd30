"""Read insightface's MXNet RecordIO training sets (``train.rec`` + ``train.idx``) without mxnet.

Binary layout (dmlc-core ``recordio``; mxnet ``recordio.py``):

* A record is one or more *parts*. Each part is ``uint32 magic = 0xced7230a``, ``uint32 lrecord``
  (upper 3 bits: continuation flag ``cflag``, lower 29 bits: payload length), the payload, and zero
  padding to a multiple of 4 bytes. ``cflag`` 0 = whole record; 1/2/3 = first/middle/last part of a
  record that the writer split where its payload contained the magic word at a 4-byte-aligned
  position — the reader joins the parts with the magic word between them. Little-endian.
* The payload starts with mxnet's ``IRHeader``: struct ``IfQQ`` = ``flag`` (uint32), ``label``
  (float32), ``id``, ``id2`` (uint64), 24 bytes. When ``flag > 0`` the label is instead an array of
  ``flag`` float32 values that follows the header. The rest is the encoded image.
* ``train.idx`` is text, one ``key<TAB>byte offset`` line per record.
* insightface's face sets carry an index record 0 whose ``flag > 0``: images are keys
  ``1 … label[0] − 1`` (arcface_torch ``MXFaceDataset``); otherwise every key in the index is an
  image. An image's class is its label (``label[0]`` when the label is an array).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def find_recordio(path: str | Path) -> tuple[Path, Path] | None:
    """``(train.rec, train.idx)`` for a folder holding them or a ``.rec`` path; None otherwise."""
    path = Path(path)
    if path.is_dir():
        rec, idx = path / "train.rec", path / "train.idx"
        return (rec, idx) if rec.is_file() and idx.is_file() else None
    if path.suffix == ".rec":
        return path, path.with_suffix(".idx")
    return None


def read_index(idx_path: str | Path, rec_size: int | None = None) -> dict[int, int]:
    """Parse ``train.idx`` into ``{key: offset}``; malformed lines raise InputError with the line number."""
    idx_path = Path(idx_path)
    if not idx_path.is_file():
        raise InputError(idx_path, "RecordIO index not found (expected beside the .rec file)")
    index: dict[int, int] = {}
    with open(idx_path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            parts = line.split(b"\t")
            try:
                if len(parts) != 2:
                    raise ValueError
                key, offset = int(parts[0]), int(parts[1])
            except ValueError:
                raise InputError(idx_path, f"line {lineno}: expected 'key<TAB>offset', got {line[:60]!r}") from None
            if offset < 0 or (rec_size is not None and offset + 8 > rec_size):
                raise InputError(idx_path, f"line {lineno}: offset {offset} of record {key} is outside the .rec file ({rec_size} bytes)")
            index[key] = offset
    if not index:
        raise InputError(idx_path, "RecordIO index is empty")
    return index


def read_record_at(f, offset: int, rec_path: str | Path, key: int | None = None) -> bytes:
    """The payload of the record starting at ``offset`` of the open binary file ``f``."""
    where = f"record {key} at offset {offset}" if key is not None else f"record at offset {offset}"
    parts: list[bytes] = []
    pos = offset
    while True:
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            raise InputError(rec_path, f"corrupt {where}: file ends inside a record header (byte {pos})")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise InputError(rec_path, f"corrupt {where}: bad magic 0x{magic:08x} at byte {pos} (expected 0x{MAGIC:08x})")
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        expected_first = not parts
        if cflag > 3 or (expected_first and cflag not in (0, 1)) or (not expected_first and cflag not in (2, 3)):
            raise InputError(rec_path, f"corrupt {where}: unexpected continuation flag {cflag} at byte {pos}")
        data = f.read(length)
        if len(data) < length:
            raise InputError(rec_path, f"corrupt {where}: payload of {length} bytes truncated at byte {pos + 8 + len(data)}")
        parts.append(data)
        pos += 8 + ((length + 3) & ~3)
        if cflag in (0, 3):
            break
    return _MAGIC_BYTES.join(parts)


def unpack(payload: bytes, rec_path: str | Path = "train.rec", where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a payload into its :class:`IRHeader` and the image bytes."""
    if len(payload) < IR_SIZE:
        raise InputError(rec_path, f"corrupt {where}: {len(payload)}-byte payload is shorter than the {IR_SIZE}-byte header")
    flag, label, id1, id2 = struct.unpack(IR_FORMAT, payload[:IR_SIZE])
    rest = payload[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise InputError(rec_path, f"corrupt {where}: header announces {flag} labels but the payload is too short")
        return IRHeader(flag, np.frombuffer(rest, np.float32, flag).copy(), id1, id2), rest[4 * flag :]
    return IRHeader(flag, float(label), id1, id2), rest


def header_label(header: IRHeader) -> int:
    """The class of an image record (``label[0]`` for array labels)."""
    value = header.label if np.isscalar(header.label) else header.label[0]
    return int(value)


class RecordIOReader:
    """Random access to an indexed RecordIO pair; ``image_keys`` lists the image records."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise InputError(self.rec_path, "RecordIO file not found")
        self.size = self.rec_path.stat().st_size
        self.index = read_index(self.idx_path, self.size)
        self._f = open(self.rec_path, "rb")
        self.image_keys = self._image_keys()

    def _image_keys(self) -> list[int]:
        first = min(self.index)
        header, _ = unpack(self.read(first), self.rec_path, f"record {first} at offset {self.index[first]}")
        if first == 0 and header.flag > 0:
            stop = int(header.label[0])
            keys = list(range(1, stop))
            missing = [k for k in keys if k not in self.index]
            if missing:
                raise InputError(self.idx_path, f"record 0 announces images 1…{stop - 1} but key {missing[0]} is not in the index")
            return keys
        return sorted(self.index)

    def offset(self, key: int) -> int:
        return self.index[key]

    def read(self, key: int) -> bytes:
        return read_record_at(self._f, self.index[key], self.rec_path, key)

    def read_image(self, key: int) -> tuple[int, bytes]:
        """``(label, encoded image bytes)`` of an image record."""
        header, img = unpack(self.read(key), self.rec_path, f"record {key} at offset {self.index[key]}")
        return header_label(header), img

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
