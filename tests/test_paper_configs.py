"""Paper configs hold the whole chain; the only things left to the user are the `paths:` block."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fr_bench.cli import cli
from fr_bench.config import load_config
from fr_bench.errors import ConfigError
from fr_bench.recipes import parse_set

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = sorted(p for p in [*REPO.glob("configs/*.yaml"), *REPO.glob("configs/uiface/*.yaml")]
                       if p.name != "demo.yaml")
CHAIN = ["identities", "generate", "align", "train", "eval", "metrics"]


def _stages(output: str) -> list[str]:
    return [name for name in CHAIN if f"│ {name} " in output]


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_paper_config_plans_its_whole_chain(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    given = []  # a real-data config's dataset is an input the plan reads, so it has to exist
    if cfg.real:
        (tmp_path / "casia").mkdir()
        given = ["--set", f"paths.casia={tmp_path / 'casia'}"]
    res = CliRunner().invoke(cli, ["run", str(path), "--dry-run", "--workdir", str(tmp_path / "w"), *given], obj={},
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    if cfg.real:  # the aligned real dataset stands in for the align stage's output
        assert _stages(res.output) == ["align", "train", "eval", "metrics"], res.output
        assert "given" in next(ln for ln in res.output.splitlines() if "│ align " in ln)
    else:
        assert _stages(res.output) == CHAIN, res.output
    assert "${" not in cfg.model_dump_json()  # every ${paths.NAME} was resolved
    assert not (tmp_path / "w").exists()


def test_paths_fill_every_reference_and_set_overrides_one(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs/idiff-face.yaml", overrides=parse_set([f"paths.benchmarks={tmp_path}/bins"]))
    assert Path(cfg.eval.data_dir) == tmp_path / "bins"
    assert str(cfg.generate.weights).endswith("unet-cond-ca-bs512-150K-cpd25")  # the untouched default


def test_an_undefined_path_name_is_a_config_error_naming_the_key_and_the_closest_name(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("paths: {benchmarks: data/bins}\neval: {data_dir: '${paths.benchmark}'}\n")
    with pytest.raises(ConfigError, match=r"eval\.data_dir refers to \$\{paths\.benchmark\}.*did you mean 'benchmarks'"):
        load_config(cfg)


def test_a_paper_config_run_without_its_files_names_each_missing_path_and_creates_nothing(tmp_path: Path) -> None:
    sets = [f"paths.{k}={tmp_path / k}" for k in ("weights", "benchmarks", "separability_fr_model", "context_encoder")]
    work = tmp_path / "w"
    args = ["run", "configs/idiff-face.yaml", "--workdir", str(work), "--no-track"]
    res = CliRunner().invoke(cli, args + [a for s in sets for a in ("--set", s)], obj={})
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    for k in ("weights", "benchmarks", "separability_fr_model", "context_encoder"):
        assert str(tmp_path / k) in res.output.replace("\n", ""), k
    assert not work.exists()


def test_a_dry_run_of_the_demo_writes_nothing(tmp_path: Path) -> None:
    work = tmp_path / "w"
    res = CliRunner().invoke(cli, ["run", "configs/demo.yaml", "--dry-run", "--workdir", str(work)], obj={},
                             terminal_width=200)
    assert res.exit_code == 0 and _stages(res.output) == CHAIN, res.output
    assert not work.exists()
