"""`frbench run` checks every file the plan reads before anything runs."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from fr_bench.cli import cli


def test_three_missing_files_are_one_message_exit_2_and_nothing_is_created(tmp_path: Path) -> None:
    (tmp_path / "bins").mkdir()
    cfg = tmp_path / "paper.yaml"
    cfg.write_text(f"""name: paper
identities: {{source: uniform, n: 4}}
generate: {{generator: idiff-face, weights: {tmp_path / 'no-model'}, per_identity: 2}}
align: {{detector: none}}
train: {{recipe: idiff-face}}
eval: {{data_dir: {tmp_path / 'bins'}, benchmarks: [lfw]}}
metrics: {{fr_model: {tmp_path / 'no-fr.onnx'}}}
""")
    work = tmp_path / "work"
    res = CliRunner().invoke(cli, ["run", str(cfg), "--workdir", str(work), "--no-track"], obj={})
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    line = res.output[res.output.index("error:"):]
    assert "3 missing" in line
    for name in ("no-model", "lfw.bin", "no-fr.onnx"):
        assert name in line, name
    assert not work.exists()  # no run dir, no stage dir, no store


def test_set_overrides_any_config_key_and_a_typo_names_the_closest(tmp_path: Path) -> None:
    from fr_bench.config import load_config
    from fr_bench.errors import ConfigError
    from fr_bench.recipes import parse_set

    cfg = load_config("configs/demo.yaml", overrides=parse_set(["runtime.dtype=bf16", "train.overrides.epochs=1"]))
    assert cfg.runtime.dtype == "bf16" and cfg.train.overrides["epochs"] == 1 and cfg.demo
    import pytest

    with pytest.raises(ConfigError, match="dtyp"):
        load_config("configs/demo.yaml", overrides=parse_set(["runtime.dtyp=bf16"]))
    res = CliRunner().invoke(cli, ["run", "configs/demo.yaml", "--set", "runtime.dtype=bf16", "--dry-run",
                                   "--workdir", str(tmp_path / "w")], obj={})
    assert res.exit_code == 0, res.output
