"""Face alignment of a dataset folder: detector → 5 landmarks → insightface ``norm_crop`` to 112×112.

Input is a folder of identity sub-folders of images; output has the same sub-folders with one
``<stem>.png`` per aligned image, a ``manifest.parquet`` (one row per input image: status,
detection score, landmarks) and ``align.json`` (settings and counts). Images where no face is found
follow a policy: ``skip`` the image, ``resize`` it whole to 112×112 instead, or ``drop-identity``
(drop every image of an identity that has one failure). Work resumes per identity folder; every
file is written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np

from . import __version__
from .data.dataset import read_bgr
from .errors import ConfigError, InputError
from .extras import dist_version
from .io import sha256_file, write_bytes_atomic, write_json_atomic

ALIGNED_SIZE = 112
FAILURE_POLICIES = ("skip", "resize", "resize-identity", "drop-identity")
PICK_RULES = ("largest", "center", "score")
DETECTOR_KINDS = ("auto", "scrfd", "retinaface")

#: 5-point destination templates (left eye, right eye, nose, left / right mouth corner) for a 112×112
#: crop. ``arcface-112`` is insightface's ``arcface_dst`` (the eval ``.bin`` files' alignment, IDiff-Face's
#: ``createEvalDB=True``); ``negfacediff-96x112`` is the original 96-wide ArcFace template without
#: insightface's +8 px x-shift, placed in the 112×112 canvas (NegFaceDiff/AdaptDiff ``MTCNN_alignment.py``
#: with its default ``--evalDB 0``).
TEMPLATES: dict[str, np.ndarray] = {
    "arcface-112": np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32),
    "negfacediff-96x112": np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                                    [33.5493, 92.3655], [62.7299, 92.2041]], np.float32),
}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
STATE_DIR = ".frbench-align"

Advance = Callable[[int], None]
ProgressFactory = Callable[[str, int], Advance]


# ------------------------------------------------------------------------------------ image io
def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 BGR ``H×W×3`` (the detectors' input); InputError if corrupt."""
    return read_bgr(path)


