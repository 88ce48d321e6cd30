"""The recognizer trainer behind ``frbench train``: one recipe, any dataset, resumable, fast.

Data path: the dataset is decoded once into a uint8 memmap cache (:mod:`fr_bench.data.image_cache`);
a loader thread gathers each batch from it into pinned memory and runs the CPU part of the
augmentation; the batch is copied asynchronously to the GPU, where flip / RandAugment / photometric
augmentation run on the whole batch (:mod:`fr_bench.augment`). The backbone runs under bf16 autocast
by default on CUDA (fp16 + GradScaler on request), channels_last, optionally ``torch.compile``d; the
margin head, logits and loss are fp32.

Reproducibility: the epoch order is a pure function of (seed, epoch), a batch's augmentation and
dropout seeds of (seed, step), so a run's stream depends on nothing but the recipe, the seed and the
step — not on the GPU count or on where it was interrupted. Checkpoints (every N steps, at each
epoch end and at the end; rank 0, atomic) carry model, head, optimizer, scheduler, scaler, RNG states
and the step; rerunning the same command continues from the last one. With ``deterministic`` a
resumed CPU run reproduces the uninterrupted run's weights exactly.

Scale-out: launch with ``torchrun``; every rank trains on its slice of each global batch under
DDP and only rank 0 writes checkpoints, outputs and tracking.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .augment import AugmentSpec, Packed, apply_cpu, apply_device, normalize, pack, sample_plan
from .config import TrainRecipe
from .data.image_cache import ImageCache, build_cache
from .data.train_set import TrainSet, check_identities, first_rows, open_train_set, select
from .errors import ConfigError, InputError
from .io import atomic_path, write_json_atomic
from .models.heads import MarginHead, build_head
from .recipes import recipe_hash

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "frbench-train-checkpoint/1"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

Say = Callable[[str], None]
ProgressMake = Callable[[str, int], Callable[[int], None]]

# --------------------------------------------------------------------------------- backbones
BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``factory(dropout=, num_features=) -> nn.Module`` (112×112 RGB in, raw embedding out)."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES[name] = factory
        return factory

    return deco


def _register_builtins() -> None:
    from .models.iresnet import LAYOUTS, iresnet
    from .models.irse import IRSE_LAYOUTS, irse

    for arch in LAYOUTS:
        BACKBONES.setdefault(arch, lambda dropout=0.0, num_features=512, _a=arch: iresnet(_a, dropout=dropout, num_features=num_features))
    for arch in IRSE_LAYOUTS:
        BACKBONES.setdefault(arch, lambda dropout=0.0, num_features=512, _a=arch: irse(_a, dropout=dropout, num_features=num_features))


def build_backbone(arch: str, dropout: float, num_features: int) -> nn.Module:
    _register_builtins()
    key = arch.lower().replace("iresnet", "r").replace("ir_se_", "irse").replace("ir-se-", "irse")
    if key not in BACKBONES:
        raise ConfigError(f"unknown backbone '{arch}' (known: {', '.join(sorted(BACKBONES))})")
    return BACKBONES[key](dropout=dropout, num_features=num_features)


class GlobalBatchDropout(nn.Module):
    """``nn.Dropout`` whose mask is drawn for the whole global batch and sliced to this rank's rows.

    Each process draws the same ``global_batch`` rows from the step-seeded RNG and keeps rows
    ``offset … offset + local batch``, so a sample's mask depends on (seed, step, its place in the
    global batch) and never on the number of processes. Same distribution as ``nn.Dropout``.
    """

    def __init__(self, p: float, global_batch: int, offset: int):
        super().__init__()
        self.p, self.global_batch, self.offset = float(p), int(global_batch), int(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((self.global_batch, *x.shape[1:]), device=x.device).bernoulli_(1.0 - self.p)
        mask = keep[self.offset : self.offset + x.shape[0]] * (1.0 / (1.0 - self.p))
        return x * mask.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, global_batch={self.global_batch}, offset={self.offset}"


def use_global_batch_dropout(module: nn.Module, global_batch: int, offset: int) -> None:
    """Replace every ``nn.Dropout`` inside ``module`` by :class:`GlobalBatchDropout` (no parameters change)."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Dropout:
            setattr(module, name, GlobalBatchDropout(child.p, global_batch, offset))
        else:
            use_global_batch_dropout(child, global_batch, offset)


