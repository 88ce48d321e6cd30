"""Draw a :class:`~fr_bench.leaderboard.rank.Leaderboard` as a terminal table, Markdown, CSV or HTML.

Measured and published rows are always two separate tables (CSV: a ``source`` column), and published
rows name the paper table they come from. Human formats leave out metric columns that no row of that
table has, and say which.
"""

from __future__ import annotations

import html
import io
import math
from typing import Any, Callable

import pandas as pd

from .collect import CI_METRICS, METRICS
from .rank import SORT_KEYS, Leaderboard

FORMATS = ("table", "markdown", "csv", "html")

# column, header, format of a number
_METRIC_DISPLAY: list[tuple[str, str, str]] = [
    ("lfw", "LFW", ".2f"),
    ("cfp_fp", "CFP-FP", ".2f"),
    ("cplfw", "CPLFW", ".2f"),
    ("agedb_30", "AgeDB-30", ".2f"),
    ("calfw", "CALFW", ".2f"),
    ("avg", "Avg", ".2f"),
    ("ijbc_1e-4", "IJB-C TAR@1e-4", ".2f"),
    ("ijbc_1e-5", "IJB-C TAR@1e-5", ".2f"),
    ("eer", "EER", ".3f"),
    ("fdr", "FDR", ".3f"),
    ("lpips", "LPIPS", ".4f"),
    ("recall", "recall", ".2f"),
    ("fid", "FID", ".2f"),
    ("rfw_african", "RFW Afr", ".2f"),
    ("rfw_asian", "RFW Asi", ".2f"),
    ("rfw_caucasian", "RFW Cau", ".2f"),
    ("rfw_indian", "RFW Ind", ".2f"),
    ("rfw_std", "RFW STD", ".2f"),
    ("rfw_ser", "RFW SER", ".3f"),
    ("rfw_to", "RFW TO", ".2f"),
]
HEADERS = {c: h for c, h, _ in _METRIC_DISPLAY} | {"rank": "#", "generator": "generator", "size": "identities × images",
                                                   "run_id": "run id", "table": "published in"}
UNITS = ("LFW … Avg: verification accuracy, %, 10-fold; IJB-C: TAR % at the FAR; EER as a fraction; "
         "FDR = (μG−μI)²/(σG²+σI²); LPIPS: intra-class mean; recall: improved recall, %; FID lower is better; "
         "RFW: accuracy % per group, STD across groups (ddof=1), SER = max/min error, TO = mean − STD (FRCSyn); "
         "± = half-width of a 95% bootstrap interval (--bootstrap).")
PUBLISHED_TITLE = "Published results (the papers' numbers, not measured by frbench)"


def render(board: Leaderboard, fmt: str, *, width: int = 220) -> str:
    """The whole leaderboard in ``fmt`` (one of :data:`FORMATS`) as text."""
    if fmt == "table":
        return to_text(board, width=width)
    if fmt == "markdown":
        return to_markdown(board)
    if fmt == "csv":
        return to_csv(board)
    if fmt == "html":
        return to_html(board)
    raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


# ------------------------------------------------------------------------------------------ helpers
def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _fmt_metric(v: Any, spec: str) -> str:
    return "–" if _missing(v) else format(float(v), spec)


def _columns(df: pd.DataFrame, published: bool) -> tuple[list[str], list[str]]:
    """Columns shown for this table, and the metric headers left out because no row has them."""
    shown = ["rank", "generator", "size"]
    empty = []
    for col, header, _ in _METRIC_DISPLAY:
        if df[col].notna().any():
            shown.append(col)
        else:
            empty.append(header)
    shown.append("table" if published else "run_id")
    return shown, empty


def _cells(row: pd.Series, columns: list[str], *, short_ids: bool = False) -> list[str]:
    specs = {c: s for c, _, s in _METRIC_DISPLAY}
    out = []
    for col in columns:
        v = row[col]
        if col in specs:
            ci = row.get(f"ci_{col}")
            out.append(_fmt_metric(v, specs[col]) + ("" if _missing(v) or _missing(ci) else f" ± {format(float(ci), specs[col])}"))
        elif col == "rank":
            out.append("" if _missing(v) else str(int(v)))
        elif col == "run_id":
            rid = str(v)[:12] if short_ids else str(v)
            out.append(rid + (f" (+{int(row['runs']) - 1} same)" if not _missing(row["runs"]) and row["runs"] > 1 else ""))
        elif col == "generator":
            out.append(str(v) + (" ⚠" if not _missing(row.get("note")) else ""))
        else:
            out.append("–" if _missing(v) else str(v))
    return out


