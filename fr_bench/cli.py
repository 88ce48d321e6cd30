"""The ``frbench`` command line: parse options, build the config, call the executor, print. Nothing else."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from . import __version__
from .errors import FrBenchError
from .io import check_writable
from .progress import console
from .report import print_align_table, print_eval_table, print_metrics_table, print_plan, print_run_results, print_train_summary

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False)


class FrBenchGroup(click.Group):
    """Turns user errors into one line and a non-zero exit; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except FrBenchError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            console.print("[red]interrupted[/red]")
            ctx.exit(130)
        except Exception as err:  # unexpected: still one line unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            where = traceback.extract_tb(err.__traceback__)[-1]
            console.print(
                f"[red]error:[/red] unexpected {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                f"(at {Path(where.filename).name}:{where.lineno}; rerun with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            ctx.exit(1)


#: options every verb takes, before or after the verb: name → (declaration, help, is a flag)
GLOBAL_OPTIONS: dict[str, tuple[str, str, bool]] = {
    "debug": ("--debug", "Show full tracebacks on errors.", True),
    "workdir": ("--workdir", "Work directory (default ./frbench-work).", False),
    "tracking_uri": ("--tracking-uri", "MLflow tracking URI (default: sqlite under the workdir, or $MLFLOW_TRACKING_URI).", False),
    "no_track": ("--no-track", "Do not log to MLflow.", True),
    "experiment": ("--experiment", "MLflow experiment name (default frbench).", False),
}


def _store_global(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value not in (None, False):
        ctx.ensure_object(dict)
        ctx.obj[param.name] = value  # the context object is shared by the group and the verb
    return value


def _global_option(name: str, *, expose: bool) -> click.Option:
    decl, help_text, flag = GLOBAL_OPTIONS[name]
    kwargs: dict[str, Any] = {"is_flag": True} if flag else {"default": None}
    if name == "workdir":
        kwargs["type"] = click.Path(path_type=Path)
    return click.Option([decl, name], help=help_text, callback=_store_global, expose_value=expose, is_eager=name == "debug", **kwargs)


class FrBenchCommand(click.Command):
    """A verb: takes the global options after its name too (``frbench metrics DS --workdir X``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        have = {p.name for p in self.params} | {o for p in self.params for o in getattr(p, "opts", [])}
        for name, (decl, _, _) in GLOBAL_OPTIONS.items():
            if name not in have and decl not in have:
                self.params.append(_global_option(name, expose=False))


FrBenchGroup.command_class = FrBenchCommand


@click.group(cls=FrBenchGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="frbench")
@click.pass_context
def cli(ctx: click.Context, **_: Any) -> None:
    """frbench: benchmark synthetic face-recognition datasets end to end."""
    ctx.ensure_object(dict)


for _name in GLOBAL_OPTIONS:
    cli.params.append(_global_option(_name, expose=True))


def tracking_options(fn: Any) -> Any:
    fn = click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite under the workdir, or $MLFLOW_TRACKING_URI).")(fn)
    fn = click.option("--no-track", is_flag=True, help="Do not log to MLflow.")(fn)
    fn = click.option("--experiment", default=None, help="MLflow experiment name (default frbench).")(fn)
    return fn


def _validated(section: Any, update: dict[str, Any]) -> Any:
    """``section`` with command-line values applied and validated like the config file's."""
    from .config import validate

    return validate({**section.model_dump(exclude_unset=True), **update}, type(section), "command line")


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _make_tracker(ctx: click.Context, cfg: Any, tracking_uri: str | None, no_track: bool, experiment: str | None) -> Any:
    from .tracking import Tracker

    workdir = ctx.obj.get("workdir") or cfg.workdir
    return Tracker(
        workdir,
        uri=tracking_uri or ctx.obj.get("tracking_uri") or cfg.tracking.uri,
        enabled=cfg.tracking.enabled and not (no_track or ctx.obj.get("no_track")),
        experiment=experiment or ctx.obj.get("experiment") or cfg.tracking.experiment,
        warn=warn,
    )


def _with(cfg: Any, **sections: dict[str, Any]) -> Any:
    """``cfg`` with command-line values (None = not given) applied to its sections and validated."""
    update = {}
    for name, values in sections.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            update[name] = _validated(getattr(cfg, name), given)
    return cfg.model_copy(update=update) if update else cfg


def _run_stage(ctx: click.Context, cfg: Any, stage: str, *, inputs: dict[str, Path], out: Path | None = None,
               root: Path | None = None, run_name: str = "", tracking: tuple[Any, ...] | None = None,
               options: dict[str, Any] | None = None, lock_suffix: str = "", quiet: bool = False) -> tuple[dict[str, Any], Path]:
    """A verb is a one-stage run of the executor: the same stage function, DONE.json provenance, MLflow
    path and error path as ``frbench run``. Returns the stage's summary and its output folder."""
    from .pipeline import execute, verb_plan
    from .progress import progress_factory
    from .stages import STAGES

    workdir = Path(ctx.obj.get("workdir") or cfg.workdir)
    plan = verb_plan(cfg, STAGES[stage], out, inputs, workdir=workdir, root=root, lock_suffix=lock_suffix)
    check_writable(plan.run_dir, directory=True)  # eval/metrics write under the workdir: checked before work too
    tracker = None if tracking is None else _make_tracker(ctx, cfg, *tracking)
    say = (lambda msg: None) if quiet else (lambda msg: console.print(msg, highlight=False, soft_wrap=True))
    with progress_factory() as progress:
        results = execute(plan, cfg, workdir, tracker=tracker, progress=None if quiet else progress,
                          warn=(lambda msg: None) if quiet else warn, say=say, options=options, run_name=run_name)
    return results[stage], plan.stages[0].dir.path


# --------------------------------------------------------------------------------------------- eval
@cli.command("eval", context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML config (eval/runtime/tracking sections).")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="ONNX file or arcface_torch iresnet state dict.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Folder with <name>.bin files (and IJBC/, IJBB/).")
@click.option("--benchmarks", default=None, help="Comma-separated names, e.g. lfw,cfp_fp (default: all present).")
@click.option("--batch-size", type=int, default=None, help="Embedding batch size.")
@click.option("--no-flip", is_flag=True, help="Embed originals only (the reference sums original+mirror).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None, help="Autocast dtype for torch models.")
@click.option("--group", "group_specs", multiple=True, metavar="NAME=A.bin,B.bin,…", help="Declare a group benchmark (one .bin per demographic group; repeatable), e.g. bupt=African.bin,Asian.bin,….")
@click.option("--bootstrap", type=click.IntRange(min=10), default=None, help="95% interval of each 10-fold mean from N fold resamples.")
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write the results JSON here.")
@tracking_options
@click.pass_context
def eval_cmd(ctx: click.Context, config_path: Path | None, model: Path | None, data_dir: Path | None, benchmarks: str | None,
             batch_size: int | None, no_flip: bool, device: str | None, dtype: str | None, group_specs: tuple[str, ...],
             bootstrap: int | None, output: Path | None, tracking_uri: str | None, no_track: bool, experiment: str | None) -> None:
    """Score an FR model on LFW, CFP-FP, CPLFW, AgeDB-30, CALFW (10-fold) and IJB-B/C."""
    import json

    from .config import load_config
    from .errors import ConfigError
    from .io import write_json_atomic

    cfg = load_config(config_path)
    ev = cfg.eval
    model = model or ev.model
    if model is None:
        raise ConfigError("no model given: pass --model PATH (or eval.model in the config)")
    if (data_dir or ev.data_dir) is None:
        raise ConfigError("no benchmark folder given: pass --data-dir DIR (or eval.data_dir in the config)")
    output = output or ev.output
    if output is not None:
        check_writable(output)
    groups = dict(ev.groups)
    for spec in group_specs:
        gname, sep, files = spec.partition("=")
        if not sep or not gname.strip() or not files.strip():
            raise ConfigError(f"--group {spec}: expected NAME=FILE1.bin,FILE2.bin,…")
        groups[gname.strip()] = _split(files) or []
    cfg = _with(cfg, eval={"model": model, "data_dir": data_dir, "benchmarks": _split(benchmarks), "flip": False if no_flip else None,
                           "groups": groups or None, "bootstrap": bootstrap},
                runtime={"device": device, "dtype": dtype, "batch_size": batch_size})
    summary, out_dir = _run_stage(ctx, cfg, "eval", inputs={"train": Path(model)},
                                  root=Path(ctx.obj.get("workdir") or cfg.workdir) / "runs" / "eval",
                                  run_name=f"eval {Path(model).name}", tracking=(tracking_uri, no_track, experiment))
    doc = json.loads((out_dir / "eval.json").read_text())
    print_eval_table(doc)
    if output is not None:
        write_json_atomic(output, doc)
        console.print(f"wrote {output}", highlight=False)


# ---------------------------------------------------------------------------------- more commands
# (each later stage adds its command at its own marker)

# ------------------------------------------------------------------------------------ identities
@cli.command("identities", context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML config (identities/runtime sections).")
@click.option("--source", type=click.Choice(["uniform", "pca", "embed", "file"]), default=None, help="Where candidates come from (default uniform).")
@click.option("-n", "--n-identities", "n", type=click.IntRange(min=1), default=None, help="Identities to keep (all of a file/embed source if omitted).")
@click.option("--max-similarity", type=float, default=None, help="Keep a candidate only if its max cosine to those kept is < this (default 0.3).")
@click.option("--no-filter", is_flag=True, help="Keep every candidate (IDiff-Face 'synthetic uniform').")
@click.option("--seed", type=int, default=None, help="Seed of the uniform/pca draw (default 0).")
@click.option("--max-candidates", type=click.IntRange(min=1), default=None, help="Give up after this many candidates (default 100·n + 10000).")
@click.option("--reference-embeddings", type=click.Path(path_type=Path), default=None, help="pca: .npy of N×512 reference embeddings.")
@click.option("--pca-components", type=click.IntRange(min=1), default=None, help="pca: principal components kept (default all).")
@click.option("--images", type=click.Path(path_type=Path), default=None, help="embed: folder of images (any size; searched recursively).")
@click.option("--fr-model", type=click.Path(path_type=Path), default=None, help="embed: ONNX or iresnet state dict giving 512-d embeddings.")
@click.option("--file", "file_", type=click.Path(path_type=Path), default=None, help="file: .npy array or IDiff-Face torch-saved dict.")
@click.option("--negatives", type=click.Choice(["far", "mid", "rand"]), default=None, help="Choose a negative per identity (NegFaceDiff/AdaptDiff).")
@click.option("--pool-size", type=click.IntRange(min=2), default=None, help="Negatives come from the first N identities (default all).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder for identities.npy + identities.json.")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (filter, negatives, FR model).")
@click.option("--batch-size", type=int, default=None, help="embed: FR model batch size.")
@click.pass_context
def identities_cmd(ctx: click.Context, config_path: Path | None, source: str | None, n: int | None,
                   max_similarity: float | None, no_filter: bool, seed: int | None, max_candidates: int | None,
                   reference_embeddings: Path | None, pca_components: int | None, images: Path | None,
                   fr_model: Path | None, file_: Path | None, negatives: str | None, pool_size: int | None,
                   out: Path | None, device: str | None, batch_size: int | None) -> None:
    """Sample identity contexts (N×512 unit vectors), filter by max cosine, pick negatives."""
    from .config import load_config
    from .errors import ConfigError

    cfg = load_config(config_path)
    out = out or cfg.identities.out
    if out is None:
        raise ConfigError("no output folder given: pass --out DIR (or identities.out in the config)")
    check_writable(out, directory=True)
    cfg = _with(cfg, identities={"source": source, "n": n, "max_similarity": max_similarity, "seed": seed,
                                 "max_candidates": max_candidates, "reference_embeddings": reference_embeddings,
                                 "pca_components": pca_components, "images": images, "fr_model": fr_model, "file": file_,
                                 "negatives": negatives, "pool_size": pool_size},
                runtime={"device": device, "batch_size": batch_size})
    if no_filter:
        cfg = cfg.model_copy(update={"identities": cfg.identities.model_copy(update={"max_similarity": None})})
    threshold = cfg.identities.max_similarity
    s, _ = _run_stage(ctx, cfg, "identities", inputs={}, out=Path(out))
    counts, mpc = s["counts"], s["max_pairwise_cosine"]
    console.print(f"kept {counts['kept']} identities of {counts['candidates']} candidates ({s['source']}, "
                  f"{'max cosine < ' + str(threshold) if threshold is not None else 'no filter'}); "
                  f"max pairwise cosine {'n/a' if mpc is None else f'{mpc:.4f}'}", highlight=False)
    if s["negatives"] is not None:
        neg = s["negatives"]
        console.print(f"negatives: {neg['method']} over a pool of {neg['pool_size']}, "
                      f"mean cosine to the negative {neg['mean_cosine']:.4f}", highlight=False)
    console.print(f"wrote {s['files'][0]} and {s['files'][1]}", highlight=False)

# ----------------------------------------------------------------------------------------- align
@cli.command("align", context_settings=CONTEXT_SETTINGS)
@click.argument("input_dir", type=click.Path(path_type=Path), required=False)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML config (align/runtime sections).")
@click.option("--detector", default=None, help="none (resize only), mtcnn (facenet-pytorch's, as IDiff-Face/NegFaceDiff) or an insightface detection ONNX (SCRFD/RetinaFace with keypoints).")
@click.option("--detector-kind", type=click.Choice(["auto", "scrfd", "retinaface"]), default=None, help="How to run the ONNX (default: insightface model-zoo routing).")
@click.option("--det-size", type=int, default=None, help="Detector input size (square; default 640; fixed-size models use theirs).")
@click.option("--det-thresh", type=float, default=None, help="Detection score threshold (default 0.5).")
@click.option("--min-face-size", type=click.IntRange(min=1), default=None, help="mtcnn: smallest face searched in pixels (default 20; IDiff-Face 1, NegFaceDiff 60).")
@click.option("--template", type=click.Choice(["arcface-112", "negfacediff-96x112"]), default=None, help="5-point template: arcface-112 (insightface, default) or negfacediff-96x112 (un-shifted 96-wide).")
@click.option("--pick", type=click.Choice(["largest", "center", "score"]), default=None, help="Face to align when several are found (default largest; IDiff-Face: center).")
@click.option("--on-failure", type=click.Choice(["skip", "resize", "resize-identity", "drop-identity"]), default=None, help="No face found: skip the image, resize it whole, resize its whole identity (IDiff-Face), or drop its identity (default skip).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (same identity sub-folders, <stem>.png).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads for decode/detect/encode (default runtime.workers).")
@click.option("--device", default=None, help="auto | cpu | cuda (ONNX Runtime provider).")
@click.pass_context
def align_cmd(ctx: click.Context, input_dir: Path | None, config_path: Path | None, detector: str | None,
              detector_kind: str | None, det_size: int | None, det_thresh: float | None, min_face_size: int | None,
              template: str | None, pick: str | None, on_failure: str | None, out: Path | None, workers: int | None,
              device: str | None) -> None:
    """Align a folder of identity sub-folders to 112×112 arcface crops (5-point norm_crop)."""
    from .config import load_config
    from .errors import ConfigError

    cfg = load_config(config_path)
    ac = cfg.align
    input_dir = input_dir or ac.input
    out = out or ac.out
    if input_dir is None:
        raise ConfigError("no input folder given: frbench align DIR (or align.input in the config)")
    if out is None:
        raise ConfigError("no output folder given: pass --out DIR (or align.out in the config)")
    if not Path(input_dir).is_dir():
        from .errors import InputError

        raise InputError(input_dir, "not a folder of identity sub-folders")
    check_writable(out, directory=True)
    cfg = _with(cfg, align={"detector": detector, "detector_kind": detector_kind, "det_size": det_size, "det_thresh": det_thresh,
                            "min_face_size": min_face_size, "template": template, "pick": pick, "on_failure": on_failure},
                runtime={"device": device, "workers": workers})
    s, _ = _run_stage(ctx, cfg, "align", inputs={"generate": Path(input_dir)}, out=Path(out))
    print_align_table(s, Path(input_dir), Path(out), cfg.align.on_failure)
    console.print(f"wrote {Path(out) / 'manifest.parquet'} and {Path(out) / 'align.json'}", highlight=False)

# <<identities-align-commands>>

# -------------------------------------------------------------------------------------- generate
@cli.command("generate", context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML config (generate/runtime sections), e.g. configs/negfacediff.yaml.")
@click.option("--generator", default=None, help="Registered generator: idiff-face, negfacediff, adaptdiff, … (an unknown name lists them).")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="The generator's weights (IDiff-Face family: the released model folder).")
@click.option("--identities", type=click.Path(path_type=Path), default=None, help="Folder from `frbench identities` (identities.npy + .json), or a contexts file.")
@click.option("--negatives", type=click.Path(path_type=Path), default=None, help="Negative per identity: .npy of row indices or N×512 vectors (default: identities.json).")
@click.option("--num-identities", type=click.IntRange(min=1), default=None, help="Use the first N contexts (default all).")
@click.option("--per-identity", type=click.IntRange(min=1), default=None, help="Images per identity (default 50).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Dataset folder: <identity:05d>/<sample:03d>.png + manifest.parquet.")
@click.option("--shard", default=None, help="i/n: generate shard i (0-based) of n. Default: torchrun's RANK/WORLD_SIZE, else 0/1.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per generator call, across identities (default 64).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None, help="Autocast dtype of the denoiser (default runtime.dtype, fp32).")
@click.option("--seed", type=int, default=None, help="Run seed; image (i, k) uses a seed derived from (seed, i, k). Default 42.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampler steps (default: the generator's own, e.g. DDPM 1000).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK).")
@click.pass_context
def generate_cmd(ctx: click.Context, config_path: Path | None, generator: str | None, weights: Path | None,
                 identities: Path | None, negatives: Path | None, num_identities: int | None, per_identity: int | None,
                 out: Path | None, shard: str | None, batch_size: int | None, dtype: str | None, seed: int | None,
                 steps: int | None, device: str | None) -> None:
    """Generate a synthetic face dataset from identity contexts (sharded, resumable)."""
    from .config import load_config
    from .errors import ConfigError
    from .generate import Shard

    cfg = load_config(config_path)
    gc = cfg.generate
    the_shard = Shard.parse(shard) if shard is not None else (Shard.from_env() or Shard())
    if (generator or gc.generator) is None:
        raise ConfigError("no generator given: pass --generator NAME (or generate.generator in the config)")
    identities, out = identities or gc.identities, out or gc.out
    for value, flag in ((weights or gc.weights, "--weights DIR"), (identities, "--identities DIR"), (out, "--out DIR")):
        if value is None:
            raise ConfigError(f"missing {flag} (or generate.{flag[2:].split()[0].replace('-', '_')} in the config)")
    check_writable(out, directory=True)
    cfg = _with(cfg, generate={"generator": generator, "weights": weights, "negatives": negatives,
                               "num_identities": num_identities, "per_identity": per_identity, "batch_size": batch_size,
                               "dtype": dtype, "seed": seed, "steps": steps},
                runtime={"device": device})
    s, _ = _run_stage(ctx, cfg, "generate", inputs={"identities": Path(identities)}, out=Path(out),
                      options={"shard": the_shard},
                      lock_suffix=f"-shard-{the_shard.index}-of-{the_shard.count}" if the_shard.count > 1 else "")
    rate = s["metrics"]["generate/images_per_s"]
    console.print(f"shard {s['shard']}: generated {s['generated']} images ({s['skipped']} already present) in "
                  f"{s['seconds']:.1f} s, {rate:.2f} img/s", highlight=False, soft_wrap=True)
    if s["complete"]:
        console.print(f"dataset complete: wrote {Path(out) / 'manifest.parquet'}", highlight=False)
    else:
        console.print("other shards still missing images; manifest.parquet is written when the last one finishes",
                      highlight=False)

# <<generate-commands>>

# -------------------------------------------------------------------------------------------- train
@cli.command("train", context_settings=CONTEXT_SETTINGS)
@click.argument("dataset", type=click.Path(path_type=Path), required=False)
@click.option("--recipe", default=None, help="Preset (idiff-face, uiface, arc2face, arcface-torch) or a recipe YAML (default idiff-face).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML config (train/runtime/tracking sections).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. --set head.m=0.4 (repeatable).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the recipe's epochs (the LR schedule follows).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Override the total batch (the LR scales linearly).")
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Run folder (default <workdir>/train/<dataset>-<recipe>-<hash>).")
@click.option("--resume", is_flag=True, help="Require a checkpoint in --output and continue it (a matching one is continued anyway).")
@click.option("--restart", is_flag=True, help="Discard any checkpoint and outputs in --output and start over.")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK).")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default=None, help="Backbone autocast: auto = bf16 on CUDA, fp32 on CPU; fp16 adds a GradScaler.")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model (default off).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps of the schedule (smoke tests, benchmarks).")
@click.option("--deterministic", is_flag=True, default=None, help="Deterministic kernels; a resumed CPU run then equals an uninterrupted one.")
@click.option("--seed", type=int, default=None, help="Seed of initial weights, data order and augmentation (default: the config's seed, 0).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None, help="Checkpoint every N steps (also at each epoch end; default 1000).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Decode processes for the image cache (default runtime.workers).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Image cache root (default <workdir>/cache/train-images).")
@click.option("--strict-images", is_flag=True, default=None, help="Fail on an unreadable image instead of skipping it.")
@click.option("--identities", "n_identities", type=click.IntRange(min=2), default=None, help="Train on the first N identity folders (sorted), e.g. 10000.")
@click.option("--per-identity", type=click.IntRange(min=1), default=None, help="…and the first K images of each (sorted names), e.g. 50.")
@click.option("--monitor-data-dir", type=click.Path(path_type=Path), default=None, help="Folder of .bin sets scored each epoch (logged only, never used for selection).")
@click.option("--monitor-benchmarks", default=None, help="Comma-separated .bin names for monitoring (default: the five present).")
@tracking_options
@click.pass_context
def train_cmd(ctx: click.Context, dataset: Path | None, recipe: str | None, config_path: Path | None, sets: tuple[str, ...],
              epochs: int | None, batch_size: int | None, output: Path | None, resume: bool, restart: bool, device: str | None,
              dtype: str | None, compile_: bool | None, max_steps: int | None, deterministic: bool | None, seed: int | None,
              checkpoint_every: int | None, workers: int | None, cache_dir: Path | None, strict_images: bool | None,
              n_identities: int | None, per_identity: int | None, monitor_data_dir: Path | None, monitor_benchmarks: str | None, tracking_uri: str | None, no_track: bool,
              experiment: str | None) -> None:
    """Train the standard recognizer on DATASET (identity folders, manifest.parquet or train.rec/.idx)."""
    import os

    from .config import load_config
    from .errors import ConfigError
    from .recipes import load_recipe, merge, parse_set
    from .train import default_output

    cfg = load_config(config_path)
    tc = cfg.train
    dataset = dataset or tc.dataset
    if dataset is None:
        raise ConfigError("no dataset given: frbench train DATASET (or train.dataset in the config)")
    if resume and restart:
        raise ConfigError("--resume and --restart contradict each other")
    cli_layer = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size)) if v is not None}
    layers = [(tc.overrides, f"{config_path}: train.overrides"), (parse_set(sets), "--set"), (cli_layer, "--epochs/--batch-size")]
    rec, _ = load_recipe(recipe or tc.recipe, layers)  # each layer checked against its own source, before any work
    overrides: dict[str, Any] = {}
    for layer, _source in layers:
        overrides = merge(overrides, layer)
    workdir = Path(ctx.obj.get("workdir") or cfg.workdir)
    out = Path(output or tc.output or default_output(workdir, dataset, rec))
    check_writable(out, directory=True)
    check_writable(cache_dir or tc.cache_dir or workdir / "cache" / "train-images", directory=True)
    cfg = _with(cfg, train={"recipe": recipe, "overrides": overrides, "device": device, "dtype": dtype, "compile": compile_,
                            "deterministic": deterministic or None, "checkpoint_every": checkpoint_every,
                            "cache_dir": cache_dir, "strict_images": strict_images or None, "identities": n_identities,
                            "per_identity": per_identity},
                runtime={"workers": workers})
    monitor = {k: v for k, v in (("data_dir", monitor_data_dir), ("benchmarks", _split(monitor_benchmarks))) if v is not None}
    if monitor:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"monitor": _validated(cfg.train.monitor, monitor)})})
    if seed is not None:
        cfg = cfg.model_copy(update={"seed": seed})
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    summary, _ = _run_stage(ctx, cfg, "train", inputs={"align": Path(dataset)}, out=out,
                            run_name=f"train {Path(dataset).name} {rec.name}",
                            tracking=(tracking_uri, no_track, experiment) if rank == 0 else None,
                            options={"resume": "restart" if restart else ("require" if resume else "auto"), "max_steps": max_steps},
                            lock_suffix=f"-rank-{rank}" if world > 1 else "", quiet=rank != 0)
    if rank == 0:
        print_train_summary(summary["train"], out)


