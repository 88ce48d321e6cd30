"""What the commands print: rich tables of a stage's results (no click here; ``cli`` calls these)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .progress import console


def accuracy_cell(block: dict[str, Any]) -> str:
    """Accuracy in %, with its bootstrap interval when there is one."""
    ci = block.get("accuracy_ci95")
    return f"{100 * block['accuracy']:.2f}" + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")


def print_eval_table(doc: dict[str, Any]) -> None:
    verif = {k: v for k, v in doc["benchmarks"].items() if "accuracy" in v}
    if verif:
        table = Table(title=f"Verification accuracy (%), 10-fold{', flip' if doc['flip'] else ''}")
        table.add_column("benchmark")
        table.add_column("accuracy", justify="right")
        table.add_column("± std", justify="right")
        table.add_column("pairs", justify="right")
        table.add_column("threshold", justify="right")
        for name, r in verif.items():
            table.add_row(name, accuracy_cell(r), f"{100 * r['accuracy_std']:.2f}", str(r["pairs"]), f"{r['threshold']:.3f}")
        if doc.get("average") is not None:
            table.add_row("[bold]Avg (5)[/bold]", f"[bold]{100 * doc['average']:.2f}[/bold]", "", "", "")
        console.print(table)
    for name, r in doc["benchmarks"].items():
        if "groups" in r:
            gt = r["global_threshold"]
            table = Table(title=f"{name}: accuracy (%) per group, 10-fold; FNMR at one threshold with FMR {100 * gt['target_fmr']:g}% over all groups")
            for col in ("group", "accuracy", "FNMR @ global FMR 1%"):
                table.add_column(col, justify="right" if col != "group" else "left")
            for g, res in r["groups"].items():
                table.add_row(g, accuracy_cell(res), f"{100 * gt['groups'][g]['fnmr']:.2f}")
            table.add_row("[bold]mean / STD / SER / TO[/bold]",
                          f"[bold]{r['mean']:.2f}[/bold] / {r['std']:.2f} / {'n/a' if r['ser'] is None else format(r['ser'], '.2f')} / "
                          f"[bold]{r['to']:.2f}[/bold]", "")
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


def print_train_summary(s: dict[str, Any], output: Path) -> None:
    table = Table(title=f"frbench train — {s.get('recipe')} ({s.get('recipe_hash')})")
    table.add_column("")
    table.add_column("", justify="right")
    rate = s.get("samples_per_s")
    rows = [
        ("images / identities", f"{s.get('images')} / {s.get('identities')}"),
        ("epochs (steps)", f"{s.get('epochs_completed', 0):.2f} of {s.get('epochs')} ({s.get('steps')})"),
        ("final loss", f"{s.get('final_loss', float('nan')):.4f}"),
        ("samples/s (this run)", f"{rate:,.1f}" if rate else "–"),
        ("device / dtype", f"{s.get('device')} / {s.get('dtype')}"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    console.print(f"wrote {output / 'model.pt'}, {output / 'model.onnx'}, {output / 'train.json'}", highlight=False)


def ci_suffix(block: dict[str, Any], key: str, digits: int = 4) -> str:
    """`` [lo, hi]`` when the block has a bootstrap interval for ``key``."""
    ci = block.get(f"{key}_ci95")
    return f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if isinstance(ci, list) else ""


def print_metrics_table(doc: dict[str, Any]) -> None:
    ds = doc["dataset"]
    model = doc.get("fr_model")
    table = Table(title=f"{ds['path']}: {ds['identities']} identities, {ds['images']} images"
                        + (f" — FR model {model['description']}" if model else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("notes")
    sep = doc.get("separability")
    if sep:
        note_s = f"{sep['genuine_pairs']:,} genuine / {sep['impostor_pairs']:,} impostor pairs"
        if sep.get("impostor_sampling"):
            note_s += f" (sampled, seed {sep['impostor_sampling']['seed']})"
        table.add_row("EER", f"{sep['eer']:.4f}{ci_suffix(sep, 'eer')}", note_s)
        for k, label in (("fmr100", "FMR100"), ("fmr1000", "FMR1000")):
            table.add_row(label, f"{sep[k]:.4f}", "pyeer rule: FNMR at the nearest FMR")
            table.add_row(f"{label} strict", f"{sep[k + '_strict']:.4f}{ci_suffix(sep, k + '_strict')}", "lowest FNMR with FMR ≤ target")
        table.add_row("genuine mean ± std", f"{sep['genuine_mean']:.4f} ± {sep['genuine_std']:.4f}", "cosine, population std")
        table.add_row("impostor mean ± std", f"{sep['impostor_mean']:.4f} ± {sep['impostor_std']:.4f}", "")
        table.add_row("FDR", "n/a" if sep["fdr"] is None else f"{sep['fdr']:.3f}{ci_suffix(sep, 'fdr', 3)}", "(μG−μI)²/(σG²+σI²)")
        if sep.get("bootstrap"):
            b = sep["bootstrap"]
            table.add_row("[dim]95% intervals[/dim]", f"[dim]{b['replicates']} replicates[/dim]",
                          f"[dim]identities resampled, seed {b['seed']}, {b['impostor_pairs_used']:,} impostor pairs[/dim]")
        table.add_row("d′", f"{sep['d_prime']:.3f}", "")
    con = doc.get("consistency")
    if con:
        table.add_row("identity consistency", f"{con['mean']:.4f} ± {con['std']:.4f}{ci_suffix(con, 'mean')}", f"{con['images']:,} images vs their contexts")
    lp = doc.get("lpips")
    if lp:
        table.add_row("intra-class LPIPS", f"{lp['mean']:.4f}{ci_suffix(lp, 'mean')}", f"VGG, {lp['identities']} identities, {lp['pairs']:,} pairs")
    lk = doc.get("leakage")
    if lk:
        cal = lk["calibration"]
        how = "fixed" if cal["overridden"] else f"FMR {cal['fmr_target']:g} over {cal['impostor_pairs']:,} training pairs"
        table.add_row("leakage: flagged identities", f"{lk['flagged']} / {lk['synthetic_identities']} ({100 * lk['flagged_share']:.2f}%)",
                      f"nearest of {lk['training_identities']:,} training identities above cosine {lk['threshold']:.3f} ({how})")
        table.add_row("leakage: nearest-identity cosine", f"{lk['nearest_identity_cosine']['mean']:.4f}",
                      f"max {lk['nearest_identity_cosine']['max']:.4f}; pairs: {Path(lk['pairs_png']).name}")
        if lk.get("per_image"):
            table.add_row("leakage: nearest training image", f"{lk['per_image']['nearest_cosine_mean']:.4f}",
                          "mean cosine of each synthetic image to its closest training image")
    pr = doc.get("prc")
    if pr:
        table.add_row("precision / recall", f"{100 * pr['precision']:.2f} / {100 * pr['recall']:.2f}",
                      f"%, K={pr['k']}, {pr['extractor']}, vs {pr['reference_images']:,} real")
    if doc.get("fid") is not None:
        info = doc["fid_info"]
        table.add_row("FID", f"{doc['fid']:.2f}", f"{info['extractor']}, vs {info['reference_images']:,} real")
    for metric, reason in doc.get("not_computed", {}).items():
        table.add_row(f"[dim]{metric}[/dim]", "[dim]—[/dim]", f"[dim]{reason}[/dim]")
    Console(highlight=False).print(table)


def print_plan(plan: Any) -> None:
    table = Table(title=f"plan for {plan.run_dir}")
    for col in ("stage", "hash", "status", "what"):
        table.add_column(col)
    for name, path in plan.external.items():
        table.add_row(name, "", "[cyan]given[/cyan]", str(path))
    colors = {"cached": "green", "resume": "yellow", "run": "white"}
    for ps in plan.stages:
        table.add_row(ps.stage.name, ps.hash[:12], f"[{colors[ps.status]}]{ps.status}[/{colors[ps.status]}]", ps.detail)
    console.print(table)


def print_run_results(results: dict[str, Any]) -> None:
    table = Table(title="results")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for stage, summary in results.items():
        for k, v in summary.get("metrics", {}).items():
            if isinstance(v, (int, float)) and stage in ("eval", "metrics", "train"):
                table.add_row(k, f"{v:.4f}")
    console.print(table)


def print_align_table(summary: dict[str, Any], input_dir: Path, out: Path, policy: str) -> None:
    img, ids = summary["images"], summary["identities"]
    table = Table(title=f"align {input_dir} → {out} ({summary['detector_name'] or 'no detector: resize only'}, on failure: {policy})")
    for col in ("images", "aligned", "resized", "skipped", "dropped", "identities written", "identities dropped"):
        table.add_column(col, justify="right")
    table.add_row(str(img["input"]), str(img["aligned"]), str(img["resized"]), str(img["skipped"]), str(img["dropped"]),
                  f"{ids['written']}/{ids['input']}", str(ids["dropped"]))
    console.print(table)
