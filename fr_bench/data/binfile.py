"""Safe reader for insightface verification packs (``lfw.bin``, ``cfp_fp.bin``, …).

A pack is one pickle of ``(bins, issame_list)``: ``bins`` holds 2·P encoded images (JPEG bytes or a
numpy uint8 buffer), pair k is images 2k and 2k+1. Files from the internet must never run code, so the
pickle goes through an unpickler that can build only bytes, lists, tuples, bools and plain numpy
arrays; any other callable is refused before it is called.
"""

from __future__ import annotations

import io
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ..errors import InputError

IMAGE_SIZE = 112

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

_NUMPY_MODULES = {"numpy.core.multiarray", "numpy._core.multiarray", "numpy", "numpy.core.numeric", "numpy._core.numeric"}


def _allowed_global(module: str, name: str) -> Any:
    if module in _NUMPY_MODULES and name == "_reconstruct":
        return _reconstruct
    if module in _NUMPY_MODULES and name == "_frombuffer":
        return _safe_frombuffer
    if module in _NUMPY_MODULES and name == "scalar":
        return _safe_scalar
    if module == "numpy" and name == "ndarray":
        return np.ndarray
    if module == "numpy" and name == "dtype":
        return _safe_dtype
    if module == "_codecs" and name == "encode":
        # protocol-2 pickles from Python 3 spell bytes as _codecs.encode(str, 'latin1')
        return _latin1_encode
    if module in ("__builtin__", "builtins") and name in ("bytes", "bytearray", "bool", "list", "tuple"):
        return {"bytes": bytes, "bytearray": bytearray, "bool": bool, "list": list, "tuple": tuple}[name]
    return None


def _safe_dtype(spec: Any, *args: Any) -> np.dtype:
    dt = np.dtype(spec.decode() if isinstance(spec, bytes) else spec)
    if dt.hasobject:
        raise pickle.UnpicklingError("object dtype is not allowed")
    return dt


def _safe_scalar(dtype: np.dtype, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("object scalars are not allowed")
    raw = data.encode("latin1") if isinstance(data, str) else bytes(data)
    return np.frombuffer(raw, dtype=dtype)[0]


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy ≥ 1.16 pickles arrays (protocol 5) as ``_frombuffer(bytes, dtype, shape, order)``."""
    dt = dtype if isinstance(dtype, np.dtype) else _safe_dtype(dtype)
    if dt.hasobject:
        raise pickle.UnpicklingError("object dtype is not allowed")
    arr = np.frombuffer(bytes(buf), dtype=dt)
    return arr.reshape(shape, order="F" if order in ("F", b"F") else "C")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding.lower() not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r}")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed_global(module, name)
        if obj is None:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        return obj


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` allowing only plain containers, bytes and numpy arrays (py2 pickles too)."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnicodeDecodeError:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


@dataclass
class VerificationPack:
    """Decoded pairs: ``images[2k]``, ``images[2k+1]`` form pair k; ``issame[k]`` is its label."""

    path: Path
    images: np.ndarray  # uint8 [2P, 112, 112, 3] RGB
    issame: np.ndarray  # bool [P]

    @property
    def pairs(self) -> int:
        return len(self.issame)


def read_pack(path: str | Path) -> tuple[list[Any], np.ndarray]:
    """Read and validate a pack's structure without decoding images."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "benchmark file not found")
    raw = path.read_bytes()
    try:
        obj = safe_unpickle(raw)
    except pickle.UnpicklingError as err:
        msg = str(err)
        if msg.startswith("refused"):
            raise InputError(path, f"unsafe pickle: {msg} (a .bin may only hold images and labels)") from err
        raise InputError(path, f"corrupt or truncated .bin ({msg or 'unpickling failed'})") from err
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as err:
        raise InputError(path, f"corrupt or truncated .bin ({type(err).__name__}: {str(err)[:120]})") from err
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise InputError(path, "not an insightface verification pack: expected a (bins, issame_list) pair")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise InputError(path, f"not an insightface verification pack: bins is a {type(bins).__name__}, not a list")
    try:
        issame_arr = np.asarray(list(issame), dtype=bool) if not isinstance(issame, np.ndarray) else issame.astype(bool)
    except (TypeError, ValueError) as err:
        raise InputError(path, "issame_list is not a list of booleans") from err
    if issame_arr.ndim != 1:
        raise InputError(path, "issame_list is not a flat list of booleans")
    if len(bins) != 2 * len(issame_arr):
        raise InputError(path, f"{len(bins)} images but {len(issame_arr)} labels in issame_list (expected {2 * len(issame_arr)} images)")
    for i, b in enumerate(bins):
        if not isinstance(b, (bytes, bytearray)) and not (isinstance(b, np.ndarray) and b.dtype == np.uint8):
            raise InputError(path, f"image {i} is a {type(b).__name__}, not encoded image bytes")
    return list(bins), issame_arr


def decode_image(buf: bytes | np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray | None:
    """Decode one encoded image to uint8 RGB ``size×size×3``; None when it cannot be decoded."""
    arr = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf.reshape(-1)
    if arr.size == 0:
        return None
    img = cv2.imdecode(arr, cv2.IMREAD_COLOR)
    if img is None:
        return None
    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_pack(
    path: str | Path, workers: int = 8, progress: Callable[[int], Callable[[int], None]] | None = None
) -> VerificationPack:
    """Read and decode a verification pack; a corrupt image is reported by index.

    ``progress(total)`` returns an ``advance(n)`` callback (called once the image count is known).
    """
    path = Path(path)
    bins, issame = read_pack(path)
    advance = progress(len(bins)) if progress is not None else None
    images = np.empty((len(bins), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)

    def work(i: int) -> int | None:
        img = decode_image(bins[i])
        if img is None:
            return i
        images[i] = img
        return None

    chunk = 512
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # cv2 releases the GIL
        for start in range(0, len(bins), chunk):
            idx = range(start, min(start + chunk, len(bins)))
            bad = [r for r in pool.map(work, idx) if r is not None]
            if bad:
                raise InputError(path, f"image {bad[0]} (pair {bad[0] // 2}) is not a decodable image")
            if advance is not None:
                advance(len(idx))
    return VerificationPack(path=path, images=images, issame=issame)


def write_pack(path: str | Path, images: list[bytes | np.ndarray], issame: list[bool], protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    """Write a pack the way insightface's packers do (used by tests and by users making their own sets)."""
    with open(path, "wb") as f:
        pickle.dump((list(images), list(map(bool, issame))), f, protocol=protocol)