# <<train-commands>>

# -------------------------------------------------------------------------------- train-adapter
@cli.command("train-adapter", context_settings=CONTEXT_SETTINGS)
@click.argument("method", type=click.Choice(["fused-attention"]))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--base", type=click.Path(path_type=Path), required=True, help="SD1.5 folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder: fused_attention.safetensors, checkpoint.pt, train_adapter.json.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Optimizer steps (in total, counting resumed ones).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Target images per step.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", type=float, default=1e-2, show_default=True, help="AdamW weight decay.")
@click.option("--references", type=click.IntRange(min=1), default=1, show_default=True, help="Reference images per target (other images of its identity).")
@click.option("--resolution", type=click.IntRange(min=64), default=None, help="Training resolution (default: the UNet's, 512 for SD1.5).")
@click.option("--reference-timestep", type=click.IntRange(0, 999), default=0, show_default=True, help="Timestep of the reference pass.")
@click.option("--reference-prompt", default="", show_default=True, help="Prompt of the reference pass.")
@click.option("--init", type=click.Choice(["self-attention", "random"]), default="self-attention", show_default=True, help="Start Linear_kf/vf as the block's self-attention to_k/to_v, or at random.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: step s draws everything from (seed, s).")
@click.option("--save-every", type=click.IntRange(min=1), default=250, show_default=True, help="Checkpoint every N steps.")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True, help="Log the mean loss every N steps.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt (same settings; --steps may grow).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True, help="Frozen-model dtype (auto: bf16 on CUDA, fp32 on CPU); trained weights stay fp32.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML config (workdir/tracking sections).")
@tracking_options
@click.pass_context
def train_adapter_cmd(ctx: click.Context, method: str, data: Path, base: Path, out: Path, steps: int, batch_size: int,
                      lr: float, weight_decay: float, references: int, resolution: int | None, reference_timestep: int,
                      reference_prompt: str, init: str, seed: int, save_every: int, log_every: int, resume: bool,
                      device: str, dtype: str, config_path: Path | None, tracking_uri: str | None, no_track: bool,
                      experiment: str | None) -> None:
    """Learn a generator adapter's weights; fused-attention: Linear_kf/vf on captioned face images (SD1.5 frozen)."""
    from .config import load_config
    from .progress import progress_factory
    from .train_adapter import TrainAdapterSettings, train_fused_attention

    cfg = load_config(config_path)
    check_writable(out, directory=True)
    settings = TrainAdapterSettings(data=data, base=base, out=out, steps=steps, batch_size=batch_size, lr=lr,
                                    weight_decay=weight_decay, references=references, resolution=resolution, seed=seed,
                                    save_every=save_every, log_every=log_every, reference_timestep=reference_timestep,
                                    reference_prompt=reference_prompt, init=init, device=device, dtype=dtype)
    tracker = _make_tracker(ctx, cfg, tracking_uri, no_track, experiment)
    with tracker.start_run(f"train-adapter {method}", tags={"frbench.stage": "train-adapter", "frbench.method": method}) as run:
        with progress_factory() as progress:
            summary = train_fused_attention(settings, resume=resume, run=run, progress=progress,
                                            log=lambda msg: console.print(msg, highlight=False))
    console.print(f"{summary['steps']} steps on {summary['images']} images ({summary['identities']} identities): fixed-batch "
                  f"loss {summary['eval_loss_start']:.5f} → {summary['eval_loss_end']:.5f}", highlight=False)
    console.print(f"wrote {summary['weights']} and {Path(out) / 'train_adapter.json'}", highlight=False)


