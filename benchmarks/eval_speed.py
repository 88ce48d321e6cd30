"""Speed of `frbench eval` on the five verification benchmarks at their real sizes.

Builds five synthetic packs in insightface's format (real JPEG bytes: 6000/7000/6000/6000/6000 pairs,
62,000 images), then times the same code path `frbench eval` runs — decode, embed with flip, 10-fold
protocol — for an iresnet50 with random weights (speed only; accuracy is meaningless here).

    python benchmarks/eval_speed.py                 # full size, cuda if present
    python benchmarks/eval_speed.py --quick         # CPU sanity check (tiny packs, r18)

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from fr_bench.data.binfile import write_pack
from fr_bench.evaluate import run_eval, select_benchmarks
from fr_bench.models.iresnet import iresnet
from fr_bench.models.torch_model import TorchEmbedder

SIZES = {"lfw": 6000, "cfp_fp": 7000, "cplfw": 6000, "agedb_30": 6000, "calfw": 6000}


def make_packs(root: Path, scale: float, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    base = [cv2.resize(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8), (112, 112), interpolation=cv2.INTER_CUBIC) for _ in range(64)]
    encoded = [cv2.imencode(".jpg", b, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for b in base]
    total = 0
    for name, pairs in SIZES.items():
        pairs = max(20, int(pairs * scale))
        imgs = [encoded[i % len(encoded)] for i in rng.integers(0, len(encoded), 2 * pairs)]
        write_pack(root / f"{name}.bin", imgs, list(rng.random(pairs) < 0.5))
        total += 2 * pairs
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny packs and an r18, for a CPU check")
    ap.add_argument("--arch", default=None)
    ap.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    arch = args.arch or ("r18" if args.quick else "r50")
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    scale = 0.01 if args.quick else 1.0
    torch.backends.cudnn.benchmark = True

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_images = make_packs(root, scale)
        model = iresnet(arch)
        emb = TorchEmbedder(model, root / f"{arch}.pt", arch, 512, device=args.device, dtype=dtype, batch_size=args.batch_size)
        # warm-up: cudnn autotuning and allocator, not part of the timed run
        warm = np.zeros((args.batch_size if cuda else 8, 112, 112, 3), np.uint8)
        emb.embed(warm, flip=True)
        if cuda:
            torch.cuda.synchronize()

        sel = select_benchmarks(root, list(SIZES))
        t0 = time.perf_counter()
        doc = run_eval(emb, sel, flip=True, batch_size=args.batch_size)
        if cuda:
            torch.cuda.synchronize()
        total = time.perf_counter() - t0

        # embedding throughput alone (flip: two forward passes per image)
        x = np.zeros((min(n_images, 8192 if cuda else 64), 112, 112, 3), np.uint8)
        t1 = time.perf_counter()
        emb.embed(x, flip=True, batch_size=args.batch_size)
        if cuda:
            torch.cuda.synchronize()
        embed_s = time.perf_counter() - t1

    print(json.dumps({
        "bench": "eval_speed",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "arch": arch, "dtype": dtype, "batch_size": args.batch_size,
        "images": n_images, "forward_passes": 2 * n_images,
        "end_to_end_s": round(total, 2),
        "end_to_end_images_per_s": round(n_images / total, 1),
        "embed_forward_images_per_s": round(2 * len(x) / embed_s, 1),
        "per_benchmark_s": {k: v["seconds"] for k, v in doc["benchmarks"].items()},
        "goal_s": 15.0,
    }))


if __name__ == "__main__":
    main()
