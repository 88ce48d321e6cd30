"""IJB-C 1:1 throughput: insightface's one-image-at-a-time path vs frbench's cold (decode+align) and warm (cached) paths.

Builds a synthetic IJB-style tree (loose-crop JPEGs, 5 landmarks, faceness, multi-frame media,
template pairs; tests/_ijb_tree.py) of ``--images`` crops, then times on the same model:

* reference: a faithful re-run of ``eval_ijbc.py``'s feature loop (``cv2.imread`` → skimage
  similarity → ``warpAffine`` → BGR→RGB → mirror, float64 batch of 2·B, ``(x/255 − 0.5)/0.5``,
  fp32 forward) on the first ``--ref-images`` crops;
* cold: ``frbench``'s IJB protocol with an empty cache (parallel decode+align into the memmap,
  embedding overlapped), then templates, scores and ROC;
* warm: the same again, crops read from the cache;
* align-only and embed-only rates, to show which side limits the cold path.

Prints one JSON line. ``--quick`` is a small CPU run with a tiny network. Picks CUDA when present.

    python benchmarks/ijb_speed.py --quick
    python benchmarks/ijb_speed.py --images 50000 --arch r50 --dtype bf16 --batch-size 1024
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

IJBC_IMAGES = 469_375
IJBC_PAIRS = 15_658_489


def build_model(arch: str) -> torch.nn.Module:
    from _ijb_tree import tiny_iresnet

    if arch == "tiny":
        return tiny_iresnet()
    from _compare import untrained_iresnet

    return untrained_iresnet(arch)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small CPU run: ~300 images, tiny network")
    ap.add_argument("--images", type=int, default=20000, help="approximate crops in the synthetic tree")
    ap.add_argument("--ref-images", type=int, default=0, help="crops timed on the reference path (default 0: all)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each path, interleaved")
    ap.add_argument("--pairs", type=int, default=IJBC_PAIRS, help="at most this many template pairs")
    ap.add_argument("--arch", default="r50", help="r18/r34/r50/r100 or tiny")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="frbench's autocast dtype")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--ref-batch-size", type=int, default=128, help="eval_ijbc.py's default --batch-size")
    ap.add_argument("--workers", type=int, default=None, help="decode+align workers (default: every CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--min-size", type=int, default=160, help="loose-crop side range in pixels")
    ap.add_argument("--max-size", type=int, default=400)
    ap.add_argument("--root", type=Path, default=None, help="work in this folder (default: a temp dir, removed)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.arch, args.batch_size, args.ref_batch_size = 300, "tiny", 64, 32
        args.min_size, args.max_size = 120, 220

    from _ijb_reference import reference_image_features
    from _ijb_tree import write_ijb_tree

    from fr_bench.data.ijb_cache import cache_key, default_workers, fill_cache, open_cache
    from fr_bench.data.ijb_meta import read_ijb_meta
    from fr_bench.models.torch_model import TorchEmbedder, resolve_device
    from fr_bench.protocols import get_benchmark

    device = resolve_device(args.device)
    workers = args.workers or default_workers()
    tmp = args.root or Path(tempfile.mkdtemp(prefix="ijb_speed_"))
    try:
        t0 = time.perf_counter()
        per_subject = 4 * 4  # 4 templates × ~2 media × ~2 frames
        tree = write_ijb_tree(tmp / "data", "ijbc", subjects=max(4, args.images // per_subject), templates_per_subject=4,
                              size=(args.min_size, args.max_size), max_impostors=args.pairs, workers=workers)
        gen_s = time.perf_counter() - t0
        n = tree["images"]

        model = build_model(args.arch)
        dim = model.features.num_features
        emb = TorchEmbedder(model, f"{args.arch}.pt", args.arch, dim, device=str(device), dtype=args.dtype,
                            batch_size=args.batch_size)
        bench = get_benchmark("ijbc", tmp / "data")
        bench.workers = workers

        # reference: eval_ijbc.py's loop, one image at a time, fp32, its own batch size, on every image
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _compare import interleaved, ratio

        root = tree["root"]
        lines = (root / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines(True)[: args.ref_images or None]
        ref_net = emb.model

        @torch.inference_mode()
        def forward(x: torch.Tensor) -> np.ndarray:
            return ref_net(x.to(device)).float().cpu().numpy()

        forward(torch.zeros(2, 3, 112, 112))  # warm-up (cudnn autotune, allocator)
        emb.embed(np.zeros((min(args.batch_size, 64), 112, 112, 3), np.uint8), flip=True)  # warm-up
        runs = {"cold": 0}

        def cold() -> dict:  # a fresh cache each time: decode + align + embed + templates + ROC
            runs["cold"] += 1
            res = bench.evaluate(emb, flip=True, batch_size=args.batch_size, workdir=tmp / f"work{runs['cold']}")
            assert res["cache"]["status"] == "built"
            return res

        def warm() -> dict:  # the cache of the first cold run
            res = bench.evaluate(emb, flip=True, batch_size=args.batch_size, workdir=tmp / "work1")
            assert res["cache"]["status"] == "hit"
            return res

        reference = lambda: reference_image_features(str(root / "loose_crop"), lines, forward, batch_size=args.ref_batch_size)  # noqa: E731
        stats, outs = interleaved({"reference": reference, "frbench_cold": cold, "frbench_warm": warm}, args.repeat, warmup=False)
        cold_res, warm_res = outs["frbench_cold"], outs["frbench_warm"]
        assert cold_res["tar_at_far"] == warm_res["tar_at_far"]
        ref_rate = len(lines) / stats["reference"]["median_s"]

        # align only (a second cache), and embed only (crops already in memory)
        meta = read_ijb_meta(root, "ijbc")
        cache = open_cache(tmp / "align_only", cache_key(meta.landmark_sha256), len(meta.names))
        t0 = time.perf_counter()
        for _ in fill_cache(cache, [str(root / "loose_crop" / nm) for nm in meta.names], meta.landmarks, workers=workers):
            pass
        align_rate = n / (time.perf_counter() - t0)
        crops = np.array(cache.crops[: min(n, 8192)])
        sync(device)
        t0 = time.perf_counter()
        emb.embed(crops, flip=True, batch_size=args.batch_size)
        sync(device)
        embed_rate = len(crops) / (time.perf_counter() - t0)

        cold_rate = n / stats["frbench_cold"]["median_s"]
        warm_rate = n / stats["frbench_warm"]["median_s"]
        fixed = sum(v for k, v in warm_res["timings"].items() if k != "align_embed")
        out = {
            "benchmark": "ijb_speed",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpu_workers": workers, "torch_threads": torch.get_num_threads(),
            "arch": args.arch, "dtype": args.dtype, "batch_size": args.batch_size,
            "images": n, "templates": tree["templates"], "pairs": tree["pairs"],
            "loose_crop_px": [args.min_size, args.max_size], "tree_build_s": round(gen_s, 1),
            "reference_images": len(lines), **stats,
            "reference_img_s": round(ref_rate, 1),
            "cold_img_s": round(cold_rate, 1), "warm_img_s": round(warm_rate, 1),
            "align_only_img_s": round(align_rate, 1), "embed_only_img_s": round(embed_rate, 1),
            # per-image throughput by medians (the reference's loop runs on len(lines) images)
            "cold_vs_reference": round(cold_rate / ref_rate, 2),
            "warm_vs_reference": round(warm_rate / ref_rate, 2),
            "warm_timings_s": warm_res["timings"],
            # linear extrapolation of the per-image part to IJB-C's 469,375 crops
            "ijbc_warm_images_estimate_s": round(IJBC_IMAGES / warm_rate, 1),
            "ijbc_reference_images_estimate_s": round(IJBC_IMAGES / ref_rate, 1),
            "fixed_s_at_this_pair_count": round(fixed, 2),
        }
        print(json.dumps(out))
    finally:
        if args.root is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
