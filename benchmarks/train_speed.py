"""Training throughput of `frbench train`, side by side with an arcface_torch ``train_v2`` step.

Same dataset (a JPEG identity-folder set), same backbone, batch, dtype and work per step (recipe
``arcface-torch``: flip only, ArcFace s=64 m=0.5 with arcface_torch's no-grad margin, SGD 0.9 / 5e-4,
gradient clip 5), interleaved in segments of ``--steps`` steps, ``--repeat`` segments each:

* anchor: insightface ``recognition/arcface_torch/train_v2.py``'s step, re-created: a torchvision
  ``ImageFolder`` with ``RandomHorizontalFlip → ToTensor → Normalize(0.5, 0.5)`` in a ``DataLoader``
  (workers, pin memory, drop last), the backbone under autocast (fp16 + GradScaler on CUDA, fp32 on
  the CPU), a normalised-linear ArcFace loss, ``clip_grad_norm_(backbone, 5)``, SGD;
* product: frbench's trainer on the same folder — uint8 memmap cache (built once, timed separately as
  ``cache_build_images_per_s``) → loader thread → batched device augmentation → backbone under autocast
  (bf16 on CUDA, channels_last) → fp32 head and loss;
* ``synthetic``: frbench's step on one fixed batch already on the device (no data path), the
  upper bound the real path is compared with (goal ≥ 95%).

On the CPU (``--arch tiny``, a 3-conv network) the data path dominates, which is what differs between
the two; on a GPU use the real sizes (``--arch r50 --batch-size 512``).

    python benchmarks/train_speed.py --arch tiny --batch-size 64 --steps 20     # the 2-core CPU figure
    python benchmarks/train_speed.py                                             # r50, batch 512, cuda
    python benchmarks/train_speed.py --quick                                     # smoke run

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fr_bench.recipes import load_recipe
from fr_bench.train import BatchLoader, TrainOptions, Trainer, augment_spec, prepare_data, setup_distributed


def make_dataset(root: Path, n_ids: int, per_id: int, seed: int = 0) -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    for i in range(n_ids):
        base = cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (112, 112), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        d = root / f"{i:05d}"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_id):
            img = np.clip(base + rng.integers(-30, 31, base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(d / f"{k:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return root


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class _Segments:
    """A resumable stream of steps: each call runs the next ``steps`` steps (for interleaved timing)."""

    def __init__(self, step, steps: int, dev: torch.device):
        self.step, self.steps, self.dev, self.i = step, steps, dev, 0

    def __call__(self) -> int:
        for _ in range(self.steps):
            self.step(self.i)
            self.i += 1
        _sync(self.dev)
        return self.i


def frbench_real(recipe, data, opts, dist, total: int):
    trainer = Trainer(recipe, data.num_classes, len(data.rows), opts, dist)
    loader = BatchLoader(data.cache.images, data.rows, data.labels, global_batch=trainer.global_batch, dist=dist, seed=0,
                         spec=augment_spec(recipe), start=0, stop=total, steps_per_epoch=trainer.steps_per_epoch,
                         pin=dist.device.type == "cuda", prefetch=opts.prefetch)
    return (lambda i: trainer.train_step(loader.next())), loader


def frbench_synthetic(recipe, num_classes: int, images: int, opts, dist):
    trainer = Trainer(recipe, num_classes, images, opts, dist)
    g = torch.Generator().manual_seed(0)
    b = trainer.global_batch
    x = (torch.randint(0, 256, (b, 3, 112, 112), generator=g).float().sub_(127.5).div_(127.5)).to(dist.device)
    x = x.contiguous(memory_format=torch.channels_last if trainer.channels_last else torch.contiguous_format)
    labels = torch.randint(0, num_classes, (b,), generator=g).to(dist.device)
    return lambda i: trainer.optimize(x, labels, i)


def arcface_torch_step(dataset: Path, backbone: torch.nn.Module, num_classes: int, batch: int, dev: torch.device,
                       workers: int, fp16: bool):
    """train_v2.py's loop body over a torchvision ImageFolder DataLoader (re-created, see the docstring)."""
    import torch.nn.functional as F
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(dataset), tf), batch_size=batch, shuffle=True,
                                         num_workers=workers, pin_memory=dev.type == "cuda", drop_last=True,
                                         persistent_workers=workers > 0)
    backbone = backbone.to(dev).train()
    weight = torch.nn.Parameter(torch.normal(0, 0.01, (num_classes, 512), device=dev))
    opt = torch.optim.SGD([{"params": backbone.parameters()}, {"params": [weight]}], lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    state = {"it": iter(loader)}

    def step(i: int) -> None:
        try:
            img, labels = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            img, labels = next(state["it"])
        img, labels = img.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=fp16):
            emb = backbone(img)
        logits = F.linear(F.normalize(emb.float()), F.normalize(weight)).clamp(-1, 1)
        with torch.no_grad():  # arcface_torch's CombinedMarginLoss: the margin outside the graph
            target = logits[torch.arange(len(labels), device=dev), labels].arccos_().add_(0.5).cos_()
        logits = logits.clone()
        logits[torch.arange(len(labels), device=dev), labels] = target
        loss = F.cross_entropy(logits * 64.0, labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)
            opt.step()
        opt.zero_grad()

    return step


