"""Draw a :class:`~fr_bench.leaderboard.rank.Leaderboard`: terminal, Markdown, CSV, HTML, PNG, LaTeX.

One table: measured, published and demo rows, each with a badge; published rows name their source,
demo rows say "demo — random weights" and are never ranked. Human formats leave out metric columns
that no row has, and say which.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .collect import CI_METRICS, FIVE, METRICS
from .rank import PER_MODEL_SORTS, SORT_KEYS, Leaderboard

FORMATS = ("table", "markdown", "csv", "html", "png", "latex")
BINARY_FORMATS = ("png",)

# column, header, format of a number
_METRIC_DISPLAY: list[tuple[str, str, str]] = [
    ("lfw", "LFW", ".2f"),
    ("cfp_fp", "CFP-FP", ".2f"),
    ("cplfw", "CPLFW", ".2f"),
    ("agedb_30", "AgeDB-30", ".2f"),
    ("calfw", "CALFW", ".2f"),
    ("avg", "Avg", ".2f"),
    ("gap", "gap to real", "+.2f"),
    ("borda", "Borda", ".1f"),
    ("ijbc_1e-4", "IJB-C TAR@1e-4", ".2f"),
    ("ijbc_1e-5", "IJB-C TAR@1e-5", ".2f"),
    ("rfw_african", "RFW Afr", ".2f"),
    ("rfw_asian", "RFW Asi", ".2f"),
    ("rfw_caucasian", "RFW Cau", ".2f"),
    ("rfw_indian", "RFW Ind", ".2f"),
    ("rfw_mean", "RFW mean", ".2f"),
    ("rfw_std", "RFW STD", ".2f"),
    ("rfw_ser", "RFW SER", ".3f"),
    ("rfw_to", "RFW TO", ".2f"),
    ("eer", "EER", ".3f"),
    ("fdr", "FDR", ".3f"),
    ("lpips", "LPIPS", ".4f"),
    ("recall", "recall", ".2f"),
    ("fid", "FID", ".2f"),
]
NUMERIC = {c for c, _, _ in _METRIC_DISPLAY} | {"rank"}
SPECS = {c: s for c, _, s in _METRIC_DISPLAY}
HEADERS = {c: h for c, h, _ in _METRIC_DISPLAY} | {
    "rank": "#", "badge": "", "generator": "method", "size": "data", "source": "source", "training": "FR recipe",
    "sep_model": "separability FR model", "run_id": "run id"}
UNITS = ("LFW … Avg: verification accuracy, %, 10-fold; gap to real: Avg − the CASIA-WebFace Avg of the same source "
         "(published: that paper's table; measured: the latest measured real-data run with the same recipe); Borda: "
         "SDFR-style points over the five benchmarks; IJB-C: TAR % at the FAR; RFW: accuracy % per group, STD across "
         "groups (ddof=1), SER = max/min error, TO = mean − STD (FRCSyn); EER as a fraction; FDR = (μG−μI)²/(σG²+σI²), "
         "compared only between rows of the same separability FR model; LPIPS: intra-class mean; recall: improved "
         "recall, %; FID lower is better; ± = half-width of a 95% bootstrap interval.")
DEMO_LABEL = "demo — random weights"


def render(board: Leaderboard, fmt: str, *, width: int = 220) -> str | bytes:
    """The whole leaderboard in ``fmt`` (one of :data:`FORMATS`); ``png`` gives bytes."""
    renderers: dict[str, Callable[[Leaderboard], str | bytes]] = {
        "table": lambda b: to_text(b, width=width), "markdown": to_markdown, "csv": to_csv, "html": to_html,
        "png": to_png, "latex": to_latex}
    if fmt not in renderers:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return renderers[fmt](board)


# ------------------------------------------------------------------------------------------ helpers
def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _fmt_metric(v: Any, spec: str) -> str:
    return "–" if _missing(v) else format(float(v), spec)


def _columns(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Columns shown, and the metric headers left out because no row has them."""
    shown = ["rank", "badge", "generator", "source", "training", "size"]
    empty = []
    for col, header, _ in _METRIC_DISPLAY:
        if col in df and df[col].notna().any():
            shown.append(col)
            if col == "fdr" or (col == "eer" and not df["fdr"].notna().any()):
                shown.append("sep_model")
        elif col not in ("gap", "borda"):
            empty.append(header)
    if "sep_model" in shown and shown.count("sep_model") > 1:
        shown = [c for i, c in enumerate(shown) if c != "sep_model" or shown.index("sep_model") == i]
    if (df["badge"] != "published").any():
        shown.append("run_id")
    return shown, empty


