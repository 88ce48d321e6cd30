"""Training recipes: YAML presets in ``configs/train/``, overrides, validation and a content hash.

A recipe holds everything that changes the trained weights (model, head, optimizer, fixed LR
schedule, augmentation, epochs, batch size). Run settings (device, dtype, compile, checkpoints)
live in :class:`fr_bench.config.TrainConfig` and are not part of the hash.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from .config import TrainRecipe, read_yaml_mapping, validate
from .errors import ConfigError

#: where the presets live: the package's copy of configs/train (``fr_bench.configs``, installed as package
#: data; in an editable install it is the repository's configs/ itself)
PRESET_DIR = Path(__file__).resolve().parent / "configs" / "train"
if not PRESET_DIR.is_dir():  # editable install: fr_bench/ is the source folder, configs/ sits beside it
    PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "train"
#: fields that describe a recipe but do not change the weights
_DESCRIPTIVE = {"name", "source", "notes"}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A preset name (``idiff-face``) or a path to a recipe YAML."""
    p = Path(recipe)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"{p}: recipe file not found")
        return p
    candidate = PRESET_DIR / f"{recipe}.yaml"
    if candidate.is_file():
        return candidate
    names = preset_names()
    close = difflib.get_close_matches(str(recipe), names, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown recipe '{recipe}'{hint}; presets: {', '.join(names) or 'none found in ' + str(PRESET_DIR)}; or give a YAML path")


def _read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "a recipe must be a mapping")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["head.m=0.4", "epochs=2"]`` → nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE (e.g. head.m=0.4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item}: empty key")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: '{p}' is set to a value and used as a section")
        node[parts[-1]] = value
    return out


def load_recipe(recipe: str | Path, overrides: list[tuple[dict[str, Any], str]] | None = None) -> tuple[TrainRecipe, Path]:
    """Read a preset or YAML recipe, apply ``(partial dict, source name)`` overrides in order, validate.

    Each layer is validated on its own first, so a misspelt key is reported against the file (or
    option) that holds it, with the closest valid key.
    """
    path = resolve_recipe_path(recipe)
    data = _read_yaml(path)
    validate(data, TrainRecipe, str(path))
    for layer, source in overrides or []:
        if not layer:
            continue
        data = merge(data, layer)
        validate(data, TrainRecipe, source)
    return validate(data, TrainRecipe, str(path)), path


def recipe_hash(recipe: TrainRecipe) -> str:
    """sha256 (16 hex) of the weight-relevant recipe fields, canonical JSON."""
    doc = recipe.model_dump(mode="json", exclude=_DESCRIPTIVE)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