# <<sd-adapter-commands>>

# ------------------------------------------------------------------------------------------ metrics
@cli.command("metrics", context_settings=CONTEXT_SETTINGS)
@click.argument("dataset", type=click.Path(path_type=Path), required=False)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML config (metrics/runtime/tracking sections).")
@click.option("--fr-model", type=click.Path(path_type=Path), default=None, help="FR model (ONNX or iresnet state dict) for separability and consistency.")
@click.option("--fr-model-name", default=None, help="Published name of --fr-model (e.g. 'ElasticFace-Cos R100'): the leaderboard ranks separability beside published rows of that model.")
@click.option("--consistency-fr-model", type=click.Path(path_type=Path), default=None, help="The encoder the identity contexts came from, for consistency (default --fr-model), e.g. ElasticFace-Arc R100 for IDiff-Face.")
@click.option("--separability", is_flag=True, help="EER, FMR100/1000 (pyeer and strict rules), G/I mean±std, FDR, d′.")
@click.option("--consistency", is_flag=True, help="Cosine of each image to its conditioning identity (needs the manifest).")
@click.option("--lpips", is_flag=True, help="Intra-class LPIPS (VGG) over all pairs of --lpips-identities identities.")
@click.option("--prc", is_flag=True, help="Improved precision/recall against --reference (torch-fidelity).")
@click.option("--fid", is_flag=True, help="FID against --reference (torch-fidelity).")
@click.option("--reference", type=click.Path(path_type=Path), default=None, help="Real image folder for --prc/--fid (searched recursively).")
@click.option("--identities", type=click.IntRange(min=1), default=None, help="First N identity folders with ≥ 2 images (default 1000).")
@click.option("--per-identity", type=click.IntRange(min=2), default=None, help="First K images of each (default 20).")
@click.option("--lpips-identities", type=click.IntRange(min=1), default=None, help="Identities drawn (seeded) for LPIPS (default 100).")
@click.option("--max-impostors", type=click.IntRange(min=1), default=None, help="Sample this many impostor pairs when there are more (default: exact).")
@click.option("--seed", type=int, default=None, help="Seed of the LPIPS identity draw, impostor sampling and bootstrap (default 0).")
@click.option("--leakage", is_flag=True, help="Identity leakage audit against the generator's training set (--training-images or --training-embeddings).")
@click.option("--training-images", type=click.Path(path_type=Path), default=None, help="Leakage: the training set as identity folders of images.")
@click.option("--training-embeddings", type=click.Path(path_type=Path), default=None, help="Leakage: the training set as an N×D .npy of embeddings (same FR model).")
@click.option("--training-labels", type=click.Path(path_type=Path), default=None, help="Leakage: N identity labels (.npy) for --training-embeddings.")
@click.option("--leakage-fmr", type=float, default=None, help="Leakage threshold calibration: FMR among distinct training identities (default 1e-4).")
@click.option("--leakage-threshold", type=float, default=None, help="Leakage: a fixed cosine threshold instead of the calibration.")
@click.option("--leakage-images", is_flag=True, default=None, help="Leakage: also each synthetic image's nearest training image.")
@click.option("--leakage-top-k", type=click.IntRange(min=1), default=None, help="Leakage: closest pairs listed and shown (default 16).")
@click.option("--bootstrap", type=click.IntRange(min=10), default=None, help="95% intervals from N replicates resampling identities.")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="FR embedding batch size.")
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write the results JSON here.")
@tracking_options
@click.pass_context
def metrics_cmd(ctx: click.Context, dataset: Path | None, config_path: Path | None, fr_model: Path | None,
                fr_model_name: str | None, consistency_fr_model: Path | None, separability: bool, consistency: bool, lpips: bool, prc: bool, fid: bool, reference: Path | None,
                identities: int | None, per_identity: int | None, lpips_identities: int | None, max_impostors: int | None,
                seed: int | None, leakage: bool, training_images: Path | None, training_embeddings: Path | None,
                training_labels: Path | None, leakage_fmr: float | None, leakage_threshold: float | None,
                leakage_images: bool | None, leakage_top_k: int | None, bootstrap: int | None,
                device: str | None, batch_size: int | None, output: Path | None,
                tracking_uri: str | None, no_track: bool, experiment: str | None) -> None:
    """Separability, identity consistency and diversity of an image-folder DATASET (one sub-folder per identity)."""
    import json

    from .config import load_config
    from .errors import ConfigError
    from .io import write_json_atomic

    cfg = load_config(config_path)
    mc = cfg.metrics
    dataset = dataset or mc.dataset
    if dataset is None:
        raise ConfigError("no dataset given: frbench metrics DATASET (or metrics.dataset in the config)")
    asked = [m for m, flag in (("separability", separability), ("consistency", consistency), ("lpips", lpips),
                               ("prc", prc), ("fid", fid), ("leakage", leakage)) if flag]
    cfg = _with(cfg, metrics={"identities": identities, "per_identity": per_identity, "lpips_identities": lpips_identities,
                              "max_impostors": max_impostors, "seed": seed, "training_images": training_images,
                              "training_embeddings": training_embeddings, "training_labels": training_labels,
                              "leakage_fmr": leakage_fmr, "leakage_threshold": leakage_threshold,
                              "leakage_images": leakage_images, "leakage_top_k": leakage_top_k, "bootstrap": bootstrap,
                              "fr_model": fr_model, "fr_model_name": fr_model_name,
                              "consistency_fr_model": consistency_fr_model, "reference": reference,
                              "compute": asked or None},
                runtime={"device": device, "batch_size": batch_size})
    output = output or cfg.metrics.output
    workdir = Path(ctx.obj.get("workdir") or cfg.workdir)
    if output is not None:  # checked now, not after the whole computation
        check_writable(output)
    check_writable(workdir, directory=True)
    _, out_dir = _run_stage(ctx, cfg, "metrics", inputs={"align": Path(dataset)}, root=workdir / "runs" / "metrics",
                            run_name=f"metrics {Path(dataset).name}", tracking=(tracking_uri, no_track, experiment))
    doc = json.loads((out_dir / "metrics.json").read_text())
    print_metrics_table(doc)
    if output is not None:
        write_json_atomic(output, doc)
        console.print(f"wrote {output}", highlight=False)


