"""The stages of ``frbench run``: each turns its config section and its inputs' folders into outputs.

Every function here is a thin adapter over the module that does the work, and the only caller of
it: ``frbench <stage>`` is a one-stage run of the same executor, so both compute the same thing.
Outputs per stage directory: ``identities/`` → identities.npy + .json; ``generate/`` → dataset/;
``align/`` → dataset/; ``train/`` → model.pt, model.onnx, train.json; ``eval/`` → eval.json;
``metrics/`` → metrics.json. A verb writes its images straight into its output folder (``ctx.flat``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError
from .pipeline import Stage, StageContext


def dataset_of(stage_out: Path) -> Path:
    """The image folder a generate/align stage produced (or an external dataset given as is)."""
    return stage_out / "dataset" if (stage_out / "dataset").is_dir() else stage_out


def model_of(stage_out: Path) -> Path:
    """The trained model a train stage produced (or an external model file given as is)."""
    if stage_out.is_file():
        return stage_out
    for name in ("model.pt", "model.onnx"):
        if (stage_out / name).is_file():
            return stage_out / name
    raise InputError(stage_out, "no model.pt or model.onnx in the train stage's output")


# ---------------------------------------------------------------------------------- identities
def run_identities(ctx: StageContext) -> dict[str, Any]:
    from .identities import build_identities, check_identity_count, make_source, write_identities
    from .models.torch_model import resolve_device

    ic, rt = ctx.section, ctx.cfg.runtime
    check_identity_count(ic.n, ic.max_candidates, threshold=ic.max_similarity)
    resolve_device(rt.device)  # before any work: a CUDA request on a machine without CUDA is one line
    src = make_source(ic.source, seed=ic.seed, reference_embeddings=ic.reference_embeddings, pca_components=ic.pca_components,
                      images=ic.images, fr_model=ic.fr_model, file=ic.file, device=rt.device, batch_size=rt.batch_size,
                      workers=rt.workers, progress=ctx.progress)
    ids = build_identities(src, ic.n, ic.max_similarity, negatives=ic.negatives, pool_size=ic.pool_size, device=rt.device,
                           max_candidates=ic.max_candidates, progress=ctx.progress)
    npy, meta = write_identities(ctx.out_dir, ids)
    info, neg = ids.info, ids.info["negatives"]
    return {"params": {"identities_built": len(ids.embeddings), "identity_source": ic.source},
            "metrics": {"identities/count": float(len(ids.embeddings))},
            "counts": info["counts"], "source": info["source"], "max_pairwise_cosine": info["max_pairwise_cosine"],
            "negatives": None if neg is None else {"method": neg["method"], "pool_size": neg["pool_size"],
                                                   "mean_cosine": sum(neg["cosine"]) / len(neg["cosine"])},
            "files": [str(npy), str(meta)]}


def describe_identities(cfg: Any) -> str:
    ic = cfg.identities
    return f"{ic.n} × 512 contexts ({ic.source}, max cos {ic.max_similarity})"


# ------------------------------------------------------------------------------------- generate
def run_generate(ctx: StageContext) -> dict[str, Any]:
    """Generate this process's shard (``options["shard"]``, default all) of the dataset; ``complete``
    says whether every shard's images are now there (the manifest is written by the last one)."""
    from .generate import DTYPES, Shard, generation_device, load_identity_set, run_generation, settings_record
    from .generators.base import available_generators, get_generator
    from .models.torch_model import resolve_device

    gc, rt = ctx.section, ctx.cfg.runtime
    if gc.generator is None:
        raise ConfigError("generate.generator: name a generator (frbench adapters lists them)")
    cls = get_generator(gc.generator)
    if cls is None:
        raise ConfigError(f"generate.generator: unknown generator {gc.generator!r}; registered: {', '.join(available_generators())}")
    if gc.weights is None:
        raise ConfigError("generate.weights: the generator's weights folder is required")
    shard = ctx.options.get("shard") or Shard()
    options = dict(gc.options)
    if gc.steps:
        options["steps"] = gc.steps
    adapter = cls.from_config(options)
    ids = load_identity_set(ctx.inputs["identities"], num=gc.num_identities, negatives=gc.negatives,
                            need_negatives=bool(getattr(adapter, "needs_negatives", False)))
    dev = generation_device(rt.device)
    resolve_device(str(dev))  # before the weights load: a CUDA request without CUDA is one line
    dtype_name = gc.dtype or rt.dtype
    batch_size = gc.batch_size or 64
    adapter.load(gc.weights, device=dev, dtype=DTYPES[dtype_name])
    settings = settings_record(generator=gc.generator, adapter=adapter, weights=gc.weights, ids=ids,
                               per_identity=gc.per_identity, seed=gc.seed, dtype=dtype_name, device=dev)
    ctx.say(f"{gc.generator}: {len(ids.vectors)} identities × {gc.per_identity} images → {ctx.dataset_dir} "
            f"(shard {shard}, batch {batch_size}, {dtype_name}, {dev})")
    res = run_generation(adapter, ids, out=ctx.dataset_dir, per_identity=gc.per_identity, seed=gc.seed, shard=shard,
                         batch_size=batch_size, settings=settings, writers=gc.writers, progress=ctx.progress, log=ctx.say)
    if not res.complete and shard.count == 1:
        raise InputError(ctx.out_dir, "generation finished with images missing")
    return {"complete": bool(res.complete), "shard": str(res.shard), "generated": res.generated, "skipped": res.skipped,
            "seconds": round(res.seconds, 3),
            "params": {"generator": gc.generator, "identities": len(ids.vectors), "per_identity": gc.per_identity},
            "metrics": {"generate/images_per_s": float(res.images_per_s), "generate/images": float(res.generated + res.skipped)}}


