"""IJB-C and IJB-B 1:1 template verification, as insightface ``recognition/arcface_torch/eval_ijbc.py``.

Per image: 5-point similarity alignment to 112×112 RGB, raw embedding of the crop plus that of its
mirror (flip-sum), times the detector faceness score. Per template: images of one media are averaged,
media are summed, the result is L2-normalised. Per pair: the dot product of the two template
features. TAR@FAR is read off ``sklearn.metrics.roc_curve`` (defaults, so ``drop_intermediate=True``)
at the ROC point whose FPR is *nearest* each target (first such point in descending-FPR order, i.e.
the larger TPR at equal FPR). frbench also reports the strict rule, the highest TAR whose FAR is ≤
the target, under ``tar_at_far_strict``.

Speed without changing results: crops come from an aligned uint8 cache built by parallel workers
(:mod:`fr_bench.data.ijb_cache`) and embedded while the workers still run; template pooling is
vectorised; scores and the ROC sort run in float64 on the GPU when there is one.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..data.ijb_cache import CropCache, cache_key, fill_cache, open_cache
from ..data.ijb_meta import IJBMeta, meta_paths, read_ijb_meta
from ..embed import Embedder, l2_normalize
from ..errors import InputError
from ..io import atomic_path
from .base import Benchmark, ProgressFactory, register_benchmark

#: the reference's targets (``10 ** -6`` … ``10 ** -1``); JSON keys are ``str(far)``
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
#: metric-name spelling of each target (``ijbc/tar_far_1e-4``)
FAR_TAGS = {far: f"1e-{k}" for far, k in zip(FARS, range(6, 0, -1))}
#: float64 feature elements converted at once during template pooling (256 MB)
POOL_ELEMENTS = 1 << 25


# ----------------------------------------------------------------------------------- features
def image_features(
    embedder: Embedder,
    cache: CropCache,
    image_paths: list[str],
    landmarks: np.ndarray,
    *,
    flip: bool = True,
    batch_size: int | None = None,
    workers: int | None = None,
    processes: bool | None = None,
    progress: ProgressFactory | None = None,
    label: str = "ijb",
    describe: Callable[[int], str] | None = None,
) -> np.ndarray:
    """Raw (flip-summed) float32 embeddings of every cached crop, aligning missing chunks first.

    Chunks are embedded as soon as the align workers finish them; a reader thread copies the next
    span out of the memory map while the model runs on the current one.
    """
    n_pending = sum(b - a for a, b in map(cache.bounds, cache.pending()))
    align_cb = progress(f"{label}: align → cache", n_pending) if progress and n_pending else None
    embed_cb = progress(f"{label}: embed", cache.n) if progress else None
    stop = threading.Event()
    chunks = fill_cache(cache, image_paths, landmarks, workers=workers, processes=processes, progress=align_cb,
                        describe=describe, stop=stop)
    span = max(batch_size or embedder.batch_size, 8192)
    feats: np.ndarray | None = None
    seen = 0
    for rows, crops in _prefetch(_spans(chunks, cache, span), stop):
        out = embedder.embed(crops, flip=flip, batch_size=batch_size, progress=embed_cb)
        if feats is None:
            feats = np.empty((cache.n, out.shape[1]), dtype=np.float32)
        feats[rows] = out
        seen += len(rows)
    if feats is None or seen != cache.n:  # pragma: no cover - fill_cache raises before this
        raise RuntimeError(f"embedded {seen} of {cache.n} crops")
    return feats


def _spans(chunks: Iterable[int], cache: CropCache, span: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Group ready chunks into ≥ ``span`` images and copy their crops out of the memory map."""
    group: list[int] = []
    size = 0

    def take() -> tuple[np.ndarray, np.ndarray]:
        bounds = [cache.bounds(c) for c in group]
        rows = np.concatenate([np.arange(a, b) for a, b in bounds])
        if all(bounds[i][1] == bounds[i + 1][0] for i in range(len(bounds) - 1)):
            crops = np.array(cache.crops[bounds[0][0] : bounds[-1][1]])  # one sequential read
        else:
            crops = np.concatenate([cache.crops[a:b] for a, b in bounds])
        return rows, crops

    for c in chunks:
        group.append(c)
        a, b = cache.bounds(c)
        size += b - a
        if size >= span:
            yield take()
            group, size = [], 0
    if group:
        yield take()