def resize_to(img: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Whole-image resize to ``size×size`` (area interpolation when shrinking, bilinear when enlarging)."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interp = cv2.INTER_AREA if h > size and w > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - cv2 encodes any uint8 BGR image
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


# ----------------------------------------------------------------------------------- detectors
@dataclass
class Face:
    """One detection in input-image pixels: box ``x1, y1, x2, y2``, score, 5 landmarks (x, y)."""

    bbox: np.ndarray
    score: float
    landmarks: np.ndarray  # float32 [5, 2]: left eye, right eye, nose, left mouth, right mouth


class InsightFaceDetector:
    """An insightface detection ONNX (SCRFD family, RetinaFace) from a user path.

    ``auto``/``scrfd`` let insightface's model zoo route the file (detection graphs are those with
    ≥ 5 outputs; the packs' ``det_10g.onnx``, ``det_500m.onnx``, ``scrfd_*_bnkps.onnx``);
    ``retinaface`` runs the file with insightface's ``RetinaFace`` class. Images go in as BGR, as
    insightface expects.
    """

    def __init__(self, path: str | Path, kind: str = "auto", det_size: int = 640, det_thresh: float = 0.5,
                 device: Optional[str] = "auto"):
        self.path = Path(path)
        if kind not in DETECTOR_KINDS:
            raise ConfigError(f"unknown detector kind {kind!r}; choose one of {', '.join(DETECTOR_KINDS)}")
        if not self.path.is_file():
            raise InputError(self.path, "detector file not found")
        if det_size < 32:
            raise ConfigError(f"--det-size {det_size}: must be at least 32")
        from .models.onnx_model import _providers

        providers = _providers(device)

        def provider_device(p: Any) -> int:  # insightface's prepare(ctx_id): < 0 switches to the CPU
            return int(p[1].get("device_id", 0)) if isinstance(p, tuple) else -1
        self.kind, self.det_size, self.det_thresh = kind, det_size, det_thresh
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # insightface prints provider chatter
                if kind == "retinaface":
                    import onnxruntime
                    from insightface.model_zoo.retinaface import RetinaFace

                    model = RetinaFace(model_file=str(self.path),
                                       session=onnxruntime.InferenceSession(str(self.path), providers=providers))
                else:
                    from insightface.model_zoo import model_zoo

                    model = model_zoo.get_model(str(self.path), providers=providers)
        except Exception as err:
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise InputError(self.path, f"not a readable ONNX detector ({type(err).__name__}: {first})") from None
        if model is None or getattr(model, "taskname", None) != "detection" or not hasattr(model, "use_kps"):
            routed = "unrecognised" if model is None else type(model).__name__
            raise InputError(self.path, f"not an insightface face detector (its model zoo routes it as {routed})")
        if not model.use_kps:
            raise InputError(self.path, "detector has no landmark outputs; 5-point alignment needs a keypoint model "
                                        "(e.g. det_10g.onnx or scrfd_*_bnkps.onnx)")
        ctx = provider_device(providers[0])
        model.prepare(ctx, input_size=(det_size, det_size), det_thresh=det_thresh)
        self.model = model
        self.name = f"{type(model).__name__.lower()}:{self.path.name}"

    def detect(self, img: np.ndarray) -> list[Face]:
        dets, kpss = self.model.detect(img)
        return [Face(np.asarray(d[:4], np.float32), float(d[4]), np.asarray(k, np.float32).reshape(5, 2))
                for d, k in zip(dets, kpss)]

    def describe(self) -> dict[str, Any]:
        return {"detector": str(self.path), "detector_sha256": sha256_file(self.path), "class": type(self.model).__name__,
                "det_size": self.det_size, "det_thresh": self.det_thresh,
                "input_size": [list(s) for s in getattr(self.model, "input_sizes", []) or []]}


class MTCNNDetector:
    """facenet-pytorch's MTCNN (P-, R-, O-net cascade) with the weights shipped in its wheel.

    The IDiff-Face / NegFaceDiff / AdaptDiff repositories align with this detector. frbench builds the
    three networks without their own loading (which calls a bare ``torch.load``), reads
    ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` with ``weights_only=True`` and runs the package's own
    ``detect_face``, so boxes, scores and landmarks are the package's. Images go in as RGB, as
    facenet-pytorch expects. facenet-pytorch's metadata pins an old torch: install it with
    ``pip install --no-deps facenet-pytorch``.
    """

    kind = "mtcnn"
    WEIGHTS = ("pnet.pt", "rnet.pt", "onet.pt")

    def __init__(self, min_face_size: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, device: Optional[str] = "auto"):
        try:
            import facenet_pytorch
            from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
            from facenet_pytorch.models.utils.detect_face import detect_face
        except ImportError as err:
            raise ConfigError(f"--detector mtcnn needs facenet-pytorch ({err}); install it with "
                              "'pip install --no-deps facenet-pytorch' (its metadata pins an old torch)") from None
        import torch

        from .models.torch_model import resolve_device

        if min_face_size < 1:
            raise ConfigError(f"--min-face-size {min_face_size}: must be at least 1")
        self.device = resolve_device(device)
        data = Path(facenet_pytorch.__file__).parent / "data"
        nets = []
        for cls, name in zip((PNet, RNet, ONet), self.WEIGHTS):
            path = data / name
            if not path.is_file():
                raise InputError(path, "MTCNN weights missing from the facenet-pytorch install; reinstall it "
                                       "with 'pip install --no-deps --force-reinstall facenet-pytorch'")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                net = cls(pretrained=False)
                net.load_state_dict(state)
            except Exception as err:
                raise InputError(path, f"unreadable MTCNN weights ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
            nets.append(net.to(self.device).eval())
        self.pnet, self.rnet, self.onet = nets
        self._detect_face = detect_face
        self.min_face_size, self.thresholds, self.factor = int(min_face_size), tuple(float(t) for t in thresholds), float(factor)
        self.weights = {name: sha256_file(data / name) for name in self.WEIGHTS}
        self.version = getattr(facenet_pytorch, "__version__", None) or dist_version("facenet-pytorch")
        self.path = data
        self.name = f"mtcnn:facenet-pytorch {self.version}"
        # settings recorded by align (same fields as the ONNX detectors)
        self.det_size, self.det_thresh = 0, self.thresholds[2]

    def detect(self, img: np.ndarray) -> list[Face]:
        import torch

        rgb = np.ascontiguousarray(img[:, :, ::-1])
        with torch.no_grad():
            boxes, points = self._detect_face(rgb, self.min_face_size, self.pnet, self.rnet, self.onet,
                                              list(self.thresholds), self.factor, self.device)
        boxes, points = np.asarray(boxes[0]), np.asarray(points[0])
        return [Face(np.asarray(b[:4], np.float32), float(b[4]), np.asarray(p, np.float32).reshape(5, 2))
                for b, p in zip(boxes, points)]

    def describe(self) -> dict[str, Any]:
        return {"detector": "mtcnn", "package": f"facenet-pytorch {self.version}", "weights_sha256": self.weights,
                "min_face_size": self.min_face_size, "thresholds": list(self.thresholds), "factor": self.factor}


def load_detector(spec: str | Path, *, kind: str = "auto", det_size: int = 640, det_thresh: float = 0.5,
                  device: Optional[str] = "auto", min_face_size: int = 20) -> Optional[InsightFaceDetector | MTCNNDetector]:
    """``none`` → None (resize only); ``mtcnn`` → facenet-pytorch's MTCNN; anything else is a path to an
    insightface detection ONNX."""
    if str(spec).lower() == "none":
        return None
    if str(spec).lower() == "mtcnn":
        return MTCNNDetector(min_face_size=min_face_size, device=device)
    return InsightFaceDetector(spec, kind, det_size, det_thresh, device)


def pick_face(faces: list[Face], rule: str, shape: tuple[int, ...]) -> Optional[Face]:
    """The face to align: ``largest`` box area (NegFaceDiff, Arc2Face), box ``center`` closest to the
    image centre (IDiff-Face), or highest ``score``. First in detector order on ties."""
    if not faces:
        return None
    if rule == "largest":
        keys = [-(f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]) for f in faces]
    elif rule == "center":
        cy, cx = shape[0] / 2.0, shape[1] / 2.0
        keys = [((f.bbox[0] + f.bbox[2]) / 2 - cx) ** 2 + ((f.bbox[1] + f.bbox[3]) / 2 - cy) ** 2 for f in faces]
    elif rule == "score":
        keys = [-f.score for f in faces]
    else:
        raise ConfigError(f"unknown face pick rule {rule!r}; choose one of {', '.join(PICK_RULES)}")
    return faces[int(np.argmin(keys))]


def norm_crop(img: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE, template: str = "arcface-112") -> np.ndarray:
    """5-point similarity warp onto a template (:data:`TEMPLATES`), ``size×size`` output.

    ``arcface-112`` is insightface's own ``norm_crop``; other templates use the same estimate (skimage
    ``SimilarityTransform``, least squares) and ``cv2.warpAffine`` with a black border, as the
    repositories' ``align_trans.norm_crop`` do.
    """
    lmk = np.asarray(landmarks, np.float32).reshape(5, 2)
    # insightface/skimage call the deprecated ``SimilarityTransform.estimate``; the result is unchanged
    warnings.filterwarnings("ignore", message=r".*`estimate` is deprecated", category=FutureWarning)
    if template == "arcface-112":
        from insightface.utils import face_align

        return face_align.norm_crop(img, lmk, image_size=size)
    if template not in TEMPLATES:
        raise ConfigError(f"unknown alignment template {template!r}; choose one of {', '.join(TEMPLATES)}")
    from skimage import transform

    tform = transform.SimilarityTransform()
    tform.estimate(lmk, TEMPLATES[template] * (size / ALIGNED_SIZE))
    return cv2.warpAffine(img, tform.params[0:2, :], (size, size), borderValue=0.0)


# -------------------------------------------------------------------------------------- folders
@dataclass
class AlignSettings:
    """Everything that decides the output; a resumed run must use the same."""

    input: str = ""
    detector: str = "none"
    detector_sha256: Optional[str] = None
    detector_kind: str = "auto"
    det_size: int = 640
    det_thresh: float = 0.5
    pick: str = "largest"
    on_failure: str = "skip"
    size: int = ALIGNED_SIZE
    template: str = "arcface-112"
    min_face_size: Optional[int] = None  # MTCNN only


@dataclass
class _Row:
    identity: str
    source: str
    path: Optional[str]
    status: str  # aligned | resized | skipped | dropped
    reason: str
    faces: int
    score: Optional[float]
    landmarks: Optional[list[float]]
    width: int
    height: int
    image: Optional[np.ndarray] = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        rec = asdict(self)
        rec.pop("image")
        return rec


def list_identities(input_dir: Path) -> list[tuple[str, list[Path]]]:
    """Sorted identity sub-folders and their sorted images (hidden entries ignored)."""
    if not input_dir.is_dir():
        raise InputError(input_dir, "input folder not found")
    out = []
    for sub in sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not p.name.startswith("."))
        stems: dict[str, Path] = {}
        for f in files:
            if f.stem in stems:
                raise InputError(f, f"same name as {stems[f.stem].name}: both would be written as {f.stem}.png")
            stems[f.stem] = f
        out.append((sub.name, files))
    if not out:
        raise InputError(input_dir, "no identity sub-folders (expected <input>/<identity>/<image>)")
    return out