class Recognizer(nn.Module):
    """Backbone + margin head in one module (one DDP wrapper syncs both)."""

    def __init__(self, backbone: nn.Module, head: MarginHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            emb = self.backbone(x)
        return self.head(emb.float(), labels)  # the head switches autocast off: fp32 margin maths


# ------------------------------------------------------------------------------------ options
@dataclass
class TrainOptions:
    output: Path
    cache_dir: Path
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    channels_last: bool = True
    seed: int = 0
    deterministic: bool = False
    max_steps: int | None = None
    checkpoint_every: int = 1000
    log_every: int = 50
    workers: int = 8
    prefetch: int = 4
    strict_images: bool = False
    resume: str = "auto"  # auto: continue a matching checkpoint; require: fail without one; restart: discard it
    identities: int | None = None  # the first N identities (sorted) …
    per_identity: int | None = None  # … × their first K images; None: all
    monitor_dir: Path | None = None
    monitor_benchmarks: list[str] | None = None
    monitor_every: int = 1


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def setup_distributed(device: str) -> Dist:
    """World from torchrun's environment (single process when absent); picks this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine")
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (SeedSequence hashing; streams do not overlap)."""
    a, b = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2)
    return (int(a) << 31) ^ int(b)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64(_mix(seed, epoch, 0x0D5))).permutation(n)


def lr_multiplier(step: int, recipe: TrainRecipe, steps_per_epoch: int, total_steps: int) -> float:
    """The fixed schedule's LR factor at ``step`` (0-based, before that step's update)."""
    sched = recipe.schedule
    warm = int(round(sched.warmup_epochs * steps_per_epoch))
    if warm and step < warm:
        return step / warm
    if sched.type == "poly":
        return max(0.0, 1.0 - (step - warm) / max(1, total_steps - warm)) ** sched.power
    done = sum(step >= m * steps_per_epoch for m in sched.milestones)
    return sched.gamma ** done


def augment_spec(recipe: TrainRecipe) -> AugmentSpec:
    a = recipe.augment
    ra = a.randaugment
    return AugmentSpec(flip=a.flip, ra_num_ops=ra.num_ops if ra else 0, ra_magnitude=ra.magnitude if ra else 0,
                       crop_prob=a.crop_prob, lowres_prob=a.lowres_prob, photometric_prob=a.photometric_prob)


# -------------------------------------------------------------------------------------- data
@dataclass
class Batch:
    step: int
    images: torch.Tensor  # uint8 N×112×112×3 (pinned on CUDA runs)
    labels: torch.Tensor  # int64 N
    packed: Packed