def _wrap_id(cell: str, left: str, right: str) -> str:
    """Mark up the run id, not the ``(+N same)`` that may follow it."""
    rid, _, rest = cell.partition(" ")
    return f"{left}{rid}{right}" + (f" {rest}" if rest else "")


def _sort_label(sort: str) -> str:
    column, higher = SORT_KEYS[sort]
    name = "date" if column == "start_time" else HEADERS.get(column, column)
    return f"sorted by {name}, {'highest' if higher else 'lowest'} first" if column != "start_time" else "most recent first"


def _heading(board: Leaderboard) -> str:
    where = f"experiment '{board.experiment}'" if board.experiment else "measured runs"
    return f"frbench leaderboard — {where}, {_sort_label(board.sort)}"


def _measured_notes(board: Leaderboard) -> list[str]:
    notes = []
    if board.measured.empty:
        notes.append("no finished runs with leaderboard metrics" + (f" in experiment '{board.experiment}'" if board.experiment else ""))
    if board.collapsed:
        notes.append(f"(+N same): N older runs of the same computation (equal stage hashes, or equal params for runs "
                     f"without hashes) folded into the newest; {board.collapsed} in all")
    if not board.measured.empty:
        _, empty = _columns(board.measured, False)
        if empty:
            notes.append("no values yet: " + ", ".join(empty))
    return notes


def _published_notes(pub: pd.DataFrame) -> list[str]:
    notes = []
    for _, r in pub[pub["note"].notna()].iterrows():
        notes.append(f"⚠ {r['generator']} ({r['table']}): {r['note']}")
    _, empty = _columns(pub, True)
    if empty:
        notes.append("not reported in these tables: " + ", ".join(empty))
    return notes


def _sources(pub: pd.DataFrame) -> list[tuple[str, str, str]]:
    seen = pub.drop_duplicates("table")
    return [(r["table"], r["citation"], r["recipe"] or "") for _, r in seen.iterrows()]


def _has_published(board: Leaderboard) -> bool:
    return board.published is not None and not board.published.empty


# ------------------------------------------------------------------------------------------ terminal
def rich_tables(board: Leaderboard) -> list[Any]:
    """rich renderables: the measured table, then (separately) the published one."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    out: list[Any] = []
    if board.measured.empty:
        out.append(Text(_heading(board), style="bold"))
        out.append(Text("\n".join(_measured_notes(board))))
    else:
        cols, _ = _columns(board.measured, False)
        t = Table(title=_heading(board), caption="\n".join(_measured_notes(board)) or None, caption_justify="left")
        for c in cols:
            t.add_column(HEADERS.get(c, c), justify="right" if c in METRICS or c == "rank" else "left", overflow="fold")
        for _, row in board.measured.iterrows():
            t.add_row(*[escape(x) for x in _cells(row, cols, short_ids=True)])
        out.append(t)
    if _has_published(board):
        pub = board.published
        cols, _ = _columns(pub, True)
        caption = _published_notes(pub) + [f"{name}: {cite}. {recipe}" for name, cite, recipe in _sources(pub)]
        p = Table(title=f"[italic]{PUBLISHED_TITLE}[/italic]", caption="\n".join(caption), caption_justify="left",
                  style="dim", row_styles=["italic"])
        for c in cols:
            p.add_column(HEADERS.get(c, c), justify="right" if c in METRICS or c == "rank" else "left", overflow="fold")
        for _, row in pub.iterrows():
            p.add_row(*[escape(x) for x in _cells(row, cols)])
        out.append(p)
    out.append(Text(UNITS, style="dim"))
    return out


def to_text(board: Leaderboard, *, width: int = 220) -> str:
    """The terminal rendering as plain text (what ``--format table --output FILE`` writes)."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False)
    for r in rich_tables(board):
        console.print(r)
        console.print()
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ markdown
def _md_table(df: pd.DataFrame, cols: list[str]) -> list[str]:
    esc: Callable[[str], str] = lambda s: s.replace("|", "\\|").replace("\n", " ")
    right = {c for c in cols if c in METRICS or c == "rank"}
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in cols) + " |",
             "|" + "|".join("---:" if c in right else "---" for c in cols) + "|"]
    for _, row in df.iterrows():
        cells = [_wrap_id(x, "`", "`") if c == "run_id" else x for c, x in zip(cols, _cells(row, cols))]
        lines.append("| " + " | ".join(esc(x) for x in cells) + " |")
    return lines