# <<metrics-commands>>

# -------------------------------------------------------------------------------------- leaderboard
# kept in step with fr_bench.leaderboard.rank.SORT_KEYS (a test checks); importing it here would
# load pandas on every CLI start
LEADERBOARD_SORTS = ("avg", "borda", "to", "lfw", "cfp_fp", "cplfw", "agedb_30", "calfw", "ijbc", "ijbc_1e-5", "gap",
                     "eer", "fdr", "lpips", "recall", "fid", "recent")
LEADERBOARD_FORMATS = ("table", "markdown", "csv", "html", "png", "latex")


@cli.command("leaderboard", context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="YAML config whose workdir/tracking section says where the runs are.")
@click.option("--experiment", default=None, help="MLflow experiment (default: the config's, else frbench).")
@click.option("--sort", "sort", type=click.Choice(LEADERBOARD_SORTS), default="avg", show_default=True,
              help="Ranking: a metric (ijbc = TAR@FAR=1e-4; eer and fid lowest first), borda (SDFR-style over the five "
                   "benchmarks) or to (FRCSyn TO on RFW).")
@click.option("--format", "fmt", type=click.Choice(LEADERBOARD_FORMATS), default="table", show_default=True,
              help="png: the Avg-vs-images plot (needs --output); latex: a booktabs table.")
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write to this file instead of stdout.")
@click.option("--published/--no-published", default=True, show_default=True,
              help="Rank the papers' numbers with the measured runs (badged 'published').")
