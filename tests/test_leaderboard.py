"""`frbench leaderboard`: MLflow runs (made here, in a tmp SQLite store) ranked beside published rows."""

from __future__ import annotations

import io
import json
import os
from html.parser import HTMLParser
from typing import Iterator

import pandas as pd
import pytest
from click.testing import CliRunner

from fr_bench.cli import LEADERBOARD_SORTS, cli
from fr_bench.leaderboard import (
    FORMATS, SORT_KEYS, build_leaderboard, load_measured, load_published, measured_frame, render, stage_hashes,
)
from fr_bench.tracking import Tracker

EXPERIMENT = "lb"
FIVE = ["lfw", "cfp_fp", "cplfw", "agedb_30", "calfw"]


def _accuracies(base: float) -> dict[str, float]:
    accs = {f"{b}/accuracy": base + 0.01 * i for i, b in enumerate(FIVE)}
    return {**accs, "verification/avg": sum(accs.values()) / 5}


def _pipeline(tracker: Tracker, name: str, hashes: dict[str, str], generator: str, acc: float, eer: float,
              fid: float, fail: bool = False) -> str:
    """A parent run with one child per stage, tagged the way `frbench run` (fr_bench.pipeline) tags them."""
    tags = {"frbench.stage": "run", "frbench.stage_hashes": ",".join(f"{k}:{v}" for k, v in hashes.items()),
            **{f"frbench.hash.{k}": v for k, v in hashes.items()}}
    with tracker.start_run(name, tags=tags) as parent:
        parent.log_params({"generator": generator, "identities": 1000, "per_identity": 20})
        with tracker.start_run("generate", tags={"frbench.stage": "generate", "frbench.hash": hashes["generate"][:2]}, nested=True):
            pass
        with tracker.start_run("train", tags={"frbench.stage": "train"}, nested=True) as train:
            train.log_metrics({"train/loss": 3.0})
        with tracker.start_run("eval", tags={"frbench.stage": "eval"}, nested=True) as ev:
            ev.log_metrics({**_accuracies(acc), "ijbc/tar_far_1e-4": acc - 0.1, "ijbc/tar_far_1e-5": acc - 0.3})
            if fail:
                raise RuntimeError("stage failed")
        with tracker.start_run("metrics", tags={"frbench.stage": "metrics"}, nested=True) as me:
            me.log_metrics({"separability/eer": eer, "separability/fdr": 1 / eer, "lpips/mean": 0.5,
                            "prc/recall": 0.6, "fid": fid})
        return parent.run_id


def _standalone_eval(tracker: Tracker, acc: float) -> str:
    with tracker.start_run("eval r50.onnx", tags={"frbench.stage": "eval"}) as run:
        run.log_params({"model": "/m/r50.onnx", "model_sha256": "ab" * 32, "lfw_sha256": "cd" * 32, "flip": True})
        run.log_metrics({"lfw/accuracy": acc})
        return run.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    workdir = tmp_path_factory.mktemp("lbstore")
    before = os.environ.get("MLFLOW_TRACKING_URI")  # mlflow.set_tracking_uri exports it; keep other tests clean
    tracker = Tracker(workdir, experiment=EXPERIMENT, warn=pytest.fail)
    ids = {
        "a_old": _pipeline(tracker, "A old", {"generate": "g1-long", "train": "t1", "eval": "e1"}, "idiff-face", 0.80, 0.20, 50.0),
        "b": _pipeline(tracker, "B", {"generate": "g2", "train": "t2", "eval": "e2"}, "adaptdiff", 0.90, 0.05, 30.0),
        "a_new": _pipeline(tracker, "A new", {"generate": "g1-long", "train": "t1", "eval": "e1"}, "idiff-face", 0.82, 0.10, 70.0),
        "c": _pipeline(tracker, "C", {"generate": "g3", "train": "t3", "eval": "e3"}, "negfacediff", 0.85, 0.30, 20.0),
        "eval_1": _standalone_eval(tracker, 0.97),
        "eval_2": _standalone_eval(tracker, 0.97),
    }
    with pytest.raises(RuntimeError):
        _pipeline(tracker, "failed", {"generate": "g9", "train": "t9", "eval": "e9"}, "uiface", 0.99, 0.01, 1.0, fail=True)
    with tracker.start_run("train only", tags={"frbench.stage": "train"}) as run:
        run.log_metrics({"train/loss": 1.0})
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    yield {"uri": tracker.uri, "ids": ids, "workdir": workdir}


