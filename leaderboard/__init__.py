"""The leaderboard: MLflow runs and the papers' published numbers, ranked side by side (never mixed).

``load_measured(uri, experiment)`` and ``load_published()`` give DataFrames, ``build_leaderboard``
collapses duplicate runs and ranks, ``render(board, fmt)`` draws it (table, markdown, csv, html).
"""

from .collect import COLUMNS, METRICS, load_measured, load_published, measured_frame, stage_hashes
from .rank import SORT_KEYS, Leaderboard, build_leaderboard, collapse_duplicates, rank
from .render import FORMATS, render

__all__ = [
    "COLUMNS", "FORMATS", "METRICS", "SORT_KEYS", "Leaderboard", "build_leaderboard", "collapse_duplicates",
    "load_measured", "load_published", "measured_frame", "rank", "render", "stage_hashes",
]
