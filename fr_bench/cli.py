"""The ``frbench`` command line: parse options, load config, call a stage, print. Nothing else."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from . import __version__
from .errors import FrBenchError
from .progress import console

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


@click.group(cls=FrBenchGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="frbench")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="Work directory (default ./frbench-work).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, workdir: Path | None) -> None:
    """frbench: benchmark synthetic face-recognition datasets end to end."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["workdir"] = workdir


def tracking_options(fn: Any) -> Any:
    fn = click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite under the workdir, or $MLFLOW_TRACKING_URI).")(fn)
    fn = click.option("--no-track", is_flag=True, help="Do not log to MLflow.")(fn)
    fn = click.option("--experiment", default=None, help="MLflow experiment name (default frbench).")(fn)
    return fn


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _make_tracker(ctx: click.Context, cfg: Any, tracking_uri: str | None, no_track: bool, experiment: str | None) -> Any:
    from .tracking import Tracker

    workdir = ctx.obj.get("workdir") or cfg.workdir
    return Tracker(
        workdir,
        uri=tracking_uri or cfg.tracking.uri,
        enabled=cfg.tracking.enabled and not no_track,
        experiment=experiment or cfg.tracking.experiment,
        warn=warn,
    )


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
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write the results JSON here.")
@tracking_options
@click.pass_context
def eval_cmd(ctx: click.Context, config_path: Path | None, model: Path | None, data_dir: Path | None, benchmarks: str | None,
             batch_size: int | None, no_flip: bool, device: str | None, dtype: str | None, output: Path | None,
             tracking_uri: str | None, no_track: bool, experiment: str | None) -> None:
    """Score an FR model on LFW, CFP-FP, CPLFW, AgeDB-30, CALFW (10-fold) and IJB-B/C."""
    from .config import load_config
    from .errors import ConfigError
    from .evaluate import input_hashes, run_eval, select_benchmarks, tracking_metrics
    from .io import write_json_atomic
    from .models import load_fr_model
    from .progress import progress_factory

    cfg = load_config(config_path)
    ev, rt = cfg.eval, cfg.runtime
    model = model or ev.model
    data_dir = data_dir or ev.data_dir
    if model is None:
        raise ConfigError("no model given: pass --model PATH (or eval.model in the config)")
    if data_dir is None:
        raise ConfigError("no benchmark folder given: pass --data-dir DIR (or eval.data_dir in the config)")
    names = _split(benchmarks) or ev.benchmarks
    flip = ev.flip and not no_flip
    output = output or ev.output
    batch_size = batch_size or rt.batch_size

    selection = select_benchmarks(data_dir, names)
    embedder = load_fr_model(model, device=device or rt.device, dtype=dtype or rt.dtype, batch_size=batch_size)
    if selection.absent:
        warn(f"not in {data_dir}: {', '.join(selection.absent)} (the five-benchmark average needs all five)")
    console.print(f"model: {embedder.description}, {embedder.dim}-d; benchmarks: {', '.join(b.name for b in selection.benchmarks)}", highlight=False)

    tracker = _make_tracker(ctx, cfg, tracking_uri, no_track, experiment)
    with tracker.start_run(f"eval {Path(model).name}", tags={"frbench.stage": "eval"}) as run:
        with progress_factory() as progress:
            doc = run_eval(embedder, selection, flip=flip, batch_size=batch_size, progress=progress,
                           workdir=Path(ctx.obj.get("workdir") or cfg.workdir))
        if output is not None:
            write_json_atomic(output, doc)
        _print_eval_table(doc)
        if run.active:
            run.log_params({"model": str(model), "flip": flip, "batch_size": batch_size, "dtype": dtype or rt.dtype,
                            "benchmarks": [b.name for b in selection.benchmarks], "data_dir": str(data_dir),
                            **input_hashes(embedder, selection)})
            run.log_metrics(tracking_metrics(selection, doc))
            run.log_dict(doc, "eval.json")
            for bench in selection.benchmarks:
                for art in doc["benchmarks"][bench.name].get("artifacts", []):
                    run.log_artifact(art)
    if output is not None:
        console.print(f"wrote {output}", highlight=False)