def _source(row: pd.Series) -> str:
    return str(row["table"]) if row["badge"] == "published" else "frbench"


def _training(row: pd.Series) -> str:
    if row["badge"] == "published":
        parts = [str(row[k]) for k in ("backbone", "loss") if not _missing(row.get(k))]
        if not _missing(row.get("epochs")):
            parts.append(f"{int(row['epochs'])} ep")
        return " ".join(parts) or "–"
    return "–" if _missing(row.get("recipe")) else f"recipe {row['recipe']}"


def _cell(row: pd.Series, col: str, *, short_ids: bool = False) -> str:
    v = row.get(col)
    if col in SPECS:
        ci = row.get(f"ci_{col}")
        return _fmt_metric(v, SPECS[col]) + ("" if _missing(v) or _missing(ci) else f" ± {format(float(ci), SPECS[col].lstrip('+'))}")
    if col == "rank":
        return "" if _missing(v) else str(int(v))
    if col == "badge":
        return DEMO_LABEL if v == "demo" else str(v)
    if col == "source":
        return _source(row)
    if col == "training":
        return _training(row)
    if col == "run_id":
        if _missing(v):
            return ""
        rid = str(v)[:12] if short_ids else str(v)
        return rid + (f" (+{int(row['runs']) - 1} same)" if not _missing(row.get("runs")) and row["runs"] > 1 else "")
    if col == "generator":
        return str(v) + (" ⚠" if not _missing(row.get("note")) else "")
    return "–" if _missing(v) else str(v)


def _sort_label(board: Leaderboard) -> str:
    column, higher = SORT_KEYS[board.sort]
    if column == "start_time":
        return "most recent first"
    what = {"borda": "Borda count over the five benchmarks", "rfw_to": "FRCSyn TO on RFW"}.get(column, HEADERS.get(column, column))
    extra = " (ranked separately for each separability FR model)" if board.sort in PER_MODEL_SORTS else ""
    return f"ranked by {what}, {'highest' if higher else 'lowest'} first{extra}"


def _heading(board: Leaderboard) -> str:
    where = f"experiment '{board.experiment}'" if board.experiment else "measured runs"
    return f"frbench leaderboard — {where} and published results, {_sort_label(board)}"


def _notes(board: Leaderboard) -> list[str]:
    rows = board.rows
    notes = []
    if board.filters:
        notes.append("filtered: " + ", ".join(f"{k} contains '{v}'" for k, v in board.filters.items()))
    if not (rows["badge"] == "measured").any():
        notes.append("no finished measured runs with leaderboard metrics" + (f" in experiment '{board.experiment}'" if board.experiment else ""))
    if (rows["badge"] == "demo").any():
        notes.append(f"{DEMO_LABEL}: rows from `demo: true` runs (tiny random-weight models) are listed last and never ranked; their numbers mean nothing")
    if board.collapsed:
        notes.append(f"(+N same): N older runs of the same computation folded into the newest; {board.collapsed} in all")
    for _, r in rows[rows["note"].notna()].iterrows():
        notes.append(f"⚠ {r['generator']} ({r['table'] if r['badge'] == 'published' else 'measured'}): {r['note']}")
    _, empty = _columns(rows)
    if empty:
        notes.append("no values in any row: " + ", ".join(empty))
    return notes


def _sources(board: Leaderboard) -> list[tuple[str, str, str]]:
    pub = board.rows[board.rows["badge"] == "published"].drop_duplicates("table")
    return [(r["table"], r["citation"], r["recipe"] or "") for _, r in pub.iterrows()]


