"""`frbench adapters` and `frbench new-adapter`: listing registered generators, scaffolding a new one."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from click.testing import CliRunner

import fr_bench.adapter_tools as adapter_tools
import fr_bench.generators.base as base
from fr_bench.cli import cli
from fr_bench.generators import GeneratorAdapter, available_generators

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

FAKE_MODULE = '''
import torch
from fr_bench.generators.base import GeneratorAdapter


class FakeAdapter(GeneratorAdapter):
    """A fake third-party generator."""

    native_resolution = 64
    needs_alignment = True

    def load(self, weights, device="cpu", dtype=torch.float32):
        pass

    def generate(self, identities, seeds, *, negatives=None):
        return torch.zeros(len(seeds), 3, 64, 64, dtype=torch.uint8)
'''


def _invoke(args: list[str]):
    return CliRunner().invoke(cli, args, obj={}, env={"COLUMNS": "300"})


def _frbench(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fr_bench.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "300", **(env or {})}, cwd=cwd)


@pytest.fixture
def fake_entry_points(tmp_path, monkeypatch):
    """Two entry points in the frbench.generators group: one that loads, one whose module is missing."""
    (tmp_path / "fake_frbench_plugin.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [EntryPoint("fake-gen", "fake_frbench_plugin:FakeAdapter", base.ENTRY_POINT_GROUP),
           EntryPoint("broken-gen", "no_such_module_here:Adapter", base.ENTRY_POINT_GROUP)]
    select = lambda group=None, **kw: [ep for ep in eps if group in (None, ep.group)]  # noqa: E731
    monkeypatch.setattr(base, "entry_points", select)
    monkeypatch.setattr(adapter_tools, "entry_points", select)
    base.available_generators()  # register the built-ins before copying the registry
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # loading caches classes; undo after the test


class BuiltinStandIn(GeneratorAdapter):
    """Stands in for a built-in registered by a module in BUILTIN_MODULES."""

    native_resolution = 128
    needs_alignment = False

    def load(self, weights, device="cpu", dtype=None):
        pass

    def generate(self, identities, seeds, *, negatives=None):
        raise RuntimeError("not used")


def test_adapters_lists_every_built_in_generator(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", {**base._REGISTRY, "zz-stand-in": BuiltinStandIn})
    res = _invoke(["adapters"])
    assert res.exit_code == 0, res.output
    built_in = [n for n, where in available_generators().items() if where == "built-in"]
    assert "zz-stand-in" in built_in
    for name in built_in:
        line = next(li for li in res.stdout.splitlines() if f" {name} " in li)
        assert "built-in" in line
    line = next(li for li in res.stdout.splitlines() if " zz-stand-in " in li)
    assert "BuiltinStandIn" in line and " 128 " in line and " no " in line


def test_adapters_lists_entry_point_generators_and_survives_a_broken_one(fake_entry_points):
    res = _invoke(["adapters"])
    assert res.exit_code == 0, res.output
    fake = next(li for li in res.stdout.splitlines() if " fake-gen " in li)
    assert "fake_frbench_plugin:FakeAdapter" in fake and "fake_frbench_plugin.FakeAdapter" in fake
    assert " 64 " in fake and "yes" in fake
    broken = next(li for li in res.stdout.splitlines() if " broken-gen " in li)
    assert "cannot load" in broken and "ModuleNotFoundError" in broken


# ------------------------------------------------------------------------------------------ scaffold
@pytest.fixture(scope="module")
def scaffold(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapters")
    res = _invoke(["new-adapter", "my-gen", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out / "frbench-my-gen"


def test_new_adapter_writes_a_package_with_entry_point_preset_and_test(scaffold):
    assert sorted(p.relative_to(scaffold).as_posix() for p in scaffold.rglob("*") if p.is_file()) == [
        "README.md", "configs/my-gen.yaml", "pyproject.toml", "src/frbench_my_gen/__init__.py",
        "src/frbench_my_gen/adapter.py", "tests/test_adapter.py",
    ]
    project = tomllib.loads((scaffold / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["frbench.generators"] == {"my-gen": "frbench_my_gen.adapter:MyGenAdapter"}
    assert not [p for p in scaffold.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_scaffolded_adapter_subclasses_the_protocol_and_is_marked_as_a_template(scaffold):
    spec = importlib.util.spec_from_file_location("_scaffold_adapter", scaffold / "src/frbench_my_gen/adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert issubclass(module.MyGenAdapter, GeneratorAdapter) and module.MyGenAdapter.name == "my-gen"
    assert "TEMPLATE" in module.__doc__ and "PLACEHOLDER" in module.__doc__


def test_scaffolded_package_passes_its_own_tests(scaffold):
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=scaffold,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "8 passed, 1 skipped" in res.stdout  # the skip: entry-point check, package not installed


@pytest.mark.slow
def test_installed_scaffold_is_listed_and_found_by_name(scaffold, tmp_path):
    pytest.importorskip("setuptools", reason="pip install --no-build-isolation needs setuptools in the venv")
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                          "--target", str(site), str(scaffold)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = _frbench(["adapters"], env=env)
    assert listed.returncode == 0, listed.stderr
    line = next(li for li in listed.stdout.splitlines() if " my-gen " in li)
    assert "package frbench-my-gen" in line and "frbench_my_gen.adapter.MyGenAdapter" in line
    own = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=scaffold,
                         capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert own.returncode == 0 and "9 passed" in own.stdout, own.stdout + own.stderr


@pytest.mark.parametrize("name", ["My Gen", "1gen", "gen--x", "gen/x"])
def test_new_adapter_rejects_a_bad_name_in_one_line(name, tmp_path):
    res = _invoke(["new-adapter", name, "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1 and "adapter name" in res.output
    assert list(tmp_path.iterdir()) == []


def test_new_adapter_refuses_an_existing_folder(tmp_path):
    (tmp_path / "frbench-dup").mkdir()
    (tmp_path / "frbench-dup" / "keep.txt").write_text("mine")
    res = _invoke(["new-adapter", "dup", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "already exists" in res.output
    assert [p.name for p in (tmp_path / "frbench-dup").iterdir()] == ["keep.txt"]


def test_new_adapter_refuses_a_built_in_name(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", {**base._REGISTRY, "taken": GeneratorAdapter})
    res = _invoke(["new-adapter", "taken", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "already a built-in generator" in res.output
