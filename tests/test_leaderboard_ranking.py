"""One honest table: gap to real, Borda and TO rankings, like-for-like separability, demo rows, PNG, LaTeX."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from fr_bench.cli import cli
from fr_bench.leaderboard import COLUMNS, build_leaderboard, load_published, measured_frame, render
from fr_bench.leaderboard.rank import borda

FIVE = ["lfw", "cfp_fp", "cplfw", "agedb_30", "calfw"]


def row(name: str, badge: str = "published", table: str = "T", **values) -> dict:
    r = dict.fromkeys(COLUMNS)
    r.update(source="measured" if badge != "published" else "published", badge=badge, generator=name, table=table,
             table_id=table, citation=f"{table} paper", run_id=None if badge == "published" else f"run-{name}",
             dedupe_key=name, start_time=1, runs=1, real=False)
    r.update(values)
    return r


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLUMNS)


def test_gap_to_real_uses_the_baseline_of_the_same_source() -> None:
    pub = frame(row("CASIA", table="A", real=True, avg=95.0), row("m1", table="A", avg=90.0),
                row("CASIA", table="B", real=True, avg=94.0), row("m1", table="B", avg=91.0), row("orphan", table="C", avg=80.0))
    board = build_leaderboard(frame(), pub).rows.set_index(["table", "generator"])
    assert board.loc[("A", "m1"), "gap"] == pytest.approx(-5.0)
    assert board.loc[("B", "m1"), "gap"] == pytest.approx(-3.0)
    assert pd.isna(board.loc[("C", "orphan"), "gap"])  # no baseline in its own source: no gap, never another paper's


def test_measured_gap_uses_the_latest_real_run_with_the_same_recipe() -> None:
    measured = frame(row("casia-old", badge="measured", real=True, avg=93.0, recipe="uiface", start_time=1),
                     row("casia", badge="measured", real=True, avg=94.5, recipe="uiface", start_time=5),
                     row("casia-cos", badge="measured", real=True, avg=92.0, recipe="idiff-face", start_time=6),
                     row("synth", badge="measured", avg=90.0, recipe="uiface", start_time=7),
                     row("other", badge="measured", avg=85.0, recipe="arc2face", start_time=8))
    board = build_leaderboard(measured).rows.set_index("generator")
    assert board.loc["synth", "gap"] == pytest.approx(-4.5) and "casia" in board.loc["synth", "gap_baseline"]
    assert pd.isna(board.loc["other", "gap"])


def test_borda_counts_rows_beaten_on_each_benchmark_with_half_points_for_ties() -> None:
    rows = frame(row("a", lfw=99, cfp_fp=90, cplfw=80, agedb_30=70, calfw=60),
                 row("b", lfw=98, cfp_fp=91, cplfw=80, agedb_30=72, calfw=61),
                 row("c", lfw=97, cfp_fp=92, cplfw=79, agedb_30=71, calfw=62),
                 row("d", lfw=99.5, cfp_fp=93))  # not all five: no Borda points
    pts = borda(rows)
    # a: lfw 2, cfp 0, cplfw 1.5, agedb 0, calfw 0 → 3.5; b: 1 + 1 + 1.5 + 2 + 1 = 6.5; c: 0 + 2 + 0 + 1 + 2 = 5
    assert list(pts[:3]) == [3.5, 6.5, 5.0] and pd.isna(pts[3])
    ranked = build_leaderboard(frame(), rows, sort="borda").rows
    assert list(ranked["generator"][:3]) == ["b", "c", "a"] and list(ranked["rank"][:3]) == [1, 2, 3]


def test_to_ranking_uses_frcsyn_trade_off_and_leaves_rows_without_fairness_unranked() -> None:
    rows = frame(row("fair", rfw_to=95.0, avg=90), row("skewed", rfw_to=93.0, avg=95), row("none", avg=99))
    ranked = build_leaderboard(frame(), rows, sort="to").rows
    assert list(ranked["generator"]) == ["fair", "skewed", "none"] and pd.isna(ranked["rank"].iloc[2])


def test_separability_is_ranked_only_among_rows_of_the_same_fr_model() -> None:
    rows = frame(row("p1", eer=0.05, sep_model="ElasticFace"), row("p2", eer=0.01, sep_model="ElasticFace"),
                 row("q1", eer=0.001, sep_model="ArcFace R100"), row("m", badge="measured", eer=0.02, sep_model="mine.onnx"))
    ranked = build_leaderboard(frame(), rows, sort="eer").rows
    by = ranked.set_index("generator")
    assert by.loc["p2", "rank"] == 1 and by.loc["p1", "rank"] == 2  # within ElasticFace
    assert by.loc["q1", "rank"] == 1 and by.loc["m", "rank"] == 1  # each model ranks on its own
    text = render(build_leaderboard(frame(), rows, sort="eer"), "markdown")
    assert "separability FR model" in text and "ranked separately for each separability FR model" in text


def test_demo_rows_are_badged_and_never_ranked() -> None:
    rec = {"run_id": "d1", "name": "run demo", "status": "FINISHED", "start_time": 1, "end_time": 2, "params": {},
           "metrics": {f"{b}/accuracy": 0.99 for b in FIVE}, "tags": {"frbench.demo": "true"}}
    board = build_leaderboard(measured_frame([rec]), load_published())
    last = board.rows.iloc[-1]
    assert last["badge"] == "demo" and pd.isna(last["rank"])
    assert board.rows.iloc[0]["badge"] == "published"  # its 99.00 does not top the table
    assert pd.isna(borda(board.rows).iloc[-1])
    for fmt in ("table", "markdown", "html"):
        assert "demo — random weights" in render(board, fmt, width=400)


def _balanced(text: str) -> bool:
    depth = 0
    for i, ch in enumerate(text):
        if ch in "{}" and i and text[i - 1] == "\\":
            continue  # \{ and \} are escaped characters
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_latex_is_a_booktabs_table_with_balanced_braces_one_row_per_method() -> None:
    rec = {"run_id": "m1", "name": "my_gen & co", "status": "FINISHED", "start_time": 1, "end_time": 2,
           "params": {"generator": "my_gen & co", "identities": "10000", "per_identity": "50"},
           "metrics": {**{f"{b}/accuracy": 0.995 for b in FIVE}}, "tags": {}}
    board = build_leaderboard(measured_frame([rec]), load_published())
    tex = render(board, "latex")
    assert _balanced(tex) and "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    body = tex[tex.index("\\midrule") + len("\\midrule"): tex.index("\\bottomrule")].strip().splitlines()
    expected = board.rows[(board.rows["badge"] != "demo") & board.rows["avg"].notna()]
    assert len(body) == len(expected)
    cols = tex.split("\\begin{tabular}{")[1].split("}")[0].replace(" ", "")
    assert all(len(re.findall(r"(?<!\\)&", line)) == len(cols) - 1 for line in body)  # unescaped & = column breaks
    assert "my\\_gen \\& co$^\\dagger$" in tex  # measured rows marked, text escaped
    assert "\\cite{lin2025uiface}" in tex and "\\textbf{99.50}" in tex  # source cited; best LFW in bold


def test_png_format_writes_the_main_plot(tmp_path: Path) -> None:
    out = tmp_path / "board.png"
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "w"), "leaderboard", "--format", "png", "--output", str(out)], obj={})
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 20_000
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "w"), "leaderboard", "--format", "png"], obj={})
    assert res.exit_code == 2 and "--output" in res.output


def test_filters_keep_matching_rows_only(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "w"), "leaderboard", "--format", "csv", "--recipe", "AdaFace",
                                   "--size", "0.5M"], obj={})
    assert res.exit_code == 0, res.output
    import io

    df = pd.read_csv(io.StringIO(res.stdout))
    assert len(df) and (df["loss"] == "AdaFace").all() and df["size"].str.contains("0.5M").all()
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "w"), "leaderboard", "--format", "csv", "--source", "Vec2Face"], obj={})
    df = pd.read_csv(io.StringIO(res.stdout))
    assert set(df["table"]) == {"Vec2Face+ README"}


def test_unwritable_output_is_one_line_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "w"), "leaderboard", "--format", "html", "--output", str(blocker / "x.html")], obj={})
    assert res.exit_code == 2 and re.search(r"is a file, not a folder", res.output) and "Traceback" not in res.output


def test_a_measured_row_links_its_genuine_impostor_histogram_embedded_in_the_page(tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    art.mkdir()
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 64
    (art / "separability_hist.png").write_bytes(png)
    rec = {"run_id": "abcdef123456789", "name": "run x", "status": "FINISHED", "start_time": 1, "end_time": 2,
           "params": {"fr_model": "/m/elastic.onnx", "fr_model_sha256": "f" * 64}, "tags": {},
           "metrics": {"separability/eer": 0.05, "lfw/accuracy": 0.9}, "artifact_uri": art.as_uri()}
    board = build_leaderboard(measured_frame([rec]))
    assert board.rows.iloc[0]["sep_model"] == "elastic.onnx (ffffffff)"
    page = render(board, "html")
    import base64

    assert 'href="#hist-abcdef123456' in page and 'id="hist-abcdef123456' in page
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page


def test_a_measured_run_naming_its_fr_model_is_ranked_with_published_rows_of_that_model() -> None:
    rec = {"run_id": "r1", "name": "mine", "status": "FINISHED", "start_time": 1, "end_time": 2, "tags": {},
           "params": {"fr_model": "/m/elastic.onnx", "fr_model_sha256": "f" * 64, "fr_model_name": "ElasticFace-Cos R100"},
           "metrics": {"separability/eer": 0.0001}, "artifact_uri": None}
    published = load_published()
    ranked = build_leaderboard(measured_frame([rec]), published, sort="eer").rows
    mine = ranked[ranked["badge"] == "measured"].iloc[0]
    peers = ranked[(ranked["sep_model"] == "ElasticFace-Cos R100") & ranked["eer"].notna()]
    assert mine["sep_model"] == "ElasticFace-Cos R100" and len(peers) > 1
    assert mine["rank"] == 1  # the lowest EER of the block that includes AdaptDiff Table 3's rows