def describe_generate(cfg: Any) -> str:
    gc = cfg.generate
    return f"{gc.generator}: {cfg.identities.n if 'identities' in cfg.model_fields_set else '?'} ids × {gc.per_identity} images"


# ---------------------------------------------------------------------------------------- align
def run_align(ctx: StageContext) -> dict[str, Any]:
    from .align import align_folder, load_detector

    ac, rt = ctx.section, ctx.cfg.runtime
    src = dataset_of(ctx.inputs["generate"])
    det = load_detector(ac.detector, kind=ac.detector_kind, det_size=ac.det_size, det_thresh=ac.det_thresh,
                        device=rt.device, min_face_size=ac.min_face_size)
    summary = align_folder(src, ctx.dataset_dir, det, on_failure=ac.on_failure, pick=ac.pick, template=ac.template,
                           workers=rt.workers, progress=ctx.progress)
    counts = summary.get("images", {})
    return {"metrics": {f"align/{k}": float(v) for k, v in counts.items() if isinstance(v, (int, float))},
            "params": {"align_detector": ac.detector},
            "images": summary["images"], "identities": summary["identities"],
            "detector_name": det.name if det is not None else None}


# ---------------------------------------------------------------------------------------- train
def run_train(ctx: StageContext) -> dict[str, Any]:
    """Train the recognizer; ``options``: ``resume`` (auto | require | restart) and ``max_steps``."""
    from .recipes import load_recipe
    from .train import TrainOptions, train

    tc, rt = ctx.section, ctx.cfg.runtime
    rec, rec_path = load_recipe(tc.recipe, [(tc.overrides, "train.overrides")])
    opts = TrainOptions(
        output=ctx.out_dir, cache_dir=Path(tc.cache_dir or ctx.workdir / "cache" / "train-images"),
        device=tc.device or rt.device, dtype=tc.dtype, compile=tc.compile, channels_last=tc.channels_last,
        seed=ctx.cfg.seed, deterministic=tc.deterministic, max_steps=ctx.options.get("max_steps"),
        checkpoint_every=tc.checkpoint_every, log_every=tc.log_every,
        workers=rt.workers, prefetch=tc.prefetch, strict_images=tc.strict_images, resume=ctx.options.get("resume", "auto"),
        identities=tc.identities, per_identity=tc.per_identity,
        monitor_dir=tc.monitor.data_dir, monitor_benchmarks=tc.monitor.benchmarks, monitor_every=tc.monitor.every_epochs,
    )
    summary = train(dataset_of(ctx.inputs["align"]), rec, opts, run=ctx.log if getattr(ctx.log, "active", False) else None,
                    progress=ctx.progress, say=ctx.say, warn=ctx.warn, recipe_path=rec_path)
    keep = ("final_loss", "samples_per_s", "steps", "epochs_completed", "images", "identities")
    metrics = {f"train/{k}": float(summary[k]) for k in keep if isinstance(summary.get(k), (int, float))}
    return {"metrics": metrics, "params": {"recipe": rec.name}, "train": summary}