@pytest.fixture(scope="module")
def measured(store: dict) -> pd.DataFrame:
    return load_measured(store["uri"], EXPERIMENT)


@pytest.fixture(scope="module")
def board(measured: pd.DataFrame):
    return build_leaderboard(measured, load_published(), "avg", EXPERIMENT, "sqlite:///x")


# ------------------------------------------------------------------------------------ rows and merging
def test_a_row_is_a_parent_run_with_its_stage_runs_metrics_merged(measured, store):
    row = measured.set_index("run_id").loc[store["ids"]["b"]]
    assert row["generator"] == "adaptdiff"
    assert row["size"] == "20k (1k×20)"
    assert row["lfw"] == pytest.approx(90.0) and row["calfw"] == pytest.approx(94.0)  # fractions shown in %
    assert row["avg"] == pytest.approx(92.0)
    assert row["ijbc_1e-4"] == pytest.approx(80.0) and row["ijbc_1e-5"] == pytest.approx(60.0)
    assert row["eer"] == pytest.approx(0.05) and row["fdr"] == pytest.approx(20.0)
    assert row["lpips"] == pytest.approx(0.5) and row["recall"] == pytest.approx(60.0) and row["fid"] == pytest.approx(30.0)


def test_stage_runs_failed_runs_and_runs_without_scores_are_not_rows(measured, store):
    assert set(measured["run_id"]) == set(store["ids"].values())
    assert not measured["run_name"].isin(["failed", "train only", "eval", "metrics"]).any()


def test_a_standalone_eval_run_is_a_row_named_after_the_run(measured, store):
    row = measured.set_index("run_id").loc[store["ids"]["eval_2"]]
    assert row["generator"] == "eval r50.onnx"
    assert row["lfw"] == pytest.approx(97.0) and pd.isna(row["avg"])


# ---------------------------------------------------------------------------------------- collapsing
def test_runs_with_the_same_stage_hashes_collapse_to_the_most_recent(board, store):
    rows = board.measured.set_index("run_id")
    assert store["ids"]["a_new"] in rows.index and store["ids"]["a_old"] not in rows.index
    assert rows.loc[store["ids"]["a_new"], "runs"] == 2
    assert rows.loc[store["ids"]["a_new"], "lfw"] == pytest.approx(82.0)


def test_identical_standalone_evals_collapse(board, store):
    assert store["ids"]["eval_2"] in set(board.measured["run_id"])
    assert store["ids"]["eval_1"] not in set(board.measured["run_id"])
    assert board.collapsed == 2 and len(board.measured) == 4


def test_runs_whose_hashes_differ_in_one_stage_stay_apart():
    def rec(rid: str, t: int, hashes: dict) -> dict:
        return {"run_id": rid, "name": rid, "status": "FINISHED", "start_time": t, "end_time": t + 1, "params": {},
                "metrics": {"lfw/accuracy": 0.9}, "tags": {"frbench.stage_hashes": json.dumps(hashes)}}

    df = measured_frame([rec("x", 1, {"train": "t", "eval": "e1"}), rec("y", 2, {"train": "t", "eval": "e2"}),
                         rec("z", 3, {"eval": "e2", "train": "t"})])
    assert sorted(build_leaderboard(df).measured["run_id"]) == ["x", "z"]


