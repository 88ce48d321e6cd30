"""UIFace (ICLR 2025; Tencent/TFace ``generation/uiface``): the ``uiface`` adapter.

Weights (reference/generators.md §5.1): one diffusion ``.ckpt`` holding the IDiff-Face ConditionalUNet
with a learnable 256-d empty context (``empty_context_embedding``), keys prefixed ``eps_model.``
and/or ``module.``, plus the IDiff-Face VQ-f4 first stage. The reference strips both prefixes and
loads with ``strict=False``; frbench strips them the same way and then loads **strictly**: a
missing, unexpected or mis-shaped key is one error naming the first few. The only keys it
ignores are the DDPM wrapper's schedule buffers (:data:`IGNORED_KEYS`), which the reference also
drops (it rebuilds a linear T = 1000 schedule).

``--weights`` is the ``.ckpt`` file, or a folder holding it (the only ``*.ckpt`` there or in
``checkpoints/``, or ``options.checkpoint``). The UNet's numbers come from ``options.unet_config``
(the reference's model YAML, e.g. ``configs/model/unet_cond_ca_cpd25_uncond20.yaml``, or a training
config with a ``model`` section), else the folder's ``.hydra/config.yaml``, else the released
configuration (:data:`RELEASED_UNET`). The VQ decoder is looked for in ``options.vq_dir``, the
folder, its ``autoencoder/`` and ``models/autoencoder/``.

Sampling: :mod:`fr_bench.generators.two_stage` on DDIM-50 (UIFace's ``alphas_prev`` indexing,
η = 0). Output as ``sample.py::perform_sampling``: decode (quantised), clamp to [−1, 1], to
[0, 1], bilinear resize to 112×112 (align_corners=False, no antialias), ×255 + 0.5, truncate — no
detection or alignment (``output: resize``); ``output: native`` keeps the 128×128 decode for
``frbench align``. Image b starts from ``seeded_noise(seeds[b], stream 0)``; nothing else is random.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from fr_bench.config import Section, validate
from fr_bench.errors import ConfigError, InputError
from fr_bench.io import sha256_file

from .base import GeneratorAdapter, register_generator, seeded_noise
from .idiff_face import decode_in_chunks
from .idiff_checkpoint import HYDRA_CONFIG, read_resolved_yaml
from .idiff_unet import ConditionalUNet, UNetConfig
from .samplers import SCHEDULE_KEYS, DDIMScheduler, NoiseSchedule
from .two_stage import VARIANTS, TwoStageSampler, TwoStageSettings, Variant
from .vq import DECODER_FILE, VQDecoder, find_first_stage, load_vq_decoder, read_state_dict

#: ``configs/model/unet_cond_ca_cpd25_uncond20.yaml`` of the release ("# PARAMS: 216341187" + the empty context)
RELEASED_UNET: dict[str, Any] = dict(
    input_channels=3, initial_channels=96, channel_multipliers=[1, 2, 2, 2], is_attention=[False, True, True, True],
    attention_heads=-1, attention_head_channels=32, n_blocks_per_resolution=2, condition_type="CA",
    is_context_conditional=True, n_context_classes=0, context_input_channels=512, context_channels=256,
    learn_empty_context=True, context_dropout_probability=0.25, unconditioned_probability=0.2)

#: keys a UIFace checkpoint may carry that the sampler does not use (the DDPM wrapper's schedule
#: buffers: the reference drops them and rebuilds the linear T = 1000 schedule)
IGNORED_KEYS = frozenset(SCHEDULE_KEYS)
_PREFIX = re.compile(r"^(?:(?:module|eps_model)\.)+")
OUTPUT_SIZE = 112


class UIFaceOptions(Section):
    """``generate.options`` for ``uiface`` (defaults: the paper's method on the released sampler settings)."""

    variant: Variant = "2-stage-adaptive+attn"
    steps: int = Field(50, ge=2, description="DDIM steps (ddim_step)")
    threshold: float = Field(0.006, ge=0.0, description="adaptive switch: map change below this (MSE_th)")
    switch_t: int = Field(500, ge=0, description="stage 1 while t >= switch_t (step_th)")
    w: float = Field(1.0, description="stage-2 CFG scale: (1+w)·ε_c − w·ε_∅ (cfg_scale)")
    cross_attention: Literal["paper", "released"] = "paper"
    cross_blend: float = Field(0.5, ge=0.0, le=1.0)
    early_switch: Literal["stage2", "released"] = "stage2"
    ddim_variant: Literal["standard", "negfacediff"] = "negfacediff"
    output: Literal["resize", "native"] = "resize"
    image_size: int = Field(128, ge=8, description="the reference's sample size (latent = image_size / 4)")
    unet_config: Optional[Path] = None
    checkpoint: Optional[str] = None
    vq_dir: Optional[Path] = None
    decode_batch: int = Field(8, ge=1)


@dataclass
class LoadReport:
    """How a checkpoint's keys matched the UNet (strict: ``missing`` and ``unexpected`` are empty)."""

    checkpoint: Path
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


# -------------------------------------------------------------------------------------------- files
def find_checkpoint(weights: Path, name: str | None = None) -> Path:
    """``weights`` itself, ``weights/[checkpoints/]name``, or the only ``*.ckpt`` in the folder."""
    if weights.is_file():
        return weights
    if not weights.is_dir():
        raise InputError(weights, "weights not found (a UIFace .ckpt file or a folder holding one)")
    folders = [weights, weights / "checkpoints"]
    if name:
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
        raise InputError(weights / name, "checkpoint not found (looked in the folder and its checkpoints/)")
    found = sorted(p for folder in folders if folder.is_dir() for p in folder.glob("*.ckpt"))
    if len(found) != 1:
        listing = ", ".join(p.name for p in found[:5]) or "none"
        raise InputError(weights, f"expected exactly one *.ckpt here or in checkpoints/ (found: {listing}); "
                                  "pass the file as --weights or set options.checkpoint")
    return found[0]


def read_unet_config(path: Path | None, folder: Path) -> tuple[UNetConfig, str]:
    """The UNet configuration and where it came from (model YAML, training config, or the release)."""
    source: Path | None = path
    if source is None and (folder / HYDRA_CONFIG).is_file():
        source = folder / HYDRA_CONFIG
    if source is None:
        return UNetConfig.from_mapping(RELEASED_UNET, "released UIFace configuration"), "released"
    doc = read_resolved_yaml(source)
    model = doc.get("model", doc)
    if not isinstance(model, dict):
        raise InputError(source, "'model' must be a mapping of ConditionalUNet arguments")
    return UNetConfig.from_mapping(model, source), str(source)


def load_uiface_unet(ckpt: Path, cfg: UNetConfig, source: str = "released") -> tuple[ConditionalUNet, LoadReport]:
    """Build the UNet and load ``ckpt`` after stripping ``module.``/``eps_model.``; any mismatch is an InputError."""
    state = read_state_dict(ckpt)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(ckpt, "not a UIFace state dict (expected a mapping of parameter names to tensors)")
    stripped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        short = _PREFIX.sub("", key)
        if short in stripped:
            raise InputError(ckpt, f"two keys map to {short!r} once 'module.'/'eps_model.' are stripped")
        stripped[short] = value
    unet = ConditionalUNet(cfg)
    own = unet.state_dict()
    report = LoadReport(ckpt)
    report.ignored = sorted(k for k in stripped if k in IGNORED_KEYS)
    report.missing = [k for k in own if k not in stripped]
    report.unexpected = [k for k in stripped if k not in own and k not in IGNORED_KEYS]
    shapes = [f"{k} {tuple(stripped[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in stripped and tuple(stripped[k].shape) != tuple(v.shape)]
    if report.missing or report.unexpected or shapes:
        parts = []
        if report.missing:
            parts.append(f"{len(report.missing)} missing keys (first: {', '.join(report.missing[:5])})")
        if report.unexpected:
            parts.append(f"{len(report.unexpected)} unexpected keys (first: {', '.join(report.unexpected[:5])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (file vs model; first: {'; '.join(shapes[:3])})")
        hint = "" if cfg.learn_empty_context else " (the model config has learn_empty_context: false)"
        if shapes:
            hint += (f" (UNet numbers from {'the released UIFace configuration' if source == 'released' else source}; "
                     "set generate.options.unet_config to the checkpoint's model YAML)")
        raise InputError(ckpt, "does not match the UIFace ConditionalUNet: " + "; ".join(parts) + hint)
    unet.load_state_dict({k: stripped[k] for k in own}, strict=True)
    report.loaded = len(own)
    return unet.eval(), report


def to_uint8_112(img: torch.Tensor, resize: bool) -> torch.Tensor:
    """Decoder output → uint8 as the reference saves it (clamp, to [0, 1], optional bilinear 112, ×255 + 0.5)."""
    x = (img.clamp(-1, 1) + 1.0) / 2.0
    if resize:
        x = F.interpolate(x, size=(OUTPUT_SIZE, OUTPUT_SIZE), mode="bilinear", align_corners=False)
    return x.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------ adapter
@register_generator("uiface")
class UIFaceAdapter(GeneratorAdapter):
    """UIFace checkpoint → 112×112 faces (two-stage DDIM-50 with adaptive switch and attention injection)."""

    native_resolution = OUTPUT_SIZE
    needs_alignment = False

    def __init__(self, options: UIFaceOptions | None = None, **kwargs: Any):
        self.options = options if options is not None else validate(kwargs, UIFaceOptions, "generate.options")
        o = self.options
        self.settings = TwoStageSettings(variant=o.variant, threshold=o.threshold, switch_t=o.switch_t, w=o.w,
                                         cross_attention=o.cross_attention, cross_blend=o.cross_blend,
                                         early_switch=o.early_switch)
        if o.output == "native":
            self.native_resolution = o.image_size  # type: ignore[misc]
            self.needs_alignment = True  # type: ignore[misc]
        self.context_dim = 512
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.unet: ConditionalUNet | None = None
        self.decoder: VQDecoder | None = None
        self.sampler: TwoStageSampler | None = None
        self.report: LoadReport | None = None
        self.last_t0: torch.Tensor | None = None  # per row of the last batch: first timestep using the identity
        self._digests: dict[str, str] = {}
        self._model_source = ""

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "UIFaceAdapter":
        return cls(validate(dict(cfg or {}), UIFaceOptions, "generate.options"))

    def load(self, weights: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        o = self.options
        weights = Path(weights)
        ckpt = find_checkpoint(weights, o.checkpoint)
        folder = weights if weights.is_dir() else weights.parent
        cfg, self._model_source = read_unet_config(o.unet_config, folder)
        unet, self.report = load_uiface_unet(ckpt, cfg, self._model_source)
        self.device, self.dtype = torch.device(device), dtype
        self.unet = unet.to(self.device)
        self.context_dim = cfg.context_input_channels
        search = ([Path(o.vq_dir)] if o.vq_dir is not None
                  else [folder, folder / "autoencoder", folder / "models" / "autoencoder"])
        vq_folder, vq_cfg = find_first_stage(search)
        if vq_cfg.embed_dim != cfg.input_channels:
            raise InputError(vq_folder / DECODER_FILE, f"VQ embed_dim {vq_cfg.embed_dim} ≠ UNet input_channels {cfg.input_channels}")
        if o.image_size % vq_cfg.factor:
            raise ConfigError(f"generate.options.image_size {o.image_size}: not a multiple of the VQ factor {vq_cfg.factor}")
        self.decoder = load_vq_decoder(vq_folder, vq_cfg).to(self.device)
        side = o.image_size // vq_cfg.factor
        self.latent_shape = (cfg.input_channels, side, side)
        self.T = 1000  # the reference wraps the UNet in a fresh DenoisingDiffusionProbabilisticModel (T=1000, linear)
        try:
            scheduler = DDIMScheduler(NoiseSchedule.linear(self.T), o.steps, eta=0.0, variant=o.ddim_variant)
        except ValueError as err:
            raise ConfigError(f"generate.options: {err}") from None
        self.settings = replace(self.settings, map_size=side)
        self.sampler = TwoStageSampler(self.unet, scheduler, self.settings)
        self._t = [torch.tensor([t], device=self.device, dtype=torch.long) for t in scheduler.timesteps]
        self._digests = {"checkpoint_sha256": sha256_file(ckpt), "vq_decoder_sha256": sha256_file(vq_folder / DECODER_FILE)}

    def describe(self) -> dict[str, Any]:
        """Everything that changes pixels (recorded in generate.json)."""
        o = self.options
        two_stage, adaptive, injection = VARIANTS[o.variant]
        out: dict[str, Any] = {"sampler": "ddim", "steps": o.steps, "ddim_variant": o.ddim_variant, "variant": o.variant,
                               "w": o.w, "output": o.output, "image_size": o.image_size, "model": self._model_source}
        if two_stage:
            out["switch_t"] = o.switch_t
        if adaptive:
            out["threshold"] = o.threshold
            out["early_switch"] = o.early_switch
        if injection:
            out["cross_attention"] = o.cross_attention
            if o.cross_attention == "released":
                out["cross_blend"] = o.cross_blend
        return {**out, **self._digests}

    # ----------------------------------------------------------------------------------- sampling
    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def sample_latents(self, identities: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's final latent (fp32, on the device) and its switch time t0 (−1: never used its identity)."""
        if self.unet is None or self.sampler is None:
            raise RuntimeError("call load() first")
        if identities.ndim != 2 or identities.shape[1] != self.context_dim:
            raise InputError(None, f"identity contexts must be B×{self.context_dim}, got {tuple(identities.shape)}")
        n = len(seeds)
        if n < 2:  # oneDNN convolutions take another code path at batch 1; keep every call at ≥ 2 rows
            identities, seeds = identities.repeat(2, 1)[:2], seeds.repeat(2)[:2]
        unet = self.unet

        def eps(x: torch.Tensor, t: torch.Tensor, cache: Any) -> torch.Tensor:
            return unet(x, t, cache=cache).float()

        with torch.inference_mode(), self._autocast():
            ident = unet.encode_context(identities.to(self.device, torch.float32))
            empty = unet.encode_context(None, len(seeds))
            x = seeded_noise(seeds, self.latent_shape, self.device, torch.float32, stream=0)
            x, t0 = self.sampler.run(x, self._t, empty, ident, eps)
        return x[:n], t0[:n]

    def generate(self, identities: torch.Tensor, seeds: torch.Tensor, *, negatives: torch.Tensor | None = None) -> torch.Tensor:
        latents, self.last_t0 = self.sample_latents(identities, seeds)
        with torch.inference_mode():
            return self._decode(latents).cpu()

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents → uint8 images in fixed-size fp32 chunks (padded), so shapes never depend on the batch."""
        assert self.decoder is not None
        resize = self.options.output == "resize"
        return decode_in_chunks(x, lambda part: to_uint8_112(self.decoder(part), resize), self.options.decode_batch, self.device)
