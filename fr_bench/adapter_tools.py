"""Generator-adapter tooling: describe the registered adapters, scaffold a new adapter package.

``frbench new-adapter NAME`` writes a pip-installable package whose adapter already works (a seeded
placeholder generator clearly marked as a template), registered through the ``frbench.generators``
entry-point group, with a config preset and a pytest file that checks the adapter contract.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from string import Template

from .errors import ConfigError
from .generators.base import ENTRY_POINT_GROUP, available_generators, get_generator


@dataclass
class AdapterInfo:
    name: str
    origin: str  # "built-in", "package <distribution>" (entry point), or "entry point <module:Class>"
    cls: str | None = None
    native_resolution: int | None = None
    needs_alignment: bool | None = None
    summary: str = ""
    error: str | None = None  # why the class could not be loaded


def describe_adapters() -> list[AdapterInfo]:
    """Every registered generator (built-ins first imported, then entry points), loaded to describe it."""
    dists = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dists[ep.name] = getattr(dist, "name", None)
    out = []
    for name, where in available_generators().items():
        origin = "built-in" if where == "built-in" else (f"package {dists[name]}" if dists.get(name) else f"entry point {where}")
        info = AdapterInfo(name=name, origin=origin)
        try:
            cls = get_generator(name)
        except Exception as err:  # a broken third-party package must not hide the others
            info.error = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
            out.append(info)
            continue
        if cls is not None:
            info.cls = f"{cls.__module__}.{cls.__qualname__}"
            info.native_resolution = getattr(cls, "native_resolution", None)
            info.needs_alignment = getattr(cls, "needs_alignment", None)
            info.summary = ((cls.__doc__ or "").strip().splitlines() or [""])[0]
        out.append(info)
    return out


# ---------------------------------------------------------------------------------------- scaffold
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


@dataclass
class Scaffold:
    root: Path
    name: str
    module: str
    cls: str
    files: list[Path]


def scaffold_names(name: str) -> tuple[str, str, str]:
    """(distribution, import module, adapter class) for registry name ``name``."""
    parts = re.split(r"[-_]", name)
    return f"frbench-{name}", "frbench_" + "_".join(parts), "".join(p.capitalize() for p in parts) + "Adapter"


def scaffold_adapter(name: str, out_dir: str | Path = ".") -> Scaffold:
    """Write the package ``<out_dir>/frbench-<name>/``; all or nothing (built aside, then renamed)."""
    if not NAME_RE.match(name):
        raise ConfigError(f"adapter name '{name}': use lower-case letters, digits and single '-' or '_' (e.g. my-generator)")
    taken = available_generators()
    if taken.get(name) == "built-in":
        raise ConfigError(f"adapter name '{name}' is already a built-in generator (registered: {', '.join(taken)})")
    dist, module, cls = scaffold_names(name)
    out_dir = Path(out_dir)
    root = out_dir / dist
    if root.exists():
        raise ConfigError(f"{root}: already exists (remove it or pass another --out)")
    out_dir.mkdir(parents=True, exist_ok=True)
    values = {"name": name, "dist": dist, "module": module, "cls": cls, "group": ENTRY_POINT_GROUP}
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"src/{module}/__init__.py": _INIT,
        f"src/{module}/adapter.py": _ADAPTER,
        f"configs/{name}.yaml": _PRESET,
        "tests/test_adapter.py": _TEST,
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{dist}-", dir=out_dir))
    try:
        for rel, template in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Template(template).substitute(values), encoding="utf-8")
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Scaffold(root=root, name=name, module=module, cls=cls, files=[root / rel for rel in files])


# Templates use string.Template: $name, $dist, $module, $cls, $group ($$ is a literal dollar).
_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "frbench generator adapter '$name'"
requires-python = ">=3.10"
dependencies = ["frbench", "torch>=2.1", "pyyaml>=6.0"]

[project.optional-dependencies]
test = ["pytest>=7.0"]

# This line is what makes `frbench adapters` and `frbench generate --generator $name` find the adapter.
[project.entry-points."$group"]
$name = "$module.adapter:$cls"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["src"]
'''

_README = '''\
# $dist

A generator adapter for frbench, registered as `$name`.

**This is a template made by `frbench new-adapter`.** `$cls` in `src/$module/adapter.py`
currently produces seeded-noise placeholder images so the package installs, registers and passes its
tests. Replace `load()` and `generate()` with your generator and keep the tests passing.

```bash
pip install -e .            # registers the `$group` entry point
frbench adapters            # lists `$name` with this package as its origin
python -m pytest -q         # the adapter contract: shape, uint8, per-seed determinism, batch independence
```

`configs/$name.yaml` holds the options `$cls.from_config` receives.
'''

_INIT = '''\
"""frbench generator adapter '$name'."""

from .adapter import $cls

__all__ = ["$cls"]
'''

_ADAPTER = '''\
"""The '$name' generator adapter for frbench.