def describe_train(cfg: Any) -> str:
    return f"recipe {cfg.train.recipe}"


# ----------------------------------------------------------------------------------------- eval
def run_eval_stage(ctx: StageContext) -> dict[str, Any]:
    from .evaluate import eval_params, run_eval, select_benchmarks, tracking_metrics
    from .io import write_json_atomic
    from .models import load_fr_model

    ev, rt = ctx.section, ctx.cfg.runtime
    if ev.data_dir is None:
        raise ConfigError("eval.data_dir: the folder of benchmark files is required for the eval stage")
    model_path = model_of(ctx.inputs["train"])  # the trained model, or inputs.model / --model
    selection = select_benchmarks(ev.data_dir, ev.benchmarks, ev.groups)
    embedder = load_fr_model(model_path, device=rt.device, dtype=rt.dtype, batch_size=rt.batch_size)
    if selection.absent:
        ctx.warn(f"not in {ev.data_dir}: {', '.join(selection.absent)} (the five-benchmark average needs all five)")
    ctx.say(f"model: {embedder.description}, {embedder.dim}-d; benchmarks: {', '.join(b.name for b in selection.benchmarks)}")
    doc = run_eval(embedder, selection, flip=ev.flip, batch_size=rt.batch_size, progress=ctx.progress, workdir=ctx.workdir,
                   bootstrap=ev.bootstrap, bootstrap_seed=ev.bootstrap_seed)
    write_json_atomic(ctx.out_dir / "eval.json", doc)
    arts = [ctx.out_dir / "eval.json"]
    for res in doc["benchmarks"].values():
        arts += [Path(a) for a in res.get("artifacts", [])]
    return {"metrics": tracking_metrics(selection, doc), "artifacts": [str(a) for a in arts],
            "params": eval_params(model_path, ev.data_dir, selection, embedder, flip=ev.flip, batch_size=rt.batch_size,
                                  dtype=rt.dtype)}


def describe_eval(cfg: Any) -> str:
    ev = cfg.eval
    return f"{', '.join(ev.benchmarks) if ev.benchmarks else 'all present'} in {ev.data_dir}"


# -------------------------------------------------------------------------------------- metrics
def run_metrics_stage(ctx: StageContext) -> dict[str, Any]:
    from .io import write_json_atomic
    from .metrics_stage import METRICS, MetricsRequest, run_metrics, tracking_metrics, tracking_params

    mc, rt = ctx.section, ctx.cfg.runtime
    # separability and consistency are measured with the protocol's fixed FR model (AdaptDiff Table 3:
    # ElasticFace-Cos R100), never with the recognizer this run trained on the data being judged
    if mc.fr_model is None and not mc.compute:  # a named metric that needs it says so itself
        raise ConfigError("metrics.fr_model: set the FR model that separability and identity consistency are measured "
                          "with (--fr-model; the papers use a fixed strong model, e.g. ElasticFace-Cos R100; the "
                          "recognizer this run trains is not used for them), or name the metrics to compute "
                          "(metrics.compute, or --lpips/--prc/--fid)")
    req = MetricsRequest(dataset=dataset_of(ctx.inputs["align"]), cfg=mc,
                         fr_model=None if mc.fr_model is None else Path(mc.fr_model), reference=mc.reference,
                         asked={k: k in mc.compute for k in METRICS},
                         device=rt.device, dtype=rt.dtype, batch_size=rt.batch_size, workers=rt.workers,
                         workdir=ctx.workdir, artifacts_dir=ctx.out_dir)
    doc = run_metrics(req, progress=ctx.progress, warn=ctx.warn)
    write_json_atomic(ctx.out_dir / "metrics.json", doc)
    return {"metrics": tracking_metrics(doc), "params": tracking_params(doc),
            "artifacts": [str(ctx.out_dir / "metrics.json"), *map(str, doc.get("artifacts", []))]}