def _check_settings(out_dir: Path, saved: dict[str, Any], settings: AlignSettings, where: Path) -> None:
    now = asdict(settings)
    for key, value in now.items():
        if saved.get(key) != value:
            raise ConfigError(f"{where}: {out_dir} was aligned with {key}={saved.get(key)!r}, this run asks for "
                              f"{value!r}; use another --out (or delete it) to realign")


def _load_done(out_dir: Path, settings: AlignSettings) -> dict[str, list[dict[str, Any]]]:
    """Rows of identities finished by an earlier run (finished manifest and/or unfinished state)."""
    done: dict[str, list[dict[str, Any]]] = {}
    summary, manifest = out_dir / "align.json", out_dir / "manifest.parquet"
    if summary.is_file() and manifest.is_file():
        import pandas as pd

        _check_settings(out_dir, json.loads(summary.read_text()).get("settings", {}), settings, summary)
        table = pd.read_parquet(manifest)
        for rec in table.to_dict("records"):
            lm = rec.get("landmarks")
            rec["landmarks"] = None if lm is None else [float(v) for v in lm]
            rec["score"] = None if rec.get("score") is None or np.isnan(rec["score"]) else float(rec["score"])
            rec["path"] = rec["path"] if isinstance(rec.get("path"), str) else None
            for c in GENERATION_COLUMNS:  # re-read from the input's manifest when the manifest is written
                rec.pop(c, None)
            done.setdefault(str(rec["identity"]), []).append(rec)
    state = out_dir / STATE_DIR
    if (state / "settings.json").is_file():
        _check_settings(out_dir, json.loads((state / "settings.json").read_text()), settings, state / "settings.json")
        for rec_file in state.glob("*.json"):
            if rec_file.name != "settings.json":
                rows = json.loads(rec_file.read_text())
                if rows:
                    done[str(rows[0]["identity"])] = rows
    return done