class BatchLoader:
    """A thread that gathers batches from the cache, augments on the CPU side and prefetches them."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, *, global_batch: int, dist: Dist,
                 seed: int, spec: AugmentSpec, start: int, stop: int, steps_per_epoch: int, pin: bool, prefetch: int):
        self.images, self.rows, self.labels = images, rows, labels
        self.gb, self.dist, self.seed, self.spec = global_batch, dist, seed, spec
        self.b = global_batch // dist.world
        self.start, self.stop, self.spe, self.pin = start, stop, steps_per_epoch, pin
        self.q: queue.Queue = queue.Queue(maxsize=prefetch)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frbench-batches", daemon=True)
        self._thread.start()

    def make(self, step: int, order: np.ndarray) -> Batch:
        pos = step % self.spe
        lo = self.dist.rank * self.b
        sel = order[pos * self.gb : (pos + 1) * self.gb][lo : lo + self.b]
        plan = sample_plan(self.spec, self.gb, torch.Generator().manual_seed(_mix(self.seed, step, 0xA06)))[lo : lo + self.b]
        images = torch.empty((self.b, 112, 112, 3), dtype=torch.uint8, pin_memory=self.pin)
        np.take(self.images, self.rows[sel], axis=0, out=images.numpy())
        if self.spec.needs_cpu_stage:
            apply_cpu(images.numpy(), plan)
        packed = pack(plan)
        labels = torch.from_numpy(self.labels[sel])
        if self.pin:
            packed, labels = packed.pin_memory(), labels.pin_memory()
        return Batch(step, images, labels, packed)

    def _run(self) -> None:
        try:
            epoch, order = -1, np.empty(0, np.int64)
            for step in range(self.start, self.stop):
                if self._halt.is_set():
                    return
                if step // self.spe != epoch:
                    epoch = step // self.spe
                    order = epoch_order(self.seed, epoch, len(self.rows))
                self._put(self.make(step, order))
        except BaseException as err:  # handed to the consumer, raised there
            self._put(err)

    def _put(self, item: Any) -> None:
        while not self._halt.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> Batch:
        item = self.q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._halt.set()
        self._thread.join(timeout=5)


@dataclass
class PreparedData:
    train_set: TrainSet
    cache: ImageCache
    rows: np.ndarray  # cache rows used for training
    labels: np.ndarray  # contiguous class per row
    num_classes: int
    skipped: int


def prepare_data(dataset: Path, opts: TrainOptions, dist: Dist, progress: ProgressMake | None, warn: Say) -> PreparedData:
    """Scan the dataset, build (rank 0) or open the cache, drop unreadable images, relabel classes."""
    full = open_train_set(dataset)
    ts = select(full, opts.identities, opts.per_identity)
    if dist.main:
        cache = build_cache(ts, opts.cache_dir, workers=opts.workers, progress=progress)
    dist.barrier()
    if not dist.main:
        cache = build_cache(ts, opts.cache_dir, workers=1)
    bad = cache.bad
    if len(bad):
        first = ts.describe(int(bad[0]))
        if opts.strict_images:
            raise InputError(first, f"cannot decode image ({len(bad)} unreadable image(s) in {dataset}; drop --strict-images to skip them)")
        if dist.main:
            warn(f"skipped {len(bad)} unreadable image(s) in {dataset} (first: {first})")
    rows = cache.ok
    if ts.kind == "recordio" and (opts.identities is not None or opts.per_identity is not None):
        rows = rows[first_rows(cache.labels[rows], opts.identities, opts.per_identity)]
    classes, labels = np.unique(cache.labels[rows], return_inverse=True)
    check_identities(Path(dataset), len(classes))
    return PreparedData(ts, cache, rows, labels.astype(np.int64), len(classes), len(bad))


# -------------------------------------------------------------------------------- checkpoints
def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def read_checkpoint(output: Path) -> dict[str, Any] | None:
    path = output / CHECKPOINT
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        from .io import torch_load_problem

        raise InputError(path, f"unreadable checkpoint ({torch_load_problem(err)}); pass --restart to discard it") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "not an frbench training checkpoint; pass --restart to discard it")
    return ckpt


# ------------------------------------------------------------------------------------- trainer
class Trainer:
    """Holds model, optimiser and state of one training run; :meth:`fit` runs the loop."""

    def __init__(self, recipe: TrainRecipe, num_classes: int, images: int, opts: TrainOptions, dist: Dist):
        self.recipe, self.opts, self.dist = recipe, opts, dist
        self.device = dist.device
        self.hash = recipe_hash(recipe)
        dtype = opts.dtype if opts.dtype != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        if dtype == "fp16" and self.device.type != "cuda":
            raise ConfigError("--dtype fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
        self.dtype_name, self.dtype = dtype, DTYPES[dtype]
        if recipe.batch_size % dist.world:
            raise ConfigError(f"batch size {recipe.batch_size} is not divisible by the {dist.world} processes")
        if recipe.batch_size // dist.world < 2:
            raise ConfigError(f"batch size {recipe.batch_size} leaves {recipe.batch_size // dist.world} image per process; BatchNorm needs at least 2")
        self.global_batch = recipe.batch_size
        self.num_classes, self.images = num_classes, images
        self.steps_per_epoch = images // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"{images} images are fewer than one batch of {self.global_batch}")
        self.total_steps = recipe.epochs * self.steps_per_epoch
        self.target = min(self.total_steps, opts.max_steps) if opts.max_steps else self.total_steps
        if opts.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(_mix(opts.seed, 0xB0D))  # initial weights: a function of the seed
        m = recipe.model
        self.backbone = build_backbone(m.arch, m.dropout, m.embedding_size)
        use_global_batch_dropout(self.backbone, recipe.batch_size, dist.rank * (recipe.batch_size // dist.world))
        self.head = build_head(recipe.head.type, m.embedding_size, num_classes, **recipe.head.params())
        self.model = Recognizer(self.backbone, self.head).to(self.device)
        self.channels_last = opts.channels_last and self.device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, recipe, self.steps_per_epoch, self.total_steps))
        self.scaler = torch.amp.GradScaler("cuda", growth_interval=100) if dtype == "fp16" else None
        self.step = 0
        self.epoch_losses: list[float] = []
        self.cur_sum, self.cur_count = 0.0, 0
        self.forward: nn.Module = self.model
        if dist.world > 1:
            ddp = nn.parallel.DistributedDataParallel
            # buffers (BatchNorm, AdaFace statistics) stay per process between steps, as in arcface_torch
            sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters else {"broadcast_buffers": False}
            self.forward = ddp(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                               gradient_as_bucket_view=True, **sync)
        if opts.compile:
            self.forward = torch.compile(self.forward)

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.recipe.optimizer
        lr = o.lr * self.global_batch / o.lr_batch_size
        decay, no_decay = [], []
        for mod in self.backbone.modules():
            for p in mod.parameters(recurse=False):
                if not p.requires_grad:
                    continue
                (no_decay if o.no_decay_bn and isinstance(mod, nn.modules.batchnorm._BatchNorm) else decay).append(p)
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": list(self.head.parameters()), "weight_decay": o.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        self.base_lr = lr
        if o.type == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=o.momentum)
        return torch.optim.AdamW(groups, lr=lr)

    # -- state
    def identity(self, fingerprint: str) -> dict[str, Any]:
        return {"recipe_hash": self.hash, "dataset_fingerprint": fingerprint, "seed": self.opts.seed,
                "num_classes": self.num_classes, "images": self.images, "global_batch": self.global_batch}

    def state(self, fingerprint: str, elapsed: float) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            **self.identity(fingerprint),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "position": self.step % self.steps_per_epoch,
            "world_size": self.dist.world,
            "backbone": self.backbone.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "rng": _rng_state(self.device),
            "epoch_losses": list(self.epoch_losses),
            "cur_sum": self.cur_sum,
            "cur_count": self.cur_count,
            "elapsed_s": elapsed,
        }

    def load(self, ckpt: dict[str, Any]) -> None:
        self.backbone.load_state_dict(ckpt["backbone"])
        self.head.load_state_dict(ckpt["head"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], self.device)
        self.step = int(ckpt["step"])
        self.epoch_losses = [float(v) for v in ckpt["epoch_losses"]]
        self.cur_sum, self.cur_count = float(ckpt["cur_sum"]), int(ckpt["cur_count"])

    def save(self, output: Path, fingerprint: str, elapsed: float) -> None:
        if not self.dist.main:
            return
        state = self.state(fingerprint, elapsed)
        with atomic_path(output / CHECKPOINT) as tmp:
            torch.save(state, tmp)
        write_json_atomic(output / "checkpoint.json", {k: state[k] for k in ("step", "epoch", "position", "recipe_hash", "dataset_fingerprint", "seed", "world_size")})

    # -- one step
    def to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy a batch to the device and run the device-side augmentation; normalised input, labels."""
        dev = self.device
        x = batch.images.to(dev, non_blocking=True).permute(0, 3, 1, 2).contiguous().float()  # NCHW for the per-sample ops
        labels = batch.labels.to(dev, non_blocking=True)
        x = normalize(apply_device(x, batch.packed.to(dev), self._ra_ops))
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format), labels

    def train_step(self, batch: Batch) -> torch.Tensor:
        x, labels = self.to_device(batch)
        return self.optimize(x, labels, batch.step)

    def optimize(self, x: torch.Tensor, labels: torch.Tensor, step: int) -> torch.Tensor:
        """Forward, fp32 loss, backward, (unscale, clip,) optimizer and scheduler step."""
        # dropout masks: drawn for the whole global batch from (seed, step), each rank keeps its rows
        torch.manual_seed(_mix(self.opts.seed, step, 0xD70))
        logits = self.forward(x, labels, self.dtype)
        loss = F.cross_entropy(logits, labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            self._clip()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self._clip()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return loss.detach()

    def _clip(self) -> None:
        o = self.recipe.optimizer
        if o.grad_clip:
            nn.utils.clip_grad_norm_(self.backbone.parameters(), o.grad_clip)
            if o.clip_head:  # IDiff-Face's train.py: a second, separate clip of the margin head
                nn.utils.clip_grad_norm_(self.head.parameters(), o.grad_clip)

    @property
    def _ra_ops(self) -> int:
        ra = self.recipe.augment.randaugment
        return ra.num_ops if ra else 0

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


# ------------------------------------------------------------------------------------- outputs
def export_onnx(backbone: nn.Module, path: Path) -> float | None:
    """Write the backbone as ONNX (dynamic batch, fp32, 112×112 RGB, arcface normalisation outside
    the graph, as insightface's model zoo expects); returns max |ONNX − torch| / max |torch| on a probe."""
    model = copy.deepcopy(backbone).float().cpu().eval().to(memory_format=torch.contiguous_format)
    probe = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with atomic_path(path) as tmp:
        torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(tmp), input_names=["input.1"], output_names=["embedding"],
                          dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17, dynamo=False)
        try:
            import onnxruntime as ort
        except ImportError:  # the export stands; only the self-check needs a runtime
            return None
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input.1": probe.numpy()})[0]
    with torch.no_grad():
        ref = model(probe).numpy()
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def _monitor(trainer: Trainer, opts: TrainOptions, step: int, output: Path) -> dict[str, float]:
    """Embed the .bin sets with the current backbone; metrics for logging only."""
    from .evaluate import select_benchmarks
    from .models.torch_model import TorchEmbedder
    from .protocols import FIVE_BENCHMARKS

    names = opts.monitor_benchmarks or [n for n in FIVE_BENCHMARKS if (Path(opts.monitor_dir) / f"{n}.bin").is_file()]
    if not names:
        return {}
    selection = select_benchmarks(opts.monitor_dir, names)
    backbone = trainer.backbone
    was_training = backbone.training
    dtype = trainer.dtype_name if trainer.dtype_name != "fp16" or trainer.device.type == "cuda" else "fp32"
    emb = TorchEmbedder(backbone, output / "model.pt", trainer.recipe.model.arch, trainer.recipe.model.embedding_size,
                        device=str(trainer.device), dtype=dtype, batch_size=256)
    metrics: dict[str, float] = {}
    try:
        for bench in selection.benchmarks:
            res = bench.evaluate(emb, flip=True, batch_size=256)
            if "accuracy" in res:
                metrics[f"monitor/{bench.name}/accuracy"] = res["accuracy"]
        five = [metrics.get(f"monitor/{n}/accuracy") for n in FIVE_BENCHMARKS]
        if all(v is not None for v in five):
            metrics["monitor/avg5"] = float(np.mean(five))
    finally:
        backbone.train(was_training)
    return metrics


