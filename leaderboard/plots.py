"""The leaderboard's pictures (matplotlib, Agg): Avg vs training images, and accuracy per benchmark."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from .collect import FIVE

BENCH_LABELS = {"lfw": "LFW", "cfp_fp": "CFP-FP", "cplfw": "CPLFW", "agedb_30": "AgeDB-30", "calfw": "CALFW"}
STYLE = {"measured": ("o", "tab:blue", "measured"), "published": ("s", "tab:orange", "published"),
         "demo": ("x", "tab:gray", "demo — random weights")}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def avg_vs_images(rows: pd.DataFrame, title: str = "Avg of the five benchmarks vs training images") -> Any:
    """Scatter of Avg (%) against training images (log x), every row with both, labelled."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.0, 5.6))
    pts = rows[pd.to_numeric(rows["avg"], errors="coerce").notna() & pd.to_numeric(rows["images"], errors="coerce").gt(0)]
    for badge, (marker, color, label) in STYLE.items():
        sub = pts[pts["badge"] == badge]
        if not len(sub):
            continue
        ax.scatter(sub["images"].astype(float), sub["avg"].astype(float), marker=marker, color=color, label=label, s=36,
                   facecolors="none" if badge == "published" else color, zorder=3)
        if badge == "published":  # many papers share a size: label the best of each size and the baselines only
            best = sub.loc[sub.groupby("images")["avg"].idxmax()]
            sub = pd.concat([best, sub[sub["real"].fillna(False).astype(bool)]]).drop_duplicates()
        for _, r in sub.iterrows():
            name = str(r["generator"]) + (" (real)" if r.get("real") is True and "(real)" not in str(r["generator"]) else "")
            ax.annotate(name, (float(r["images"]), float(r["avg"])), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("Avg accuracy (%) of LFW, CFP-FP, CPLFW, AgeDB-30, CALFW")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    if len(pts):
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no row has both an Avg and a dataset size", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def per_benchmark(rows: pd.DataFrame, top: int = 12) -> Any:
    """Accuracy on each benchmark for the ``top`` first rows (in table order) that have all five."""
    plt = _plt()
    full = rows[rows[FIVE].notna().all(axis=1)].head(top)
    fig, ax = plt.subplots(figsize=(9.0, 5.0))
    x = list(range(len(FIVE)))
    for _, r in full.iterrows():
        marker, color, _ = STYLE.get(str(r["badge"]), STYLE["published"])
        ax.plot(x, [float(r[b]) for b in FIVE], marker=marker, linewidth=1, alpha=0.85,
                label=f"{r['generator']} [{r['badge']}{', ' + str(r['table']) if r['badge'] == 'published' else ''}]")
    ax.set_xticks(x, [BENCH_LABELS[b] for b in FIVE])
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Per-benchmark accuracy, first {len(full)} rows with all five", fontsize=10)
    ax.grid(True, axis="y", alpha=0.25)
    if len(full):
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def to_svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _plt().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog: the SVG is inlined in HTML


def to_png(fig: Any, dpi: int = 150) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()