def to_markdown(board: Leaderboard) -> str:
    lines = [f"## {_heading(board)}", ""]
    cols, _ = _columns(board.measured, False)
    if not board.measured.empty:
        lines += _md_table(board.measured, cols) + [""]
    lines += [f"*{n}*  " for n in _measured_notes(board)]
    if _has_published(board):
        pub = board.published
        cols, _ = _columns(pub, True)
        lines += ["", f"## {PUBLISHED_TITLE}", ""] + _md_table(pub, cols) + [""]
        lines += [f"*{n}*  " for n in _published_notes(pub)]
        lines += ["", "Sources:", ""] + [f"- **{name}**: {cite}. {recipe}" for name, cite, recipe in _sources(pub)]
    lines += ["", f"*{UNITS}*", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- csv
CSV_COLUMNS = ["source", "rank", "generator", "size", "identities", "per_identity", *METRICS,
               "run_id", "run_name", "runs", "table", "citation", "note", *(f"ci_{c}" for c in CI_METRICS)]


def to_csv(board: Leaderboard) -> str:
    """One CSV, full precision, display units; ``source`` is ``measured`` or ``published``."""
    parts = [board.measured]
    if _has_published(board):
        parts.append(board.published)
    frame = pd.concat([p[CSV_COLUMNS] for p in parts], ignore_index=True) if any(len(p) for p in parts) else pd.DataFrame(columns=CSV_COLUMNS)
    return frame.to_csv(index=False, lineterminator="\n")


# ---------------------------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1500px;padding:0 1rem;color:#1d232a;background:#fff}
h1{font-size:1.4rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin-top:2.2rem}
.meta{color:#59636e;font-size:.85rem;margin:.2rem 0 1rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.85rem;white-space:nowrap}
th,td{padding:.3rem .55rem;border-bottom:1px solid #d8dee4;text-align:left}
th{background:#f3f5f7;position:sticky;top:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:hover{background:#f6f8fa}
table.measured tbody tr:first-child td{font-weight:600}
section.published{margin-top:2.5rem;border-left:4px solid #bf8700;padding-left:1rem}
table.published{color:#3d444d;font-style:italic}
table.published th{background:#fff8c5}
.badge{display:inline-block;font-size:.7rem;font-style:normal;padding:0 .35rem;margin-right:.35rem;border-radius:.6rem;background:#fff8c5;border:1px solid #d4a72c;color:#7d4e00}
.notes{color:#59636e;font-size:.8rem}
code{font-size:.8rem}
"""


def _html_table(df: pd.DataFrame, cols: list[str], published: bool) -> list[str]:
    cls = "published" if published else "measured"
    head = "".join(f'<th class="num">{html.escape(HEADERS.get(c, c))}</th>' if c in METRICS or c == "rank"
                   else f"<th>{html.escape(HEADERS.get(c, c))}</th>" for c in cols)
    lines = [f'<div class="scroll"><table class="{cls}">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for _, row in df.iterrows():
        cells = []
        for c, text in zip(cols, _cells(row, cols)):
            body = html.escape(text)
            if c == "generator" and published:
                body = '<span class="badge">published</span>' + body
            if c == "run_id":
                body = _wrap_id(body, "<code>", "</code>")
            title = f' title="{html.escape(str(row["note"]))}"' if c == "generator" and not _missing(row.get("note")) else ""
            cells.append(f'<td class="num">{body}</td>' if c in METRICS or c == "rank" else f"<td{title}>{body}</td>")
        lines.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    lines += ["</tbody>", "</table></div>"]
    return lines


def to_html(board: Leaderboard) -> str:
    """One self-contained page (inline CSS, no scripts, no external resources)."""
    e = html.escape
    meta = [f"sort: {e(_sort_label(board.sort))}"]
    if board.uri:
        meta.append(f"store: <code>{e(board.uri)}</code>")
    lines = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(_heading(board))}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             f"<h1>{e(_heading(board))}</h1>", f'<p class="meta">{" · ".join(meta)}</p>',
             '<section class="measured">', "<h2>Measured runs</h2>"]
    cols, _ = _columns(board.measured, False)
    if not board.measured.empty:
        lines += _html_table(board.measured, cols, published=False)
    lines += [f'<p class="notes">{e(n)}</p>' for n in _measured_notes(board)]
    lines.append("</section>")
    if _has_published(board):
        pub = board.published
        cols, _ = _columns(pub, True)
        lines += ['<section class="published">', f"<h2>{e(PUBLISHED_TITLE)}</h2>"]
        lines += _html_table(pub, cols, published=True)
        lines += [f'<p class="notes">{e(n)}</p>' for n in _published_notes(pub)]
        lines += ['<p class="notes">Sources:</p>', '<ul class="notes">']
        lines += [f"<li><b>{e(name)}</b>: {e(cite)}. {e(recipe)}</li>" for name, cite, recipe in _sources(pub)]
        lines += ["</ul>", "</section>"]
    lines += [f'<p class="notes">{e(UNITS)}</p>', "</body>", "</html>", ""]
    return "\n".join(lines)