# ------------------------------------------------------------------------------------------ terminal
def rich_tables(board: Leaderboard) -> list[Any]:
    """rich renderables: the one table, its notes and units."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    cols, _ = _columns(board.rows)
    caption = _notes(board) + [f"{name}: {cite}. {recipe}" for name, cite, recipe in _sources(board)]
    t = Table(title=_heading(board), caption="\n".join(caption) or None, caption_justify="left")
    for c in cols:
        t.add_column(HEADERS.get(c, c), justify="right" if c in NUMERIC else "left", overflow="fold")
    styles = {"published": "italic", "demo": "dim"}
    for _, row in board.rows.iterrows():
        t.add_row(*[escape(_cell(row, c, short_ids=True)) for c in cols], style=styles.get(row["badge"]))
    return [t, Text(UNITS, style="dim")]


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
def to_markdown(board: Leaderboard) -> str:
    esc: Callable[[str], str] = lambda s: s.replace("|", "\\|").replace("\n", " ")
    cols, _ = _columns(board.rows)
    lines = [f"## {_heading(board)}", "",
             "| " + " | ".join(HEADERS.get(c, c) or "kind" for c in cols) + " |",
             "|" + "|".join("---:" if c in NUMERIC else "---" for c in cols) + "|"]
    for _, row in board.rows.iterrows():
        cells = []
        for c in cols:
            x = _cell(row, c)
            cells.append(f"`{x.split(' ')[0]}`" + x[len(x.split(' ')[0]):] if c == "run_id" and x else x)
        lines.append("| " + " | ".join(esc(x) for x in cells) + " |")
    lines += [""] + [f"*{n}*  " for n in _notes(board)]
    if _sources(board):
        lines += ["", "Sources:", ""] + [f"- **{name}**: {cite}. {recipe}" for name, cite, recipe in _sources(board)]
    lines += ["", f"*{UNITS}*", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- csv
CSV_COLUMNS = ["badge", "rank", "generator", "size", "images", "identities", "per_identity", *METRICS, "gap", "gap_baseline",
               "borda", "sep_model", "recipe", "backbone", "loss", "epochs", "run_id", "run_name", "runs", "table", "cite",
               "citation", "note", *(f"ci_{c}" for c in CI_METRICS)]


def to_csv(board: Leaderboard) -> str:
    """One CSV, full precision, display units; ``badge`` is measured, published or demo."""
    frame = board.rows.reindex(columns=CSV_COLUMNS)
    return frame.to_csv(index=False, lineterminator="\n")


# ---------------------------------------------------------------------------------------------- png
def to_png(board: Leaderboard) -> bytes:
    """The main plot (Avg vs training images) for slides."""
    from .plots import avg_vs_images, to_png as fig_png

    return fig_png(avg_vs_images(board.rows))


# ---------------------------------------------------------------------------------------------- latex
def _tex_text(s: Any) -> str:
    """Escape text for LaTeX (braces included), keeping the few macros this module inserts."""
    out = []
    for ch in str(s):
        out.append({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "×": r"$\times$",
                    "³": r"\textsuperscript{3}", "⚠": "", "—": "---", "–": "--"}.get(ch, ch))
    return "".join(out).strip()


def to_latex(board: Leaderboard) -> str:
    """A booktabs table of the ranked (non-demo) rows with an Avg: best per column in bold, published
    rows cite their source (``\\cite{key}``), measured rows marked with a dagger."""
    cols = [c for c in (*FIVE, "avg", "gap") if board.rows[c].notna().any()]
    rows = board.rows[(board.rows["badge"] != "demo") & board.rows["avg"].notna()]
    best = {c: rows[c].max() for c in cols if c != "gap"}
    head = {"lfw": "LFW", "cfp_fp": "CFP-FP", "cplfw": "CPLFW", "agedb_30": "AgeDB-30", "calfw": "CALFW", "avg": "Avg",
            "gap": "$\\Delta$real"}
    lines = ["% frbench leaderboard: " + _tex_text(_sort_label(board)),
             "% requires \\usepackage{booktabs}",
             "\\begin{table}[t]", "\\centering", "\\small",
             "\\begin{tabular}{l l " + "r" * len(cols) + "}", "\\toprule",
             "Method & Data & " + " & ".join(head[c] for c in cols) + " \\\\", "\\midrule"]
    for _, r in rows.iterrows():
        name = _tex_text(r["generator"])
        if r["badge"] == "published" and not _missing(r.get("cite")):
            name += f"~\\cite{{{r['cite']}}}"
        elif r["badge"] == "measured":
            name += "$^\\dagger$"
        cells = []
        for c in cols:
            v = r[c]
            if _missing(v):
                cells.append("--")
                continue
            text = format(float(v), "+.2f" if c == "gap" else ".2f")
            cells.append(f"\\textbf{{{text}}}" if c in best and float(v) == float(best[c]) else text)
        lines.append(f"{name} & {_tex_text(r['size']) if not _missing(r['size']) else '--'} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}",
              "\\caption{Face verification accuracy (\\%) of recognizers trained on each dataset. "
              "$^\\dagger$~measured with frbench; other rows as printed by the cited papers (their recipes differ).}",
              "\\label{tab:frbench-leaderboard}", "\\end{table}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1600px;padding:0 1rem;color:#1d232a;background:#fff}
h1{font-size:1.4rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin-top:2.2rem}
.meta{color:#59636e;font-size:.85rem;margin:.2rem 0 1rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.82rem;white-space:nowrap}
th,td{padding:.3rem .5rem;border-bottom:1px solid #d8dee4;text-align:left}
th{background:#f3f5f7;position:sticky;top:0;cursor:pointer;user-select:none}
th.sorted-desc::after{content:" ▼"}th.sorted-asc::after{content:" ▲"}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:hover{background:#f6f8fa}
tr.published td{color:#3d444d}
tr.demo td{color:#8c959f;background:#f6f8fa}
.badge{display:inline-block;font-size:.7rem;padding:0 .4rem;border-radius:.6rem;border:1px solid}
.badge.measured{background:#ddf4ff;border-color:#54aeff;color:#0550ae}
.badge.published{background:#fff8c5;border-color:#d4a72c;color:#7d4e00}
.badge.demo{background:#eaeef2;border-color:#8c959f;color:#57606a}
.filters{display:flex;gap:.8rem;flex-wrap:wrap;margin:.6rem 0;font-size:.85rem}
.filters input{font-size:.85rem;padding:.15rem .3rem}
.notes{color:#59636e;font-size:.8rem}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plots figure{margin:0;max-width:760px}.plots svg{width:100%;height:auto}
figcaption{font-size:.8rem;color:#59636e}
code{font-size:.8rem}
img.hist{max-width:640px;border:1px solid #d8dee4}
"""

