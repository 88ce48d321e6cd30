"""``frbench train-adapter fused-attention``: learn Linear_kf/Linear_vf on captioned face images.

Everything of SD1.5 stays frozen; only the fused processors' two projections per cross-attention layer
train. One step: pick ``batch_size`` target images, for each ``references`` other images of the same
identity (its folder; the image itself when it is alone), encode them with the VAE, run the reference
pass (clean latents, ``reference_timestep``, ``reference_prompt``) to get each layer's reference states,
then the usual ε-prediction MSE on the noised target with its caption, attending to K'=[K_c; K_f…].

Data: ``DATA/<identity>/<image>`` with a caption per image — ``<image stem>.txt`` beside it, or a
``metadata.jsonl`` at the top (``{"file_name": "id/x.jpg", "text": "…"}``, the Hugging Face imagefolder
convention); images directly under ``DATA`` are identities of their own.

Everything random in step s comes from a generator seeded by (seed, s), so a run resumed from its
checkpoint (``checkpoint.pt``, written atomically every ``save_every`` steps) continues exactly as an
uninterrupted one. Output: ``OUT/fused_attention.safetensors`` (what the adapter loads) and
``OUT/train_adapter.json`` (settings, losses; written last).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F

from .errors import ConfigError, InputError
from .io import atomic_path, write_json_atomic

CHECKPOINT = "checkpoint.pt"
SUMMARY = "train_adapter.json"
FORMAT = "frbench-train-adapter/1"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
#: settings a resumed run must share with its checkpoint (steps may grow; logging may change)
RESUME_KEYS = ("data", "base", "batch_size", "lr", "weight_decay", "references", "resolution", "seed",
               "reference_timestep", "reference_prompt", "init", "dtype")

Advance = Callable[[int], None]
ProgressFactory = Callable[[str, int], Advance]


@dataclass
class TrainAdapterSettings:
    data: Path
    base: Path
    out: Path
    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-2
    references: int = 1
    resolution: Optional[int] = None  # default: the UNet's (512 for SD1.5)
    seed: int = 0
    save_every: int = 250
    log_every: int = 10
    reference_timestep: int = 0
    reference_prompt: str = ""
    init: Literal["self-attention", "random"] = "self-attention"
    device: str = "auto"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU (fp16 would need loss scaling)

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        for k in ("data", "base", "out"):
            out[k] = str(Path(out[k]).resolve())
        return out


@dataclass
class CaptionedImage:
    path: Path
    caption: str
    identity: str


# ------------------------------------------------------------------------------------------ data
def scan_dataset(folder: str | Path) -> list[CaptionedImage]:
    """Every image under ``folder`` (sorted) with its caption and identity (its parent folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "training image folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(folder, f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    meta: dict[str, str] = {}
    meta_path = folder / "metadata.jsonl"
    if meta_path.is_file():
        for lineno, line in enumerate(meta_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                meta[Path(row["file_name"]).as_posix()] = str(row["text"])
            except (ValueError, KeyError, TypeError):
                raise InputError(meta_path, f"line {lineno}: expected {{\"file_name\": …, \"text\": …}}") from None
    out = []
    for p in files:
        rel = p.relative_to(folder).as_posix()
        if rel in meta:
            caption = meta[rel]
        elif p.with_suffix(".txt").is_file():
            caption = p.with_suffix(".txt").read_text().strip()
        else:
            raise InputError(p, f"no caption (add {p.stem}.txt beside it or a metadata.jsonl line)")
        identity = p.parent.relative_to(folder).as_posix() if p.parent != folder else rel
        out.append(CaptionedImage(p, caption, identity))
    return out


def _step_seed(seed: int, step: int) -> int:
    digest = hashlib.blake2b(f"train-adapter:{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------- trainer
@dataclass
class Batch:
    targets: torch.Tensor  # uint8 [B,3,S,S]
    refs: torch.Tensor  # uint8 [B·n,3,S,S]
    captions: list[str]
    timesteps: torch.Tensor  # int64 [B]
    noise: torch.Tensor  # float32 [B,4,h,w]
    latent_noise: torch.Tensor  # float32 [B,4,h,w], draws the VAE posterior sample


@dataclass
class Trainer:
    settings: TrainAdapterSettings
    log: Callable[[str], None] = lambda msg: None
    losses: list[float] = field(default_factory=list)

    def build(self) -> None:
        """Load the frozen SD1.5 parts, install the fused processors, make the optimizer."""
        from .extras import require

        require("diffusers", "frbench train-adapter")
        from diffusers import DDPMScheduler

        from .generators.fused_attention import install_fusion
        from .generators.sd_common import (check_resolution, load_scheduler_config, load_text_encoder, load_tokenizer,
                                           load_unet, load_vae, require_component, resolve_device, vae_scale_factor)

        s = self.settings
        base = Path(s.base)
        for kind in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            require_component(base / kind, kind, f"SD1.5 {kind}")
        self.items = scan_dataset(s.data)
        self.by_identity: dict[str, list[int]] = {}
        for i, item in enumerate(self.items):
            self.by_identity.setdefault(item.identity, []).append(i)
        self.device = resolve_device(s.device)
        names = {"fp32": torch.float32, "bf16": torch.bfloat16}
        self.dtype = names.get(s.dtype) or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if self.device.type == "cpu":
            self.dtype = torch.float32
        self.unet = load_unet(base / "unet").to(self.device, self.dtype).eval().requires_grad_(False)
        self.vae = load_vae(base / "vae").to(self.device, self.dtype).eval().requires_grad_(False)
        self.text_encoder = load_text_encoder(base / "text_encoder").to(self.device, self.dtype).eval()
        self.text_encoder.requires_grad_(False)
        self.tokenizer = load_tokenizer(base / "tokenizer")
        self.noise_scheduler = DDPMScheduler.from_config(load_scheduler_config(base / "scheduler"))
        self.resolution = s.resolution or self.unet.config.sample_size * vae_scale_factor(self.vae)
        check_resolution(self.resolution, self.unet, self.vae)
        self.layers = install_fusion(self.unet, init=s.init)
        self.layers.float().requires_grad_(True)  # fp32 master weights; autocast runs them in self.dtype
        self.optimizer = torch.optim.AdamW(self.layers.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.step = 0
        self._images: dict[int, torch.Tensor] = {}

    # -------------------------------------------------------------------------------- batches
    def _image(self, i: int) -> torch.Tensor:
        from .generators.fused_attention import read_rgb

        if i not in self._images:
            if len(self._images) > 4096:
                self._images.clear()
            self._images[i] = torch.from_numpy(read_rgb(self.items[i].path, self.resolution)).permute(2, 0, 1)
        return self._images[i]

    def make_batch(self, seed: int) -> Batch:
        """The batch drawn from ``seed`` alone: targets, their references, timesteps and noise."""
        s = self.settings
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(len(self.items), (s.batch_size,), generator=g).tolist()
        refs = []
        for i in idx:
            pool = [j for j in self.by_identity[self.items[i].identity] if j != i] or [i]
            picks = torch.randint(len(pool), (s.references,), generator=g).tolist()
            refs.extend(pool[p] for p in picks)
        side = self.resolution // (2 ** (len(self.vae.config.block_out_channels) - 1))
        shape = (s.batch_size, self.unet.config.in_channels, side, side)
        timesteps = torch.randint(self.noise_scheduler.config.num_train_timesteps, (s.batch_size,), generator=g)
        noise = torch.randn(shape, generator=g)
        latent_noise = torch.randn(shape, generator=g)
        return Batch(torch.stack([self._image(i) for i in idx]), torch.stack([self._image(j) for j in refs]),
                     [self.items[i].caption for i in idx], timesteps, noise, latent_noise)

    # ------------------------------------------------------------------------------------ loss
    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def loss(self, batch: Batch) -> torch.Tensor:
        from .generators.fused_attention import encode_references, reference_states
        from .generators.sd_common import encode_prompts

        s, dev = self.settings, self.device
        st = self.layers.state
        with torch.no_grad():
            x = (batch.targets.to(dev).float() / 127.5 - 1).to(self.dtype)
            dist = self.vae.encode(x).latent_dist
            latents = (dist.mean + dist.std * batch.latent_noise.to(dev, dist.mean.dtype)).float()
            latents = latents * self.vae.config.scaling_factor
            ref_latents = encode_references(self.vae, batch.refs, self.resolution)
            ref_context = encode_prompts(self.tokenizer, self.text_encoder, [s.reference_prompt], dev)
            states = reference_states(self.unet, self.layers, ref_latents.to(self.dtype),
                                      ref_context.expand(ref_latents.shape[0], -1, -1).to(self.dtype),
                                      s.reference_timestep, s.references)
            text = encode_prompts(self.tokenizer, self.text_encoder, batch.captions, dev).to(self.dtype)
            noise, t = batch.noise.to(dev), batch.timesteps.to(dev)
            noisy = self.noise_scheduler.add_noise(latents, noise, t)
            if self.noise_scheduler.config.prediction_type == "v_prediction":
                target = self.noise_scheduler.get_velocity(latents, noise, t)
            else:
                target = noise
        st.mode, st.start, st.refs, st.cache_kv = "fuse", 0, states, False
        try:
            with self._autocast():
                pred = self.unet(noisy.to(self.dtype), t, encoder_hidden_states=text, return_dict=False)[0]
        finally:
            st.reset()
        return F.mse_loss(pred.float(), target.float())

    def eval_loss(self, seed: Optional[int] = None) -> float:
        """Loss on one fixed batch (same images, timesteps and noise every time): progress you can compare."""
        with torch.no_grad():
            return float(self.loss(self.make_batch(_step_seed(self.settings.seed if seed is None else seed, -1))))

    def train_step(self) -> float:
        batch = self.make_batch(_step_seed(self.settings.seed, self.step))
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.layers.parameters(), 1.0)
        self.optimizer.step()
        self.step += 1
        value = float(loss.detach())
        self.losses.append(value)
        return value

    # ----------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: Path, extra: dict[str, Any]) -> None:
        state = {"format": FORMAT, "step": self.step,
                 "adapter": {k: v.detach().float().cpu() for k, v in self.layers.adapter_state_dict().items()},
                 "optimizer": self.optimizer.state_dict(), "settings": json.dumps(self.settings.record()),
                 "losses": torch.tensor(self.losses, dtype=torch.float64), **extra}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InputError(path, f"unreadable checkpoint ({(str(err).splitlines() or [''])[0][:160]})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise InputError(path, f"not a {FORMAT} checkpoint")
        old = json.loads(state["settings"])
        new = self.settings.record()
        for k in RESUME_KEYS:
            if old.get(k) != new.get(k):
                raise ConfigError(f"{path}: this run was started with {k}={json.dumps(old.get(k))}, now "
                                  f"{json.dumps(new.get(k))}; resume with the same settings or use another --out")
        self.layers.load_adapter_state_dict(state["adapter"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.losses = [float(v) for v in state["losses"].tolist()]
        return state


def train_fused_attention(settings: TrainAdapterSettings, *, resume: bool = False, run: Any = None,
                          progress: Optional[ProgressFactory] = None,
                          log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Train (or resume) and write ``fused_attention.safetensors`` + ``train_adapter.json``; returns the summary."""
    from .generators.fused_attention import WEIGHTS_NAME

    s = settings
    if s.steps < 1 or s.batch_size < 1 or s.references < 1 or s.save_every < 1 or s.log_every < 1:
        raise ConfigError("train-adapter: steps, batch size, references, save-every and log-every must be ≥ 1")
    out = Path(s.out)
    ckpt = out / CHECKPOINT
    if ckpt.is_file() and not resume:
        raise ConfigError(f"{ckpt}: a run already started here; pass --resume to continue it or use another --out")
    trainer = Trainer(s, log)
    trainer.build()
    out.mkdir(parents=True, exist_ok=True)
    eval_start: Optional[float] = None
    if resume and ckpt.is_file():
        eval_start = float(trainer.load_checkpoint(ckpt).get("eval_loss_start", float("nan")))
        log(f"resumed from {ckpt} at step {trainer.step}")
    elif resume:
        log(f"no checkpoint in {out}; starting at step 0")
    if run is not None:
        run.log_params({**s.record(), "images": len(trainer.items), "identities": len(trainer.by_identity),
                        "layers": len(trainer.layers.names),
                        "trainable_params": sum(p.numel() for p in trainer.layers.parameters())})
    if eval_start is None:
        eval_start = trainer.eval_loss()
    start_step, started = trainer.step, time.perf_counter()
    advance = progress("train fused-attention", s.steps - start_step) if progress and s.steps > start_step else None
    window: list[float] = []
    while trainer.step < s.steps:
        window.append(trainer.train_step())
        if advance:
            advance(1)
        if trainer.step % s.log_every == 0 or trainer.step == s.steps:
            mean = sum(window) / len(window)
            if run is not None:
                run.log_metrics({"train/loss": mean}, step=trainer.step)
            log(f"step {trainer.step}/{s.steps}: loss {mean:.5f}")
            window = []
        if trainer.step % s.save_every == 0 and trainer.step < s.steps:
            trainer.save_checkpoint(ckpt, {"eval_loss_start": eval_start})
    seconds = time.perf_counter() - started
    eval_end = trainer.eval_loss()
    trainer.save_checkpoint(ckpt, {"eval_loss_start": eval_start})
    weights = out / WEIGHTS_NAME
    trainer.layers.save(weights, metadata={"reference_timestep": str(s.reference_timestep),
                                           "reference_prompt": s.reference_prompt, "steps": str(trainer.step),
                                           "resolution": str(trainer.resolution), "base": str(Path(s.base).resolve())})
    summary = {"format": FORMAT, "settings": s.record(), "steps": trainer.step, "resumed_from": start_step or None,
               "images": len(trainer.items), "identities": len(trainer.by_identity),
               "eval_loss_start": eval_start, "eval_loss_end": eval_end,
               "final_loss": trainer.losses[-1] if trainer.losses else None,
               "seconds": round(seconds, 3), "weights": str(weights)}
    write_json_atomic(out / SUMMARY, summary)
    if run is not None:
        run.log_metrics({"train/eval_loss_start": eval_start, "train/eval_loss_end": eval_end}, step=trainer.step)
        run.log_artifact(out / SUMMARY)
    return summary