def main(argv: list[str] | None = None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _compare import interleaved, ratio

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny CPU smoke run (tiny net, batch 8, few steps)")
    ap.add_argument("--arch", default=None, help="tiny | r18 | r50 … (default r50; quick: tiny)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 512 (quick: 8)")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed segment (default 20; quick 2)")
    ap.add_argument("--repeat", type=int, default=3, help="timed segments per path, interleaved")
    ap.add_argument("--identities", type=int, default=None, help="dataset identities (default 1000; quick 4)")
    ap.add_argument("--per-identity", type=int, default=None, help="images per identity (default 20; quick 4)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="frbench's (the anchor: fp16 on CUDA, fp32 on CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile frbench's model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=None, help="decode workers for both paths (default 8; CPU 2)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the dataset and cache go (default a temp dir)")
    a = ap.parse_args(argv)
    q = a.quick
    batch = a.batch_size or (8 if q else 512)
    steps = a.steps or (2 if q else 20)
    n_ids = a.identities or (4 if q else 1000)
    per_id = a.per_identity or (4 if q else 20)
    device = "cpu" if q and a.device == "auto" else a.device
    arch = a.arch or ("tiny" if q else "r50")
    if arch == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from trainkit import register_tiny

        register_tiny()
    recipe, _ = load_recipe("arcface-torch", [({"batch_size": batch, "model": {"arch": arch, "dropout": 0.0}}, "benchmark")])

    tmp = tempfile.TemporaryDirectory() if a.workdir is None else None
    work = Path(tmp.name) if tmp else a.workdir
    try:
        dist = setup_distributed(device)
        cuda = dist.device.type == "cuda"
        workers = a.workers or (8 if cuda else 2)
        ds = work / "dataset"
        if not ds.is_dir():
            make_dataset(ds, n_ids, per_id)
        opts = TrainOptions(output=work / "out", cache_dir=work / "cache", device=device, dtype=a.dtype, compile=a.compile,
                            workers=workers, prefetch=4)
        t0 = time.perf_counter()
        data = prepare_data(ds, opts, dist, None, lambda m: print(m, file=sys.stderr))
        cache_secs = time.perf_counter() - t0
        total = steps * (a.repeat + 1)
        real_step, loader = frbench_real(recipe, data, opts, dist, total)
        from fr_bench.train import build_backbone

        torch.manual_seed(0)
        anchor = arcface_torch_step(ds, build_backbone(arch, 0.0, 512), data.num_classes, batch, dist.device, workers, fp16=cuda)
        try:
            stats, _ = interleaved({"arcface_torch_train_v2": _Segments(anchor, steps, dist.device),
                                    "frbench_real": _Segments(real_step, steps, dist.device),
                                    "frbench_synthetic": _Segments(frbench_synthetic(recipe, data.num_classes, len(data.rows), opts, dist),
                                                                   steps, dist.device)}, a.repeat)
        finally:
            loader.close()
        per_s = {k: round(steps * batch / v["median_s"], 1) for k, v in stats.items()}
        doc = {
            "benchmark": "train_speed",
            "device": torch.cuda.get_device_name(dist.device) if cuda else "cpu",
            "torch_threads": torch.get_num_threads(), "arch": arch, "recipe": recipe.name, "batch_size": batch,
            "dtype": {"frbench": opts.dtype if opts.dtype != "auto" else ("bf16" if cuda else "fp32"), "anchor": "fp16" if cuda else "fp32"},
            "compile": a.compile, "steps_per_segment": steps, **stats, "samples_per_s_median": per_s,
            "ratio_real_vs_arcface_torch": ratio(stats, "arcface_torch_train_v2", "frbench_real"),
            "real_vs_synthetic": round(stats["frbench_synthetic"]["median_s"] / stats["frbench_real"]["median_s"], 3),
            "images": len(data.rows), "cache_build_images_per_s": round(len(data.rows) / cache_secs, 1),
        }
        print(json.dumps(doc))
        return doc
    finally:
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    main()
