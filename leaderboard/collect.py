"""Leaderboard rows from their two sources: MLflow runs (measured) and ``published.yaml`` (papers).

A measured row is one top-level run — a ``frbench run`` parent (tag ``frbench.stage=run``) with the
metrics of all its descendant stage runs merged in, or a standalone ``frbench eval`` / ``metrics`` run
— that has at least one leaderboard metric. Runs are read through :mod:`fr_bench.tracking` (the only
module that talks to MLflow), so this module only sees plain dicts.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from importlib import resources
from typing import Any, Iterable

import pandas as pd
import yaml

from fr_bench.errors import InputError

#: leaderboard column → (MLflow metric key the stages log, factor to the displayed unit)
METRICS: dict[str, tuple[str, float]] = {
    "lfw": ("lfw/accuracy", 100.0),
    "cfp_fp": ("cfp_fp/accuracy", 100.0),
    "cplfw": ("cplfw/accuracy", 100.0),
    "agedb_30": ("agedb_30/accuracy", 100.0),
    "calfw": ("calfw/accuracy", 100.0),
    "avg": ("verification/avg", 100.0),
    "ijbc_1e-4": ("ijbc/tar_far_1e-4", 100.0),
    "ijbc_1e-5": ("ijbc/tar_far_1e-5", 100.0),
    "eer": ("separability/eer", 1.0),
    "fdr": ("separability/fdr", 1.0),
    "lpips": ("lpips/mean", 1.0),
    "recall": ("prc/recall", 100.0),
    "fid": ("fid", 1.0),
    # demographic fairness (RFW, 10-fold per group): accuracy %, STD (ddof=1, points), SER, TO = mean − STD
    "rfw_african": ("rfw/African/accuracy", 100.0),
    "rfw_asian": ("rfw/Asian/accuracy", 100.0),
    "rfw_caucasian": ("rfw/Caucasian/accuracy", 100.0),
    "rfw_indian": ("rfw/Indian/accuracy", 100.0),
    "rfw_std": ("rfw/std", 1.0),
    "rfw_ser": ("rfw/ser", 1.0),
    "rfw_to": ("rfw/to", 1.0),
    "rfw_mean": ("rfw/mean", 1.0),
}
FIVE = ["lfw", "cfp_fp", "cplfw", "agedb_30", "calfw"]

#: 95% bootstrap intervals the stages log (``--bootstrap``): column → (metric key prefix); shown as ± half-width
CI_METRICS: dict[str, str] = {
    **{b: f"{b}/accuracy_ci95" for b in FIVE},
    "eer": "separability/eer_ci95",
    "fdr": "separability/fdr_ci95",
    "lpips": "lpips/mean_ci95",
}

#: every column of a leaderboard frame, measured and published alike
COLUMNS = [
    "source", "generator", "size", "identities", "per_identity", *METRICS,
    "run_id", "run_name", "stage", "start_time", "dedupe_key", "runs", "table", "citation", "recipe", "note",
    *(f"ci_{c}" for c in CI_METRICS),
    # one-table leaderboard: what a row is, where it comes from, how its recognizer was trained
    "badge", "table_id", "cite", "backbone", "loss", "epochs", "images", "real", "sep_model", "hist_png",
]
BADGES = ("measured", "published", "demo")
DEMO_TAG = "frbench.demo"
REAL_TAG = "frbench.real"

STAGE_TAG = "frbench.stage"
HASHES_TAG = "frbench.stage_hashes"
HASH_TAG_PREFIX = "frbench.hash."
PARENT_TAG = "mlflow.parentRunId"


# ------------------------------------------------------------------------------------------ measured
def load_measured(uri: str, experiment: str) -> pd.DataFrame:
    """The measured rows of ``experiment`` at ``uri`` (every finished top-level run, before collapsing)."""
    from fr_bench.tracking import search_runs

    return measured_frame(search_runs(uri, experiment))


def measured_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Run dicts (as :func:`fr_bench.tracking.search_runs` returns them) → one row per finished root run."""
    records = list(records)
    by_id = {r["run_id"]: r for r in records}
    children: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        root = _root_of(r, by_id)
        if root != r["run_id"]:
            children.setdefault(root, []).append(r)
    rows = []
    for r in records:
        if r["tags"].get(PARENT_TAG) in by_id or r.get("status") != "FINISHED":
            continue  # a stage of another row, or a run that did not finish
        row = _merge(r, sorted(children.get(r["run_id"], []), key=_when))
        if any(row[c] is not None for c in METRICS):
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _root_of(run: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str:
    seen = {run["run_id"]}
    while (parent := run["tags"].get(PARENT_TAG)) in by_id and parent not in seen:
        seen.add(parent)
        run = by_id[parent]
    return run["run_id"]


def _when(run: dict[str, Any]) -> tuple[int, int]:
    return (run.get("start_time") or 0, run.get("end_time") or 0)


def _merge(root: dict[str, Any], descendants: list[dict[str, Any]]) -> dict[str, Any]:
    """The root's own values win; otherwise the most recent descendant's (runs oldest first)."""
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for run in [*descendants, root]:
        metrics.update(run["metrics"])
        params.update(run["params"])
        tags.update({k: v for k, v in run["tags"].items() if not k.startswith("mlflow.")})
        hashes.update(stage_hashes(run["tags"]))

    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    for col, (key, factor) in METRICS.items():
        value = metrics.get(key)
        row[col] = None if value is None or not math.isfinite(value) else value * factor
    for col, prefix in CI_METRICS.items():
        lo, hi = metrics.get(f"{prefix}_lo"), metrics.get(f"{prefix}_hi")
        if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
            row[f"ci_{col}"] = (hi - lo) / 2 * METRICS[col][1]
    if row["avg"] is None and all(row[c] is not None for c in FIVE):
        row["avg"] = sum(row[c] for c in FIVE) / len(FIVE)
    identities = _as_int(_lookup(params, tags, "identities"))
    per_identity = _as_int(_lookup(params, tags, "per_identity"))
    generator = _lookup(params, tags, "generator")
    images = _as_int(_lookup(params, tags, "images"))
    if images is None and identities is not None and per_identity is not None:
        images = identities * per_identity
    fr_model = _lookup(params, tags, "fr_model")
    fr_sha = _lookup(params, tags, "fr_model_sha256")
    fr_name = _lookup(params, tags, "fr_model_name")  # declared published name: shares a block with published rows
    demo = str(tags.get(DEMO_TAG, "")).lower() == "true"
    row.update(
        badge="demo" if demo else "measured",
        recipe=_lookup(params, tags, "recipe"),
        images=images,
        real=str(tags.get(REAL_TAG, "")).lower() == "true",
        sep_model=(fr_name or f"{Path(str(fr_model)).name}" + (f" ({str(fr_sha)[:8]})" if fr_sha else ""))
        if fr_model and row["eer"] is not None else None,
        hist_png=_artifact(root, descendants, "separability_hist.png"),
    )
    row.update(
        source="measured",
        generator=generator or root.get("name") or root["run_id"][:8],
        identities=identities,
        per_identity=per_identity,
        size=size_label(identities, per_identity),
        run_id=root["run_id"],
        run_name=root.get("name"),
        stage=root["tags"].get(STAGE_TAG),
        start_time=root.get("start_time"),
        dedupe_key=_dedupe_key(root, hashes, params),
        runs=1,
    )
    return row


def _artifact(root: dict[str, Any], descendants: list[dict[str, Any]], name: str) -> str | None:
    """A local file ``name`` logged by the root run or its most recent descendant that has it."""
    for run in [root, *reversed(descendants)]:
        uri = run.get("artifact_uri") or ""
        if uri.startswith("file://"):
            uri = uri[len("file://"):]
        elif "://" in uri:
            continue  # remote artifact stores are not read by the leaderboard
        path = Path(uri) / name if uri else None
        if path is not None and path.is_file():
            return str(path)
    return None


def stage_hashes(tags: dict[str, str]) -> dict[str, str]:
    """``{stage: hash}`` from a run's tags.

    Read, in this order: ``frbench.stage_hashes`` (a JSON object, or ``stage:hash`` / ``stage=hash``
    pairs separated by commas), per-stage tags ``frbench.hash.<stage>``, and a stage run's own
    ``frbench.hash`` with its ``frbench.stage``.
    """
    out: dict[str, str] = {}
    raw = tags.get(HASHES_TAG)
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = dict(re.split(r"[=:]", p, maxsplit=1) for p in raw.split(",") if re.search(r"[=:]", p))
        if isinstance(parsed, dict):
            out.update({str(k).strip(): str(v).strip() for k, v in parsed.items()})
    for key, value in tags.items():
        if key.startswith(HASH_TAG_PREFIX):
            out[key[len(HASH_TAG_PREFIX):]] = value
    if tags.get("frbench.hash") and tags.get(STAGE_TAG):
        out[tags[STAGE_TAG]] = tags["frbench.hash"]
    return out


def _dedupe_key(root: dict[str, Any], hashes: dict[str, str], params: dict[str, str]) -> str:
    """Rows with equal keys are the same computation: identical stage hashes, or (for runs without
    hashes, e.g. ``frbench eval``, whose params include the sha256 of the model and of every benchmark
    file) the same stage and identical params. A run with neither is unique."""
    if hashes:
        return "hashes:" + json.dumps(hashes, sort_keys=True)
    if params:
        return "params:" + json.dumps([root["tags"].get(STAGE_TAG), params], sort_keys=True)
    return "run:" + root["run_id"]


def _lookup(params: dict[str, str], tags: dict[str, str], name: str) -> str | None:
    """``name`` as a param or tag, else as the last part of a flattened config key (``generate.name``)."""
    for source in (params, tags):
        if source.get(name):
            return source[name]
    for source in (params, tags):
        for key in sorted(source):
            if key.endswith("." + name) and source[key]:
                return source[key]
    return None


def _as_int(value: Any) -> int | None:
    try:
        return int(str(value).replace(",", "").replace("_", ""))
    except (TypeError, ValueError):
        return None


def size_label(identities: int | None, per_identity: int | None) -> str | None:
    """Dataset size the way the papers print it: ``0.5M (10k×50)``."""
    if identities is None and per_identity is None:
        return None
    if identities is None or per_identity is None:
        return f"{_count(identities) if identities is not None else '?'}×{per_identity if per_identity is not None else '?'}"
    total = identities * per_identity
    return f"{_count(total)} ({_count(identities)}×{per_identity})"


def _count(n: int) -> str:
    if n >= 100_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


# ----------------------------------------------------------------------------------------- published
PUBLISHED_KEYS = {
    "method", "size", "images", "identities", "per_identity", "real", "dm_data", "note", *METRICS,
    "fmr100", "fmr1000", "genuine_mean", "genuine_std", "impostor_mean", "impostor_std",
}


def images_from_size(size: str | None) -> int | None:
    """Training images from a printed size such as ``0.5M (10k×50)`` or ``12M``; None if it has none."""
    m = re.match(r"\s*~?\s*([\d.]+)\s*([MK])\b", str(size or ""), re.IGNORECASE)
    if not m:
        return None
    return int(round(float(m.group(1)) * (1e6 if m.group(2).upper() == "M" else 1e3)))


def avg_flag(row: dict[str, Any]) -> str | None:
    """A note when a printed Avg differs from the mean of the five printed values by more than rounding can."""
    if row.get("avg") is None or any(row.get(b) is None for b in FIVE):
        return None
    mean = sum(float(row[b]) for b in FIVE) / len(FIVE)
    # six numbers printed to 2 decimals: rounding alone moves the mean of the five and the printed Avg
    # by up to 0.005 each, so only a difference above 0.01 is a real mismatch
    if abs(mean - float(row["avg"])) > 0.01 + 1e-9:
        return f"printed Avg {float(row['avg']):.2f}, but the five printed values average to {mean:.2f}"
    return None


def load_published() -> pd.DataFrame:
    """The papers' rows from the ``published.yaml`` shipped with frbench, one frame."""
    where = "fr_bench/leaderboard/published.yaml"
    text = resources.files(__package__).joinpath("published.yaml").read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(where, f"invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tables"), list):
        raise InputError(where, "expected a top-level 'tables' list")
    rows = []
    for t in doc["tables"]:
        for k in ("table", "citation", "rows"):
            if k not in t:
                raise InputError(where, f"table {t.get('id', '?')}: missing '{k}'")
        for r in t["rows"]:
            unknown = set(r) - PUBLISHED_KEYS
            if unknown or "method" not in r:
                raise InputError(where, f"{t['table']}: row {r.get('method', '?')}: "
                                 + (f"unknown keys {sorted(unknown)}" if unknown else "missing 'method'"))
            label = r["method"] + (" (real)" if r.get("real") else "") + (f" [{r['dm_data']} DM]" if r.get("dm_data") else "")
            row: dict[str, Any] = dict.fromkeys(COLUMNS)
            row.update({c: (float(r[c]) if r.get(c) is not None else None) for c in METRICS})
            ids, per = r.get("identities"), r.get("per_identity")
            images = r.get("images") or images_from_size(r.get("size")) or (ids * per if ids and per else None)
            row.update(
                source="published", generator=label, size=r.get("size"), identities=ids,
                per_identity=per, table=t["table"], citation=t["citation"],
                recipe=t.get("recipe"), note=r.get("note") or avg_flag(r), badge="published", table_id=t.get("id"),
                cite=t.get("cite"), backbone=t.get("backbone"), loss=t.get("loss"), epochs=t.get("epochs"),
                images=images, real=bool(r.get("real")),
                sep_model=t.get("fr_model") if r.get("eer") is not None or r.get("fdr") is not None else None,
            )
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