# --------------------------------------------------------------------------------------------- ranking
def test_sort_by_avg_puts_the_highest_first(board, store):
    ids = store["ids"]
    assert list(board.measured["run_id"]) == [ids["b"], ids["c"], ids["a_new"], ids["eval_2"]]
    ranks = list(board.measured["rank"].astype("object").where(board.measured["rank"].notna(), None))
    assert ranks[-1] is None and ranks[0] < ranks[1] < ranks[2]
    rows = board.rows
    assert pd.to_numeric(rows["avg"]).dropna().is_monotonic_decreasing  # one ranking, measured and published together


def test_measured_and_published_rows_share_one_ranking(board, store):
    rows = board.rows.reset_index(drop=True)
    b = rows.index[rows["run_id"] == store["ids"]["b"]][0]  # Avg 92.00
    above = rows.loc[: b - 1]
    below = rows.loc[b + 1 :]
    assert (above["badge"] == "published").any() and (below["badge"] == "published").any()
    assert (pd.to_numeric(above["avg"]) >= 92.0).all() and (pd.to_numeric(below["avg"].dropna()) <= 92.0).all()


@pytest.mark.parametrize("sort, order", [("eer", ["b", "a_new", "c"]), ("fid", ["c", "b", "a_new"]),
                                         ("fdr", ["b", "a_new", "c"]), ("ijbc", ["b", "c", "a_new"])])
def test_sort_direction_follows_the_metric(measured, store, sort, order):
    ranked = build_leaderboard(measured, sort=sort).measured
    assert list(ranked["run_id"][:3]) == [store["ids"][k] for k in order]
    assert ranked["run_id"].iloc[-1] == store["ids"]["eval_2"]  # no value: last, unranked
    assert pd.isna(ranked["rank"].iloc[-1])


def test_sort_recent_puts_the_newest_first(measured, store):
    assert build_leaderboard(measured, sort="recent").measured["run_id"].iloc[0] == store["ids"]["eval_2"]


def test_cli_sort_choices_are_the_rank_keys():
    assert set(LEADERBOARD_SORTS) == set(SORT_KEYS)


# ------------------------------------------------------------------------------------------ published
def test_every_row_has_a_badge_and_published_rows_name_their_source(board):
    assert set(board.rows["badge"]) == {"measured", "published"}
    assert set(board.measured["source"]) == {"measured"} and board.published["run_id"].isna().all()
    assert board.published["table"].notna().all() and board.published["citation"].notna().all()
    assert board.published["cite"].notna().all()  # a BibTeX key for --format latex


def test_published_tables_hold_our_papers_and_the_wider_field():
    pub = load_published()
    assert {"UIFace Table 1", "Arc2Face Table 2", "AdaptDiff Table 2", "AdaptDiff Table 3"} <= set(pub["table"])
    names = set(pub["generator"].str.replace(r" \[.*\]$", "", regex=True))
    for method in ("VFace10K", "VFace20K", "VFace100K", "VFace300K", "HSFace10K", "HSFace20K", "HSFace100K", "HSFace200K",
                   "HSFace300K", "CemiFace", "VIGFace-S", "VIGFace-B", "VIGFace-L", "VariFace", "HyperFace", "GANDiffFace",
                   "SFace", "SFace2", "IDnet", "ExFaceGAN", "Langevin-DisCo", "DCFace"):
        assert method in names, method
    cemi = pub[pub["generator"] == "CemiFace"]
    assert set(cemi["size"]) >= {"0.5M", "1.2M"}
    # every source with measured accuracies and a baseline carries its own CASIA-WebFace row
    for table in ("UIFace Table 1", "Arc2Face Table 2", "AdaptDiff Table 2", "Vec2Face+ README"):
        assert ((pub["table"] == table) & pub["real"]).any(), table


def test_published_avg_is_the_mean_of_the_five_unless_flagged():
    pub = load_published()
    full = pub.dropna(subset=FIVE + ["avg"])
    off = (full[FIVE].mean(axis=1) - full["avg"]).abs() > 0.0100001  # beyond rounding six 2-decimal numbers
    assert sorted(full.loc[off, "generator"]) == ["IDiff-Face* [FFHQ DM]", "IDnet"]
    assert full.loc[off, "note"].notna().all()
    idnet = full[full["generator"] == "IDnet"].iloc[0]
    assert idnet["avg"] == 79.13 and "77.20" in idnet["note"]  # the printed number is kept, the flag says why


