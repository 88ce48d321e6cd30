"""Ranking: collapse repeated computations, then sort by one metric, best first."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

#: ``--sort`` value → (column, higher is better)
SORT_KEYS: dict[str, tuple[str, bool]] = {
    "avg": ("avg", True),
    "lfw": ("lfw", True),
    "cfp_fp": ("cfp_fp", True),
    "cplfw": ("cplfw", True),
    "agedb_30": ("agedb_30", True),
    "calfw": ("calfw", True),
    "ijbc": ("ijbc_1e-4", True),
    "ijbc_1e-5": ("ijbc_1e-5", True),
    "eer": ("eer", False),
    "fdr": ("fdr", True),
    "lpips": ("lpips", True),
    "recall": ("recall", True),
    "fid": ("fid", False),
    "recent": ("start_time", True),
}


def collapse_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ``dedupe_key``: the most recent run, with ``runs`` = how many runs it stands for."""
    if df.empty:
        return df.copy()
    ordered = df.assign(_order=range(len(df))).sort_values(["start_time", "_order"], kind="stable", na_position="first")
    counts = ordered.groupby("dedupe_key", sort=False)["run_id"].transform("size")
    latest = ordered.assign(runs=counts).drop_duplicates("dedupe_key", keep="last")
    return latest.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def rank(df: pd.DataFrame, sort: str = "avg") -> pd.DataFrame:
    """Rows best first by ``sort`` (see :data:`SORT_KEYS`); rows without that value go last, unranked.

    Ties keep the more recent run first (measured) or the papers' order (published). Adds ``rank``.
    """
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r} (choose from {', '.join(SORT_KEYS)})")
    column, higher = SORT_KEYS[sort]
    out = df.assign(_order=range(len(df)), _recent=-pd.to_numeric(df["start_time"], errors="coerce").fillna(0))
    out["_value"] = pd.to_numeric(out[column], errors="coerce")
    out = out.sort_values(["_value", "_recent", "_order"], ascending=[not higher, True, True], kind="stable", na_position="last")
    out["rank"] = out["_value"].rank(method="min", ascending=not higher).astype("Int64")  # ties share a rank
    return out.drop(columns=["_order", "_recent", "_value"]).reset_index(drop=True)


@dataclass
class Leaderboard:
    """What the renderers draw: measured rows and (separately) published rows, both ranked."""

    measured: pd.DataFrame
    published: pd.DataFrame | None
    sort: str
    experiment: str | None = None
    uri: str | None = None
    collapsed: int = 0  # runs hidden behind a more recent run of the same computation


def build_leaderboard(measured: pd.DataFrame, published: pd.DataFrame | None = None, sort: str = "avg",
                      experiment: str | None = None, uri: str | None = None) -> Leaderboard:
    """Collapse duplicate measured runs and rank both parts by ``sort``; they are never merged."""
    unique = collapse_duplicates(measured)
    return Leaderboard(
        measured=rank(unique, sort),
        published=None if published is None else rank(published, sort),
        sort=sort,
        experiment=experiment,
        uri=uri,
        collapsed=len(measured) - len(unique),
    )
