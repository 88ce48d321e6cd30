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
from .data.dataset import (CONTEXT_FILE_NAMES, ImageFolderDataset, Selection, generated_contexts, iter_batches,
                           open_dataset, select)
from .embed import Embedder
from .errors import ConfigError, FrBenchError, InputError
from .io import atomic_path, sha256_file, write_json_atomic

METRICS = ("separability", "consistency", "lpips", "prc", "fid", "leakage")
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
    recorded = generated_contexts(ds.root)  # frbench generate records where its contexts came from
    if recorded is not None:
        return recorded
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
    # the audit needs an input most runs do not have: it runs when asked or when a training set is given
    wanted["leakage"] = bool(req.asked.get("leakage") or (wanted["leakage"] and (cfg.training_images or cfg.training_embeddings)))
    if wanted["separability"]:
        need("separability", None if req.fr_model else "no FR model (pass --fr-model PATH)")
    if wanted["consistency"]:
        problem = None
        if not req.fr_model and not cfg.consistency_fr_model:
            problem = "no FR model (pass --fr-model PATH, or --consistency-fr-model for the contexts' own encoder)"
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
    if wanted["leakage"]:
        problem = None
        if not req.fr_model:
            problem = "no FR model (pass --fr-model PATH)"
        elif cfg.training_images is None and cfg.training_embeddings is None:
            problem = "no training set (pass --training-images DIR or --training-embeddings F.npy --training-labels F.npy)"
        elif cfg.training_images is not None and cfg.training_embeddings is not None:
            raise ConfigError("leakage: give the training set as images or as embeddings, not both")
        elif cfg.training_embeddings is not None and cfg.training_labels is None:
            raise ConfigError("--training-embeddings needs --training-labels (one identity label per row)")
        elif cfg.training_images is not None and not Path(cfg.training_images).is_dir():
            raise InputError(cfg.training_images, "training image folder not found")
        need("leakage", problem)
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


def _training_embeddings(cfg: MetricsConfig, embedder: Embedder, model_sha: str, req: MetricsRequest,
                         progress: Optional[ProgressFactory]) -> tuple[np.ndarray, np.ndarray, Optional[dict[str, Path]]]:
    """The leakage audit's training side: (embeddings, identity labels, first image path per identity or None)."""
    if cfg.training_images is not None:
        tds = open_dataset(cfg.training_images)
        tsel = select(tds, None, None, min_images=1)
        if not tsel.files:
            raise InputError(tds.root, "no images in the training image folder")
        emb, _ = cached_embeddings(tsel, embedder, model_sha, req.dtype, Path(req.workdir) / "cache" / "embeddings",
                                   batch_size=req.batch_size, workers=req.workers, progress=progress)
        name_of = {i.index: i.name for i in tsel.identities}
        labels = np.array([name_of[int(l)] for l in tsel.labels])
        first: dict[str, Path] = {}
        for f, n in zip(tsel.files, labels.tolist()):
            first.setdefault(n, tsel.dataset.path(f))
        return emb, labels, first
    emb = _load_plain_npy(cfg.training_embeddings, "training embeddings")  # type: ignore[arg-type]
    labels = _load_plain_npy(cfg.training_labels, "training labels")  # type: ignore[arg-type]
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
        raise InputError(cfg.training_embeddings, f"training embeddings must be a 2-D float array, got shape {emb.shape} dtype {emb.dtype}")
    if emb.shape[1] != embedder.dim:
        raise InputError(cfg.training_embeddings, f"training embeddings are {emb.shape[1]}-d but the FR model {embedder.path} "
                                                  f"gives {embedder.dim}-d; embed the training set with the same model")
    if labels.ndim != 1 or len(labels) != len(emb):
        raise InputError(cfg.training_labels, f"expected {len(emb)} labels (one per embedding row), got shape {labels.shape}")
    if not np.isfinite(emb).all():
        raise InputError(cfg.training_embeddings, "training embeddings hold non-finite values")
    return np.asarray(emb, np.float32), labels.astype(str), None


