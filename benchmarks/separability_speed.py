"""Speed of exact identity separability (DESIGN §7: 20k images ≤ 1 s incl. embedding reuse; CPU ≥ 50× pyeer).

Part 1 — the default protocol at full size: 1,000 identities × 20 images of random unit 512-d
embeddings, i.e. 190,000 genuine and 199,800,000 impostor scores, all exact, on cuda when present
(``--device``). Timed from embeddings in memory (what a cached re-run does) to the finished result.

Part 2 — CPU against pyeer 0.5.6 on the same score sets with ~5·10⁶ impostors (160 × 20 images):
pyeer's curve + EER + FMR100/FMR1000 + distribution statistics (``pyeer.eer_stats`` functions, as
``get_eer_stats`` chains them) against ``separability_from_scores``; the results are checked equal
and the ratio printed. frbench's CPU time from embeddings (including the matrix product) is
reported too.

    python benchmarks/separability_speed.py            # full size
    python benchmarks/separability_speed.py --quick    # small sizes, CPU check

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings

import numpy as np
import torch

from fr_bench.metrics.separability import pair_scores, separability, separability_from_scores


def unit_embeddings(n_id: int, per: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n_id * per, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, np.repeat(np.arange(n_id), per)


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


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

    # part 1: full protocol from embeddings on the chosen device
    emb, labels = unit_embeddings(n_id, per, args.dim, 0)
    emb_dev = torch.from_numpy(emb).to(device)
    separability(emb_dev, labels, device=device)  # warm-up (CUDA context, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_full, res = best_of(lambda: separability(emb_dev, labels, device=device), args.repeat)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    # part 2: CPU, same score sets, pyeer vs frbench
    emb2, labels2 = unit_embeddings(n_py, per, args.dim, 1)
    gen, imp = pair_scores(emb2, labels2)
    t_ours, ours = best_of(lambda: separability_from_scores(gen, imp), args.repeat)
    t_ours_emb, _ = best_of(lambda: separability(emb2, labels2, device="cpu"), args.repeat)
    t = time.perf_counter()
    ref = pyeer_numbers(gen, imp)
    t_pyeer = time.perf_counter() - t
    mine = ours.to_dict()
    equal = all(abs(mine[k] - v) <= 1e-9 for k, v in ref.items())

    print(json.dumps({
        "benchmark": "separability_speed",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "exact": {"identities": n_id, "per_identity": per, "dim": args.dim, "genuine_pairs": res.genuine_pairs,
                  "impostor_pairs": res.impostor_pairs, "seconds": round(t_full, 4),
                  "impostors_per_s": round(res.impostor_pairs / t_full),
                  "peak_cuda_mib": None if peak is None else round(peak / 2 ** 20)},
        "cpu_vs_pyeer": {"impostor_pairs": len(imp), "genuine_pairs": len(gen), "pyeer_s": round(t_pyeer, 3),
                         "frbench_from_scores_s": round(t_ours, 4), "frbench_from_embeddings_s": round(t_ours_emb, 4),
                         "ratio": round(t_pyeer / t_ours, 1), "ratio_from_embeddings": round(t_pyeer / t_ours_emb, 1),
                         "equal_to_pyeer": equal, "torch_threads": torch.get_num_threads()},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