def test_published_ijbc_tar_is_lower_at_the_lower_far():
    pub = load_published().dropna(subset=["ijbc_1e-4", "ijbc_1e-5"])
    assert len(pub) == 14 and (pub["ijbc_1e-5"] < pub["ijbc_1e-4"]).all()


def test_published_uiface_row_matches_the_paper():
    pub = load_published()
    row = pub[(pub["table"] == "UIFace Table 1") & (pub["generator"] == "UIFace") & (pub["size"] == "0.5M (10k×50)")]
    assert row[FIVE + ["avg"]].values.tolist() == [[99.27, 94.29, 89.58, 90.95, 92.25, 93.27]]


# ------------------------------------------------------------------------------------------- formats
def _labels(df: pd.DataFrame) -> list[str]:
    return list(df["generator"])


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "html"])
def test_every_format_renders_every_row(board, fmt):
    text = render(board, fmt, width=400)
    for rid in board.measured["run_id"]:
        assert (rid[:12] if fmt == "table" else rid) in text
    for label in _labels(board.measured) + _labels(board.published):
        assert label in text
    for table in board.published["table"].unique():
        assert table in text


def test_csv_marks_every_row_with_its_badge(board):
    df = pd.read_csv(io.StringIO(render(board, "csv")))
    assert len(df) == len(board.rows)
    assert list(df["badge"]) == list(board.rows["badge"])
    assert df.loc[df["badge"] == "published", "citation"].notna().all()
    assert df.loc[df["run_id"] == board.measured["run_id"].iloc[0], "avg"].iloc[0] == pytest.approx(92.0)


def test_markdown_is_one_table_with_one_cell_per_header(board):
    tables = [block for block in render(board, "markdown").split("\n\n") if block.startswith("|")]
    assert len(tables) == 1
    for block in tables:
        widths = {line.replace("\\|", "").count("|") for line in block.splitlines()}
        assert len(widths) == 1