def align_folder(
    input_dir: str | Path,
    out_dir: str | Path,
    detector: Optional[InsightFaceDetector | MTCNNDetector],
    *,
    on_failure: str = "skip",
    pick: str = "largest",
    template: str = "arcface-112",
    workers: int = 8,
    progress: Optional[ProgressFactory] = None,
) -> dict[str, Any]:
    """Align every identity folder of ``input_dir`` into ``out_dir``; returns the ``align.json`` summary."""
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if on_failure not in FAILURE_POLICIES:
        raise ConfigError(f"unknown failure policy {on_failure!r}; choose one of {', '.join(FAILURE_POLICIES)}")
    if pick not in PICK_RULES:
        raise ConfigError(f"unknown face pick rule {pick!r}; choose one of {', '.join(PICK_RULES)}")
    src, dst = input_dir.resolve(), out_dir.resolve()
    if dst == src or src in dst.parents:
        raise ConfigError(f"--out {out_dir}: must not be the input folder or inside it")
    if template not in TEMPLATES:
        raise ConfigError(f"unknown alignment template {template!r}; choose one of {', '.join(TEMPLATES)}")
    identities = list_identities(input_dir)
    settings = AlignSettings(input=str(src), on_failure=on_failure, pick=pick, template=template)
    if isinstance(detector, MTCNNDetector):
        settings = AlignSettings(input=str(src), detector="mtcnn", detector_sha256=hashlib.sha256(json.dumps(detector.weights, sort_keys=True).encode()).hexdigest(),
                                 detector_kind="mtcnn", det_size=0, det_thresh=float(detector.det_thresh), on_failure=on_failure,
                                 pick=pick, template=template, min_face_size=detector.min_face_size)
    elif detector is not None:
        settings = AlignSettings(input=str(src), detector=str(detector.path.resolve()), detector_sha256=sha256_file(detector.path),
                                 detector_kind=detector.kind, det_size=detector.det_size,
                                 det_thresh=float(detector.det_thresh), on_failure=on_failure, pick=pick, template=template)
    done = _load_done(out_dir, settings)
    state = out_dir / STATE_DIR
    todo = [(name, files) for name, files in identities if name not in done]
    if todo:
        write_json_atomic(state / "settings.json", asdict(settings))

    def process(item: tuple[str, Path]) -> _Row:
        identity, path = item
        img = read_image(path)
        h, w = img.shape[:2]
        rel_out = f"{identity}/{path.stem}.png"
        rel_src = path.relative_to(input_dir).as_posix()
        if detector is None:
            return _Row(identity, rel_src, rel_out, "resized", "", 0, None, None, w, h, resize_to(img, settings.size))
        faces = detector.detect(img)
        face = pick_face(faces, pick, img.shape)
        if face is None:
            # the resized fallback is kept until the identity's policy is decided
            return _Row(identity, rel_src, None, "failed", "no face detected", 0, None, None, w, h, resize_to(img, settings.size))
        crop = norm_crop(img, face.landmarks, settings.size, template)
        return _Row(identity, rel_src, rel_out, "aligned", "", len(faces), face.score,
                    [round(float(v), 3) for v in face.landmarks.reshape(-1)], w, h, crop)

    def write(row: _Row) -> None:
        if row.path is not None and row.image is not None:
            write_bytes_atomic(out_dir / row.path, encode_png(row.image))

    total = sum(len(files) for _, files in todo)
    advance = progress("align", total) if progress and total else None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for name, files in todo:
            rows = list(pool.map(process, [(name, f) for f in files]))
            failed = sum(r.status == "failed" for r in rows)
            for r in rows:
                if on_failure == "drop-identity" and failed:
                    r.status, r.path, r.image = "dropped", None, None
                    r.reason = r.reason or f"identity has {failed} image(s) without a face"
                elif on_failure == "resize-identity" and failed:
                    # IDiff-Face's align.py: one failed tile → the whole identity block is resized
                    r.status, r.path = "resized", f"{name}/{Path(r.source).stem}.png"
                    r.image = resize_to(read_image(input_dir / r.source), settings.size)
                    r.reason = r.reason or f"identity has {failed} image(s) without a face"
                elif r.status == "failed" and on_failure == "resize":
                    r.status, r.path = "resized", f"{name}/{Path(r.source).stem}.png"
                elif r.status == "failed":
                    r.status, r.image = "skipped", None
            list(pool.map(write, rows))
            records = [r.record() for r in rows]
            write_json_atomic(state / f"{name}.json", records)
            done[name] = records
            if advance:
                advance(len(files))

    rows_all = [rec for name, _ in identities for rec in done.get(name, [])]
    summary = _summarise(input_dir, out_dir, settings, identities, rows_all, detector)
    carried, contexts = generation_meta(input_dir)
    _write_manifest(out_dir / "manifest.parquet", [{**r, **carried.get(r["source"], {})} for r in rows_all], contexts)
    write_json_atomic(out_dir / "align.json", summary)
    if state.exists():  # finished: the manifest is now the record (and the tree stays an image folder)
        shutil.rmtree(state)
    return summary


