"""The ``metrics`` stage: one dataset folder → separability, consistency, LPIPS, P/R and FID.

What runs: the metrics asked for, or — when none is named — every metric whose inputs are there
(an FR model for separability; an FR model, manifest ``context_row``s and a contexts file for
consistency; the VGG16 weights for LPIPS; ``--reference`` and the extractor weights for P/R and
FID). A metric asked for explicitly whose inputs are missing is an error; one merely defaulted is
listed under ``not_computed`` with the reason.

All metrics use the same selection: the first ``identities`` identity folders with ≥ 2 images and
the first ``per_identity`` images of each (DESIGN §4: 1,000 × 20). FR embeddings (no flip, images
resized to 112×112) are cached under ``<workdir>/cache/embeddings/`` per (selection digest, model
sha256, dtype) in resumable chunks, so re-runs skip the FR model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from . import __version__
from .config import MetricsConfig
from .data.dataset import CONTEXT_FILE_NAMES, ImageFolderDataset, Selection, iter_batches, open_dataset, select
from .embed import Embedder
from .errors import ConfigError, FrBenchError, InputError
from .io import atomic_path, sha256_file, write_json_atomic

METRICS = ("separability", "consistency", "lpips", "prc", "fid")
EMBED_CHUNK = 8192  # images per resumable embedding-cache part
CACHE_VERSION = 1

ProgressFactory = Callable[[str, int], Callable[[int], None]]
WarnFn = Callable[[str], None]


@dataclass
class MetricsRequest:
    """Resolved inputs of one ``frbench metrics`` run."""

    dataset: Path
    cfg: MetricsConfig
    asked: dict[str, bool]  # metric → named on the command line
    fr_model: Optional[Path] = None
    reference: Optional[Path] = None
    device: str = "auto"
    dtype: str = "fp32"
    batch_size: int = 256
    workers: int = 8
    workdir: Path = Path("frbench-work")
    artifacts_dir: Optional[Path] = None
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ planning
def _contexts_path(ds: ImageFolderDataset, cfg: MetricsConfig) -> Optional[Path]:
    if cfg.contexts is not None:
        return Path(cfg.contexts)
    gen = ds.root / "generate.json"  # frbench generate records where its contexts came from
    if gen.is_file():
        try:
            src = json.loads(gen.read_text()).get("identities")
        except (OSError, json.JSONDecodeError):
            src = None
        if src:
            return Path(src)
    if ds.contexts_hint is not None:
        return ds.contexts_hint
    for name in CONTEXT_FILE_NAMES:
        if (ds.root / name).is_file():
            return ds.root / name
    return None


def plan_metrics(req: MetricsRequest, ds: ImageFolderDataset, sel: Selection, warn: WarnFn) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """Which metrics run, why the others do not, and the inputs they found."""
    from .metrics.diversity import VGG16_FILE, VGG16_URL, find_weights
    from .metrics.fidelity import find_extractor_weights

    explicit = any(req.asked.values())
    todo: list[str] = []
    skipped: dict[str, str] = {}
    found: dict[str, Any] = {}
    cfg = req.cfg

    def need(metric: str, problem: Optional[str], err: Optional[FrBenchError] = None) -> None:
        if problem is None:
            todo.append(metric)
            return
        if req.asked.get(metric):
            raise err if err is not None else ConfigError(f"--{metric}: {problem}")
        if not explicit:
            skipped[metric] = problem

    def weights_for(key: str, fn: Callable[[], Path]) -> tuple[Optional[Path], Optional[InputError]]:
        try:
            return fn(), None
        except InputError as e:
            return None, e

    wanted = {m: (req.asked.get(m) or not explicit) for m in METRICS}
    if wanted["separability"]:
        need("separability", None if req.fr_model else "no FR model (pass --fr-model PATH)")
    if wanted["consistency"]:
        problem = None
        if not req.fr_model:
            problem = "no FR model (pass --fr-model PATH)"
        elif ds.manifest is None:
            problem = f"no {ds.root / 'manifest.parquet'} naming each image's conditioning context"
        elif not any(ds.meta.get(f) and ds.meta[f].context_row is not None for f in sel.files):
            problem = f"{ds.manifest} has no context_row for the selected images"
        else:
            ctx = _contexts_path(ds, cfg)
            if ctx is None:
                problem = ("no identity-contexts file (set metrics.contexts in the config, or put contexts.npy / "
                           f"identities.npy in {ds.root})")
            else:
                found["contexts"] = ctx
        need("consistency", problem)
    if wanted["lpips"]:
        path, err = weights_for("lpips", lambda: find_weights(cfg.vgg16_weights, VGG16_FILE, VGG16_URL, "LPIPS VGG16", "vgg16_weights"))
        if path is not None:
            found["vgg16"] = path
        elif not explicit:
            warn(f"LPIPS skipped: {err}")
        need("lpips", None if path else f"VGG16 weights not found ({err.path})", err)
    for metric, extractor in (("prc", cfg.prc_extractor), ("fid", cfg.fid_extractor)):
        if not wanted[metric]:
            continue
        if req.reference is None:
            need(metric, "no real reference set (pass --reference DIR)")
            continue
        weights = {"inception_weights": cfg.inception_weights, "vgg16_weights": cfg.vgg16_weights}
        path, err = weights_for(metric, lambda: find_extractor_weights(extractor, weights))
        if path is not None:
            found.setdefault("extractors", {})[extractor] = path
        elif not explicit:
            warn(f"{metric.upper()} skipped: {err}")
        need(metric, None if path else f"{extractor} weights not found ({err.path})", err)
    if ("prc" in todo or "fid" in todo) and req.reference is not None and not Path(req.reference).is_dir():
        raise InputError(req.reference, "reference folder not found")
    return todo, skipped, found


# ---------------------------------------------------------------------------------- embeddings
def _check_embeddings(emb: np.ndarray, embedder: Embedder, n: int) -> None:
    if emb.ndim != 2 or emb.shape != (n, embedder.dim):
        raise InputError(embedder.path, f"FR model returned embeddings of shape {list(emb.shape)}, expected [{n}, {embedder.dim}]")
    if not np.isfinite(emb).all():
        raise InputError(embedder.path, "FR model returned non-finite embeddings")


def cached_embeddings(sel: Selection, embedder: Embedder, model_sha256: str, dtype: str, cache_root: Path,
                      *, batch_size: int, workers: int, progress: Optional[ProgressFactory] = None) -> tuple[np.ndarray, dict[str, Any]]:
    """FR embeddings (raw, no flip) of the selection, from/into the cache; returns (array, cache info)."""
    key_src = json.dumps({"v": CACHE_VERSION, "selection": sel.digest(), "model": model_sha256, "dtype": dtype,
                          "flip": False, "size": 112}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    folder = cache_root / key
    final = folder / "embeddings.npy"
    n = len(sel.files)
    if final.is_file():
        try:
            emb = np.load(final, allow_pickle=False)
            _check_embeddings(emb, embedder, n)
            return emb, {"cache": str(final), "hit": True}
        except (ValueError, OSError, InputError):
            pass  # a damaged cache is recomputed
    parts = folder / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    advance = progress("FR embeddings", n) if progress else None
    chunks = []
    for c0 in range(0, n, EMBED_CHUNK):
        files = sel.files[c0 : c0 + EMBED_CHUNK]
        part = parts / f"{c0:010d}.npy"
        emb = None
        if part.is_file():
            try:
                emb = np.load(part, allow_pickle=False)
                if emb.shape != (len(files), embedder.dim):
                    emb = None
            except (ValueError, OSError):
                emb = None
            if emb is not None and advance:
                advance(len(files))
        if emb is None:
            out = [embedder.embed(b, flip=False, batch_size=batch_size) for b in
                   _progress_batches(iter_batches([sel.dataset.path(f) for f in files], batch_size, workers=workers), advance)]
            emb = np.concatenate(out).astype(np.float32)
            _check_embeddings(emb, embedder, len(files))
            with atomic_path(part) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, emb)
        chunks.append(emb)
    emb = np.concatenate(chunks)
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, emb)
    write_json_atomic(folder / "meta.json", {"key": json.loads(key_src), "images": n, "dim": embedder.dim,
                                             "model": str(embedder.path), "frbench_version": __version__})
    shutil.rmtree(parts, ignore_errors=True)
    return emb, {"cache": str(final), "hit": False}


def _progress_batches(batches: Any, advance: Optional[Callable[[int], None]]) -> Any:
    for b in batches:
        yield b
        if advance:
            advance(len(b))


# -------------------------------------------------------------------------------------- plots
def _save_figure(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def separability_figure(hist: dict[str, np.ndarray], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = hist["edges"]
    width = np.diff(edges)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, color in (("impostor", "tab:red"), ("genuine", "tab:blue")):
        counts = hist[key].astype(np.float64)
        dens = counts / max(counts.sum(), 1) / width
        ax.stairs(dens, edges, fill=True, alpha=0.45, color=color, label=f"{key} ({int(counts.sum()):,})")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend()
    return fig


def consistency_figure(hist: dict[str, np.ndarray], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.stairs(hist["counts"], hist["edges"], fill=True, alpha=0.6, color="tab:green")
    ax.set_xlabel("cosine(image embedding, conditioning identity)")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    return fig


# ----------------------------------------------------------------------------------------- run
def run_metrics(req: MetricsRequest, *, progress: Optional[ProgressFactory] = None, warn: WarnFn = lambda m: None) -> dict[str, Any]:
    """Compute the requested metrics; returns the ``--output`` JSON document (plus ``artifacts``)."""
    from .models.torch_model import resolve_device

    cfg = req.cfg
    t_start = time.perf_counter()
    ds = open_dataset(req.dataset)
    sel = select(ds, cfg.identities, cfg.per_identity, min_images=2)
    if not sel.files:
        raise InputError(ds.root, "no identity folder holds at least 2 images (see the dataset layout in the README)")
    if sel.skipped:
        names = ", ".join(f"{s['identity']} ({s['reason']})" for s in sel.skipped[:3])
        more = f" and {len(sel.skipped) - 3} more" if len(sel.skipped) > 3 else ""
        warn(f"skipped {len(sel.skipped)} identity folder(s) with fewer than 2 images: {names}{more}")
    todo, not_computed, found = plan_metrics(req, ds, sel, warn)
    if not todo:
        reasons = "; ".join(f"{m}: {r}" for m, r in not_computed.items())
        raise ConfigError(f"nothing to compute for {ds.root} ({reasons})")
    device = resolve_device(req.device)
    digest = sel.digest()
    out_dir = req.artifacts_dir or (Path(req.workdir) / "metrics" / f"{ds.root.name}-{digest[:12]}")
    per_counts = np.bincount(np.unique(sel.labels, return_inverse=True)[1])
    doc: dict[str, Any] = {
        "dataset": {
            "path": str(ds.root), "identities_total": len(ds.identities), "images_total": ds.num_images,
            "identities": len(sel.identities), "images": len(sel.files),
            "per_identity": {"min": int(per_counts.min()), "max": int(per_counts.max())},
            "selection": {"identities": cfg.identities, "per_identity": cfg.per_identity,
                          "rule": "first N identity folders (sorted) with >= 2 images, first K images (sorted) of each"},
            "skipped": sel.skipped, "manifest": str(ds.manifest) if ds.manifest else None, "digest": digest,
        },
        "fr_model": None,
    }
    timings: dict[str, float] = {}
    artifacts: list[str] = []

    emb = None
    embedder = None
    if "separability" in todo or "consistency" in todo:
        from .models import load_fr_model

        t0 = time.perf_counter()
        embedder = load_fr_model(req.fr_model, device=req.device, dtype=req.dtype, batch_size=req.batch_size)  # type: ignore[arg-type]
        model_sha = sha256_file(embedder.path)
        doc["fr_model"] = {"path": str(embedder.path), "description": embedder.description, "dim": embedder.dim,
                           "sha256": model_sha, "dtype": req.dtype, "flip": False, "input": "112×112 RGB, whole image resized"}
        contexts = None
        if "consistency" in todo:  # read before embedding: a wrong-width file fails fast
            from .metrics.consistency import load_contexts

            contexts = load_contexts(found["contexts"], embedder.dim, embedder.path)
        emb, cache_info = cached_embeddings(sel, embedder, model_sha, req.dtype, Path(req.workdir) / "cache" / "embeddings",
                                            batch_size=req.batch_size, workers=req.workers, progress=progress)
        doc["fr_model"]["embedding_cache"] = cache_info
        timings["embeddings"] = time.perf_counter() - t0

    if "separability" in todo:
        from .metrics.separability import separability

        t0 = time.perf_counter()
        res = separability(emb, sel.labels, device=device, max_impostors=cfg.max_impostors, seed=cfg.seed,
                           block_bytes=None if cfg.block_mib is None else cfg.block_mib << 20, progress=progress)
        doc["separability"] = res.to_dict()
        png = _save_figure(separability_figure(res.histogram, f"{ds.root.name}: genuine vs impostor cosine "
                                               f"({embedder.description})"), out_dir / "separability_hist.png")
        doc["separability"]["histogram_png"] = str(png)
        artifacts.append(str(png))
        timings["separability"] = time.perf_counter() - t0

    if "consistency" in todo:
        from .metrics.consistency import identity_consistency

        rows = [ds.meta.get(f).context_row if ds.meta.get(f) else None for f in sel.files]  # type: ignore[union-attr]
        keep = np.array([r is not None for r in rows])
        idx = np.array([r for r in rows if r is not None], dtype=np.int64)
        bad = idx[(idx < 0) | (idx >= len(contexts))]  # type: ignore[arg-type]
        if len(bad):
            raise InputError(ds.manifest, f"context_row {int(bad[0])} is outside {found['contexts']} ({len(contexts)} rows)")  # type: ignore[arg-type]
        res_c = identity_consistency(emb[keep], np.asarray(contexts[idx]))  # type: ignore[index]
        doc["consistency"] = {**res_c.to_dict(), "contexts": str(found["contexts"]),
                              "fr_model": embedder.description, "images_without_context": int((~keep).sum())}
        png = _save_figure(consistency_figure(res_c.histogram, f"{ds.root.name}: identity consistency ({embedder.description})"),
                           out_dir / "consistency_hist.png")
        doc["consistency"]["histogram_png"] = str(png)
        artifacts.append(str(png))

    if "lpips" in todo:
        from .metrics.diversity import IntraClassLPIPS, choose_identities, load_lpips_vgg

        t0 = time.perf_counter()
        chosen = choose_identities(len(sel.identities), cfg.lpips_identities, cfg.seed)
        model = load_lpips_vgg(found["vgg16"], device)
        metric = IntraClassLPIPS(model, device)
        by_label: dict[int, list[str]] = {}
        for f, lab in zip(sel.files, sel.labels.tolist()):
            by_label.setdefault(lab, []).append(f)
        first = sel.dataset.path(sel.files[0])
        from .data.dataset import image_size

        size = image_size(first)
        advance = progress("LPIPS identities", len(chosen)) if progress else None
        for i in chosen.tolist():
            ident = sel.identities[i]
            paths = [sel.dataset.path(f) for f in by_label[ident.index]]
            images = np.concatenate(list(iter_batches(paths, len(paths), size=size, workers=req.workers)))
            metric.update(images)
            if advance:
                advance(1)
        res_l = metric.compute()
        res_l.chosen = [sel.identities[i].name for i in chosen.tolist()]
        res_l.seed = cfg.seed
        doc["lpips"] = {**res_l.to_dict(), "weights": str(found["vgg16"])}
        timings["lpips"] = time.perf_counter() - t0

    if "prc" in todo or "fid" in todo:
        from .data.dataset import IMAGE_EXTENSIONS
        from .metrics.fidelity import FidelityPlan, compute_fidelity

        t0 = time.perf_counter()
        ref = Path(req.reference)  # type: ignore[arg-type]
        real = sorted(p for p in ref.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                      and not any(part.startswith(".") for part in p.relative_to(ref).parts))
        if not real:
            raise InputError(ref, "no PNG/JPEG images in the reference folder")
        gen = [sel.dataset.path(f) for f in sel.files]
        plan = FidelityPlan(cfg.fid_extractor if "fid" in todo else None, cfg.prc_extractor if "prc" in todo else None,
                            cfg.prc_k, found["extractors"], fid_layer=cfg.fid_layer, prc_layer=cfg.prc_layer)
        bs = min(req.batch_size, 64)
        res_f = compute_fidelity(plan, lambda: iter_batches(gen, bs, size=None, workers=req.workers),
                                 lambda: iter_batches(real, bs, size=None, workers=req.workers), device,
                                 progress=progress, counts=(len(gen), len(real)))
        info = {"reference": str(ref), "generated_images": len(gen), "reference_images": len(real),
                "input_order": "generated = input1, real = input2"}
        if "prc" in res_f:
            doc["prc"] = {**res_f["prc"], **info}
        if "fid" in res_f:
            doc["fid"] = res_f["fid"]
            doc["fid_info"] = {**res_f["fid_info"], **info}
        timings["fidelity"] = time.perf_counter() - t0

    doc["not_computed"] = not_computed
    doc["settings"] = {"seed": cfg.seed, "max_impostors": cfg.max_impostors, "lpips_identities": cfg.lpips_identities,
                       "prc_k": cfg.prc_k, "prc_extractor": cfg.prc_extractor, "fid_extractor": cfg.fid_extractor,
                       "prc_layer": cfg.prc_layer, "fid_layer": cfg.fid_layer,
                       "device": str(device)}
    timings["total"] = time.perf_counter() - t_start
    doc["seconds"] = {k: round(v, 3) for k, v in timings.items()}
    doc["artifacts"] = artifacts
    doc["frbench_version"] = __version__
    return doc


def tracking_metrics(doc: dict[str, Any]) -> dict[str, float]:
    """MLflow metric names (the leaderboard reads separability/eer, separability/fdr, lpips/mean,
    prc/recall and fid)."""
    out: dict[str, float] = {}
    sep = doc.get("separability")
    if sep:
        for k in ("eer", "fmr100", "fmr1000", "fmr100_strict", "fmr1000_strict", "genuine_mean", "genuine_std",
                  "impostor_mean", "impostor_std", "fdr", "d_prime"):
            if sep.get(k) is not None:
                out[f"separability/{k}"] = sep[k]
    if doc.get("consistency"):
        out["consistency/mean"] = doc["consistency"]["mean"]
        out["consistency/std"] = doc["consistency"]["std"]
    if doc.get("lpips"):
        out["lpips/mean"] = doc["lpips"]["mean"]
    if doc.get("prc"):
        for k in ("precision", "recall", "f_score"):
            out[f"prc/{k}"] = doc["prc"][k]
    if doc.get("fid") is not None:
        out["fid"] = doc["fid"]
    return out


def tracking_params(doc: dict[str, Any]) -> dict[str, Any]:
    ds = doc["dataset"]
    params: dict[str, Any] = {
        "dataset": ds["path"], "dataset_digest": ds["digest"],
        # the dataset's own size (the leaderboard's size column); the metric selection separately
        "identities": ds["identities_total"],
        "per_identity": round(ds["images_total"] / max(1, ds["identities_total"])),
        "selected_identities": ds["identities"], "selected_images": ds["images"],
        **{k: v for k, v in doc["settings"].items() if v is not None},
    }
    if doc.get("fr_model"):
        params["fr_model"] = doc["fr_model"]["path"]
        params["fr_model_sha256"] = doc["fr_model"]["sha256"]
    if doc.get("prc") or doc.get("fid_info"):
        params["reference"] = (doc.get("prc") or doc.get("fid_info"))["reference"]
    return params