class _Checker(HTMLParser):
    VOID = {"meta", "br", "img", "hr", "link", "input", "col", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.rows: dict[str, int] = {}
        self.cells_per_row: set[int] = set()
        self._cells = 0
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag in self.VOID:
            return
        self.stack.append(tag)
        if tag == "tr":
            cls = dict(attrs).get("class", "header")
            self.rows[cls] = self.rows.get(cls, 0) + 1
            self._cells = 0
        if tag in ("td", "th"):
            self._cells += 1

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()


def test_html_is_well_formed_self_contained_and_has_every_row(board):
    page = render(board, "html")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "<script>" in page
    # self-contained: no external script, stylesheet, image or link target
    assert "<script src" not in page and 'src="http' not in page and "<link" not in page
    assert 'href="http' not in page
    assert checker.rows == {"header": 1, "measured": len(board.measured), "published": len(board.published)}
    assert page.count('<span class="badge published">published</span>') == len(board.published)
    assert page.count("<svg") >= 2  # the two plots, inline


def test_html_escapes_run_names():
    rec = {"run_id": "r1", "name": "<b>x</b> & y", "status": "FINISHED", "start_time": 1, "end_time": 2,
           "params": {}, "metrics": {"lfw/accuracy": 0.5}, "tags": {}}
    page = render(build_leaderboard(measured_frame([rec])), "html")
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in page and "<b>x</b>" not in page


# ------------------------------------------------------------------------------------ record parsing
def test_stage_hashes_read_every_tag_convention():
    assert stage_hashes({"frbench.stage_hashes": '{"train": "t1", "eval": "e1"}'}) == {"train": "t1", "eval": "e1"}
    assert stage_hashes({"frbench.stage_hashes": "train=t1, eval=e1"}) == {"train": "t1", "eval": "e1"}
    assert stage_hashes({"frbench.stage_hashes": "train:t1,eval:e1"}) == {"train": "t1", "eval": "e1"}
    assert stage_hashes({"frbench.hash.train": "t1", "frbench.hash.eval": "e1"}) == {"train": "t1", "eval": "e1"}
    assert stage_hashes({"frbench.stage": "train", "frbench.hash": "t1"}) == {"train": "t1"}


def test_grandchildren_merge_into_the_root_and_the_root_value_wins():
    def rec(rid, parent, t, metrics, params=None):
        tags = {"mlflow.parentRunId": parent} if parent else {}
        return {"run_id": rid, "name": rid, "status": "FINISHED", "start_time": t, "end_time": t, "params": params or {},
                "metrics": metrics, "tags": tags}

    df = measured_frame([
        rec("root", None, 1, {"lfw/accuracy": 0.9}, {"generate.generator": "uiface", "generate.identities": "10000",
                                                     "generate.per_identity": "50"}),
        rec("child", "root", 2, {"lfw/accuracy": 0.1, "fid": 12.0}),
        rec("grandchild", "child", 3, {**{f"{b}/accuracy": 0.8 for b in FIVE}}),
    ])
    assert len(df) == 1
    row = df.iloc[0]
    assert row["lfw"] == pytest.approx(90.0) and row["fid"] == 12.0
    assert row["avg"] == pytest.approx((90 + 4 * 80) / 5)  # computed: no verification/avg was logged
    assert row["generator"] == "uiface" and row["size"] == "0.5M (10k×50)"


# ------------------------------------------------------------------------------------------------- CLI
def _run(args: list[str]):
    return CliRunner().invoke(cli, args, obj={}, env={"COLUMNS": "300"})


def test_cli_writes_every_format(store, tmp_path):
    for fmt, suffix in (("html", "html"), ("markdown", "md"), ("csv", "csv"), ("table", "txt")):
        out = tmp_path / f"board.{suffix}"
        res = _run(["leaderboard", "--tracking-uri", store["uri"], "--experiment", EXPERIMENT, "--format", fmt, "--output", str(out)])
        assert res.exit_code == 0, res.output
        assert store["ids"]["b"][:12] in out.read_text()


def test_cli_csv_to_stdout_without_published_rows(store):
    res = _run(["leaderboard", "--tracking-uri", store["uri"], "--experiment", EXPERIMENT, "--format", "csv",
                "--no-published", "--sort", "fid"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(io.StringIO(res.stdout))
    assert set(df["badge"]) == {"measured"}
    assert df["run_id"].iloc[0] == store["ids"]["c"]


def test_cli_table_lists_runs_and_published_rows(store):
    res = _run(["leaderboard", "--tracking-uri", store["uri"], "--experiment", EXPERIMENT])
    assert res.exit_code == 0, res.output
    assert "adaptdiff" in res.stdout and "published" in res.stdout and "UIFace Table 1" in res.stdout


def test_cli_unknown_experiment_is_one_line_naming_the_existing_ones(store):
    res = _run(["leaderboard", "--tracking-uri", store["uri"], "--experiment", "nope"])
    assert res.exit_code == 2
    assert "no MLflow experiment 'nope'" in res.output and EXPERIMENT in res.output
    assert "Traceback" not in res.output


def test_cli_without_a_store_shows_published_rows_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = _run(["--workdir", str(tmp_path / "w"), "leaderboard", "--format", "markdown"])
    assert res.exit_code == 0, res.output
    assert "no MLflow store" in res.stderr and "UIFace Table 1" in res.stdout
    assert not (tmp_path / "w").exists()


def test_cli_unreachable_tracking_server_is_one_line():
    res = _run(["leaderboard", "--tracking-uri", "http://127.0.0.1:9"])
    assert res.exit_code == 2
    assert "cannot read the MLflow store" in res.output and "Traceback" not in res.output
