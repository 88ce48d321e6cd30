"""Shared Stable Diffusion 1.5 pieces for the diffusers-based adapters (Arc2Face, fused attention).

* Offline loading of local diffusers/transformers folders (``local_files_only``, ``HF_HUB_OFFLINE``): a
  missing component folder or weight file is one :class:`~fr_bench.errors.InputError` naming the folder.
* :class:`SDSampler`: the StableDiffusionPipeline denoising loop with what makes it fast and batch
  invariant — per-image seeded initial latents drawn on the device, cond and uncond in one UNet call,
  latents kept in fp32 between solver steps, device timesteps, bf16/fp16 + SDPA + channels_last and an
  optional (regional) ``torch.compile``. The sampler itself (DPM-Solver++, steps, CFG scale) is exactly the
  reference's; nothing here skips steps or reuses features across steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch
from pydantic import Field

from fr_bench.config import Section, validate
from fr_bench.errors import ConfigError, InputError

from .base import seeded_noise

# frbench never downloads: set before diffusers/transformers/huggingface_hub are first imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                     "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                        "pytorch_model.bin.index.json")
#: kind → (files that must all exist, weight files of which one must exist)
COMPONENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "unet": (("config.json",), DIFFUSERS_WEIGHTS),
    "vae": (("config.json",), DIFFUSERS_WEIGHTS),
    "text_encoder": (("config.json",), TRANSFORMERS_WEIGHTS),
    "tokenizer": (("vocab.json", "merges.txt"), ()),
    "scheduler": (("scheduler_config.json",), ()),
}


class SDConfig(Section):
    """Sampling and speed settings shared by the SD1.5 adapters (reference defaults: DPM-Solver++ 25, CFG 3)."""

    base: Optional[Path] = None  # SD1.5 folder with vae/, tokenizer/, scheduler/ (…)
    steps: int = Field(25, ge=1, le=1000)
    guidance_scale: float = Field(3.0, ge=0.0)
    scheduler: Literal["dpmsolver++"] = "dpmsolver++"
    resolution: Optional[int] = Field(None, ge=64)  # default: unet sample_size × VAE factor (512 for SD1.5)
    channels_last: bool = True
    compile: Literal["none", "regional", "full"] = "none"
    compile_mode: Optional[str] = None  # torch.compile mode, e.g. max-autotune-no-cudagraphs
    fuse_qkv: bool = False
    vae_batch_size: Optional[int] = Field(None, ge=1)


def parse_config(cfg: dict[str, Any] | None, model: type[Section], name: str) -> Any:
    """Validate an adapter's config dict; unknown keys are ConfigErrors with a did-you-mean."""
    if cfg is not None and not isinstance(cfg, dict):
        raise ConfigError(f"generator config ({name}): expected a mapping, got {type(cfg).__name__}")
    return validate(dict(cfg or {}), model, f"generator config ({name})")


# ------------------------------------------------------------------------------------- loading
def _quiet_hf() -> None:
    from ..extras import require

    require("diffusers", "the SD1.5 generators (arc2face, fused-attention)")
    require("transformers", "the SD1.5 generators (arc2face, fused-attention)")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()


def require_component(folder: str | Path, kind: str, role: str = "") -> Path:
    """Check that ``folder`` holds a ``kind`` component (config + weights); InputError naming it if not."""
    folder = Path(folder)
    needed, weights = COMPONENTS[kind]
    what = f"{role or kind} component folder"
    if not folder.is_dir():
        raise InputError(folder, f"missing {what}")
    if kind == "tokenizer" and (folder / "tokenizer.json").is_file():
        return folder
    for name in needed:
        if not (folder / name).is_file():
            raise InputError(folder, f"{what} has no {name}")
    if weights and not any((folder / w).is_file() or (folder / w.replace(".safetensors", ".fp16.safetensors")).is_file()
                           for w in weights):
        raise InputError(folder, f"{what} has no weight file (expected one of {', '.join(weights[:2])})")
    return folder