def _print_eval_table(doc: dict[str, Any]) -> None:
    verif = {k: v for k, v in doc["benchmarks"].items() if "accuracy" in v}
    if verif:
        table = Table(title=f"Verification accuracy (%), 10-fold{', flip' if doc['flip'] else ''}")
        table.add_column("benchmark")
        table.add_column("accuracy", justify="right")
        table.add_column("± std", justify="right")
        table.add_column("pairs", justify="right")
        table.add_column("threshold", justify="right")
        for name, r in verif.items():
            table.add_row(name, f"{100 * r['accuracy']:.2f}", f"{100 * r['accuracy_std']:.2f}", str(r["pairs"]), f"{r['threshold']:.3f}")
        if doc.get("average") is not None:
            table.add_row("[bold]Avg (5)[/bold]", f"[bold]{100 * doc['average']:.2f}[/bold]", "", "", "")
        console.print(table)
    for name, r in doc["benchmarks"].items():
        if "tar_at_far" in r:
            table = Table(title=f"{name.upper()} 1:1 TAR (%) at FAR — {r.get('templates', '?')} templates, {r.get('pairs', '?')} pairs")
            table.add_column("FAR")
            table.add_column("TAR (nearest FPR, reference)", justify="right")
            table.add_column("TAR (FAR ≤ target)", justify="right")
            strict = r.get("tar_at_far_strict", {})
            for far, tar in r["tar_at_far"].items():
                table.add_row(far, f"{100 * tar:.2f}", f"{100 * strict[far]:.2f}" if far in strict else "")
            console.print(table)


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
    from .identities import build_identities, make_source, write_identities
    from .progress import progress_factory

    cfg = load_config(config_path)
    ic, rt = cfg.identities, cfg.runtime
    out = out or ic.out
    if out is None:
        raise ConfigError("no output folder given: pass --out DIR (or identities.out in the config)")
    threshold = None if no_filter else (max_similarity if max_similarity is not None else ic.max_similarity)
    device = device or rt.device
    with progress_factory() as progress:
        src = make_source(source or ic.source, seed=ic.seed if seed is None else seed,
                          reference_embeddings=reference_embeddings or ic.reference_embeddings,
                          pca_components=pca_components or ic.pca_components, images=images or ic.images,
                          fr_model=fr_model or ic.fr_model, file=file_ or ic.file, device=device,
                          batch_size=batch_size or rt.batch_size, workers=rt.workers, progress=progress)
        ids = build_identities(src, n or ic.n, threshold, negatives=negatives or ic.negatives,
                               pool_size=pool_size or ic.pool_size, device=device,
                               max_candidates=max_candidates or ic.max_candidates, progress=progress)
    npy, meta = write_identities(out, ids)
    info = ids.info
    counts = info["counts"]
    mpc = info["max_pairwise_cosine"]
    console.print(f"kept {counts['kept']} identities of {counts['candidates']} candidates ({info['source']}, "
                  f"{'max cosine < ' + str(threshold) if threshold is not None else 'no filter'}); "
                  f"max pairwise cosine {'n/a' if mpc is None else f'{mpc:.4f}'}", highlight=False)
    if info["negatives"] is not None:
        cos = info["negatives"]["cosine"]
        console.print(f"negatives: {info['negatives']['method']} over a pool of {info['negatives']['pool_size']}, "
                      f"mean cosine to the negative {sum(cos) / len(cos):.4f}", highlight=False)
    console.print(f"wrote {npy} and {meta}", highlight=False)


