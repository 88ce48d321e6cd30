"""Reader for the IJB-B / IJB-C 1:1 meta files as insightface distributes them.

``<root>/meta/<prefix>_face_tid_mid.txt``     one row per face crop: ``name template_id media_id``
``<root>/meta/<prefix>_template_pair_label.txt`` one row per comparison: ``template_1 template_2 label``
``<root>/meta/<prefix>_name_5pts_score.txt``   one row per crop: ``name x1 y1 … x5 y5 faceness``
``<root>/loose_crop/<name>``                    the images

Files are space-separated and parsed with ``pandas.read_csv(sep=' ', header=None)`` as the reference
does (``np.loadtxt`` misreads the IJB-C pair file; insightface PRs #1349/#1364). Any row with the
wrong number of fields or a non-numeric value is reported with its file and line number.

The reference pairs row *i* of the template file with row *i* of the landmark file without looking
at the names; frbench joins the two by image name instead, which gives the same result on the
released files (their rows line up) and refuses files whose names do not match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..io import sha256_file

if TYPE_CHECKING:
    import pandas as pd

#: columns of each file: (description, kinds), kinds ∈ name | int | float
TID_MID = ("image_name template_id media_id", ("name", "int", "int"))
PAIRS = ("template_1 template_2 label", ("int", "int", "int"))
LANDMARKS = ("image_name, 10 landmark coordinates, faceness score", ("name",) + ("float",) * 11)


@dataclass
class IJBMeta:
    """The parsed meta files of one IJB set (``root`` = ``<data-dir>/IJBC``)."""

    root: Path
    prefix: str
    #: crop names in landmark-file order; features are computed per entry
    names: np.ndarray
    #: float32 ``[N, 5, 2]`` landmark coordinates in loose-crop pixels
    landmarks: np.ndarray
    #: float32 ``[N]`` detector faceness scores
    faceness: np.ndarray
    #: per template-file row: index into ``names``, template id, media id
    row_image: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    #: per pair: template ids and 0/1 label
    t1: np.ndarray
    t2: np.ndarray
    labels: np.ndarray
    #: sha256 of the landmark file (keys the aligned-crop cache)
    landmark_sha256: str

    @property
    def image_dir(self) -> Path:
        return self.root / "loose_crop"

    @property
    def landmark_file(self) -> Path:
        return meta_paths(self.root, self.prefix)["landmarks"]

    def landmark_line(self, index: int) -> int:
        """1-based line of image ``index`` in the landmark file (for error messages)."""
        return _find_line(self.landmark_file, lambda f: f[0] == self.names[index]) or index + 1


def meta_paths(root: Path, prefix: str) -> dict[str, Path]:
    meta = Path(root) / "meta"
    return {
        "tid_mid": meta / f"{prefix}_face_tid_mid.txt",
        "pairs": meta / f"{prefix}_template_pair_label.txt",
        "landmarks": meta / f"{prefix}_name_5pts_score.txt",
    }


def read_ijb_meta(root: str | Path, prefix: str) -> IJBMeta:
    """Parse and cross-check the three meta files; raises :class:`InputError` naming file and line."""
    import pandas as pd

    root = Path(root)
    paths = meta_paths(root, prefix)
    for p in paths.values():
        if not p.is_file():
            raise InputError(p, "IJB meta file not found")
    tid = _read_table(paths["tid_mid"], *TID_MID)
    lmk = _read_table(paths["landmarks"], *LANDMARKS)
    pairs = _read_table(paths["pairs"], *PAIRS)

    names = lmk[0].to_numpy(dtype=object)
    coords = lmk.iloc[:, 1:11].to_numpy(dtype=np.float64)
    # the reference parses each value with float() and stores float32
    landmarks = coords.astype(np.float32).reshape(-1, 5, 2)
    faceness = lmk[11].to_numpy(dtype=np.float64).astype(np.float32)

    for i, name in enumerate(names):
        if not name or name.startswith("/") or ".." in name.split("/"):
            line = _find_line(paths["landmarks"], lambda f: f[0] == name)
            raise InputError(paths["landmarks"], f"line {line}: image name '{name}' is not a file inside loose_crop/")
    lmk_index = pd.Index(names)
    if not lmk_index.is_unique:
        dup = lmk_index[lmk_index.duplicated()][0]
        line = _find_line(paths["landmarks"], lambda f: f[0] == dup, nth=2)
        raise InputError(paths["landmarks"], f"line {line}: second landmark row for image '{dup}'")
    tid_names = tid[0].to_numpy(dtype=object)
    unknown = ~lmk_index.isin(pd.Index(tid_names).unique())
    if unknown.any():
        name = names[int(np.argmax(unknown))]
        line = _find_line(paths["landmarks"], lambda f: f[0] == name)
        raise InputError(paths["landmarks"], f"line {line}: landmark row for unknown image '{name}' (not in {paths['tid_mid'].name})")
    row_image = lmk_index.get_indexer(tid_names)
    if (row_image < 0).any():
        name = tid_names[int(np.argmax(row_image < 0))]
        line = _find_line(paths["tid_mid"], lambda f: f[0] == name)
        raise InputError(paths["tid_mid"], f"line {line}: image '{name}' has no landmark row in {paths['landmarks'].name}")

    templates = tid[1].to_numpy(dtype=np.int64)
    medias = tid[2].to_numpy(dtype=np.int64)
    t1 = pairs[0].to_numpy(dtype=np.int64)
    t2 = pairs[1].to_numpy(dtype=np.int64)
    labels = pairs[2].to_numpy(dtype=np.int64)
    _check_pairs(paths, templates, t1, t2, labels)
    return IJBMeta(root, prefix, names, landmarks, faceness, row_image.astype(np.int64), templates, medias,
                   t1, t2, labels.astype(np.int8), sha256_file(paths["landmarks"]))


def _check_pairs(paths: dict[str, Path], templates: np.ndarray, t1: np.ndarray, t2: np.ndarray, labels: np.ndarray) -> None:
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        value = int(labels[np.argmax(bad)])
        line = _find_line(paths["pairs"], lambda f: f[2].strip() and int(f[2]) == value)
        raise InputError(paths["pairs"], f"line {line}: label {value} is not 0 (impostor) or 1 (genuine)")
    known = np.unique(templates)
    for col, ids in enumerate((t1, t2)):
        missing = ~np.isin(ids, known)
        if missing.any():
            value = int(ids[np.argmax(missing)])
            line = _find_line(paths["pairs"], lambda f, c=col: int(f[c]) == value)
            raise InputError(paths["pairs"], f"line {line}: template {value} has no images in {paths['tid_mid'].name}")
    if not (labels == 1).any() or not (labels == 0).any():
        raise InputError(paths["pairs"], f"needs both genuine (1) and impostor (0) pairs; found only label {int(labels[0])}")


# ------------------------------------------------------------------------------------- parsing
_PANDAS_KIND = {"name": str, "int": "int64", "float": "float64"}


def _read_table(path: Path, columns: str, kinds: tuple[str, ...]) -> "pd.DataFrame":
    """``read_csv(sep=' ', header=None)`` with every field typed; a bad row → file + line."""
    import pandas as pd

    dtype = {i: _PANDAS_KIND[k] for i, k in enumerate(kinds)}
    try:
        # keep_default_na=False: an image called "NA" is a name; a short row is still caught
        # because '' does not convert to int/float
        df = pd.read_csv(path, sep=" ", header=None, dtype=dtype, keep_default_na=False, engine="c")
    except pd.errors.EmptyDataError:
        raise InputError(path, "empty file") from None
    except (ValueError, pd.errors.ParserError, OverflowError) as err:
        raise _bad_row(path, columns, kinds) or InputError(path, f"cannot parse ({_first_line(err)})") from None
    if df.shape[1] != len(kinds) or any(df[i].isna().any() for i, k in enumerate(kinds) if k == "float"):
        raise _bad_row(path, columns, kinds) or InputError(path, f"expected {len(kinds)} space-separated fields ({columns})")
    return df


def _bad_row(path: Path, columns: str, kinds: tuple[str, ...]) -> InputError | None:
    """Scan the file for the first row the table reader refused (only on the error path)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line:
                continue  # read_csv skips blank lines, as the reference does
            fields = line.split(" ")
            if len(fields) != len(kinds):
                hint = " (trailing space?)" if fields[-1] == "" and len(fields) == len(kinds) + 1 else ""
                return InputError(path, f"line {lineno}: expected {len(kinds)} space-separated fields ({columns}), found {len(fields)}{hint}")
            for col, (value, kind) in enumerate(zip(fields, kinds), 1):
                problem = _field_problem(value, kind)
                if problem:
                    return InputError(path, f"line {lineno}: field {col} {problem}")
    return None


def _field_problem(value: str, kind: str) -> str | None:
    if value == "":
        return "is empty"
    if kind == "int":
        try:
            int(value)
        except ValueError:
            return f"'{value[:40]}' is not an integer"
    elif kind == "float":
        try:
            ok = math.isfinite(float(value))
        except ValueError:
            ok = False
        if not ok:
            return f"'{value[:40]}' is not a finite number"
    return None


def _find_line(path: Path, match, nth: int = 1) -> int | None:
    """1-based number of the ``nth`` line whose space-split fields satisfy ``match``."""
    seen = 0
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for lineno, raw in enumerate(f, 1):
            fields = raw.rstrip("\r\n").split(" ")
            try:
                hit = match(fields)
            except (ValueError, IndexError):
                hit = False
            if hit:
                seen += 1
                if seen == nth:
                    return lineno
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
