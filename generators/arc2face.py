"""Arc2Face (foivospar/Arc2Face, ECCV 2024): SD1.5 conditioned on an ArcFace identity vector.

Weights (the released layout): ``<weights>/arc2face/`` (diffusers UNet) and ``<weights>/encoder/``
(fine-tuned CLIP text encoder, saved from ``CLIPTextModelWrapper``: plain CLIPTextModel weights), on an
SD1.5 base folder (``vae/``, ``tokenizer/``, ``scheduler/``; config ``base``, default ``<weights>``).

Conditioning (reference/generators.md §1.2): the L2-normalised identity vector, zero-padded to the encoder
width, replaces the input token embedding of "id" in "photo of a id person"; the encoder then runs as
usual (positions, causal mask, final layer norm) and its last hidden state is the prompt embedding. The
reference helper does this for one identity per call; here a whole batch goes through the encoder at
once. The unconditional embedding is the same encoder on "" (what the pipeline computes when no negative
prompt is given), computed once at load. Sampling: DPM-Solver++ 25 steps, CFG 3, 512×512.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F

from fr_bench.errors import ConfigError, InputError

from .base import GeneratorAdapter, register_generator
from .sd_common import (SDConfig, SDSampler, check_resolution, check_seeds, encode_prompts, load_scheduler_config,
                        load_text_encoder, load_tokenizer, load_unet, load_vae, parse_config, prepare_modules,
                        require_component, resolve_device, resolve_dtype, vae_scale_factor, weights_sha256)

PROMPT = "photo of a id person"
ID_WORD = "id"


class Arc2FaceConfig(SDConfig):
    """``generator`` options of arc2face (see :class:`~fr_bench.generators.sd_common.SDConfig`)."""


@contextmanager
def _token_override(text_encoder: Any, mask: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
    """While active, the token-embedding layer's output at positions ``mask`` [L] is ``values`` [B,C]."""

    def hook(_module: Any, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, mask] = values.to(out.dtype).unsqueeze(1).expand(-1, int(mask.sum()), -1)
        return out

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def project_identities(tokenizer: Any, text_encoder: Any, identities: torch.Tensor) -> torch.Tensor:
    """Batched Arc2Face projection: identities [B,D] (D ≤ encoder width) → prompt embeddings [B,L,C]."""
    device = next(text_encoder.parameters()).device
    width = text_encoder.config.hidden_size
    if identities.dim() != 2 or identities.shape[1] > width:
        raise InputError(None, f"arc2face: identities must be B×D with D ≤ {width} (ArcFace: 512); "
                               f"got {tuple(identities.shape)}")
    ids = tokenizer(PROMPT, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    id_token = tokenizer.encode(ID_WORD, add_special_tokens=False)[0]
    mask = ids[0] == id_token
    emb = F.normalize(identities.to(device=device, dtype=torch.float32), dim=1)
    emb = F.pad(emb, (0, width - emb.shape[1]))
    with _token_override(text_encoder, mask, emb), torch.no_grad():
        return text_encoder(ids.expand(emb.shape[0], -1))[0]


@register_generator("arc2face")
class Arc2FaceAdapter(GeneratorAdapter):
    """Arc2Face: SD1.5 + ArcFace-ID-conditioned CLIP encoder, DPM-Solver++ 25 steps, CFG 3, 512²."""

    native_resolution = 512
    needs_alignment = True
    #: what ``generate`` takes as identities: ArcFace vectors of this size
    identity_kind = "embedding"
    context_dim = 512

    def __init__(self, cfg: Optional[Arc2FaceConfig] = None):
        self.cfg = cfg or Arc2FaceConfig()
        self.sampler: Optional[SDSampler] = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Arc2FaceAdapter":
        return cls(parse_config(cfg, Arc2FaceConfig, "arc2face"))

    def component_folders(self, weights: str | Path) -> dict[str, tuple[Path, str, str]]:
        """name → (folder, component kind, role), every folder checked before anything loads."""
        weights = Path(weights)
        base = Path(self.cfg.base) if self.cfg.base is not None else weights
        return {
            "unet": (weights / "arc2face", "unet", "Arc2Face UNet (arc2face/)"),
            "text_encoder": (weights / "encoder", "text_encoder", "Arc2Face encoder (encoder/)"),
            "vae": (base / "vae", "vae", "SD1.5 vae"),
            "tokenizer": (base / "tokenizer", "tokenizer", "SD1.5 tokenizer"),
            "scheduler": (base / "scheduler", "scheduler", "SD1.5 scheduler"),
        }

    def load(self, weights: str | Path, device: str | torch.device = "cpu", dtype: Any = torch.float32) -> None:
        folders = self.component_folders(weights)
        for folder, kind, role in folders.values():
            require_component(folder, kind, role)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        unet = load_unet(folders["unet"][0], folders["unet"][2]).to(self.device, self.dtype).eval()
        vae = load_vae(folders["vae"][0]).to(self.device, self.dtype).eval()
        self.text_encoder = load_text_encoder(folders["text_encoder"][0], folders["text_encoder"][2])
        self.text_encoder = self.text_encoder.to(self.device, self.dtype).eval()
        self.tokenizer = load_tokenizer(folders["tokenizer"][0])
        if ID_WORD not in self.tokenizer.get_vocab() and f"{ID_WORD}</w>" not in self.tokenizer.get_vocab():
            raise InputError(folders["tokenizer"][0], f"tokenizer has no token for {ID_WORD!r}")
        scheduler_config = load_scheduler_config(folders["scheduler"][0])
        if unet.config.cross_attention_dim != self.text_encoder.config.hidden_size:
            raise InputError(folders["unet"][0], f"cross_attention_dim {unet.config.cross_attention_dim} does not match "
                                                 f"the encoder width {self.text_encoder.config.hidden_size}")
        self.folders = folders
        resolution = self.cfg.resolution or unet.config.sample_size * vae_scale_factor(vae)
        check_resolution(resolution, unet, vae)
        self.native_resolution = resolution
        prepare_modules(unet, vae, self.cfg)
        self.sampler = SDSampler(unet, vae, scheduler_config, self.device, self.dtype, resolution, self.cfg.steps,
                                 self.cfg.guidance_scale, self.cfg.scheduler, self.cfg.vae_batch_size)
        # the pipeline's unconditional embedding when no negative prompt is given: encoder("")
        self.uncond = encode_prompts(self.tokenizer, self.text_encoder, [""], self.device)

    def describe(self) -> dict[str, Any]:
        """Settings that decide the pixels (speed-only settings left out, so a resume may change them)."""
        out = {k: v for k, v in self.cfg.model_dump(mode="json").items()
               if k not in ("channels_last", "compile", "compile_mode", "fuse_qkv", "vae_batch_size")}
        if hasattr(self, "folders"):
            out["resolution"] = self.native_resolution
            out["weights_sha256"] = {name: weights_sha256(folder) for name, (folder, kind, _) in self.folders.items()
                                     if kind in ("unet", "text_encoder", "vae")}
        return out

    def project(self, identities: torch.Tensor) -> torch.Tensor:
        """Identity vectors [B,512] → prompt embeddings [B,77,768] (whole batch in one encoder call)."""
        return project_identities(self.tokenizer, self.text_encoder, identities)

    def generate(self, identities: torch.Tensor, seeds: torch.Tensor, *, negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.sampler is None:
            raise RuntimeError("call load() before generate()")
        if negatives is not None:
            raise ConfigError("arc2face does not use negative identities (remove the negatives setting)")
        seeds = check_seeds(seeds, identities.shape[0])
        with torch.inference_mode():
            cond = self.project(identities)
            latents = self.sampler.sample(seeds, cond, self.uncond)
            return self.sampler.decode(latents).cpu()