# ----------------------------------------------------------------------------------------- align
@cli.command("align", context_settings=CONTEXT_SETTINGS)
@click.argument("input_dir", type=click.Path(path_type=Path), required=False)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML config (align/runtime sections).")
@click.option("--detector", default=None, help="none (resize only) or an insightface detection ONNX (SCRFD/RetinaFace with keypoints).")
@click.option("--detector-kind", type=click.Choice(["auto", "scrfd", "retinaface"]), default=None, help="How to run the ONNX (default: insightface model-zoo routing).")
@click.option("--det-size", type=int, default=None, help="Detector input size (square; default 640; fixed-size models use theirs).")
@click.option("--det-thresh", type=float, default=None, help="Detection score threshold (default 0.5).")
@click.option("--pick", type=click.Choice(["largest", "center", "score"]), default=None, help="Face to align when several are found (default largest).")
@click.option("--on-failure", type=click.Choice(["skip", "resize", "drop-identity"]), default=None, help="No face found: skip the image, resize it whole, or drop its identity (default skip).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (same identity sub-folders, <stem>.png).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads for decode/detect/encode (default runtime.workers).")
@click.option("--device", default=None, help="auto | cpu | cuda (ONNX Runtime provider).")
@click.pass_context
def align_cmd(ctx: click.Context, input_dir: Path | None, config_path: Path | None, detector: str | None,
              detector_kind: str | None, det_size: int | None, det_thresh: float | None, pick: str | None,
              on_failure: str | None, out: Path | None, workers: int | None, device: str | None) -> None:
    """Align a folder of identity sub-folders to 112×112 arcface crops (5-point norm_crop)."""
    from .align import align_folder, load_detector
    from .config import load_config
    from .errors import ConfigError
    from .progress import progress_factory

    cfg = load_config(config_path)
    ac, rt = cfg.align, cfg.runtime
    input_dir = input_dir or ac.input
    out = out or ac.out
    if input_dir is None:
        raise ConfigError("no input folder given: frbench align DIR (or align.input in the config)")
    if out is None:
        raise ConfigError("no output folder given: pass --out DIR (or align.out in the config)")
    det = load_detector(detector or ac.detector, kind=detector_kind or ac.detector_kind, det_size=det_size or ac.det_size,
                        det_thresh=ac.det_thresh if det_thresh is None else det_thresh, device=device or rt.device)
    policy = on_failure or ac.on_failure
    with progress_factory() as progress:
        summary = align_folder(input_dir, out, det, on_failure=policy, pick=pick or ac.pick,
                               workers=workers or rt.workers, progress=progress)
    img, ids = summary["images"], summary["identities"]
    table = Table(title=f"align {input_dir} → {out} ({det.name if det else 'no detector: resize only'}, on failure: {policy})")
    for col in ("images", "aligned", "resized", "skipped", "dropped", "identities written", "identities dropped"):
        table.add_column(col, justify="right")
    table.add_row(str(img["input"]), str(img["aligned"]), str(img["resized"]), str(img["skipped"]), str(img["dropped"]),
                  f"{ids['written']}/{ids['input']}", str(ids["dropped"]))
    console.print(table)
    console.print(f"wrote {Path(out) / 'manifest.parquet'} and {Path(out) / 'align.json'}", highlight=False)


# <<identities-align-commands>>

# <<generate-commands>>

# <<train-commands>>

# <<sd-adapter-commands>>

# <<metrics-commands>>

# -------------------------------------------------------------------------------------- leaderboard
# kept in step with fr_bench.leaderboard.rank.SORT_KEYS (a test checks); importing it here would
# load pandas on every CLI start
LEADERBOARD_SORTS = ("avg", "lfw", "cfp_fp", "cplfw", "agedb_30", "calfw", "ijbc", "ijbc_1e-5", "eer", "fdr",
                     "lpips", "recall", "fid", "recent")


@cli.command("leaderboard", context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="YAML config whose workdir/tracking section says where the runs are.")
@click.option("--experiment", default=None, help="MLflow experiment (default: the config's, else frbench).")
@click.option("--sort", "sort", type=click.Choice(LEADERBOARD_SORTS), default="avg", show_default=True,
              help="Metric to rank by (ijbc = TAR@FAR=1e-4; eer and fid rank lowest first).")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "html"]), default="table", show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write to this file instead of stdout.")
@click.option("--published/--no-published", default=True, show_default=True,
              help="Show the papers' numbers (a separate, marked table).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite under the workdir, or $MLFLOW_TRACKING_URI).")
@click.pass_context
def leaderboard_cmd(ctx: click.Context, config_path: Path | None, experiment: str | None, sort: str, fmt: str,
                    output: Path | None, published: bool, tracking_uri: str | None) -> None:
    """Rank the MLflow runs of an experiment beside the papers' published numbers."""
    from .config import load_config
    from .io import write_bytes_atomic
    from .leaderboard import build_leaderboard, load_measured, load_published, measured_frame, render
    from .leaderboard.render import rich_tables
    from .tracking import missing_store, resolve_tracking_uri

    cfg = load_config(config_path)
    uri = resolve_tracking_uri(ctx.obj.get("workdir") or cfg.workdir, tracking_uri or cfg.tracking.uri)
    experiment = experiment or cfg.tracking.experiment
    missing = missing_store(uri)
    if missing is not None:
        warn(f"no MLflow store at {missing} yet (run `frbench run` or `frbench eval` first, or pass --tracking-uri)")
        measured = measured_frame([])
    else:
        measured = load_measured(uri, experiment)
    board = build_leaderboard(measured, load_published() if published else None, sort, experiment, uri)
    if output is not None:
        write_bytes_atomic(output, render(board, fmt).encode("utf-8"))
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

    made = scaffold_adapter(name, out_dir)
    console.print(f"created {made.root} (adapter class {made.module}.adapter.{made.cls}):", highlight=False)
    for path in made.files:
        console.print(f"  {path.relative_to(made.root)}", highlight=False)
    console.print(f"next: cd {made.root} && pip install -e . && python -m pytest -q && frbench adapters",
                  highlight=False, soft_wrap=True)


# <<leaderboard-commands>>

# <<run-commands>>


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="frbench", obj={})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