@click.option("--recipe", "filter_recipe", default=None, help="Only rows whose FR recipe mentions this (e.g. AdaFace, IR-SE-50, uiface).")
@click.option("--size", "filter_size", default=None, help="Only rows whose dataset size mentions this (e.g. 0.5M, 10k×50).")
@click.option("--source", "filter_source", default=None, help="Only rows from this source (measured, published, demo, a paper table).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite under the workdir, or $MLFLOW_TRACKING_URI).")
@click.pass_context
def leaderboard_cmd(ctx: click.Context, config_path: Path | None, experiment: str | None, sort: str, fmt: str,
                    output: Path | None, published: bool, filter_recipe: str | None, filter_size: str | None,
                    filter_source: str | None, tracking_uri: str | None) -> None:
    """Rank the MLflow runs of an experiment beside the papers' published numbers."""
    from .config import load_config
    from .errors import ConfigError
    from .io import write_bytes_atomic
    from .leaderboard import build_leaderboard, load_measured, load_published, measured_frame, render
    from .leaderboard.render import rich_tables
    from .tracking import missing_store, resolve_tracking_uri

    cfg = load_config(config_path)
    if fmt == "png" and output is None:
        raise ConfigError("--format png writes a picture: pass --output FILE.png")
    if output is not None:
        check_writable(output)
    uri = resolve_tracking_uri(ctx.obj.get("workdir") or cfg.workdir, tracking_uri or ctx.obj.get("tracking_uri") or cfg.tracking.uri)
    experiment = experiment or ctx.obj.get("experiment") or cfg.tracking.experiment
    missing = missing_store(uri)
    if missing is not None:
        warn(f"no MLflow store at {missing} yet (run `frbench run` or `frbench eval` first, or pass --tracking-uri)")
        measured = measured_frame([])
    else:
        measured = load_measured(uri, experiment)
    board = build_leaderboard(measured, load_published() if published else None, sort, experiment, uri,
                              recipe=filter_recipe, size=filter_size, source=filter_source)
    if output is not None:
        body = render(board, fmt, width=400)  # a file has no terminal width: keep run ids on one line
        write_bytes_atomic(output, body if isinstance(body, bytes) else body.encode("utf-8"))
        console.print(f"wrote {output}", highlight=False)
    elif fmt == "table":
        from rich.console import Console

        out = Console(highlight=False)
        for renderable in rich_tables(board):
            out.print(renderable)
            out.print()
    else:
        click.echo(render(board, fmt), nl=False)


