"""Fused attention ("Fusion is all you need", arXiv 2409.19111) as a diffusers attention processor.

Every cross-attention layer of the SD UNet gets two trainable projections, ``Linear_kf`` and ``Linear_vf``,
applied to the reference face's hidden states at that layer (the tokens entering that cross-attention when
the UNet itself processes the reference image). With n references the keys and values become

    K' = [K_c; K_f1; …; K_fn],  V' = [V_c; V_f1; …; V_fn],   K_fi = Linear_kf(h_fi), V_fi = Linear_vf(h_fi)

so a layer with N_c text tokens and N_h reference tokens attends over N_c + n·N_h keys (paper Eq. 2–3, 6).
With no reference (n = 0) the processor runs diffusers' ``AttnProcessor2_0`` unchanged.

The paper releases no code; frbench's choices, documented in the README: the reference pass runs the
frozen UNet on the clean reference latent (VAE posterior mean) at timestep ``reference_timestep`` (0)
with the ``reference_prompt`` ("") — its features do not depend on the sampling step, so they are
computed once per batch and their K_f/V_f reused at every step (exactly the same numbers as recomputing
them); the unconditional CFG branch is the plain UNet on the negative prompt (no reference), so guidance
pushes towards both the prompt and the reference. ``Linear_kf``/``Linear_vf`` start as copies of the
same block's self-attention ``to_k``/``to_v``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fr_bench.errors import ConfigError, InputError

from .base import GeneratorAdapter, register_generator
from .sd_common import (SDConfig, SDSampler, check_resolution, check_seeds, encode_prompts, load_scheduler_config,
                        load_text_encoder, load_tokenizer, load_unet, load_vae, parse_config, prepare_modules,
                        require_component, resolve_device, resolve_dtype, vae_scale_factor, weights_sha256)

WEIGHTS_NAME = "fused_attention.safetensors"
FORMAT = "frbench-fused-attention/1"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


# ------------------------------------------------------------------------------------ processor
@dataclass
class FusionState:
    """Shared by every fused processor of one UNet; says what the next UNet call does.

    ``mode``: ``off`` (plain attention), ``capture`` (plain attention, and record each fused layer's input
    hidden states), ``fuse`` (rows ``start:`` attend to the text keys plus their references' keys).
    """

    mode: Literal["off", "capture", "fuse"] = "off"
    refs: dict[str, torch.Tensor] = field(default_factory=dict)  # layer → [R, n·N_h, C] reference states
    start: int = 0
    cache_kv: bool = False  # reuse K_f/V_f across UNet calls (inference: the references do not change)
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    captured: dict[str, torch.Tensor] = field(default_factory=dict)

    def reset(self) -> None:
        self.mode, self.start, self.cache_kv = "off", 0, False
        self.refs, self.kv, self.captured = {}, {}, {}


class FaceFusionAttnProcessor(nn.Module):
    """Cross-attention with the reference face's keys/values appended (``Linear_kf``/``Linear_vf``)."""

    def __init__(self, name: str, query_dim: int, inner_dim: int, state: FusionState):
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.name = name
        self.to_k_f = nn.Linear(query_dim, inner_dim, bias=False)  # Linear_kf
        self.to_v_f = nn.Linear(query_dim, inner_dim, bias=False)  # Linear_vf
        self.plain = AttnProcessor2_0()
        self.state = state

    def reference_kv(self, refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[R, n·N_h, C] reference hidden states → (K_f, V_f) [R, n·N_h, inner], cached when allowed."""
        st = self.state
        if st.cache_kv and self.name in st.kv:
            return st.kv[self.name]
        kv = (self.to_k_f(refs), self.to_v_f(refs))
        if st.cache_kv:
            st.kv[self.name] = kv
        return kv

    def fused_keys_values(self, attn: Any, context: torch.Tensor, refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K' = [K_c; K_f1 … K_fn] and V' for rows with references: [R, N_c + n·N_h, inner]."""
        key, value = attn.to_k(context), attn.to_v(context)
        k_f, v_f = self.reference_kv(refs)
        return torch.cat([key, k_f.to(key.dtype)], dim=1), torch.cat([value, v_f.to(value.dtype)], dim=1)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        st = self.state
        if st.mode == "capture":
            h = hidden_states
            st.captured[self.name] = h.flatten(2).transpose(1, 2) if h.ndim == 4 else h
        refs = st.refs.get(self.name) if st.mode == "fuse" else None
        if refs is None or refs.shape[1] == 0:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return self._fused(attn, hidden_states, encoder_hidden_states, attention_mask, temb, refs)

    def _fused(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor],
               attention_mask: Optional[torch.Tensor], temb: Optional[torch.Tensor], refs: torch.Tensor) -> torch.Tensor:
        # the same steps as AttnProcessor2_0, with K'/V' for the rows that have references
        if attention_mask is not None:
            raise ValueError("fused attention does not take an attention mask (SD UNets pass none)")
        st = self.state
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        start = st.start
        if refs.shape[0] != batch - start:
            raise ValueError(f"{self.name}: {refs.shape[0]} reference rows for {batch - start} fused rows")
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        else:
            context = encoder_hidden_states
        heads = attn.heads

        def heads_first(x: torch.Tensor) -> torch.Tensor:
            return x.view(x.shape[0], -1, heads, x.shape[-1] // heads).transpose(1, 2)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q, k, v = heads_first(q), heads_first(k), heads_first(v)
            if attn.norm_q is not None:
                q = attn.norm_q(q)
            if attn.norm_k is not None:
                k = attn.norm_k(k)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)

        parts = []
        if start > 0:
            parts.append(attend(query[:start], attn.to_k(context[:start]), attn.to_v(context[:start])))
        key, value = self.fused_keys_values(attn, context[start:], refs)
        parts.append(attend(query[start:], key, value))
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        out = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class FusionLayers(nn.Module):
    """The fused processors of one UNet (one per cross-attention layer) and their shared state."""

    def __init__(self, processors: dict[str, FaceFusionAttnProcessor], state: FusionState):
        super().__init__()
        self.state = state
        self.names = list(processors)
        self.layers = nn.ModuleList(processors.values())

    def by_name(self) -> dict[str, FaceFusionAttnProcessor]:
        return dict(zip(self.names, self.layers))

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, proc in self.by_name().items():
            out[f"{name}.to_k_f.weight"] = proc.to_k_f.weight
            out[f"{name}.to_v_f.weight"] = proc.to_v_f.weight
        return out

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor], source: str | Path) -> None:
        """Strict: every layer's two weights, with the right shapes, and nothing else."""
        own = self.adapter_state_dict()
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if missing or extra:
            what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
            raise InputError(source, f"fused-attention weights do not fit this UNet ({what}; "
                                     f"{len(missing)} missing, {len(extra)} unexpected)")
        with torch.no_grad():
            for k, p in own.items():
                if tuple(state[k].shape) != tuple(p.shape):
                    raise InputError(source, f"{k}: shape {tuple(state[k].shape)}, this UNet needs {tuple(p.shape)}")
                p.copy_(state[k].to(p.dtype))

    def save(self, path: str | Path, metadata: Optional[dict[str, str]] = None) -> None:
        from safetensors.torch import save_file

        from fr_bench.io import atomic_path

        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.adapter_state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, **(metadata or {})})