# sorting: a header click orders rows by that column (numbers best first for the metric's direction,
# then toggles); demo rows always stay last; filters hide rows whose text does not match
_JS = """
(function(){
const table=document.getElementById('board');const tbody=table.tBodies[0];
const heads=[...table.tHead.rows[0].cells];
function val(tr,i){const c=tr.cells[i];const v=c.getAttribute('data-v');return v===null?c.textContent.trim():v;}
heads.forEach((th,i)=>th.addEventListener('click',()=>{
  const num=th.classList.contains('num');const higher=th.getAttribute('data-higher')!=='0';
  let desc=th.classList.contains('sorted-desc')?false:th.classList.contains('sorted-asc')?true:(num?higher:false);
  heads.forEach(h=>h.classList.remove('sorted-asc','sorted-desc'));th.classList.add(desc?'sorted-desc':'sorted-asc');
  const rows=[...tbody.rows];
  rows.sort((a,b)=>{
    const da=a.classList.contains('demo'),db=b.classList.contains('demo');if(da!==db)return da?1:-1;
    let x=val(a,i),y=val(b,i);
    if(num){x=x===''?NaN:parseFloat(x);y=y===''?NaN:parseFloat(y);
      if(isNaN(x)&&isNaN(y))return 0;if(isNaN(x))return 1;if(isNaN(y))return -1;return desc?y-x:x-y;}
    return desc?y.localeCompare(x):x.localeCompare(y);});
  rows.forEach(r=>tbody.appendChild(r));
}));
const inputs=[...document.querySelectorAll('.filters input')];
function applyFilters(){[...tbody.rows].forEach(tr=>{
  const show=inputs.every(inp=>{const q=inp.value.trim().toLowerCase();if(!q)return true;
    return (tr.getAttribute('data-'+inp.name)||'').toLowerCase().includes(q);});
  tr.style.display=show?'':'none';});}
inputs.forEach(inp=>inp.addEventListener('input',applyFilters));
})();
"""


def _data_value(row: pd.Series, col: str) -> str | None:
    if col in NUMERIC:
        v = row.get(col)
        return "" if _missing(v) else repr(float(v))
    return None


