"""Ranking: one table of measured and published rows, compared honestly.

* Measured runs of the same computation collapse to the most recent.
* Measured and published rows share one ranking; demo rows (random weights) are listed after it,
  never ranked.
* ``gap`` = a row's Avg minus the CASIA-WebFace baseline *of the same source*: a published row's own
  paper table, a measured row's most recent measured real-data run with the same recipe.
* Rankings: by any metric column, by an SDFR-style Borda count over the five benchmarks, or by
  FRCSyn's TO on RFW. Separability (EER, FDR) is only ranked among rows whose numbers come from the
  same FR model: the rank restarts for each model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from .collect import FIVE

#: ``--sort`` value → (column, higher is better)
SORT_KEYS: dict[str, tuple[str, bool]] = {
    "avg": ("avg", True),
    "borda": ("borda", True),
    "to": ("rfw_to", True),
    "lfw": ("lfw", True),
    "cfp_fp": ("cfp_fp", True),
    "cplfw": ("cplfw", True),
    "agedb_30": ("agedb_30", True),
    "calfw": ("calfw", True),
    "ijbc": ("ijbc_1e-4", True),
    "ijbc_1e-5": ("ijbc_1e-5", True),
    "gap": ("gap", True),
    "eer": ("eer", False),
    "fdr": ("fdr", True),
    "lpips": ("lpips", True),
    "recall": ("recall", True),
    "fid": ("fid", False),
    "recent": ("start_time", True),
}
#: sorts that only compare rows scored with the same FR model
PER_MODEL_SORTS = ("eer", "fdr")


def collapse_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ``dedupe_key``: the most recent run, with ``runs`` = how many runs it stands for."""
    if df.empty:
        return df.copy()
    ordered = df.assign(_order=range(len(df))).sort_values(["start_time", "_order"], kind="stable", na_position="first")
    counts = ordered.groupby("dedupe_key", sort=False)["run_id"].transform("size")
    latest = ordered.assign(runs=counts).drop_duplicates("dedupe_key", keep="last")
    return latest.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def gap_to_real(df: pd.DataFrame) -> pd.DataFrame:
    """Adds ``gap`` (Avg − the same source's CASIA-WebFace Avg) and ``gap_baseline`` (which baseline)."""
    out = df.copy()
    out["gap"] = pd.Series([None] * len(out), dtype="object")
    out["gap_baseline"] = pd.Series([None] * len(out), dtype="object")
    real = out["real"].fillna(False).astype(bool)
    for i, row in out.iterrows():
        if pd.isna(row["avg"]) or real[i] or row["badge"] == "demo":
            continue
        if row["badge"] == "published":
            base = out[(out["badge"] == "published") & real & (out["table_id"] == row["table_id"]) & out["avg"].notna()]
            label = lambda b: f"{b['table']} CASIA-WebFace"  # noqa: E731
        else:
            if row["recipe"] is None or pd.isna(row["recipe"]):
                continue
            base = out[(out["badge"] == "measured") & real & out["avg"].notna() & (out["recipe"].astype(str) == str(row["recipe"]))]
            base = base.sort_values("start_time", kind="stable")
            label = lambda b: f"measured {b['generator']} ({b['recipe']})"  # noqa: E731
        if len(base):
            b = base.iloc[-1]
            out.at[i, "gap"] = float(row["avg"]) - float(b["avg"])
            out.at[i, "gap_baseline"] = label(b)
    out["gap"] = pd.to_numeric(out["gap"], errors="coerce")
    return out


def borda(df: pd.DataFrame) -> pd.Series:
    """SDFR-style Borda count over the five benchmarks among the (non-demo) rows that have all five: on each
    benchmark a row earns one point per row it beats and half a point per tie; None elsewhere."""
    eligible = df[FIVE].notna().all(axis=1) & (df["badge"] != "demo")
    points = pd.Series([None] * len(df), index=df.index, dtype="object")
    sub = df.loc[eligible, FIVE].astype(float)
    if len(sub):
        # rank(method="average") of n rows: beaten + (ties − 1)/2 + 1
        total = sum(sub[b].rank(method="average") - 1.0 for b in FIVE)
        points.loc[eligible] = total
    return pd.to_numeric(points, errors="coerce")