GENERATION_COLUMNS = ("sample", "seed", "context_row")


def generation_meta(input_dir: Path) -> tuple[dict[str, dict[str, int]], Optional[Path]]:
    """What ``frbench generate`` recorded for each source image (sample, seed, context_row, keyed by the
    path relative to ``input_dir``) and its identity-contexts file, so aligned images keep them."""
    import pyarrow.parquet as pq

    from .data.dataset import generated_contexts, manifest_contexts

    manifest = input_dir / "manifest.parquet"
    if not manifest.is_file():
        return {}, None
    try:
        table = pq.read_table(manifest)
    except Exception:  # pyarrow raises several types; an unreadable file only means nothing is carried
        return {}, None
    if "path" not in table.column_names or "context_row" not in table.column_names:
        return {}, None  # not a generation manifest (e.g. an aligned folder's own)
    cols = {c: table.column(c).to_pylist() for c in ("path", *GENERATION_COLUMNS) if c in table.column_names}
    carried = {str(p): {c: int(cols[c][i]) for c in GENERATION_COLUMNS if c in cols and cols[c][i] is not None}
               for i, p in enumerate(cols["path"]) if p is not None}
    contexts = generated_contexts(input_dir) or manifest_contexts(table.schema.metadata, input_dir)
    return carried, (contexts.resolve() if contexts is not None else None)