def install_fusion(unet: Any, init: Literal["self-attention", "random"] = "self-attention") -> FusionLayers:
    """Put a fused processor on every cross-attention layer (``attn2``), plain SDPA on the others."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    state = FusionState()
    modules = dict(unet.named_modules())
    procs: dict[str, Any] = {}
    fused: dict[str, FaceFusionAttnProcessor] = {}
    for key in unet.attn_processors:
        name = key[: -len(".processor")]
        attn = modules[name]
        if getattr(attn, "is_cross_attention", False):
            p = FaceFusionAttnProcessor(name, attn.query_dim, attn.inner_dim, state)
            p.to(device=attn.to_q.weight.device, dtype=attn.to_q.weight.dtype)
            self_attn = modules.get(name.rsplit(".", 1)[0] + ".attn1")
            if init == "self-attention" and self_attn is not None and self_attn.to_k.weight.shape == p.to_k_f.weight.shape:
                with torch.no_grad():
                    p.to_k_f.weight.copy_(self_attn.to_k.weight)
                    p.to_v_f.weight.copy_(self_attn.to_v.weight)
            fused[name] = p
            procs[key] = p
        else:
            procs[key] = AttnProcessor2_0()
    if not fused:
        raise InputError(None, "this UNet has no cross-attention layers to fuse into")
    unet.set_attn_processor(procs)
    return FusionLayers(fused, state)


def load_fusion_weights(layers: FusionLayers, path: str | Path) -> dict[str, str]:
    """Load Linear_kf/Linear_vf from a safetensors file (strict); returns the file's metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise InputError(path, "fused-attention weights not found (train them with `frbench train-adapter fused-attention`)")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise InputError(path, f"unreadable safetensors file ({(str(err).splitlines() or [''])[0][:160]})") from None
    layers.load_adapter_state_dict(state, path)
    return meta