def _load_plain_npy(path: Path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} file not found")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise InputError(path, f"{what} hold pickled objects; frbench reads plain numeric or string .npy only (unsafe pickle refused)") from None
        raise InputError(path, f"not a readable .npy array ({str(err).splitlines()[0][:120]})") from None
    except OSError as err:
        raise InputError(path, f"cannot read {what} ({err})") from None


# -------------------------------------------------------------------------------------- plots
def _save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)  # pyplot keeps every open figure alive: a long process would accumulate them
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


def leakage_histogram(plot: dict[str, Any], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    h = plot["impostor_hist"]
    width = np.diff(h["edges"])
    dens = h["counts"] / max(h["counts"].sum(), 1) / width
    ax.stairs(dens, h["edges"], fill=True, alpha=0.4, color="tab:gray", label=f"training: distinct identities ({int(h['counts'].sum()):,} pairs)")
    cos = plot["cos"]
    counts, edges = np.histogram(cos, bins=h["edges"])
    ax.stairs(counts / max(counts.sum(), 1) / width, edges, fill=True, alpha=0.5, color="tab:red",
              label=f"synthetic → nearest training identity ({len(cos):,})")
    ax.axvline(plot["threshold"], color="k", linestyle="--", linewidth=1, label=f"threshold {plot['threshold']:.3f}")
    ax.set_xlabel("cosine of identity means")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def leakage_grid(plot: dict[str, Any], synthetic_first: dict[str, Path], training_first: Optional[dict[str, Path]]) -> Any:
    """The closest pairs, one row each: a synthetic image | a training image of its nearest identity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data.dataset import read_bgr

    top = plot["top"]
    fig, axes = plt.subplots(len(top), 2, figsize=(3.2, 1.6 * len(top)), squeeze=False)
    for r, (si, ti) in enumerate(top):
        s_name, t_name = str(plot["synthetic_ids"][si]), str(plot["training_ids"][ti])
        cos = float(plot["cos"][si])
        flag = " FLAGGED" if cos > plot["threshold"] else ""
        for c, (name, path) in enumerate(((s_name, synthetic_first.get(s_name)),
                                          (t_name, training_first.get(t_name) if training_first else None))):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if path is not None:
                ax.imshow(read_bgr(path)[:, :, ::-1])
            else:
                ax.text(0.5, 0.5, "embeddings only", ha="center", va="center", fontsize=6)
            ax.set_title(f"{'synthetic' if c == 0 else 'training'} {name}" + (f"\ncos {cos:.3f}{flag}" if c == 0 else ""), fontsize=6)
    fig.tight_layout()
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
    contexts = None
    # identity consistency is measured in the space the contexts live in: their own encoder when one is
    # given (metrics.consistency_fr_model), else the separability model
    own_encoder = "consistency" in todo and cfg.consistency_fr_model is not None
    if "separability" in todo or "leakage" in todo or ("consistency" in todo and not own_encoder):
        from .models import load_fr_model

        embedder = load_fr_model(req.fr_model, device=req.device, dtype=req.dtype, batch_size=req.batch_size)  # type: ignore[arg-type]
        model_sha = sha256_file(embedder.path)
        doc["fr_model"] = {"path": str(embedder.path), "description": embedder.description, "dim": embedder.dim,
                           "sha256": model_sha, "dtype": req.dtype, "flip": False, "input": "112×112 RGB, whole image resized",
                           "name": cfg.fr_model_name}
    c_embedder = None
    if "consistency" in todo:  # read before embedding: a wrong-width file fails fast
        from .metrics.consistency import load_contexts
        from .models import load_fr_model

        c_embedder = (load_fr_model(cfg.consistency_fr_model, device=req.device, dtype=req.dtype, batch_size=req.batch_size)
                      if own_encoder else embedder)
        try:
            contexts = load_contexts(found["contexts"], c_embedder.dim, c_embedder.path)  # type: ignore[union-attr]
        except InputError as err:
            if req.asked.get("consistency"):
                raise
            # not asked for: contexts from another FR model's space make the metric undefined, not the run wrong
            warn(f"identity consistency skipped: {err}")
            todo = [m for m in todo if m != "consistency"]
            not_computed["consistency"] = str(err)
    if embedder is not None:
        t0 = time.perf_counter()
        training = _training_embeddings(cfg, embedder, model_sha, req, progress) if "leakage" in todo else None
        emb, cache_info = cached_embeddings(sel, embedder, model_sha, req.dtype, Path(req.workdir) / "cache" / "embeddings",
                                            batch_size=req.batch_size, workers=req.workers, progress=progress)
        doc["fr_model"]["embedding_cache"] = cache_info
        timings["embeddings"] = time.perf_counter() - t0
    c_emb, c_sha = emb, (model_sha if embedder is not None else None)
    if "consistency" in todo and own_encoder:
        c_sha = sha256_file(c_embedder.path)  # type: ignore[union-attr]
        c_emb, _ = cached_embeddings(sel, c_embedder, c_sha, req.dtype, Path(req.workdir) / "cache" / "embeddings",
                                     batch_size=req.batch_size, workers=req.workers, progress=progress)

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
        if cfg.bootstrap:
            from .metrics.bootstrap import bootstrap_scores, score_set

            scores = score_set(emb, sel.labels, max_impostors=cfg.bootstrap_max_impostors, seed=cfg.seed)
            adv = progress("bootstrap", cfg.bootstrap) if progress else None
            cis = bootstrap_scores(scores, cfg.bootstrap, cfg.seed, progress=adv)
            names = {"eer": "eer", "fmr100": "fmr100_strict", "fmr1000": "fmr1000_strict", "fdr": "fdr",
                     "genuine_mean": "genuine_mean", "genuine_std": "genuine_std", "impostor_mean": "impostor_mean",
                     "impostor_std": "impostor_std"}
            for k, key in names.items():
                doc["separability"][f"{key}_ci95"] = cis[k]
            doc["separability"]["bootstrap"] = {
                "replicates": cfg.bootstrap, "seed": cfg.seed, "unit": "identities (resampled with replacement)",
                "impostor_pairs_used": int(len(scores.impostor)), "impostor_pairs_total": scores.impostor_total,
                "impostor_sampled": scores.impostor_sampled,
                "rule": "percentile interval; replicate EER/FMR by the strict rule (accept s >= t)"}
        timings["separability"] = time.perf_counter() - t0

    if "consistency" in todo:
        from .metrics.consistency import identity_consistency

        rows = [ds.meta.get(f).context_row if ds.meta.get(f) else None for f in sel.files]  # type: ignore[union-attr]
        keep = np.array([r is not None for r in rows])
        idx = np.array([r for r in rows if r is not None], dtype=np.int64)
        bad = idx[(idx < 0) | (idx >= len(contexts))]  # type: ignore[arg-type]
        if len(bad):
            raise InputError(ds.manifest, f"context_row {int(bad[0])} is outside {found['contexts']} ({len(contexts)} rows)")  # type: ignore[arg-type]
        res_c = identity_consistency(c_emb[keep], np.asarray(contexts[idx]))  # type: ignore[index]
        doc["consistency"] = {**res_c.to_dict(), "contexts": str(found["contexts"]),
                              "fr_model": c_embedder.description, "fr_model_path": str(c_embedder.path),  # type: ignore[union-attr]
                              "fr_model_sha256": c_sha,
                              "images_without_context": int((~keep).sum())}
        png = _save_figure(consistency_figure(res_c.histogram, f"{ds.root.name}: identity consistency ({c_embedder.description})"),  # type: ignore[union-attr]
                           out_dir / "consistency_hist.png")
        doc["consistency"]["histogram_png"] = str(png)
        artifacts.append(str(png))
        if cfg.bootstrap:
            from .metrics.bootstrap import weighted_group_mean_interval

            values = res_c.histogram["values"]  # type: ignore[index]
            _, grp = np.unique(sel.labels[keep], return_inverse=True)
            doc["consistency"]["mean_ci95"] = weighted_group_mean_interval(
                np.bincount(grp, weights=values), np.bincount(grp), cfg.bootstrap, cfg.seed)

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
        if cfg.bootstrap:
            from .metrics.bootstrap import weighted_group_mean_interval

            per = [v for v in metric.values if len(v)]
            doc["lpips"]["mean_ci95"] = weighted_group_mean_interval(
                np.array([v.sum() for v in per]), np.array([len(v) for v in per]), cfg.bootstrap, cfg.seed)
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

    if "leakage" in todo:
        from .metrics.leakage import leakage_audit

        t0 = time.perf_counter()
        name_of = {i.index: i.name for i in sel.identities}
        syn_names = np.array([name_of[int(l)] for l in sel.labels])
        t_emb, t_labels, t_paths = training  # type: ignore[misc]
        audit = leakage_audit(emb, syn_names, t_emb, t_labels, fmr=cfg.leakage_fmr, threshold=cfg.leakage_threshold,
                              per_image=cfg.leakage_images, top_k=cfg.leakage_top_k, device=device, progress=progress)
        plot = audit.pop("_plot")
        audit["training"] = {"images": str(cfg.training_images) if cfg.training_images else None,
                             "embeddings": str(cfg.training_embeddings) if cfg.training_embeddings else None,
                             "labels": str(cfg.training_labels) if cfg.training_labels else None,
                             "rows": int(len(t_emb))}
        audit["fr_model"] = embedder.description  # type: ignore[union-attr]
        first_syn = {}
        for f, n in zip(sel.files, syn_names.tolist()):
            first_syn.setdefault(n, sel.dataset.path(f))
        hist_png = _save_figure(leakage_histogram(plot, f"{ds.root.name}: nearest training identity ({embedder.description})"),  # type: ignore[union-attr]
                                out_dir / "leakage_hist.png")
        grid_png = _save_figure(leakage_grid(plot, first_syn, t_paths), out_dir / "leakage_pairs.png")
        audit["histogram_png"], audit["pairs_png"] = str(hist_png), str(grid_png)
        artifacts += [str(hist_png), str(grid_png)]
        doc["leakage"] = audit
        timings["leakage"] = time.perf_counter() - t0

    doc["not_computed"] = not_computed
    doc["settings"] = {"seed": cfg.seed, "max_impostors": cfg.max_impostors, "lpips_identities": cfg.lpips_identities,
                       "bootstrap": cfg.bootstrap, "leakage_fmr": cfg.leakage_fmr if "leakage" in todo else None,
                       "leakage_threshold": cfg.leakage_threshold if "leakage" in todo else None,
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
    if doc.get("leakage"):
        lk = doc["leakage"]
        out["leakage/flagged_share"] = lk["flagged_share"]
        out["leakage/flagged"] = float(lk["flagged"])
        out["leakage/threshold"] = lk["threshold"]
        out["leakage/nearest_identity_cosine_mean"] = lk["nearest_identity_cosine"]["mean"]
        if lk.get("per_image"):
            out["leakage/nearest_image_cosine_mean"] = lk["per_image"]["nearest_cosine_mean"]
    for section, keys in (("separability", ("eer", "fmr100_strict", "fmr1000_strict", "fdr")), ("consistency", ("mean",)), ("lpips", ("mean",))):
        block = doc.get(section) or {}
        for k in keys:  # interval bounds, for the leaderboard's ± column
            ci = block.get(f"{k}_ci95")
            if isinstance(ci, list) and all(np.isfinite(ci)):
                out[f"{section}/{k}_ci95_lo"], out[f"{section}/{k}_ci95_hi"] = float(ci[0]), float(ci[1])
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
        if doc["fr_model"].get("name"):
            params["fr_model_name"] = doc["fr_model"]["name"]
    if doc.get("consistency"):
        params["consistency_fr_model"] = doc["consistency"]["fr_model_path"]
        params["consistency_fr_model_sha256"] = doc["consistency"]["fr_model_sha256"]
    if doc.get("prc") or doc.get("fid_info"):
        params["reference"] = (doc.get("prc") or doc.get("fid_info"))["reference"]
    return params