def apply_demo(cfg: Any, workdir: Path, create: bool = True) -> Any:
    """Fill the demo config's missing weights and benchmark folder with tiny random artefacts."""
    from .demo import prepare_demo

    assets = prepare_demo(workdir, create=create)
    update: dict[str, Any] = {}
    if cfg.generate.weights is None:
        update["generate"] = cfg.generate.model_copy(update={"weights": assets.generator})
    if cfg.eval.data_dir is None:
        update["eval"] = cfg.eval.model_copy(update={"data_dir": assets.benchmarks})
    if cfg.metrics.fr_model is None:
        update["metrics"] = cfg.metrics.model_copy(update={"fr_model": assets.fr_model})
    out = cfg.model_copy(update=update)
    out.__pydantic_fields_set__ = set(cfg.model_fields_set)  # keep "which sections were configured"
    return out


# ------------------------------------------------------------------- model files hashed by content
def reads_identities(cfg: Any) -> dict[str, Any]:
    ic = cfg.identities
    return {"fr_model": ic.fr_model, "reference_embeddings": ic.reference_embeddings, "file": ic.file}


def reads_generate(cfg: Any) -> dict[str, Any]:
    base = cfg.generate.options.get("base")  # the SD1.5 folder under Arc2Face / fused attention
    return {"weights": cfg.generate.weights, "base": base if isinstance(base, (str, Path)) else None}


def reads_align(cfg: Any) -> dict[str, Any]:
    det = str(cfg.align.detector)
    return {"detector": None if det.lower() in ("none", "mtcnn") else det}  # MTCNN's weights: the package version


def reads_eval(cfg: Any) -> dict[str, Any]:
    """The benchmark packs scored (content), and the IJB protocol files (not the 470k crops)."""
    ev = cfg.eval
    if ev.data_dir is None:
        return {}
    d = Path(ev.data_dir)
    names = ev.benchmarks or sorted(p.stem for p in d.glob("*.bin"))
    out: dict[str, Any] = {f"{n}.bin": d / f"{n}.bin" for n in names if (d / f"{n}.bin").is_file()}
    for group, files in ev.groups.items():
        out.update({f"{group}/{f}": d / f for f in files})
    for ijb in ("IJBC", "IJBB"):
        if (d / ijb / "meta").is_dir():
            out[f"{ijb}/meta"] = d / ijb / "meta"
    return out


def reads_metrics(cfg: Any) -> dict[str, Any]:
    mc = cfg.metrics
    return {"fr_model": mc.fr_model, "consistency_fr_model": mc.consistency_fr_model,
            "training_embeddings": mc.training_embeddings, "training_labels": mc.training_labels}


STAGES: dict[str, Stage] = {
    "identities": Stage("identities", (), run_identities, describe=describe_identities, reads=reads_identities),
    "generate": Stage("generate", ("identities",), run_generate, describe=describe_generate, reads=reads_generate),
    "align": Stage("align", ("generate",), run_align, describe=lambda cfg: f"detector {cfg.align.detector}",
                   reads=reads_align),
    "train": Stage("train", ("align",), run_train, describe=describe_train),
    "eval": Stage("eval", ("train",), run_eval_stage, describe=describe_eval, reads=reads_eval),
    "metrics": Stage("metrics", ("align",), run_metrics_stage,
                     describe=lambda cfg: f"{cfg.metrics.identities} ids × {cfg.metrics.per_identity} images",
                     reads=reads_metrics),
}