def reference_states(unet: Any, layers: FusionLayers, ref_latents: torch.Tensor, context: torch.Tensor,
                     timestep: int, per_identity: int) -> dict[str, torch.Tensor]:
    """Run the UNet on the reference latents [B·n,4,h,w] and return each fused layer's input hidden
    states, grouped per identity: layer → [B, n·N_h, C] (reference 1's tokens first, then 2 …)."""
    st = layers.state
    st.mode, st.captured = "capture", {}
    try:
        t = torch.full((ref_latents.shape[0],), int(timestep), device=ref_latents.device, dtype=torch.long)
        unet(ref_latents, t, encoder_hidden_states=context, return_dict=False)
        captured = st.captured
    finally:
        st.mode, st.captured = "off", {}
    out = {}
    for name in layers.names:
        h = captured[name]
        rows, tokens, ch = h.shape
        out[name] = h.reshape(rows // per_identity, per_identity * tokens, ch)
    return out


def encode_references(vae: Any, images: torch.Tensor, resolution: int, batch: Optional[int] = None) -> torch.Tensor:
    """uint8 [M,3,H,W] (or float in [0,1]) → VAE posterior means × scaling factor, [M,4,h,w]."""
    dtype = next(vae.parameters()).dtype
    device = next(vae.parameters()).device
    x = images.to(device)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    x = (x * 2 - 1).to(dtype)
    step = batch or x.shape[0]
    out = []
    for s in range(0, x.shape[0], step):
        out.append(vae.encode(x[s:s + step]).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out)


def prompt_index(seed: int, count: int) -> int:
    """The prompt of an image: a pure function of its seed (so of run seed, identity and sample)."""
    digest = hashlib.blake2b(f"prompt:{int(seed)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % count


# ------------------------------------------------------------------------------ reference sets
def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_rgb(path: Path, size: int) -> np.ndarray:
    """An image file → uint8 RGB size×size (area/bilinear resize); InputError if unreadable."""
    from fr_bench.align import read_image, resize_to

    return np.ascontiguousarray(resize_to(read_image(path), size)[:, :, ::-1])


class ReferenceTable:
    """Maps identity vectors (rows of an ``identities`` file made by ``frbench identities --source embed
    --images DIR``) back to their reference images: the labelled image, then the other images of its
    folder in sorted order, ``per_identity`` in all."""

    def __init__(self, images: str | Path, identities: str | Path, per_identity: int, size: int):
        from fr_bench.identities import read_identities

        self.images, self.per_identity, self.size = Path(images), per_identity, size
        if not self.images.is_dir():
            raise InputError(self.images, "reference image folder not found")
        ids = read_identities(identities)
        labels = ids.info.get("labels")
        if not labels or len(labels) != len(ids.embeddings):
            raise InputError(identities, "has no per-identity image labels; make it with `frbench identities "
                                         f"--source embed --images {self.images}`")
        self.table = torch.from_numpy(ids.embeddings.astype(np.float32))
        self.labels = list(labels)
        self._cache: dict[int, torch.Tensor] = {}

    def files(self, row: int) -> list[Path]:
        first = self.images / self.labels[row]
        if not first.is_file():
            raise InputError(first, "reference image listed in the identities file is missing")
        others = [p for p in _image_files(first.parent) if p != first]
        chosen = [first] + others[: self.per_identity - 1]
        if len(chosen) < self.per_identity:
            raise InputError(first.parent, f"has {len(chosen)} images; references_per_identity is {self.per_identity}")
        return chosen

    def rows(self, vectors: torch.Tensor) -> list[int]:
        sims = F.normalize(vectors.float().cpu(), dim=1) @ self.table.T
        best, idx = sims.max(dim=1)
        if (best < 0.9999).any():
            raise InputError(self.images, "an identity vector is not a row of the reference identities file "
                                          "(generate with the same --identities as the references option)")
        return idx.tolist()

    def images_for(self, vectors: torch.Tensor) -> torch.Tensor:
        """[B,512] identity vectors → uint8 [B,n,3,size,size] reference images."""
        out = []
        for row in self.rows(vectors):
            if row not in self._cache:
                imgs = [read_rgb(p, self.size) for p in self.files(row)]
                self._cache[row] = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
            out.append(self._cache[row])
        return torch.stack(out)


# -------------------------------------------------------------------------------------- adapter
class FusedAttentionConfig(SDConfig):
    """``generator`` options of fused-attention (plus :class:`~fr_bench.generators.sd_common.SDConfig`)."""

    prompts: list[str] = ["a photo of a person"]  # one is picked per image from its seed
    negative_prompt: str = ""
    adapter: Optional[Path] = None  # Linear_kf/vf safetensors (default: the weights path)
    reference_timestep: Optional[int] = Field(None, ge=0, le=999)  # default: the weights file's (0)
    reference_prompt: Optional[str] = None  # default: the weights file's ("")
    references: Optional[Path] = None  # image folder behind the identities file (engine path)
    reference_identities: Optional[Path] = None  # identities folder made from `references` (embed source)
    references_per_identity: int = Field(1, ge=1)


@register_generator("fused-attention")
class FusedAttentionAdapter(GeneratorAdapter):
    """Fused attention: SD1.5 attends to reference-face features at every cross-attention layer."""

    native_resolution = 512
    needs_alignment = True
    #: what ``generate`` takes as identities: reference images B×n×3×H×W (or vectors mapped to references)
    identity_kind = "images"

    def __init__(self, cfg: Optional[FusedAttentionConfig] = None):
        self.cfg = cfg or FusedAttentionConfig()
        if not self.cfg.prompts or not all(isinstance(p, str) for p in self.cfg.prompts):
            raise ConfigError("generator config (fused-attention): 'prompts' must be a non-empty list of strings")
        if self.cfg.fuse_qkv:
            raise ConfigError("generator config (fused-attention): fuse_qkv replaces the fused processors; set it false")
        if (self.cfg.references is None) != (self.cfg.reference_identities is None):
            raise ConfigError("generator config (fused-attention): 'references' and 'reference_identities' go together")
        self.sampler: Optional[SDSampler] = None
        self.table: Optional[ReferenceTable] = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "FusedAttentionAdapter":
        return cls(parse_config(cfg, FusedAttentionConfig, "fused-attention"))

    def component_folders(self, weights: str | Path) -> dict[str, tuple[Path, str]]:
        weights = Path(weights)
        if self.cfg.base is not None:
            base = Path(self.cfg.base)
        elif weights.is_dir():
            base = weights
        else:
            raise ConfigError("generator config (fused-attention): set 'base' to the SD1.5 folder")
        return {kind: (base / kind, kind) for kind in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}

    def load(self, weights: str | Path, device: str | torch.device = "cpu", dtype: Any = torch.float32) -> None:
        folders = self.component_folders(weights)
        for folder, kind in folders.values():
            require_component(folder, kind, f"SD1.5 {kind}")
        adapter_path = Path(self.cfg.adapter) if self.cfg.adapter is not None else Path(weights)
        if adapter_path.is_dir():
            adapter_path = adapter_path / WEIGHTS_NAME
        if not adapter_path.is_file():
            raise InputError(adapter_path, "fused-attention weights not found (train them with "
                                           "`frbench train-adapter fused-attention`)")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        unet = load_unet(folders["unet"][0]).to(self.device, self.dtype).eval()
        vae = load_vae(folders["vae"][0]).to(self.device, self.dtype).eval()
        self.text_encoder = load_text_encoder(folders["text_encoder"][0]).to(self.device, self.dtype).eval()
        self.tokenizer = load_tokenizer(folders["tokenizer"][0])
        scheduler_config = load_scheduler_config(folders["scheduler"][0])
        self.layers = install_fusion(unet, init="random")
        meta = load_fusion_weights(self.layers, adapter_path)
        self.adapter_path = adapter_path
        self.reference_timestep = self.cfg.reference_timestep if self.cfg.reference_timestep is not None else \
            int(meta.get("reference_timestep", 0))
        self.reference_prompt = self.cfg.reference_prompt if self.cfg.reference_prompt is not None else \
            meta.get("reference_prompt", "")
        resolution = self.cfg.resolution or unet.config.sample_size * vae_scale_factor(vae)
        check_resolution(resolution, unet, vae)
        self.native_resolution = resolution
        prepare_modules(unet, vae, self.cfg, plain_attention=False, fullgraph=False)
        self.unet, self.vae, self.folders = unet, vae, folders
        self.sampler = SDSampler(unet, vae, scheduler_config, self.device, self.dtype, resolution, self.cfg.steps,
                                 self.cfg.guidance_scale, self.cfg.scheduler, self.cfg.vae_batch_size)
        self.prompt_embeds = encode_prompts(self.tokenizer, self.text_encoder, list(self.cfg.prompts), self.device)
        self.uncond = encode_prompts(self.tokenizer, self.text_encoder, [self.cfg.negative_prompt], self.device)
        self.reference_context = encode_prompts(self.tokenizer, self.text_encoder, [self.reference_prompt], self.device)
        if self.cfg.references is not None:
            self.table = ReferenceTable(self.cfg.references, self.cfg.reference_identities,
                                        self.cfg.references_per_identity, resolution)

    def describe(self) -> dict[str, Any]:
        """Settings that decide the pixels (speed-only settings left out, so a resume may change them)."""
        keep = {k: v for k, v in self.cfg.model_dump(mode="json").items()
                if k not in ("channels_last", "compile", "compile_mode", "fuse_qkv", "vae_batch_size")}
        if not hasattr(self, "folders"):
            return keep
        from fr_bench.io import sha256_file

        return {**keep, "resolution": self.native_resolution, "adapter_file": str(self.adapter_path),
                "adapter_sha256": sha256_file(self.adapter_path), "reference_timestep": self.reference_timestep,
                "reference_prompt": self.reference_prompt,
                "weights_sha256": {k: weights_sha256(f) for k, (f, _) in self.folders.items()
                                   if k in ("unet", "vae", "text_encoder")}}

    def _reference_images(self, identities: torch.Tensor) -> torch.Tensor:
        if identities.dim() == 2 and identities.is_floating_point():
            if self.table is None:
                raise ConfigError("fused-attention conditions on reference images: set the options 'references' (image "
                                  "folder) and 'reference_identities' (its `frbench identities --source embed` folder)")
            return self.table.images_for(identities)
        if identities.dim() == 4:
            identities = identities.unsqueeze(1)
        if identities.dim() != 5 or identities.shape[2] != 3:
            raise InputError(None, f"fused-attention: reference images must be B×n×3×H×W; got {tuple(identities.shape)}")
        return identities

    def generate(self, identities: torch.Tensor, seeds: torch.Tensor, *, negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.sampler is None:
            raise RuntimeError("call load() before generate()")
        if negatives is not None:
            raise ConfigError("fused-attention does not use negative identities (remove the negatives setting)")
        refs = self._reference_images(identities)
        b, n = refs.shape[:2]
        seeds = check_seeds(seeds, b)
        cond = self.prompt_embeds[[prompt_index(s, len(self.cfg.prompts)) for s in seeds.tolist()]]
        st = self.layers.state
        with torch.inference_mode():
            try:
                if n > 0:
                    latents = encode_references(self.vae, refs.reshape(b * n, *refs.shape[2:]), self.native_resolution,
                                                self.cfg.vae_batch_size)
                    context = self.reference_context.expand(b * n, -1, -1).to(self.dtype)
                    st.refs = reference_states(self.unet, self.layers, latents.to(self.dtype), context,
                                               self.reference_timestep, n)
                    st.mode, st.start, st.cache_kv = "fuse", (b if self.sampler.cfg else 0), True
                out = self.sampler.sample(seeds, cond, self.uncond)
            finally:
                st.reset()
            return self.sampler.decode(out).cpu()