def _versions() -> dict[str, str]:
    return {"frbench": __version__, "torch": torch.__version__, "numpy": np.__version__}


# ---------------------------------------------------------------------------------------- main
def train(
    dataset: str | Path,
    recipe: TrainRecipe,
    opts: TrainOptions,
    *,
    run: Any = None,
    progress: ProgressMake | None = None,
    say: Say = print,
    warn: Say = print,
    recipe_path: Path | None = None,
) -> dict[str, Any]:
    """Train ``recipe`` on ``dataset`` into ``opts.output``; returns the ``train.json`` summary."""
    dataset = Path(dataset)
    output = Path(opts.output)
    dist = setup_distributed(opts.device)
    # process-wide switches the trainer flips; restored so an in-process caller is left as it was
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.get_rng_state())
    try:
        return _train(dataset, recipe, opts, dist, output, run, progress, say, warn, recipe_path)
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        torch.set_rng_state(saved[3])
        if dist.world > 1 and torch.distributed.is_initialized():
            # the trainer sits in a reference cycle (scheduler lambda → trainer): collect it, and its DDP
            # reducer, while the process group still exists; after it, the reducer's teardown can abort
            import gc

            gc.collect()
            torch.distributed.destroy_process_group()


def _train(dataset: Path, recipe: TrainRecipe, opts: TrainOptions, dist: Dist, output: Path, run: Any,
           progress: ProgressMake | None, say: Say, warn: Say, recipe_path: Path | None) -> dict[str, Any]:
    if dist.main:
        output.mkdir(parents=True, exist_ok=True)
        if opts.resume == "restart":
            for name in (CHECKPOINT, "checkpoint.json", "train.json", "model.pt", "model.onnx"):
                (output / name).unlink(missing_ok=True)
    dist.barrier()
    data = prepare_data(dataset, opts, dist, progress, warn)
    if len(data.rows) < recipe.batch_size:
        raise InputError(dataset, f"{len(data.rows)} usable images are fewer than one batch of {recipe.batch_size}; lower --batch-size")
    trainer = Trainer(recipe, data.num_classes, len(data.rows), opts, dist)
    fp = data.train_set.fingerprint
    if data.train_set.kind == "recordio" and (opts.identities is not None or opts.per_identity is not None):
        fp = f"{fp}:{opts.identities}x{opts.per_identity}"
    if dist.main:
        say(f"{data.train_set.kind} dataset {dataset}: {trainer.images} images, {data.num_classes} identities; "
            f"recipe {recipe.name} ({trainer.hash}): {recipe.epochs} epochs × {trainer.steps_per_epoch} steps of {trainer.global_batch}"
            f"{f', stopping at step {trainer.target}' if trainer.target < trainer.total_steps else ''}; "
            f"{trainer.device} {trainer.dtype_name}{' ×' + str(dist.world) if dist.world > 1 else ''}")
    ckpt = read_checkpoint(output) if opts.resume != "restart" else None
    if ckpt is None and opts.resume == "require":
        raise InputError(output, "no checkpoint to resume from (checkpoint.pt not found)")
    if ckpt is not None:
        mine, theirs = trainer.identity(fp), {k: ckpt.get(k) for k in trainer.identity(fp)}
        diff = [k for k in mine if mine[k] != theirs[k]]
        if diff:
            k = diff[0]
            raise ConfigError(f"{output}: holds a checkpoint of another run ({k} {theirs[k]} ≠ {mine[k]}); pass --restart to discard it or choose another --output")
        trainer.load(ckpt)
        if int(ckpt.get("world_size", 1)) != dist.world and dist.main:
            warn(f"resuming a {ckpt.get('world_size')}-process checkpoint with {dist.world} processes (data order is unchanged; BatchNorm statistics are per process)")
    summary_path = output / "train.json"
    if trainer.step >= trainer.target and summary_path.is_file():
        say(f"already trained: {output} (step {trainer.step}); pass --restart to train again")
        return json.loads(summary_path.read_text())
    if dist.main:  # outputs of an earlier, shorter target no longer describe this run
        summary_path.unlink(missing_ok=True)
    if trainer.step and dist.main:
        say(f"resuming from step {trainer.step} (epoch {trainer.step // trainer.steps_per_epoch + 1}) in {output}")
    if run is not None and dist.main:
        run.log_params({"recipe": recipe.model_dump(mode="json", exclude={"notes", "source"}), "recipe_hash": trainer.hash,
                        "dataset": str(dataset), "dataset_fingerprint": fp, "images": trainer.images, "identities": data.num_classes,
                        "seed": opts.seed, "dtype": trainer.dtype_name, "compile": opts.compile, "world_size": dist.world,
                        "device": str(dist.device), "max_steps": opts.max_steps})
    elapsed_before = float(ckpt.get("elapsed_s", 0.0)) if ckpt else 0.0
    summary = _loop(trainer, data, opts, output, run, progress, say, fp, elapsed_before)
    if dist.main:
        summary.update(_finish(trainer, data, dataset, recipe, opts, output, recipe_path, summary))
        write_json_atomic(summary_path, summary)
        if run is not None:
            run.log_metrics({"train/final_loss": summary["final_loss"], "train/samples_per_s": summary["samples_per_s"]}, step=trainer.step)
            run.log_dict(summary, "train.json")
            run.set_tags({"frbench.recipe": recipe.name, "frbench.recipe_hash": trainer.hash, "frbench.model": str(output / "model.pt")})
    dist.barrier()
    return summary