def _rank_block(df: pd.DataFrame, column: str, higher: bool) -> pd.DataFrame:
    out = df.assign(_order=range(len(df)), _recent=-pd.to_numeric(df["start_time"], errors="coerce").fillna(0))
    out["_value"] = pd.to_numeric(out[column], errors="coerce")
    out = out.sort_values(["_value", "_recent", "_order"], ascending=[not higher, True, True], kind="stable", na_position="last")
    out["rank"] = out["_value"].rank(method="min", ascending=not higher).astype("Int64")  # ties share a rank
    return out.drop(columns=["_order", "_recent", "_value"])


def rank(df: pd.DataFrame, sort: str = "avg") -> pd.DataFrame:
    """Rows best first by ``sort`` (see :data:`SORT_KEYS`); rows without that value go last, unranked;
    demo rows come after every real row and are never ranked. Adds ``rank``."""
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r} (choose from {', '.join(SORT_KEYS)})")
    column, higher = SORT_KEYS[sort]
    if "borda" not in df:
        df = df.assign(borda=borda(df))
    is_demo = df["badge"] == "demo"
    ranked, demo = df[~is_demo], df[is_demo]
    if sort in PER_MODEL_SORTS:
        blocks = []
        models = ranked.loc[ranked[column].notna(), "sep_model"].fillna("(unknown FR model)")
        for model in models.value_counts(sort=True).index:  # the model with most rows first
            blocks.append(_rank_block(ranked[(ranked[column].notna()) & (ranked["sep_model"].fillna("(unknown FR model)") == model)], column, higher))
        rest = ranked[ranked[column].isna()].assign(rank=pd.NA)
        ranked = pd.concat([*blocks, rest]) if blocks else rest
    else:
        ranked = _rank_block(ranked, column, higher)
    demo = demo.assign(rank=pd.NA)
    out = pd.concat([ranked, demo]) if len(demo) else ranked
    out["rank"] = out["rank"].astype("Int64")
    return out.reset_index(drop=True)


def apply_filters(df: pd.DataFrame, recipe: Optional[str] = None, size: Optional[str] = None,
                  source: Optional[str] = None) -> pd.DataFrame:
    """Rows whose recipe (text, backbone or loss), size (printed size or image count) and source
    (badge, table id, table or citation) contain the given text, case-insensitive."""
    keep = pd.Series(True, index=df.index)

    def has(cols: list[str], text: str) -> pd.Series:
        low = text.lower()
        hit = pd.Series(False, index=df.index)
        for c in cols:
            hit |= df[c].astype(str).str.lower().str.contains(low, regex=False) & df[c].notna()
        return hit

    if recipe:
        keep &= has(["recipe", "backbone", "loss"], recipe)
    if size:
        keep &= has(["size"], size) | (df["images"].astype(str) == size.replace(",", ""))
    if source:
        keep &= has(["badge", "table_id", "table", "citation"], source)
    return df[keep].reset_index(drop=True)


@dataclass
class Leaderboard:
    """What the renderers draw: one ranked frame of measured, published and demo rows."""

    rows: pd.DataFrame
    sort: str
    experiment: str | None = None
    uri: str | None = None
    collapsed: int = 0  # runs hidden behind a more recent run of the same computation
    filters: dict[str, str] = field(default_factory=dict)

    @property
    def measured(self) -> pd.DataFrame:
        return self.rows[self.rows["badge"] != "published"].reset_index(drop=True)

    @property
    def published(self) -> pd.DataFrame:
        return self.rows[self.rows["badge"] == "published"].reset_index(drop=True)


def build_leaderboard(measured: pd.DataFrame, published: pd.DataFrame | None = None, sort: str = "avg",
                      experiment: str | None = None, uri: str | None = None, *, recipe: Optional[str] = None,
                      size: Optional[str] = None, source: Optional[str] = None) -> Leaderboard:
    """Collapse duplicate measured runs, add gap to real and Borda points, filter, and rank all rows together."""
    unique = collapse_duplicates(measured)
    parts = [p for p in (unique, published) if p is not None and len(p)]
    frame = pd.concat(parts, ignore_index=True) if parts else unique.iloc[0:0]
    frame = gap_to_real(frame) if len(frame) else frame.assign(gap=pd.Series(dtype=float), gap_baseline=pd.Series(dtype=object))
    frame = apply_filters(frame, recipe, size, source)
    frame = frame.assign(borda=borda(frame))
    filters = {k: v for k, v in (("recipe", recipe), ("size", size), ("source", source)) if v}
    return Leaderboard(rank(frame, sort), sort, experiment, uri, len(measured) - len(unique), filters)