TEMPLATE (made by `frbench new-adapter`): the generator below is a PLACEHOLDER. It turns each
identity vector into a coarse colour pattern through a fixed random projection, adds noise drawn
from the image's own seed and upsamples it. It exists so the package installs, registers and passes
its tests before your model does; replace `load` and `generate` with your generator.

The contract frbench relies on (tests/test_adapter.py checks it):
  * `generate(identities[B,512], seeds[B]) -> uint8 tensor [B, 3, R, R]`, R = `native_resolution`;
  * the image of (identity, seed) depends only on those two — every random number comes from that
    image's seed (`seeded_noise`), so batch size, shard and GPU count never change a pixel;
  * bad input raises `fr_bench.errors.InputError` / `ConfigError` with one line naming the problem.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fr_bench.errors import ConfigError, InputError
from fr_bench.generators.base import GeneratorAdapter, seeded_noise

CONTEXT_DIM = 512


class $cls(GeneratorAdapter):
    """TEMPLATE placeholder generator '$name' (seeded noise, not a face model)."""

    name = "$name"
    native_resolution = 112
    # False: outputs are already 112x112 crops. Set True when your generator makes uncropped faces.
    needs_alignment = False

    #: option -> default; `from_config` accepts exactly these keys (configs/$name.yaml)
    OPTIONS: dict[str, Any] = {"grid": 8, "noise_scale": 0.35}

    def __init__(self, grid: int = 8, noise_scale: float = 0.35):
        if int(grid) < 1 or int(grid) > self.native_resolution:
            raise ConfigError(f"{self.name}: grid must be in 1..{self.native_resolution}, got {grid}")
        if float(noise_scale) < 0:
            raise ConfigError(f"{self.name}: noise_scale must be >= 0, got {noise_scale}")
        self.grid = int(grid)
        self.noise_scale = float(noise_scale)
        self.projection: torch.Tensor | None = None
        self.device = torch.device("cpu")

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "$cls":
        unknown = sorted(set(cfg) - set(cls.OPTIONS))
        if unknown:
            raise ConfigError(f"{cls.name}: unknown option(s) {', '.join(unknown)} (valid: {', '.join(cls.OPTIONS)})")
        return cls(**cfg)

    def load(self, weights: str | Path | None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        """TEMPLATE: read your checkpoint here. The placeholder's only weight is the projection
        (512 -> 3*grid*grid): a tensor saved with torch.save at `weights`, or a fixed random one
        when `weights` is None."""
        self.device = torch.device(device)
        shape = (CONTEXT_DIM, 3 * self.grid * self.grid)
        if weights is None:
            g = torch.Generator().manual_seed(0)
            projection = torch.randn(shape, generator=g) / math.sqrt(CONTEXT_DIM)
        else:
            path = Path(weights)
            if not path.is_file():
                raise InputError(path, "weights file not found")
            try:
                projection = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:
                raise InputError(path, f"not a torch tensor file ({type(err).__name__})") from None
            if not isinstance(projection, torch.Tensor) or tuple(projection.shape) != shape:
                got = tuple(projection.shape) if isinstance(projection, torch.Tensor) else type(projection).__name__
                raise InputError(path, f"expected a float tensor of shape {shape}, got {got}")
        self.projection = projection.to(self.device, torch.float32)

    @torch.no_grad()
    def generate(self, identities: torch.Tensor, seeds: torch.Tensor, *, negatives: torch.Tensor | None = None) -> torch.Tensor:
        """identities [B,512], seeds int64 [B] -> uint8 [B,3,R,R]. The placeholder ignores `negatives`."""
        if self.projection is None:
            raise RuntimeError(f"{self.name}: call load() before generate()")
        if identities.ndim != 2 or identities.shape[1] != CONTEXT_DIM:
            raise InputError(None, f"{self.name}: identities must be B x {CONTEXT_DIM}, got {tuple(identities.shape)}")
        if len(seeds) != len(identities):
            raise InputError(None, f"{self.name}: {len(identities)} identities but {len(seeds)} seeds")
        g, r = self.grid, self.native_resolution
        noise = seeded_noise(seeds, (3, g, g), self.device)  # row b is drawn from seeds[b] only
        images = []
        for b in range(len(seeds)):
            # one image at a time: a batched matmul may round differently for different batch sizes
            pattern = torch.tanh(identities[b].to(self.device, torch.float32) @ self.projection).view(1, 3, g, g)
            coarse = pattern + self.noise_scale * noise[b : b + 1]
            images.append(F.interpolate(coarse, size=(r, r), mode="bilinear", align_corners=False))
        x = torch.cat(images).clamp(-1, 1)
        return ((x + 1) * 127.5).round().to(torch.uint8).cpu()
'''

_PRESET = '''\
# Options for the '$name' generator adapter: the mapping $cls.from_config receives.
# TEMPLATE: these drive the placeholder generator; replace them with your generator's settings
# (steps, guidance scale, ...) and keep this file in step with $cls.OPTIONS.
grid: 8            # side of the coarse colour pattern before upsampling to 112x112
noise_scale: 0.35  # amplitude of the per-image seeded noise
'''

_TEST = '''\
"""The adapter contract frbench relies on. Keep these passing when you replace the placeholder."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
import yaml

from fr_bench.errors import ConfigError, InputError
from $module.adapter import CONTEXT_DIM, $cls

PRESET = Path(__file__).resolve().parents[1] / "configs" / "$name.yaml"


def identities(n: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def adapter() -> $cls:
    a = $cls.from_config(yaml.safe_load(PRESET.read_text()) or {})
    a.load(None, device="cpu")
    return a


def test_output_is_uint8_b_3_r_r(adapter):
    out = adapter.generate(identities(3), torch.tensor([1, 2, 3]))
    r = $cls.native_resolution
    assert out.dtype == torch.uint8
    assert tuple(out.shape) == (3, 3, r, r)


def test_same_identity_and_seed_give_the_same_image(adapter):
    ids, seeds = identities(2), torch.tensor([7, 2**62 + 5])
    assert torch.equal(adapter.generate(ids, seeds), adapter.generate(ids, seeds))


def test_different_seeds_give_different_images(adapter):
    ids = identities(1).repeat(2, 1)
    out = adapter.generate(ids, torch.tensor([1, 2]))
    assert not torch.equal(out[0], out[1])


def test_batch_size_never_changes_a_pixel(adapter):
    ids, seeds = identities(5, seed=3), torch.arange(100, 105)
    whole = adapter.generate(ids, seeds)
    pieces = torch.cat([adapter.generate(ids[i : i + 2], seeds[i : i + 2]) for i in range(0, 5, 2)])
    singles = torch.cat([adapter.generate(ids[i : i + 1], seeds[i : i + 1]) for i in range(5)])
    assert torch.equal(whole, pieces)
    assert torch.equal(whole, singles)


def test_preset_has_only_known_options():
    assert set(yaml.safe_load(PRESET.read_text()) or {}) <= set($cls.OPTIONS)


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown option"):
        $cls.from_config({"not_an_option": 1})


def test_missing_weights_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        $cls().load(tmp_path / "missing.pt")


def test_wrong_context_size_is_an_input_error(adapter):
    with pytest.raises(InputError):
        adapter.generate(torch.zeros(2, CONTEXT_DIM + 1), torch.tensor([1, 2]))


def test_registered_under_its_name_once_installed():
    names = {ep.name for ep in entry_points(group="$group")}
    if "$name" not in names:
        pytest.skip("package not installed: pip install -e . registers the entry point")
    from fr_bench.generators import get_generator

    assert get_generator("$name") is $cls
'''
