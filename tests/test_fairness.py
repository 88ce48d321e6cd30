"""Demographic fairness: RFW-style group benchmarks against the single-pack protocol and the formulas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import face_like_images, jpeg_bytes
from fr_bench.cli import cli
from fr_bench.protocols.fairness import RFW_GROUPS, global_threshold_fnmr, group_summary


def write_group_pack(path: Path, pairs: int, seed: int, noise: int) -> None:
    """A .bin pack whose genuine pairs are noisy copies (``noise`` sets how hard the group is)."""
    from fr_bench.data.binfile import write_pack

    imgs = face_like_images(2 * pairs, seed=seed)
    rng = np.random.default_rng(seed)
    issame = rng.random(pairs) < 0.5
    for k in range(pairs):
        if issame[k]:
            imgs[2 * k + 1] = np.clip(imgs[2 * k].astype(int) + rng.integers(-noise, noise + 1, imgs[2 * k].shape), 0, 255).astype(np.uint8)
    write_pack(path, [jpeg_bytes(i) for i in imgs], list(issame))


@pytest.fixture(scope="module")
def rfw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rfw")
    for i, group in enumerate(RFW_GROUPS):
        write_group_pack(d / f"{group}_test.bin", pairs=20, seed=10 + i, noise=10 + 30 * i)
    return d


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], obj={})


def test_std_ser_to_equal_the_formulas_on_known_accuracies() -> None:
    acc = {"African": 0.9450, "Asian": 0.9310, "Caucasian": 0.9720, "Indian": 0.9580}
    pct = np.array([94.50, 93.10, 97.20, 95.80])
    got = group_summary(acc)
    mean = pct.sum() / 4
    std1 = np.sqrt(((pct - mean) ** 2).sum() / 3)  # TFace verification_rfw.py: np.std(..., ddof=1)
    assert got["mean"] == pytest.approx(mean, abs=1e-12)
    assert got["std"] == pytest.approx(std1, abs=1e-12) and got["std"] != pytest.approx(np.std(pct), abs=1e-6)
    assert got["ser"] == pytest.approx((100 - 93.10) / (100 - 97.20), abs=1e-12)
    assert got["to"] == pytest.approx(mean - std1, abs=1e-12)
    assert (got["best_group"], got["worst_group"]) == ("Caucasian", "Asian")


def test_global_threshold_accepts_at_most_one_percent_of_pooled_impostors() -> None:
    rng = np.random.default_rng(0)
    d = {"a": rng.uniform(0, 4, 500), "b": rng.uniform(0.5, 4, 700)}
    same = {"a": rng.random(500) < 0.3, "b": rng.random(700) < 0.3}
    res = global_threshold_fnmr(d, same)
    imp = np.concatenate([d[g][~same[g]] for g in d])
    t = res["threshold"]
    assert (imp < t).sum() <= int(0.01 * len(imp)) < (imp <= t).sum()  # the largest such threshold
    for g in d:
        assert res["groups"][g]["fnmr"] == pytest.approx(np.mean(d[g][same[g]] >= t))


@pytest.mark.slow
def test_rfw_group_accuracies_equal_each_pack_scored_alone(tmp_path: Path, rfw_dir: Path, tiny_iresnet_path: Path) -> None:
    out = tmp_path / "rfw.json"
    res = run("eval", "--model", tiny_iresnet_path, "--data-dir", rfw_dir, "--benchmarks", "rfw", "--no-flip", "--no-track", "--output", out)
    assert res.exit_code == 0, res.output
    rfw = json.loads(out.read_text())["benchmarks"]["rfw"]
    assert list(rfw["groups"]) == list(RFW_GROUPS)
    single = tmp_path / "single.json"  # each pack as a plain .bin benchmark of its own
    res = run("eval", "--model", tiny_iresnet_path, "--data-dir", rfw_dir, "--benchmarks", ",".join(f"{g}_test" for g in RFW_GROUPS),
              "--no-flip", "--no-track", "--output", single)
    assert res.exit_code == 0, res.output
    for group in RFW_GROUPS:  # each group = the plain 10-fold protocol on that pack
        alone = json.loads(single.read_text())["benchmarks"][f"{group}_test"]
        assert rfw["groups"][group]["fold_accuracies"] == alone["fold_accuracies"]
        assert rfw["groups"][group]["accuracy"] == alone["accuracy"]
    summary = group_summary({g: rfw["groups"][g]["accuracy"] for g in RFW_GROUPS})
    assert rfw["std"] == summary["std"] and rfw["to"] == summary["to"] and rfw["ser"] == summary["ser"]
    assert "ddof=1" in rfw["std_rule"] and 0 <= rfw["global_threshold"]["fmr"] <= 0.01


@pytest.mark.slow
def test_a_declared_group_benchmark_works_like_rfw(tmp_path: Path, rfw_dir: Path, tiny_iresnet_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("eval:\n  groups:\n    halves: [African_test.bin, Indian_test.bin]\n")
    out = tmp_path / "g.json"
    res = run("eval", "--config", cfg, "--model", tiny_iresnet_path, "--data-dir", rfw_dir, "--benchmarks", "halves",
              "--no-track", "--output", out, "--bootstrap", 200)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    halves = doc["benchmarks"]["halves"]
    assert list(halves["groups"]) == ["African", "Indian"] and "to" in halves
    lo, hi = halves["groups"]["African"]["accuracy_ci95"]
    assert lo <= halves["groups"]["African"]["accuracy"] <= hi and doc["bootstrap"]["replicates"] == 200
    # the same from the command line
    res = run("eval", "--model", tiny_iresnet_path, "--data-dir", rfw_dir, "--group", "halves=African_test.bin,Indian_test.bin",
              "--benchmarks", "halves", "--no-track", "--output", tmp_path / "g2.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "g2.json").read_text())["benchmarks"]["halves"]["to"] == halves["to"]


def test_a_declared_group_with_a_missing_pack_is_one_line_exit_2(tmp_path: Path, rfw_dir: Path, tiny_iresnet_path: Path) -> None:
    res = run("eval", "--model", tiny_iresnet_path, "--data-dir", rfw_dir, "--group", "bupt=African_test.bin,Nope.bin", "--no-track")
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Nope.bin" in errors[0], res.output


def test_leaderboard_shows_the_fairness_columns_and_interval_half_widths() -> None:
    from fr_bench.leaderboard import build_leaderboard, measured_frame, render

    record = {"run_id": "r1", "name": "eval m", "status": "FINISHED", "start_time": 1, "end_time": 2, "params": {},
              "tags": {"frbench.stage": "eval"},
              "metrics": {"lfw/accuracy": 0.99, "lfw/accuracy_ci95_lo": 0.985, "lfw/accuracy_ci95_hi": 0.993,
                          "rfw/African/accuracy": 0.95, "rfw/Asian/accuracy": 0.94, "rfw/Caucasian/accuracy": 0.97,
                          "rfw/Indian/accuracy": 0.96, "rfw/std": 1.29, "rfw/ser": 2.0, "rfw/to": 94.21}}
    frame = measured_frame([record])
    row = frame.iloc[0]
    assert row["rfw_asian"] == pytest.approx(94.0) and row["rfw_to"] == pytest.approx(94.21)
    assert row["ci_lfw"] == pytest.approx(100 * (0.993 - 0.985) / 2)
    text = render(build_leaderboard(frame, None), "markdown")
    assert "RFW TO" in text and "94.21" in text and "99.00 ± 0.40" in text


def test_ser_is_null_not_infinity_when_a_group_makes_no_error() -> None:
    got = group_summary({"a": 1.0, "b": 0.95})
    assert got["ser"] is None and json.loads(json.dumps(got))["ser"] is None