def to_html(board: Leaderboard) -> str:
    """One self-contained page: sortable, filterable table, inline SVG plots and embedded histograms;
    no network, no external files."""
    from .plots import avg_vs_images, per_benchmark, to_svg

    e = html.escape
    rows = board.rows
    cols, _ = _columns(rows)
    higher = {col: h for _, (col, h) in SORT_KEYS.items()}
    meta = [e(_sort_label(board))]
    if board.uri:
        meta.append(f"store: <code>{e(board.uri)}</code>")
    lines = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(_heading(board))}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             f"<h1>{e(_heading(board))}</h1>", f'<p class="meta">{" · ".join(meta)}</p>',
             '<div class="filters">'
             '<label>recipe <input name="recipe" placeholder="e.g. AdaFace"></label>'
             '<label>data <input name="size" placeholder="e.g. 0.5M"></label>'
             '<label>source <input name="source" placeholder="e.g. published, UIFace"></label>'
             '<label>method <input name="method" placeholder="name"></label></div>',
             '<div class="scroll"><table id="board">', "<thead><tr>"]
    for c in cols:
        cls = ' class="num"' if c in NUMERIC else ""
        hi = "" if c not in NUMERIC else f' data-higher="{0 if higher.get(c) is False else 1}"'
        lines.append(f'<th{cls}{hi} data-col="{e(c)}">{e(HEADERS.get(c, c) or "kind")}</th>')
    lines += ["</tr></thead>", "<tbody>"]
    hists: list[tuple[str, str, str]] = []
    for _, row in rows.iterrows():
        badge = str(row["badge"])
        attrs = {"recipe": f"{_training(row)} {row.get('recipe') or ''}", "size": f"{row.get('size') or ''} {row.get('images') or ''}",
                 "source": f"{badge} {row.get('table') or ''} {row.get('table_id') or ''} {row.get('citation') or ''}",
                 "method": str(row["generator"])}
        tr = f'<tr class="{e(badge)}" ' + " ".join(f'data-{k}="{e(v)}"' for k, v in attrs.items()) + ">"
        cells = []
        for c in cols:
            text = _cell(row, c)
            body = e(text)
            if c == "badge":
                body = f'<span class="badge {e(badge)}">{e(text)}</span>'
            elif c == "run_id" and text:
                rid = text.split(" ")[0]
                body = f"<code>{e(rid)}</code>{e(text[len(rid):])}"
                if not _missing(row.get("hist_png")) and Path(str(row["hist_png"])).is_file():
                    anchor = f"hist-{rid}"
                    body += f' <a href="#{e(anchor)}">histogram</a>'
                    hists.append((anchor, str(row["generator"]), str(row["hist_png"])))
            dv = _data_value(row, c)
            title = f' title="{e(str(row["note"]))}"' if c == "generator" and not _missing(row.get("note")) else ""
            if c == "gap" and not _missing(row.get("gap_baseline")):
                title = f' title="vs {e(str(row["gap_baseline"]))}"'
            cells.append(f'<td class="num" data-v="{e(dv)}"{title}>{body}</td>' if dv is not None else f"<td{title}>{body}</td>")
        lines.append(tr + "".join(cells) + "</tr>")
    lines += ["</tbody>", "</table></div>"]
    lines += [f'<p class="notes">{e(n)}</p>' for n in _notes(board)]
    lines += ['<h2>Plots</h2>', '<div class="plots">',
              f"<figure>{to_svg(avg_vs_images(rows))}<figcaption>Avg of the five benchmarks against the number of "
              "training images (log scale); measured ● published □ demo ×.</figcaption></figure>",
              f"<figure>{to_svg(per_benchmark(rows))}<figcaption>Accuracy per benchmark of the first rows of the "
              "table that report all five.</figcaption></figure>", "</div>"]
    if hists:
        lines.append("<h2>Genuine / impostor histograms of measured runs</h2>")
        for anchor, name, path in hists:
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            lines.append(f'<section id="{e(anchor)}"><h3>{e(name)} <code>{e(anchor[5:])}</code></h3>'
                         f'<img class="hist" alt="separability histogram of {e(name)}" src="data:image/png;base64,{data}"></section>')
    sources = _sources(board)
    if sources:
        lines += ['<h2>Sources</h2>', '<ul class="notes">']
        lines += [f"<li><b>{e(name)}</b>: {e(cite)}. {e(recipe)}</li>" for name, cite, recipe in sources]
        lines.append("</ul>")
    lines += [f'<p class="notes">{e(UNITS)}</p>', f"<script>{_JS}</script>", "</body>", "</html>", ""]
    return "\n".join(lines)

