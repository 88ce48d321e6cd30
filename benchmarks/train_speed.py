"""Training throughput of `frbench train`: the real data path beside synthetic on-device tensors.

* ``real``: a JPEG identity-folder dataset is decoded once into the uint8 memmap cache (timed
  separately as ``cache_build_images_per_s``), then the trainer's own loop runs: loader thread
  (cache gather + pinned memory + CPU augmentation) → async copy → batched device augmentation →
  backbone under autocast → fp32 margin head and loss → SGD.
* ``synthetic``: the same trainer step on one fixed, already-normalised batch living on the device
  (no data loading, no augmentation) — the upper bound the real path is compared with.
* ``arcface_torch_style_fp16`` (CUDA only): the same step configured like arcface_torch's
  ``train_v2.py`` (fp16 autocast + GradScaler, NCHW, eager, ArcFace with the no-grad margin, flip
  only, synthetic data). It re-creates their step inside frbench; it is not their script.

Prints one JSON line. ``--quick`` runs tiny sizes on the CPU (a smoke test of the script).
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


def timed(fn, n_warm: int, n: int, dev: torch.device) -> float:
    for i in range(n_warm):
        fn(i)
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(n_warm, n_warm + n):
        fn(i)
    _sync(dev)
    return time.perf_counter() - t0


def run_real(recipe, data, opts, dist, warm: int, steps: int) -> float:
    trainer = Trainer(recipe, data.num_classes, len(data.rows), opts, dist)
    total = warm + steps
    loader = BatchLoader(data.cache.images, data.rows, data.labels, global_batch=trainer.global_batch, dist=dist, seed=0,
                         spec=augment_spec(recipe), start=0, stop=total, steps_per_epoch=trainer.steps_per_epoch,
                         pin=dist.device.type == "cuda", prefetch=opts.prefetch)
    try:
        secs = timed(lambda i: trainer.train_step(loader.next()), warm, steps, dist.device)
    finally:
        loader.close()
    return steps * trainer.global_batch / secs


def run_synthetic(recipe, num_classes: int, images: int, opts, dist, warm: int, steps: int) -> float:
    trainer = Trainer(recipe, num_classes, images, opts, dist)
    g = torch.Generator().manual_seed(0)
    b = trainer.global_batch
    x = (torch.randint(0, 256, (b, 3, 112, 112), generator=g).float().sub_(127.5).div_(127.5)).to(dist.device)
    x = x.contiguous(memory_format=torch.channels_last if trainer.channels_last else torch.contiguous_format)
    labels = torch.randint(0, num_classes, (b,), generator=g).to(dist.device)
    secs = timed(lambda i: trainer.optimize(x, labels, i), warm, steps, dist.device)
    return steps * b / secs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny CPU smoke run (r18, batch 4, few steps)")
    ap.add_argument("--recipe", default="idiff-face", help="augmentation/head/optimizer from this preset (default idiff-face: RandAugment 4/16)")
    ap.add_argument("--arch", default=None, help="backbone (default: the recipe's, r50)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 512 (quick: 4)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 60; quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 15; quick 1)")
    ap.add_argument("--identities", type=int, default=None, help="dataset identities (default 1000; quick 4)")
    ap.add_argument("--per-identity", type=int, default=None, help="images per identity (default 20; quick 4)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (real and synthetic)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=None, help="where the dataset and cache go (default a temp dir)")
    a = ap.parse_args(argv)
    q = a.quick
    batch = a.batch_size or (4 if q else 512)
    steps = a.steps or (3 if q else 60)
    warm = a.warmup if a.warmup is not None else (1 if q else 15)
    n_ids = a.identities or (4 if q else 1000)
    per_id = a.per_identity or (4 if q else 20)
    device = "cpu" if q and a.device == "auto" else a.device
    overrides = {"batch_size": batch}
    if a.arch or q:
        overrides["model"] = {"arch": a.arch or "r18"}
    recipe, _ = load_recipe(a.recipe, [(overrides, "benchmark")])

    tmp = tempfile.TemporaryDirectory() if a.workdir is None else None
    work = Path(tmp.name) if tmp else a.workdir
    try:
        dist = setup_distributed(device)
        ds = work / "dataset"
        if not ds.is_dir():
            make_dataset(ds, n_ids, per_id)
        opts = TrainOptions(output=work / "out", cache_dir=work / "cache", device=device, dtype=a.dtype, compile=a.compile,
                            workers=a.workers, prefetch=4)
        t0 = time.perf_counter()
        data = prepare_data(ds, opts, dist, None, lambda m: print(m, file=sys.stderr))
        cache_secs = time.perf_counter() - t0
        real = run_real(recipe, data, opts, dist, warm, steps)
        synthetic = run_synthetic(recipe, data.num_classes, len(data.rows), opts, dist, warm, steps)
        doc = {
            "benchmark": "train_speed",
            "device": torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "cpu",
            "arch": recipe.model.arch, "recipe": recipe.name, "batch_size": batch,
            "dtype": opts.dtype if opts.dtype != "auto" else ("bf16" if dist.device.type == "cuda" else "fp32"),
            "compile": a.compile, "channels_last": dist.device.type == "cuda", "timed_steps": steps, "warmup_steps": warm,
            "images": len(data.rows),
            "cache_build_images_per_s": round(len(data.rows) / cache_secs, 1),
            "real_samples_per_s": round(real, 1),
            "synthetic_samples_per_s": round(synthetic, 1),
            "real_vs_synthetic": round(real / synthetic, 3),
        }
        if dist.device.type == "cuda":
            at_recipe, _ = load_recipe("arcface-torch", [({"batch_size": batch, "model": {"arch": recipe.model.arch}}, "benchmark")])
            at_opts = TrainOptions(output=work / "out", cache_dir=work / "cache", device=device, dtype="fp16", compile=False,
                                   channels_last=False)
            base = run_synthetic(at_recipe, data.num_classes, len(data.rows), at_opts, dist, warm, steps)
            doc["arcface_torch_style_fp16_samples_per_s"] = round(base, 1)
            doc["real_vs_arcface_torch_style"] = round(real / base, 3)
            doc["arcface_torch_anchor_h100_samples_per_s"] = 2400  # DESIGN §7, measured with their script
        print(json.dumps(doc))
        return doc
    finally:
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    main()
