"""Speed of `frbench eval` on the five verification benchmarks, side by side with arcface_torch's path.

Builds five synthetic packs in insightface's format (real JPEG bytes; 6000/7000/6000/6000/6000 pairs
at ``--scale 1``, 62,000 images), then times, interleaved and ``--repeat`` times each on the same
packs and the same network weights:

* anchor: insightface ``recognition/arcface_torch/eval/verification.py`` — ``load_bin`` (decode one
  image at a time, keep a flipped copy) then ``test`` (windowed batches, ((x/255)−0.5)/0.5, float64
  embeddings, the norm loop, the two-copy sum, ``evaluate`` with its per-threshold Python loops), re-created
  in ``_verification_anchor.py``;
* product: ``frbench.evaluate.run_eval`` — what ``frbench eval`` runs (restricted unpickler, batched
  decode, embedding with flip, the vectorised 10-fold protocol).

Both produce the ten fold accuracies per benchmark; the script reports the largest difference (the
two embed in different batch shapes, so a distance may differ in the last float32 bits; a pair whose
distance sits that close to a threshold step could flip). The network is random (speed only):
``--arch tiny`` (a ~3 MMAC iresnet: the pipelines, not the network, dominate — the CPU setting),
``r18``/``r50`` (the network dominates: on a GPU).

    python benchmarks/eval_speed.py --arch tiny --scale 0.1      # the 2-core CPU figure in the README
    python benchmarks/eval_speed.py                              # full size, r50, cuda if present
    python benchmarks/eval_speed.py --quick                      # small CPU check

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from fr_bench.data.binfile import write_pack
from fr_bench.evaluate import run_eval, select_benchmarks
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


def build(arch: str) -> torch.nn.Module:
    if arch == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from _ijb_tree import tiny_iresnet

        return tiny_iresnet(dim=512)
    from _compare import untrained_iresnet

    return untrained_iresnet(arch)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _compare import interleaved, ratio
    from _verification_anchor import load_bin, test

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny network, 2%% of the pairs: a CPU check")
    ap.add_argument("--arch", default=None, help="tiny | r18 | r50 (default r50; quick: tiny)")
    ap.add_argument("--scale", type=float, default=None, help="fraction of the real pair counts (default 1; quick 0.02)")
    ap.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch-size", type=int, default=None, help="default 1024 on CUDA, 128 on the CPU")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = "cuda" if cuda else "cpu"
    arch = args.arch or ("tiny" if args.quick else "r50")
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    scale = args.scale or (0.02 if args.quick else 1.0)
    bs = args.batch_size or (1024 if cuda else 128)
    torch.backends.cudnn.benchmark = True

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_images = make_packs(root, scale)
        model = build(arch).to(device)
        emb = TorchEmbedder(model, root / f"{arch}.pt", arch, 512, device=device, dtype=dtype, batch_size=bs)
        sel = select_benchmarks(root, list(SIZES))

        def product() -> dict:
            return run_eval(emb, sel, flip=True, batch_size=bs)

        def anchor() -> dict:
            # the reference runs the backbone in fp32 NCHW on the device, as arcface_torch's test() does
            return {name: test(load_bin(root / f"{name}.bin"), lambda x: model(x.to(device)), bs) for name in SIZES}

        stats, out = interleaved({"arcface_torch_verification": anchor, "frbench_eval": product}, args.repeat)
        doc, ref = out["frbench_eval"], out["arcface_torch_verification"]
        diff = max(float(np.max(np.abs(np.asarray(doc["benchmarks"][n]["fold_accuracies"]) - ref[n]))) for n in SIZES)

    print(json.dumps({
        "benchmark": "eval_speed",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "arch": arch, "dtype": dtype, "batch_size": bs, "scale": scale,
        "images": n_images, "forward_passes": 2 * n_images, **stats,
        "ratio": ratio(stats, "arcface_torch_verification", "frbench_eval"),
        "frbench_images_per_s": round(n_images / stats["frbench_eval"]["median_s"], 1),
        "max_fold_accuracy_diff": diff,
        "goal_s_full_size_gpu": 15.0,
    }))


if __name__ == "__main__":
    main()