def _write_manifest(path: Path, rows: list[dict[str, Any]], contexts: Optional[Path] = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .io import atomic_path

    schema = pa.schema([("identity", pa.string()), ("source", pa.string()), ("path", pa.string()),
                        ("status", pa.string()), ("reason", pa.string()), ("faces", pa.int32()),
                        ("score", pa.float64()), ("landmarks", pa.list_(pa.float64())),
                        ("width", pa.int32()), ("height", pa.int32()),
                        *[(c, pa.int64()) for c in GENERATION_COLUMNS]],
                       metadata={"frbench.contexts": str(contexts)} if contexts else None)
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _summarise(input_dir: Path, out_dir: Path, settings: AlignSettings, identities: list[tuple[str, list[Path]]],
               rows: list[dict[str, Any]], detector: Optional[InsightFaceDetector | MTCNNDetector]) -> dict[str, Any]:
    counts = {s: 0 for s in ("aligned", "resized", "skipped", "dropped")}
    written: set[str] = set()
    dropped: set[str] = set()
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        if r["path"] is not None:
            written.add(r["identity"])
        if r["status"] == "dropped":
            dropped.add(r["identity"])
    return {
        "frbench_version": __version__,
        "input": str(input_dir),
        "output": str(out_dir),
        "settings": asdict(settings),
        "detector": detector.describe() if detector is not None else None,
        "images": {"input": len(rows), "written": counts["aligned"] + counts["resized"], **counts},
        "multiple_faces": sum(1 for r in rows if (r.get("faces") or 0) > 1),
        "identities": {"input": len(identities), "written": len(written), "dropped": len(dropped),
                       "empty": len(identities) - len(written) - len(dropped)},
    }
