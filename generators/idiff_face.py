"""IDiff-Face, NegFaceDiff and AdaptDiff: one released code base and checkpoint format, three adapters.

* ``idiff-face`` — plain conditional DDPM-1000 (reference/generators.md §2.3).
* ``negfacediff`` — ε = (1+w)·ε(p⁺) − w·ε(p⁻), w = 0.5, p⁻ the identity's far negative (§3).
* ``adaptdiff`` — the same with w_t = w·(1 − t/T), w = 1 (§4).

``--weights`` is a released model folder (``.hydra/config.yaml`` + ``checkpoints/ema_averaged_model.ckpt``);
the VQ-f4 first stage (``first_stage_decoder_state_dict.pt``, optional ``first_stage_config.yaml``) is
looked for in ``options.vq_dir``, the weights folder, its ``autoencoder/`` or ``models/autoencoder/``,
and the IDiff-Face repository's ``models/autoencoder/`` two levels up (``trained_models/<NAME>``).

Randomness: image b starts from ``seeded_noise(seeds[b], stream 0)``; the DDPM step noise comes in
chunks of :data:`NOISE_CHUNK` steps, chunk j from stream 1+j. Everything is drawn per image on the
sampling device, so an image depends on its seed only (never on batch, shard or GPU count), but CPU
and CUDA give different images for the same seed (different generators).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch
from pydantic import Field

from fr_bench.config import Section, validate
from fr_bench.errors import ConfigError, InputError
from fr_bench.io import sha256_file

from .base import GeneratorAdapter, register_generator, seeded_noise
from .guidance import Guidance, guided_eps, make_guidance
from .idiff_checkpoint import DEFAULT_CHECKPOINT, checkpoint_path, load_model_dir
from .idiff_unet import ConditionalUNet, ContextCache
from .samplers import Scheduler, make_scheduler
from .vq import DECODER_FILE, VQDecoder, find_first_stage, load_vq_decoder

#: step noises drawn per image per call; part of the seed → image contract, never change it
NOISE_CHUNK = 50


class IDiffFaceOptions(Section):
    """``generate.options`` for the IDiff-Face family (preset values per adapter below)."""

    sampler: Literal["ddpm", "ddim"] = "ddpm"
    steps: Optional[int] = Field(None, ge=1, description="None: T (1000) for ddpm, 200 for ddim")
    eta: float = Field(0.0, ge=0.0)
    ddim_variant: Literal["standard", "negfacediff"] = "standard"
    guidance: Literal["none", "negative", "linear"] = "none"
    w: float = 0.0
    reverse_adaptive: bool = False
    checkpoint: str = DEFAULT_CHECKPOINT
    vq_dir: Optional[Path] = None
    decode_batch: int = Field(8, ge=1)
    compile: bool = False  # torch.compile the UNet (mode: compile_mode, e.g. "reduce-overhead")
    compile_mode: Optional[str] = None
    cuda_graph: bool = False  # capture the UNet call once per batch shape and replay it (CUDA only)


class NegFaceDiffOptions(IDiffFaceOptions):
    guidance: Literal["none", "negative", "linear"] = "negative"
    w: float = 0.5
    ddim_variant: Literal["standard", "negfacediff"] = "negfacediff"


class AdaptDiffOptions(IDiffFaceOptions):
    guidance: Literal["none", "negative", "linear"] = "linear"
    w: float = 1.0
    ddim_variant: Literal["standard", "negfacediff"] = "negfacediff"


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """[−1, 1] → uint8 as the reference saves samples (clamp, (x+1)/2, ×255 + 0.5, clamp, truncate)."""
    return ((img.clamp(-1, 1) + 1.0) / 2.0).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


@register_generator("idiff-face")
class IDiffFaceAdapter(GeneratorAdapter):
    """Released IDiff-Face model folder → 128×128 faces (MTCNN/5-point alignment still needed)."""

    native_resolution = 128
    needs_alignment = True
    Options: type[IDiffFaceOptions] = IDiffFaceOptions

    def __init__(self, options: IDiffFaceOptions | None = None, **kwargs: Any):
        self.options = options if options is not None else validate(kwargs, self.Options, "generate.options")
        o = self.options
        self.guidance: Guidance = make_guidance(o.guidance, o.w, reverse=o.reverse_adaptive)
        self.needs_negatives = self.guidance.needs_negative
        self.context_dim = 512
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.unet: ConditionalUNet | None = None
        self.decoder: VQDecoder | None = None
        self.scheduler: Scheduler | None = None
        self._digests: dict[str, str] = {}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "IDiffFaceAdapter":
        return cls(validate(dict(cfg or {}), cls.Options, "generate.options"))

    # ------------------------------------------------------------------------------------ loading
    def _vq_search(self, weights: Path) -> list[Path]:
        if self.options.vq_dir is not None:
            return [Path(self.options.vq_dir)]
        return [weights, weights / "autoencoder", weights / "models" / "autoencoder",
                weights.resolve().parent.parent / "models" / "autoencoder"]

    def load(self, weights: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        weights = Path(weights)
        model, spec = load_model_dir(weights, self.options.checkpoint)
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet = model.eps_model.to(self.device).eval()
        self.T = spec.T
        self.context_dim = spec.unet.context_input_channels
        o = self.options
        self.schedule = model.schedule()  # the checkpoint's constants
        try:
            self.scheduler = make_scheduler(self.schedule, o.sampler, o.steps, eta=o.eta, ddim_variant=o.ddim_variant)
        except ValueError as err:
            raise ConfigError(f"generate.options: {err}") from None
        ckpt = checkpoint_path(weights, o.checkpoint)
        self._digests = {"checkpoint_sha256": sha256_file(ckpt)}
        if spec.latent_diffusion:
            folder, vq_cfg = find_first_stage(self._vq_search(weights))
            if vq_cfg.embed_dim != spec.unet.input_channels:
                raise InputError(folder / DECODER_FILE, f"VQ embed_dim {vq_cfg.embed_dim} ≠ UNet input_channels {spec.unet.input_channels}")
            self.decoder = load_vq_decoder(folder, vq_cfg).to(self.device)
            self._digests["vq_decoder_sha256"] = sha256_file(folder / DECODER_FILE)
            side = spec.image_size // vq_cfg.factor
        else:
            self.decoder = None
            side = spec.image_size
        self.latent_shape = (spec.unet.input_channels, side, side)
        self.native_resolution = spec.image_size  # type: ignore[misc]  # the loaded model's actual size
        unet = self.unet
        call = lambda x, t, kv: unet(x, t, cache=ContextCache(kv))  # noqa: E731
        if o.compile:
            call = torch.compile(call, mode=o.compile_mode, dynamic=False)
        if o.cuda_graph:
            if self.device.type != "cuda":
                raise ConfigError(f"generate.options.cuda_graph needs a CUDA device (got {self.device})")
            call = GraphedCall(call, lambda: torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype != torch.float32,
                                                            cache_enabled=False))
        self._unet_call = call

    def describe(self) -> dict[str, Any]:
        """Everything about this adapter that changes pixels (recorded with the dataset)."""
        o = self.options
        out: dict[str, Any] = {"sampler": o.sampler, "steps": len(self.scheduler.timesteps) if self.scheduler else o.steps,
                               "checkpoint": o.checkpoint, **self.guidance.describe(), **self._digests}
        if o.sampler == "ddim":
            out.update(eta=o.eta, ddim_variant=o.ddim_variant)
        if o.compile:  # compiled kernels may round differently from eager ones
            out.update(compile=True, compile_mode=o.compile_mode)
        return out

    # ---------------------------------------------------------------------------------- sampling
    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def _eps(self, x: torch.Tensor, t: torch.Tensor, cache: ContextCache) -> torch.Tensor:
        return self._unet_call(x, t, cache.kv).float()

    def generate(self, identities: torch.Tensor, seeds: torch.Tensor, *, negatives: torch.Tensor | None = None) -> torch.Tensor:
        latents = self.sample_latents(identities, seeds, negatives=negatives)
        with torch.inference_mode():
            return self._decode(latents).cpu()

    def sample_latents(self, identities: torch.Tensor, seeds: torch.Tensor, *,
                       negatives: torch.Tensor | None = None) -> torch.Tensor:
        """The sampler's final x_0 (fp32, on the device) for each row; ``generate`` decodes them."""
        if self.unet is None or self.scheduler is None:
            raise RuntimeError("call load() first")
        if identities.ndim != 2 or identities.shape[1] != self.context_dim:
            raise InputError(None, f"identity contexts must be B×{self.context_dim}, got {tuple(identities.shape)}")
        if self.needs_negatives and negatives is None:
            raise InputError(None, f"{self.name} needs a negative context per identity")
        n = len(seeds)
        if n < 2:  # oneDNN convolutions take another code path at batch 1; keep every call at ≥ 2 rows
            identities, seeds = identities.repeat(2, 1)[:2], seeds.repeat(2)[:2]
            negatives = negatives.repeat(2, 1)[:2] if negatives is not None else None
        dev = self.device
        # one autocast region for the whole loop: the bf16/fp16 weight copies are made once per batch
        with torch.inference_mode(), self._autocast():
            pos = self.unet.encode_context(identities.to(dev, torch.float32))
            both = pos.cat(self.unet.encode_context(negatives.to(dev, torch.float32))) if self.needs_negatives else None
            x = seeded_noise(seeds, self.latent_shape, dev, torch.float32, stream=0)
            sched, T = self.scheduler, self.T
            if getattr(self, "_t_for", None) is not sched:  # device-side timestep tensors, made once per scheduler
                self._t = [torch.tensor([t], device=dev, dtype=torch.long) for t in sched.timesteps]
                self._t_for = sched
            drawn = 0
            chunk: torch.Tensor | None = None
            for k, t in enumerate(sched.timesteps):
                z = None
                if sched.needs_noise(k):
                    if drawn % NOISE_CHUNK == 0:
                        chunk = seeded_noise(seeds, (NOISE_CHUNK, *self.latent_shape), dev, torch.float32,
                                             stream=1 + drawn // NOISE_CHUNK)
                    z = chunk[:, drawn % NOISE_CHUNK]
                    drawn += 1
                eps = guided_eps(self._eps, x, self._t[k], t, T, self.guidance, pos, both)
                x = sched.step(eps, k, x, z)
        return x[:n]

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents → uint8 images, in fixed-size fp32 chunks (padded) so shapes never depend on the batch."""
        if self.decoder is None:
            return to_uint8(x)
        return decode_in_chunks(x, lambda part: to_uint8(self.decoder(part)), self.options.decode_batch, self.device)


class GraphedCall:
    """Replays a CUDA graph of ``fn(x, t, kv)`` captured once per input shape (DESIGN §7: small-latent UNets
    spend more time launching kernels than computing). Inputs are copied into the graph's static
    tensors; the context K/V only when a new batch brings a new list. The returned tensor is
    overwritten by the next call, so it must be consumed first (the sampler does)."""

    def __init__(self, fn: Any, autocast: Any):
        self.fn = fn
        self.autocast = autocast
        self.graphs: dict[tuple, tuple] = {}

    def _capture(self, x: torch.Tensor, t: torch.Tensor, kv: list) -> tuple:
        sx, st = x.clone(), t.clone()
        skv = [(k.clone(), v.clone()) for k, v in kv]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), self.autocast():
            for _ in range(3):  # warm-up outside the graph (cuDNN/cuBLAS workspaces, lazy init)
                self.fn(sx, st, skv)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), self.autocast():
            out = self.fn(sx, st, skv)
        return sx, st, skv, out, graph, [kv]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, kv: list) -> torch.Tensor:
        key = (tuple(x.shape), tuple(t.shape), tuple(tuple(k.shape) for k, _ in kv))
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(x, t, kv)
        sx, st, skv, out, graph, last = entry
        sx.copy_(x)
        st.copy_(t)
        if last[0] is not kv:  # a new batch: new context features (holding the list keeps its id unique)
            for (a, b), (k, v) in zip(skv, kv):
                a.copy_(k)
                b.copy_(v)
            last[0] = kv
        graph.replay()
        return out


@register_generator("negfacediff")
class NegFaceDiffAdapter(IDiffFaceAdapter):
    """IDiff-Face weights with a fixed negative-context weight (w = 0.5, far negative)."""

    Options = NegFaceDiffOptions


@register_generator("adaptdiff")
class AdaptDiffAdapter(IDiffFaceAdapter):
    """IDiff-Face weights with the linearly growing negative weight w_t = w·(1 − t/T), w = 1."""

    Options = AdaptDiffOptions


def decode_in_chunks(x: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor], size: int,
                     device: torch.device) -> torch.Tensor:
    """``decode`` over fixed-size fp32 chunks, the last padded with copies of its final row and trimmed,
    so every decoder call has the same shape whatever the batch (batch-independent bytes)."""
    out = []
    with torch.autocast(device.type, enabled=False):
        for i in range(0, len(x), size):
            part = x[i : i + size]
            m = len(part)
            if m < size:
                part = torch.cat([part, part[-1:].expand(size - m, *part.shape[1:])])
            out.append(decode(part)[:m])
    return torch.cat(out)