def _loop(trainer: Trainer, data: PreparedData, opts: TrainOptions, output: Path, run: Any,
          progress: ProgressMake | None, say: Say, fp: str, elapsed_before: float) -> dict[str, Any]:
    dist, dev = trainer.dist, trainer.device
    start = trainer.step
    n_steps = max(0, trainer.target - start)
    loader = BatchLoader(data.cache.images, data.rows, data.labels, global_batch=trainer.global_batch, dist=dist, seed=opts.seed,
                         spec=augment_spec(trainer.recipe), start=start, stop=trainer.target, steps_per_epoch=trainer.steps_per_epoch,
                         pin=dev.type == "cuda", prefetch=opts.prefetch)
    advance = progress("train", n_steps) if (progress and dist.main and n_steps) else None
    warmup = min(20, max(0, n_steps // 10))
    t_run = time.perf_counter()
    t_steady: float | None = None if warmup else t_run
    interval_loss = torch.zeros((), device=dev)
    epoch_loss = torch.zeros((), device=dev)
    interval_n, interval_t = 0, time.perf_counter()
    trainer.backbone.train()
    trainer.head.train()
    try:
        for i in range(n_steps):
            if i == warmup and warmup:
                _sync(dev)
                t_steady = time.perf_counter()
            batch = loader.next()
            loss = trainer.train_step(batch)
            interval_loss += loss
            epoch_loss += loss
            interval_n += 1
            trainer.cur_count += 1
            step = trainer.step
            epoch_end = step % trainer.steps_per_epoch == 0
            if advance:
                advance(1)
            if step % opts.log_every == 0 or epoch_end or step == trainer.target:
                _mean_over_ranks(interval_loss, dist)
                now = time.perf_counter()
                if run is not None and dist.main:
                    run.log_metrics({"train/loss": float(interval_loss) / interval_n, "train/lr": trainer.lr(),
                                     "train/samples_per_s": interval_n * trainer.global_batch / max(now - interval_t, 1e-9)}, step=step)
                interval_loss.zero_()
                interval_n, interval_t = 0, now
            save = epoch_end or step % opts.checkpoint_every == 0 or step == trainer.target
            if save:  # fold the device-side loss sum into the checkpointed state (one sync)
                _mean_over_ranks(epoch_loss, dist)
                trainer.cur_sum += float(epoch_loss)
                epoch_loss.zero_()
            if epoch_end:
                trainer.epoch_losses.append(trainer.cur_sum / max(trainer.cur_count, 1))
                trainer.cur_sum, trainer.cur_count = 0.0, 0
                epoch = step // trainer.steps_per_epoch
                if run is not None and dist.main:
                    run.log_metrics({"train/epoch_loss": trainer.epoch_losses[-1], "train/epoch": epoch}, step=step)
                if opts.monitor_dir and dist.main and epoch % opts.monitor_every == 0:
                    metrics = _monitor(trainer, opts, step, output)
                    if metrics and run is not None:
                        run.log_metrics(metrics, step=step)
                    if metrics:
                        say(f"epoch {epoch}: " + ", ".join(f"{k.split('/')[1]} {100 * v:.2f}" for k, v in metrics.items()))
            if save:
                trainer.save(output, fp, elapsed_before + time.perf_counter() - t_run)
    finally:
        loader.close()
    _sync(dev)
    t_end = time.perf_counter()
    steady_steps = n_steps - warmup if t_steady is not None else n_steps
    steady_t = t_end - (t_steady if t_steady is not None else t_run)
    last = trainer.epoch_losses[-1] if trainer.epoch_losses and trainer.cur_count == 0 else (
        trainer.cur_sum / trainer.cur_count if trainer.cur_count else float("nan"))
    return {
        "steps": trainer.step,
        "steps_this_run": n_steps,
        "samples_per_s": round(steady_steps * trainer.global_batch / max(steady_t, 1e-9), 2) if n_steps else None,
        "run_seconds": round(t_end - t_run, 3),
        "train_seconds_total": round(elapsed_before + t_end - t_run, 3),
        "final_loss": last,
        "epoch_losses": trainer.epoch_losses,
    }


def _mean_over_ranks(t: torch.Tensor, dist: Dist) -> None:
    """In place: the mean of ``t`` over the processes (every rank calls it at the same steps)."""
    if dist.world > 1:
        torch.distributed.all_reduce(t)
        t.div_(dist.world)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _finish(trainer: Trainer, data: PreparedData, dataset: Path, recipe: TrainRecipe, opts: TrainOptions, output: Path,
            recipe_path: Path | None, loop: dict[str, Any]) -> dict[str, Any]:
    state = {k: v.detach().cpu().clone() for k, v in trainer.backbone.state_dict().items()}
    with atomic_path(output / "model.pt") as tmp:
        torch.save(state, tmp)
    onnx_diff = export_onnx(trainer.backbone, output / "model.onnx")
    return {
        "dataset": str(dataset),
        "dataset_kind": data.train_set.kind,
        "dataset_fingerprint": data.train_set.fingerprint,
        "images": trainer.images,
        "identities": data.num_classes,
        "selection": {"identities": opts.identities, "per_identity": opts.per_identity,
                      "rule": "first N identities (sorted names) x first K images (sorted names; RecordIO: file order)"},
        "skipped_unreadable": data.skipped,
        "recipe": recipe.name,
        "recipe_file": str(recipe_path) if recipe_path else None,
        "recipe_hash": trainer.hash,
        "recipe_config": recipe.model_dump(mode="json"),
        "epochs": recipe.epochs,
        "epochs_completed": trainer.step / trainer.steps_per_epoch,
        "steps_per_epoch": trainer.steps_per_epoch,
        "total_steps": trainer.total_steps,
        "truncated": trainer.target < trainer.total_steps,
        "batch_size": trainer.global_batch,
        "lr": trainer.base_lr,
        "seed": opts.seed,
        "deterministic": opts.deterministic,
        "device": str(trainer.device),
        "dtype": trainer.dtype_name,
        "compile": opts.compile,
        "channels_last": trainer.channels_last,
        "world_size": trainer.dist.world,
        **loop,
        "outputs": {"model": str(output / "model.pt"), "onnx": str(output / "model.onnx")},
        "onnx_max_rel_diff": onnx_diff,
        "versions": _versions(),
    }


def default_output(workdir: Path, dataset: Path, recipe: TrainRecipe) -> Path:
    name = dataset.resolve().name if dataset.is_dir() else dataset.resolve().parent.name
    return Path(workdir) / "train" / f"{name}-{recipe.name}-{recipe_hash(recipe)[:8]}"