# ----------------------------------------------------------------------------------------- adapters
@cli.command("adapters", context_settings=CONTEXT_SETTINGS)
def adapters_cmd() -> None:
    """List the registered generator adapters (built-in and from the frbench.generators entry point)."""
    from rich.console import Console

    from .adapter_tools import describe_adapters

    infos = describe_adapters()
    table = Table(title="Generator adapters")
    for col in ("name", "from", "class", "resolution", "aligns"):
        table.add_column(col, justify="right" if col == "resolution" else "left", overflow="fold")
    for a in infos:
        if a.error:
            table.add_row(a.name, a.origin, f"[red]cannot load: {a.error}[/red]", "", "")
        else:
            table.add_row(a.name, a.origin, a.cls or "", str(a.native_resolution or ""),
                          "" if a.needs_alignment is None else ("yes" if a.needs_alignment else "no"))
    out = Console(highlight=False)
    if infos:
        out.print(table)
    else:
        out.print("no generator adapters registered")
    out.print("'aligns' = outputs go through face alignment before training. Add one: frbench new-adapter NAME",
              style="dim")


@cli.command("new-adapter", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Folder in which the package folder frbench-NAME is created.")
def new_adapter_cmd(name: str, out_dir: Path) -> None:
    """Scaffold a pip-installable generator-adapter package NAME (template adapter, preset, tests)."""
    from .adapter_tools import scaffold_adapter

    check_writable(out_dir, directory=True)
    made = scaffold_adapter(name, out_dir)
    console.print(f"created {made.root} (adapter class {made.module}.adapter.{made.cls}):", highlight=False)
    for path in made.files:
        console.print(f"  {path.relative_to(made.root)}", highlight=False)
    console.print(f"next: cd {made.root} && pip install -e . && python -m pytest -q && frbench adapters",
                  highlight=False, soft_wrap=True)


# <<leaderboard-commands>>

# ----------------------------------------------------------------------------------------- doctor
@cli.command("doctor", context_settings=CONTEXT_SETTINGS)
@click.argument("config_path", type=click.Path(path_type=Path), required=False)
def doctor_cmd(config_path: Path | None) -> None:
    """What is installed, and which weights, benchmark files and backbones CONFIG needs (exit 1 if any is missing)."""
    from .config import load_config
    from .doctor import environment, requirements

    table = Table(title="frbench doctor: installation")
    table.add_column("item")
    table.add_column("state", overflow="fold")
    from rich.markup import escape

    for item, value in environment():
        table.add_row(escape(item), escape(value))
    console.print(table)
    if config_path is None:
        console.print("pass a config (frbench doctor configs/<paper>.yaml) to check the files it needs", highlight=False)
        return
    cfg = load_config(config_path)
    needs = requirements(cfg)
    files = Table(title=f"files {config_path} needs")
    for col in ("stage", "what", "", "path", "where to get it"):
        files.add_column(col, overflow="fold")
    for n in needs:
        files.add_row(escape(n.section), escape(n.what), "[green]✓[/green]" if n.present else "[red]✗ missing[/red]",
                      "—" if n.path is None else escape(str(n.path)), "" if n.present else escape(n.where))
    console.print(files)
    missing = [n for n in needs if not n.present]
    if cfg.demo:
        console.print("demo: true — missing weights and benchmark files are made as tiny random artefacts", highlight=False)
    if missing and not cfg.demo:
        console.print(f"[red]{len(missing)} missing[/red] (see 'where to get it')", highlight=False)
        raise SystemExit(1)
    console.print("everything this config reads is present" if not missing else "", highlight=False)


# ------------------------------------------------------------------------------------------ run
@cli.command("run", context_settings=CONTEXT_SETTINGS)
@click.argument("config_path", type=click.Path(path_type=Path))
@click.option("--workdir", "run_workdir", type=click.Path(path_type=Path), default=None, help="Work directory (overrides the config's).")
@click.option("--from", "start", default=None, help="First stage to run; earlier stages must be finished.")
@click.option("--until", default=None, help="Last stage to run.")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config key, e.g. --set runtime.dtype=bf16 --set eval.data_dir=/data/bins (repeatable).")
@click.option("--shard", default=None, help="i/n: generate only shard i (0-based) of n, then stop; one process per shard, "
                                             "after `--until identities`. A plain rerun then continues from the full dataset.")
@tracking_options
@click.pass_context
def run_cmd(ctx: click.Context, config_path: Path, run_workdir: Path | None, start: str | None, until: str | None,
            dry_run: bool, sets: tuple[str, ...], shard: str | None, tracking_uri: str | None, no_track: bool,
            experiment: str | None) -> None:
    """Run the whole chain of CONFIG: identities → generate → align → train → eval, metrics."""
    from .config import load_config
    from .errors import ConfigError
    from .generate import Shard
    from .pipeline import execute, make_plan
    from .progress import progress_factory
    from .recipes import parse_set
    from .stages import STAGES, apply_demo

    cfg = load_config(config_path, overrides=parse_set(sets))
    workdir = Path(run_workdir or ctx.obj.get("workdir") or cfg.workdir)
    ctx.obj["workdir"] = workdir
    if not dry_run:
        check_writable(workdir, directory=True)  # probes the nearest existing folder; creates nothing
    if cfg.demo:
        console.print("[bold yellow]plumbing demo:[/bold yellow] tiny random-weight models — the numbers mean nothing", highlight=False)
        cfg = apply_demo(cfg, workdir, create=not dry_run)
    run_name = cfg.name or config_path.stem
    the_shard = Shard.parse(shard) if shard is not None else None
    if the_shard is not None:
        if until not in (None, "generate"):
            raise ConfigError(f"--shard generates one shard and stops after generate; --until {until} contradicts it")
        until = "generate"
    plan = make_plan(cfg, STAGES, workdir, run_name, start=start, until=until)
    if the_shard is not None:
        # shard processes run side by side on one run dir: each holds its own lock, and none may run
        # a stage another would also run
        if not any(ps.stage.name == "generate" for ps in plan.stages):
            raise ConfigError("--shard splits the generate stage, and this config has none")
        early = [ps.stage.name for ps in plan.stages if ps.stage.name != "generate" and ps.status != "cached"]
        if early:
            raise ConfigError(f"--shard: finish {', '.join(early)} first, in one process: "
                              f"frbench run {config_path} --until {early[-1]}")
        plan.lock_suffix = f"-shard-{the_shard.index}-of-{the_shard.count}"
    print_plan(plan)
    if dry_run:
        return
    if not cfg.demo:  # the demo makes its own tiny artefacts
        from .doctor import preflight

        preflight(cfg, {ps.stage.name for ps in plan.stages if ps.status != "cached"})
    tracker = _make_tracker(ctx, cfg, tracking_uri, no_track, experiment)
    tags = {k: v for k, v in (("generator", cfg.generate.generator if "generate" in cfg.model_fields_set else None),
                              ("config", str(config_path)),
                              # the leaderboard never ranks demo rows and measures gaps against real ones
                              ("frbench.demo", "true" if cfg.demo else None),
                              ("frbench.real", "true" if cfg.real else None)) if v}

    def done(ps: Any, summary: dict[str, Any]) -> None:
        verb = "cached" if ps.status == "cached" else ("done" if summary.get("complete", True) else f"shard {summary.get('shard')} done")
        console.print(f"[green]✓[/green] {ps.stage.name} ({verb}) → {ps.dir.path}", highlight=False, soft_wrap=True)

    with progress_factory() as progress:
        results = execute(plan, cfg, workdir, tracker=tracker, progress=progress, warn=warn, on_stage=done, run_tags=tags,
                          options={"shard": the_shard} if the_shard is not None else None)
    if the_shard is not None:
        gen = results.get("generate", {})
        state = "the dataset is complete" if gen.get("complete", True) else "other shards still missing images"
        console.print(f"generate shard {the_shard} finished ({state}); when every shard has finished, "
                      f"`frbench run {config_path}` continues from the whole dataset", highlight=False, soft_wrap=True)
        return
    print_run_results(results)


# <<run-commands>>


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="frbench", obj={})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