_END = object()


def _prefetch(items: Iterator[Any], stop: threading.Event, depth: int = 2) -> Iterator[Any]:
    """Run ``items`` in a thread, ``depth`` ahead; errors surface in the caller, stop ends the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)

    def work() -> None:
        try:
            for item in items:
                while True:
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        if stop.is_set():
                            return
            q.put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put(err)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="ijb-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a put() and let the align pool shut down
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


def template_features(
    img_feats: np.ndarray, faceness: np.ndarray, row_image: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Faceness-weighted image features → media means → template sums → L2 (float64 ``[T, D]``).

    ``row_image[r]`` is the image of template-file row ``r``. Returns the features and the sorted
    unique template ids they belong to. Pooling is one sparse product, template × image weights
    (faceness / frames in the media) times the features, in float64.
    """
    from scipy.sparse import csr_matrix

    unique_templates, t_inv = np.unique(templates, return_inverse=True)
    # frames per (template, media) group
    _, g_inv, g_count = np.unique(np.stack([t_inv, medias]), axis=1, return_inverse=True, return_counts=True)
    weights = faceness[row_image].astype(np.float64) / g_count[g_inv.reshape(-1)]
    pool = csr_matrix((weights, (t_inv.reshape(-1), row_image)), shape=(len(unique_templates), len(img_feats)))
    out = np.empty((len(unique_templates), img_feats.shape[1]), dtype=np.float64)
    step = max(1, POOL_ELEMENTS // max(1, len(img_feats)))  # feature columns per product (bounds the float64 copy)
    for d in range(0, img_feats.shape[1], step):
        out[:, d : d + step] = pool @ img_feats[:, d : d + step].astype(np.float64)
    return l2_normalize(out), unique_templates


# ------------------------------------------------------------------------------------- scores
def pair_scores(
    template_feats: np.ndarray, idx1: np.ndarray, idx2: np.ndarray, *, device: Any = None, method: str = "auto",
    budget_bytes: int = 1 << 28,
) -> np.ndarray:
    """float64 dot products ``feats[idx1[k]] · feats[idx2[k]]`` in blocks, on ``device``.

    ``gram`` multiplies each block of distinct first templates against all templates (pair files
    reuse few first templates: IJB-B has 1,845); ``gather`` multiplies row pairs directly.
    """
    import torch

    device = torch.device(device) if device is not None else _default_device()
    feats = torch.from_numpy(np.ascontiguousarray(template_feats, dtype=np.float64)).to(device)
    t, d = feats.shape
    p = len(idx1)
    scores = np.empty(p, dtype=np.float64)
    u1, inv1 = np.unique(idx1, return_inverse=True)
    if method == "auto":
        # gather is memory-bound (2·D·8 bytes per pair), gram compute-bound: gram wins unless
        # almost every pair has its own first template
        method = "gram" if len(u1) * t <= 16 * p else "gather"
    with torch.inference_mode():
        if method == "gram":
            order = np.argsort(inv1, kind="stable")
            starts = np.searchsorted(inv1[order], np.arange(len(u1) + 1))
            step = max(1, budget_bytes // (8 * t))
            for a in range(0, len(u1), step):
                b = min(len(u1), a + step)
                sel = order[starts[a] : starts[b]]
                gram = feats[torch.from_numpy(u1[a:b]).to(device)] @ feats.T
                r = torch.from_numpy(inv1[sel] - a).to(device)
                c = torch.from_numpy(idx2[sel]).to(device)
                scores[sel] = gram[r, c].cpu().numpy()
        elif method == "gather":
            step = max(1, budget_bytes // (16 * d))
            for a in range(0, p, step):
                i = torch.from_numpy(idx1[a : a + step]).to(device)
                j = torch.from_numpy(idx2[a : a + step]).to(device)
                scores[a : a + step] = (feats[i] * feats[j]).sum(1).cpu().numpy()
        else:
            raise ValueError(f"method must be auto, gram or gather, not {method!r}")
    return scores


def _default_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------ ROC
def roc_counts(labels: np.ndarray, scores: np.ndarray, *, device: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False/true positive counts at every distinct score, highest first (sklearn's full curve).

    Equal to the counts ``sklearn.metrics.roc_curve(..., drop_intermediate=False)`` divides, but with
    one sort on ``device``; a pair is accepted at threshold τ iff score ≥ τ.
    """
    import torch

    device = torch.device(device) if device is not None else _default_device()
    s = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float64)).to(device)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    s_sorted, order = torch.sort(s, descending=True)
    tps_all = torch.cumsum(y[order], 0)
    last = torch.nonzero(s_sorted[1:] != s_sorted[:-1]).squeeze(1)
    idx = torch.cat([last, torch.tensor([len(s) - 1], device=device)])
    tps = tps_all[idx]
    fps = idx + 1 - tps
    return (fps.cpu().numpy().astype(np.float64), tps.cpu().numpy().astype(np.float64),
            s_sorted[idx].cpu().numpy())


def reference_roc(fps: np.ndarray, tps: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``roc_curve`` with sklearn's defaults from full-curve counts: collinear points dropped, (0, 0) first."""
    if len(fps) > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds]


def nearest_points(fpr: np.ndarray, tpr: np.ndarray, fars: Iterable[float] = FARS) -> dict[str, tuple[float, float]]:
    """eval_ijbc's rule: the ROC point (FPR, TPR) whose FPR is nearest each target.

    The curve is walked in descending-FPR order and the first nearest point wins, which is the
    larger TPR when two points share the FPR (and the larger FPR when two are equally near).
    """
    fpr_d, tpr_d = fpr[::-1], tpr[::-1]
    out = {}
    for far in fars:
        i = int(np.argmin(np.abs(fpr_d - far)))
        out[str(far)] = (float(fpr_d[i]), float(tpr_d[i]))
    return out


def tar_at_far_nearest(fpr: np.ndarray, tpr: np.ndarray, fars: Iterable[float] = FARS) -> dict[str, float]:
    """TAR at each target FAR by the reference's nearest-FPR rule (:func:`nearest_points`)."""
    return {k: t for k, (_, t) in nearest_points(fpr, tpr, fars).items()}


def tar_at_far_strict(fps: np.ndarray, tps: np.ndarray, fars: Iterable[float] = FARS) -> dict[str, float]:
    """Highest TAR over thresholds whose FAR is ≤ the target (full-curve counts from :func:`roc_counts`)."""
    fpr = np.r_[0.0, fps] / fps[-1]
    tpr = np.r_[0.0, tps] / tps[-1]
    return {str(far): float(tpr[np.searchsorted(fpr, far, side="right") - 1]) for far in fars}


def plot_roc(path: Path, fpr: np.ndarray, tpr: np.ndarray, title: str, label: str) -> Path:
    """Write the ROC (log FPR axis, the reported TAR@FAR points marked) as a PNG, atomically."""
    from matplotlib.figure import Figure

    floor = 1e-7  # FPR 0 has no place on a log axis
    points = nearest_points(fpr, tpr)
    fig = Figure(figsize=(6, 4.5), dpi=120)
    ax = fig.add_subplot()
    ax.plot(np.maximum(fpr, floor), tpr, lw=1.2, label=label)
    ax.plot([max(f, floor) for f, _ in points.values()], [t for _, t in points.values()], "o", ms=3, color="C3",
            label="reported TAR@FAR (nearest ROC point)")
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1.0)
    low = min(t for _, t in points.values())
    ax.set_ylim(0.3 if low >= 0.35 else 0.0, 1.0)
    ax.grid(True, which="both", linestyle="--", linewidth=0.5)
    ax.set_xlabel("False Positive Rate")
    ax.set_ylabel("True Positive Rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# ------------------------------------------------------------------------------------ benchmark
class IJBVerification(Benchmark):
    """``<data-dir>/IJBC`` (or ``IJBB``) scored with the 1:1 template protocol."""

    #: decode+align workers (None: ``$FRBENCH_IJB_WORKERS`` or every CPU)
    workers: int | None = None
    #: force process (True) or thread (False) workers; None decides by size
    processes: bool | None = None

    def __init__(self, name: str, data_dir: str | Path):
        super().__init__(name, data_dir)
        self.root = self.data_dir / name.upper()
        self.prefix = name.lower()

    def files(self) -> list[Path]:
        return [*meta_paths(self.root, self.prefix).values(), self.root / "loose_crop"]

    def evaluate(self, embedder: Embedder, *, flip: bool = True, batch_size: int | None = None,
                 progress: ProgressFactory | None = None, workdir: Path | None = None) -> dict[str, Any]:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        meta = read_ijb_meta(self.root, self.prefix)
        if not meta.image_dir.is_dir():
            raise InputError(meta.image_dir, "IJB image folder not found")
        workdir = Path(workdir) if workdir is not None else Path("frbench-work")
        cache = open_cache(workdir / "cache" / "ijb", cache_key(meta.landmark_sha256), len(meta.names),
                           info={"benchmark": self.name, "landmarks": str(meta.landmark_file),
                                 "landmark_sha256": meta.landmark_sha256})
        pending = sum(b - a for a, b in map(cache.bounds, cache.pending()))
        status = "hit" if pending == 0 else ("built" if pending == cache.n else "resumed")
        timings["read_meta"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        image_dir = str(meta.image_dir)
        paths = [os.path.join(image_dir, n) for n in meta.names]
        feats = image_features(embedder, cache, paths, meta.landmarks, flip=flip, batch_size=batch_size,
                               workers=self.workers, processes=self.processes, progress=progress, label=self.name,
                               describe=lambda row: f"listed in {meta.landmark_file} line {meta.landmark_line(row)}")
        timings["align_embed"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        tfeats, unique_templates = template_features(feats, meta.faceness, meta.row_image, meta.templates, meta.medias)
        timings["templates"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        device = _score_device(embedder)
        idx1 = np.searchsorted(unique_templates, meta.t1)
        idx2 = np.searchsorted(unique_templates, meta.t2)
        scores = pair_scores(tfeats, idx1, idx2, device=device)
        fps, tps, thr = roc_counts(meta.labels, scores, device=device)
        fpr, tpr, _ = reference_roc(fps, tps, thr)
        tar = tar_at_far_nearest(fpr, tpr)
        strict = tar_at_far_strict(fps, tps)
        from sklearn.metrics import auc

        roc_auc = float(auc(fpr, tpr))
        timings["score_roc"] = time.perf_counter() - t0

        png = workdir / "ijb" / f"{self.name}-roc-{Path(embedder.path).stem}-{time.strftime('%Y%m%d-%H%M%S')}.png"
        plot_roc(png, fpr, tpr, f"{self.name.upper()} 1:1 verification ROC",
                 f"{Path(embedder.path).name} (AUC = {100 * roc_auc:.4f} %)")
        genuine = int(meta.labels.sum())
        return {
            "tar_at_far": tar,
            "tar_at_far_strict": strict,
            "auc": roc_auc,
            "templates": int(len(unique_templates)),
            "pairs": int(len(meta.labels)),
            "genuine": genuine,
            "impostor": int(len(meta.labels)) - genuine,
            "images": int(cache.n),
            "flip": flip,
            "cache": {"path": str(cache.path), "status": status, "aligned_now": int(pending)},
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "artifacts": [str(png)],
        }

    def headline(self, result: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for far, tag in FAR_TAGS.items():
            out[f"{self.name}/tar_far_{tag}"] = result["tar_at_far"][str(far)]
            out[f"{self.name}/tar_far_strict_{tag}"] = result["tar_at_far_strict"][str(far)]
        out[f"{self.name}/auc"] = result["auc"]
        return out


def _score_device(embedder: Embedder) -> Any:
    import torch

    dev = getattr(embedder, "device", None)
    return dev if isinstance(dev, torch.device) else _default_device()


register_benchmark("ijbc", "ijbb")(IJBVerification)

__all__ = ["FARS", "IJBMeta", "IJBVerification", "image_features", "nearest_points", "pair_scores", "reference_roc",
           "roc_counts", "tar_at_far_nearest", "tar_at_far_strict", "template_features"]
