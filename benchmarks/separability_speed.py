"""Speed of exact identity separability, side by side (DESIGN §7; issue: ≤ 3× the bare product on the CPU).

Part 1 — the default protocol at full size: 1,000 identities × 20 images of random unit 512-d
embeddings, i.e. 190,000 genuine and 199,800,000 impostor scores, all exact, against the anchor
"bare all-pairs product": ``E @ E.T`` of the same embeddings with the same library (torch, same
device, same threads) — the least any exact method must do. Interleaved, ``--repeat`` times each.

Part 2 — CPU against pyeer 0.5.6 on the same score sets (~5·10⁶ impostors, 160 × 20 images): the
anchor is pyeer's ``get_eer_stats`` path (``calculate_roc`` → ``get_eer_values`` → ``get_fmr_op`` ×2
→ distribution statistics → ``get_decidability_value``, as ``get_eer_stats`` chains them); the
product is ``separability_from_scores`` on the same arrays. Results are checked equal (1e-9).

    python benchmarks/separability_speed.py            # full size
    python benchmarks/separability_speed.py --quick    # small sizes, CPU check

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from fr_bench.metrics.separability import pair_scores, separability, separability_from_scores


def unit_embeddings(n_id: int, per: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n_id * per, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, np.repeat(np.arange(n_id), per)


def pyeer_numbers(gen: np.ndarray, imp: np.ndarray) -> dict[str, float]:
    from pyeer.eer_stats import calculate_roc, get_decidability_value, get_eer_values, get_fmr_op

    thr, fm, fnm = calculate_roc(gen, imp, rates=False)
    fmr, fnmr = fm / len(imp), fnm / len(gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, _, _, eer = get_eer_values(fmr, fnmr)
    out = {"eer": eer, "fmr100": get_fmr_op(fmr, fnmr, 0.01)[1], "fmr1000": get_fmr_op(fmr, fnmr, 0.001)[1],
           "genuine_mean": np.mean(gen), "genuine_std": np.std(gen), "impostor_mean": np.mean(imp), "impostor_std": np.std(imp)}
    out["d_prime"] = get_decidability_value(out["genuine_mean"], out["genuine_std"], out["impostor_mean"], out["impostor_std"])
    return out


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _compare import interleaved, ratio

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for a CPU check")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (part 1)")
    ap.add_argument("--identities", type=int, default=None, help="part 1 identities (default 1000; quick 100)")
    ap.add_argument("--per-identity", type=int, default=20)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--pyeer-identities", type=int, default=None, help="part 2 identities (default 160 → 5.1M impostors; quick 25)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    n_id = args.identities or (100 if args.quick else 1000)
    n_py = args.pyeer_identities or (25 if args.quick else 160)
    per = args.per_identity

    # part 1: the full protocol against the bare all-pairs product of the same embeddings
    emb, labels = unit_embeddings(n_id, per, args.dim, 0)
    emb_dev = torch.from_numpy(emb).to(device)

    def bare_product() -> int:
        with torch.no_grad():
            return int((emb_dev @ emb_dev.T).shape[0])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats1, out1 = interleaved({"bare_product": bare_product, "frbench_exact": lambda: separability(emb_dev, labels, device=device)},
                               args.repeat)
    res = out1["frbench_exact"]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    # part 2: CPU, the same score sets, pyeer's path against frbench's
    emb2, labels2 = unit_embeddings(n_py, per, args.dim, 1)
    gen, imp = pair_scores(emb2, labels2)
    stats2, out2 = interleaved({"pyeer": lambda: pyeer_numbers(gen, imp), "frbench_from_scores": lambda: separability_from_scores(gen, imp),
                                "frbench_from_embeddings": lambda: separability(emb2, labels2, device="cpu")}, args.repeat)
    mine, ref = out2["frbench_from_scores"].to_dict(), out2["pyeer"]
    equal = all(abs(mine[k] - v) <= 1e-9 for k, v in ref.items())

    print(json.dumps({
        "benchmark": "separability_speed",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch_threads": torch.get_num_threads(),
        "exact": {"identities": n_id, "per_identity": per, "dim": args.dim, "genuine_pairs": res.genuine_pairs,
                  "impostor_pairs": res.impostor_pairs, **{k: v for k, v in stats1.items()},
                  "ratio_to_bare_product": ratio(stats1, "frbench_exact", "bare_product"),
                  "impostors_per_s": round(res.impostor_pairs / stats1["frbench_exact"]["median_s"]),
                  "peak_cuda_mib": None if peak is None else round(peak / 2 ** 20)},
        "cpu_vs_pyeer": {"impostor_pairs": len(imp), "genuine_pairs": len(gen), **stats2,
                         "ratio": ratio(stats2, "pyeer", "frbench_from_scores"),
                         "ratio_from_embeddings": ratio(stats2, "pyeer", "frbench_from_embeddings"),
                         "equal_to_pyeer_1e-9": equal},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