def weights_sha256(folder: str | Path) -> dict[str, str]:
    """sha256 of each weight file in a component folder (for the generation record)."""
    from fr_bench.io import sha256_file

    folder = Path(folder)
    names = DIFFUSERS_WEIGHTS + TRANSFORMERS_WEIGHTS
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.name in names or p.suffix in (".safetensors", ".bin")))
    return {p.name: sha256_file(p) for p in files}


def _variant(folder: Path, weights: tuple[str, ...]) -> Optional[str]:
    """``fp16`` when only the half-precision variant file is present (as in some SD1.5 mirrors)."""
    if any((folder / w).is_file() for w in weights):
        return None
    return "fp16"


def _wrap_load(folder: Path, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except InputError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, EnvironmentError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputError(folder, f"could not load the {what}: {first}") from err


def load_unet(folder: str | Path, role: str = "unet") -> Any:
    _quiet_hf()  # first: a missing diffusers is one line naming the extra
    from diffusers import UNet2DConditionModel

    folder = require_component(folder, "unet", role)
    _quiet_hf()
    return _wrap_load(folder, role, lambda: UNet2DConditionModel.from_pretrained(
        folder, local_files_only=True, variant=_variant(folder, DIFFUSERS_WEIGHTS)))


def load_vae(folder: str | Path) -> Any:
    from diffusers import AutoencoderKL

    folder = require_component(folder, "vae")
    _quiet_hf()
    return _wrap_load(folder, "vae", lambda: AutoencoderKL.from_pretrained(
        folder, local_files_only=True, variant=_variant(folder, DIFFUSERS_WEIGHTS)))


def load_text_encoder(folder: str | Path, role: str = "text_encoder") -> Any:
    """A CLIP text encoder (also reads Arc2Face's ``CLIPTextModelWrapper`` checkpoint: same weights)."""
    from transformers import CLIPTextModel

    folder = require_component(folder, "text_encoder", role)
    _quiet_hf()
    return _wrap_load(folder, role, lambda: CLIPTextModel.from_pretrained(folder, local_files_only=True))


def load_tokenizer(folder: str | Path) -> Any:
    from transformers import CLIPTokenizer

    folder = require_component(folder, "tokenizer")
    _quiet_hf()
    return _wrap_load(folder, "tokenizer", lambda: CLIPTokenizer.from_pretrained(folder, local_files_only=True))


def load_scheduler_config(folder: str | Path) -> dict[str, Any]:
    """The base model's scheduler config (SD1.5 ships a PNDM one; the sampler is built from it)."""
    from diffusers import DPMSolverMultistepScheduler

    folder = require_component(folder, "scheduler")
    return _wrap_load(folder, "scheduler config", lambda: dict(DPMSolverMultistepScheduler.load_config(folder)))


def make_scheduler(config: dict[str, Any], kind: str = "dpmsolver++") -> Any:
    """A fresh scheduler (they are stateful): DPM-Solver++ from the base config, as Arc2Face does."""
    from diffusers import DPMSolverMultistepScheduler

    if kind != "dpmsolver++":  # pragma: no cover - guarded by the config model
        raise ConfigError(f"unknown scheduler {kind!r}")
    return DPMSolverMultistepScheduler.from_config(config)


# ---------------------------------------------------------------------------------------- text
def encode_prompts(tokenizer: Any, text_encoder: Any, prompts: list[str], device: torch.device) -> torch.Tensor:
    """``text_encoder(tokenizer(prompts, pad to max length))[0]``, as StableDiffusionPipeline.encode_prompt."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        return text_encoder(ids)[0]


# -------------------------------------------------------------------------------------- runtime
def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    """torch dtype from ``torch.float16``/``"fp16"``…; half precision on CPU falls back to fp32."""
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    out = names.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(out, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r} (fp32, bf16, fp16)")
    if device.type == "cpu" and out == torch.float16:
        return torch.float32  # CPU fp16 convolutions are slow or missing
    return out


def prepare_modules(unet: Any, vae: Any, cfg: SDConfig, *, plain_attention: bool = True, fullgraph: bool = True) -> None:
    """Speed settings that do not change the sampled images beyond float rounding."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if plain_attention:
        unet.set_attn_processor(AttnProcessor2_0())  # SDPA everywhere, whatever the saved config says
        if cfg.fuse_qkv:
            unet.fuse_qkv_projections()
    if cfg.channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if torch.cuda.is_available() and next(unet.parameters()).is_cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes per batch size: pick the fastest conv kernels
    kwargs = {"mode": cfg.compile_mode} if cfg.compile_mode else {}
    if cfg.compile == "regional":
        unet.compile_repeated_blocks(fullgraph=fullgraph, **kwargs)
    elif cfg.compile == "full":
        unet.compile(fullgraph=fullgraph, **kwargs)
        vae.decoder.compile(**kwargs)


def vae_scale_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def check_resolution(resolution: int, unet: Any, vae: Any) -> int:
    multiple = vae_scale_factor(vae) * 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % multiple:
        raise ConfigError(f"resolution {resolution} must be a multiple of {multiple} for this UNet/VAE")
    return resolution


@dataclass
class SDSampler:
    """DPM-Solver++ with classifier-free guidance on a diffusers UNet, batch-invariant per image."""

    unet: Any
    vae: Any
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    resolution: int
    steps: int = 25
    guidance_scale: float = 3.0
    scheduler_kind: str = "dpmsolver++"
    vae_batch_size: Optional[int] = None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // vae_scale_factor(self.vae)
        return (self.unet.config.in_channels, side, side)

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0  # as StableDiffusionPipeline.do_classifier_free_guidance

    def initial_latents(self, seeds: torch.Tensor, scheduler: Any) -> torch.Tensor:
        """Row b is N(0, I) from ``seeds[b]`` alone (drawn on the device), times the solver's initial sigma."""
        noise = seeded_noise(seeds, self.latent_shape, self.device, torch.float32, stream=0)
        return noise * scheduler.init_noise_sigma

    def sample(self, seeds: torch.Tensor, cond: torch.Tensor, uncond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Denoise from seeded noise with ``cond`` [B,L,C] (and ``uncond`` [1|B,L,C] for CFG) → latents fp32.

        Cond and uncond go through the UNet as one batch, uncond first (the pipeline's order).
        """
        scheduler = make_scheduler(self.scheduler_config, self.scheduler_kind)
        scheduler.set_timesteps(self.steps, device=self.device)
        latents = self.initial_latents(seeds, scheduler)
        b = latents.shape[0]
        if self.cfg:
            if uncond is None:
                raise ValueError("classifier-free guidance needs an unconditional embedding")
            context = torch.cat([uncond.expand(b, -1, -1), cond]).to(self.dtype)
        else:
            context = cond.to(self.dtype)
        rows = context.shape[0]
        memory = torch.channels_last if self.unet_channels_last else torch.contiguous_format
        timesteps = scheduler.timesteps.to(self.device)
        for i in range(len(timesteps)):
            t = timesteps[i]
            model_in = torch.cat([latents] * 2) if self.cfg else latents
            model_in = scheduler.scale_model_input(model_in, t).to(self.dtype).contiguous(memory_format=memory)
            with torch.no_grad():
                eps = self.unet(model_in, t.expand(rows), encoder_hidden_states=context, return_dict=False)[0]
            eps = eps.float()
            if self.cfg:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + self.guidance_scale * (eps_c - eps_u)
            latents = scheduler.step(eps, t, latents, return_dict=False)[0]
        return latents

    @property
    def unet_channels_last(self) -> bool:
        try:
            w = next(p for p in self.unet.parameters() if p.dim() == 4)
        except StopIteration:  # pragma: no cover
            return False
        return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → uint8 [B,3,H,W]: the pipeline's ``(x/2+0.5).clamp(0,1)``, ×255, rounded."""
        vae_dtype = next(self.vae.parameters()).dtype
        step = self.vae_batch_size or latents.shape[0]
        out = []
        for start in range(0, latents.shape[0], step):
            z = (latents[start:start + step] / self.vae.config.scaling_factor).to(vae_dtype)
            with torch.no_grad():
                x = self.vae.decode(z, return_dict=False)[0]
            out.append(((x.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8))
        return torch.cat(out)


def check_seeds(seeds: torch.Tensor, batch: int) -> torch.Tensor:
    seeds = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1)
    if seeds.numel() != batch:
        raise ValueError(f"got {seeds.numel()} seeds for {batch} identities")
    return seeds
