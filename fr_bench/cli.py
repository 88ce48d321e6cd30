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

# <<identities-align-commands>>

# <<generate-commands>>

# <<train-commands>>

# <<metrics-commands>>

# <<leaderboard-commands>>

# <<run-commands>>


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="frbench", obj={})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
