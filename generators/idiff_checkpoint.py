"""Reading a released IDiff-Face-family model folder.

Layout (reference/generators.md §2.1, IDiff-Face ``main.py::save_checkpoint`` and ``sample.py``)::

    <model>/.hydra/config.yaml                  Hydra's composed training config (interpolations unresolved)
    <model>/checkpoints/ema_averaged_model.ckpt state dict of the whole DDPM wrapper: eps_model.* + schedule buffers

The reference rebuilds ``DenoisingDiffusionProbabilisticModel(eps_model=ConditionalUNet(**cfg.model),
T=cfg.diffusion.T, …)`` and loads the checkpoint strictly; :func:`load_model_dir` does the same with
frbench's UNet. A bare UNet state dict (keys without ``eps_model.``; UIFace ships those, sometimes with a
``module.`` prefix) is accepted too: then the schedule is recomputed from the config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from fr_bench.errors import InputError

from .idiff_unet import ConditionalUNet, UNetConfig
from .samplers import SCHEDULE_KEYS, NoiseSchedule
from .vq import read_state_dict, strict_load

HYDRA_CONFIG = Path(".hydra") / "config.yaml"
CHECKPOINT_DIR = "checkpoints"
DEFAULT_CHECKPOINT = "ema_averaged_model.ckpt"

_FULL_REF = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")
_ANY_REF = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def resolve_interpolations(root: dict[str, Any]) -> dict[str, Any]:
    """Resolve OmegaConf-style ``${a.b}`` references (resolver calls like ``${now:…}`` are left as text)."""

    def lookup(path: str, depth: int) -> Any:
        node: Any = root
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(path)
            node = node[part]
        return walk(node, depth + 1)

    def walk(node: Any, depth: int) -> Any:
        if depth > 50:
            raise RecursionError("interpolation cycle")
        if isinstance(node, dict):
            return {k: walk(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, depth) for v in node]
        if isinstance(node, str):
            full = _FULL_REF.match(node)
            if full:
                return lookup(full.group(1), depth)
            return _ANY_REF.sub(lambda m: str(lookup(m.group(1), depth)), node)
        return node

    return walk(root, 0)


def read_hydra_config(model_dir: str | Path) -> dict[str, Any]:
    """``<model_dir>/.hydra/config.yaml`` as a plain dict with its interpolations resolved."""
    return read_resolved_yaml(Path(model_dir) / HYDRA_CONFIG,
                              "model config not found (expected a released IDiff-Face model folder with .hydra/config.yaml)")


def read_resolved_yaml(path: Path, missing: str = "model config not found") -> dict[str, Any]:
    """A hydra-style YAML mapping with its ``${…}`` interpolations resolved; errors name the file."""
    if not path.is_file():
        raise InputError(path, missing)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, f"invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(doc, dict):
        raise InputError(path, "the top level must be a mapping")
    try:
        return resolve_interpolations(doc)
    except KeyError as err:
        raise InputError(path, f"unresolvable interpolation ${{{err.args[0]}}}") from None
    except RecursionError:
        raise InputError(path, "interpolation cycle") from None


@dataclass(frozen=True)
class ModelSpec:
    """What the sampler needs to know from the training config."""

    unet: UNetConfig
    T: int
    schedule_type: str
    latent_diffusion: bool
    image_size: int
    input_channels: int


def model_spec(cfg: dict[str, Any], source: str | Path) -> ModelSpec:
    model = cfg.get("model")
    if not isinstance(model, dict):
        raise InputError(source, "no 'model' section (the ConditionalUNet arguments)")
    unet = UNetConfig.from_mapping(model, source)
    diffusion = cfg.get("diffusion") or {}
    constants = cfg.get("constants") or {}
    try:
        T = int(diffusion.get("T", 1000))
        image_size = int(constants.get("image_size", 128))
        input_channels = int(constants.get("input_channels", unet.input_channels))
    except (TypeError, ValueError) as err:
        raise InputError(source, f"diffusion.T / constants: {err}") from None
    if T < 2 or image_size < 1:
        raise InputError(source, f"diffusion.T={T}, constants.image_size={image_size}: out of range")
    return ModelSpec(unet=unet, T=T, schedule_type=str(diffusion.get("schedule_type", "linear")),
                     latent_diffusion=bool(cfg.get("latent_diffusion", True)), image_size=image_size,
                     input_channels=input_channels)


class DiffusionModel(nn.Module):
    """The reference DDPM wrapper's state: ``eps_model`` and the schedule buffers (same names)."""

    def __init__(self, unet: ConditionalUNet, schedule: NoiseSchedule):
        super().__init__()
        self.eps_model = unet
        for k, v in schedule.buffers().items():
            self.register_buffer(k, v.clone())

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_buffers(dict(self.named_buffers()))


def build_model(spec: ModelSpec, source: str | Path = "config") -> DiffusionModel:
    """A freshly initialised model of the configured size (used before loading, and by the speed benchmark)."""
    # a checkpoint's schedule buffers replace these on load (load_model_dir refuses non-linear without them)
    return DiffusionModel(ConditionalUNet(spec.unet), NoiseSchedule.linear(spec.T))


def checkpoint_path(model_dir: str | Path, name: str = DEFAULT_CHECKPOINT) -> Path:
    return Path(model_dir) / CHECKPOINT_DIR / name


def load_model_dir(model_dir: str | Path, checkpoint: str = DEFAULT_CHECKPOINT) -> tuple[DiffusionModel, ModelSpec]:
    """Build the model from ``.hydra/config.yaml`` and load ``checkpoints/<checkpoint>`` strictly."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(model_dir, "weights folder not found")
    cfg_path = model_dir / HYDRA_CONFIG
    spec = model_spec(read_hydra_config(model_dir), cfg_path)
    ckpt = checkpoint_path(model_dir, checkpoint)
    state = read_state_dict(ckpt)
    if isinstance(state, dict) and state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    model = build_model(spec, cfg_path)
    what = f"ConditionalUNet built from {cfg_path}"
    if isinstance(state, dict) and any(k.startswith("eps_model.") for k in state):
        if spec.schedule_type.lower() != "linear" and not all(k in state for k in SCHEDULE_KEYS):
            raise InputError(ckpt, f"schedule '{spec.schedule_type}' needs the schedule buffers in the checkpoint")
        strict_load(model, state, ckpt, what)
    else:  # bare UNet weights: keep the config's (linear) schedule
        if spec.schedule_type.lower() != "linear":
            raise InputError(ckpt, f"bare UNet weights with schedule '{spec.schedule_type}': only 'linear' can be rebuilt")
        strict_load(model.eps_model, state, ckpt, what)
    return model.eval(), spec
