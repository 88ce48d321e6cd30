"""Sampling throughput (images/s) of frbench's generators against a faithful re-run of each reference loop.

Rows are produced by the functions in ``CASES`` (one per generator family; add yours there). Each
row times whole images: initial noise → all sampler steps → first-stage decode → uint8.

``idiff-face``: the released UNet size (216,341,187 parameters, random weights), 128×128 images
(3×32×32 VQ-f4 latents), DDPM-1000.

* reference: the IDiff-Face ``sample.py`` loop re-run literally — one identity per batch of 50, a
  CPU ``torch.randn`` + ``.cuda()`` copy of the step noise and of the timestep vector every step, the
  reference ConditionalUNet maths (``tests/_idiff_reference.py``: einsum attention, the context path
  recomputed every step), fp32, then the VQ decoder;
* frbench: ``frbench generate``'s code path (the adapter loaded from a released-layout folder),
  noise drawn per image on the device, the context path computed once per batch, batches across
  identities, in fp32 at the reference batch and in ``--dtype`` at ``--batch``.

    python benchmarks/generate_speed.py            # real size, cuda when present
    python benchmarks/generate_speed.py --quick    # tiny model, 20 steps: a CPU check of the script

Prints one JSON line: {"rows": [...], "ratio": frbench/reference images/s of the headline setting}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the reference maths the tests check frbench against

from _idiff_reference import HYDRA_TEMPLATE, RefConditionalUNet, RefDDPM, write_tiny_release  # noqa: E402

from fr_bench.generators.base import get_generator, sample_seed  # noqa: E402
from fr_bench.generators.samplers import DDPMScheduler  # noqa: E402
from fr_bench.generators.vq import VQConfig, VQDecoder  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

RELEASED_UNET = dict(initial_channels=96, channel_multipliers=[1, 2, 2, 2], is_attention=[False, True, True, True],
                     attention_heads=-1, attention_head_channels=32, n_blocks_per_resolution=2,
                     context_input_channels=512, context_channels=256)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_release(folder: Path, quick: bool) -> RefDDPM:
    """A released-layout model folder with random weights: tiny (quick) or the real 216M-parameter size."""
    if quick:
        return write_tiny_release(folder, seed=0)

    (folder / ".hydra").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(HYDRA_TEMPLATE.format(T=1000, image_size=128, **{
        k: (str(v).lower() if isinstance(v, list) and v and isinstance(v[0], bool) else v) for k, v in RELEASED_UNET.items()}))
    torch.manual_seed(0)
    ddpm = RefDDPM(RefConditionalUNet(input_channels=3, **RELEASED_UNET), T=1000).eval()
    torch.save(ddpm.state_dict(), folder / "checkpoints" / "ema_averaged_model.ckpt")
    # no first_stage_config.yaml: the loader's default is the ffhq256 VQ-f4 first stage
    torch.save(VQDecoder(VQConfig()).state_dict(), folder / "first_stage_decoder_state_dict.pt")
    return ddpm


def reference_sample(ddpm: RefDDPM, decoder: VQDecoder, context: torch.Tensor, size: tuple[int, ...],
                     steps: int, device: torch.device) -> torch.Tensor:
    """IDiff-Face ``DenoisingDiffusionProbabilisticModel.sample`` + decode, literally (fp32, CPU noise)."""
    n = len(context)
    x_t = torch.randn(n, *size).to(device)
    with torch.no_grad():
        for i in reversed(range(0, steps)):
            z = torch.randn(n, *size).to(device) if i > 1 else 0
            t = torch.tensor(i).repeat(n).to(device)
            eps = ddpm.eps_model(x_t, t, context)
            x_t = ddpm.sqrt_alphas_inv[i] * (x_t - eps * ddpm.one_minus_alphas_over_sqrt_one_minus_alpha_bars[i]) \
                + ddpm.sigmas[i] * z
        img = decoder(x_t).cpu()
    return ((img.clamp(-1, 1) + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def idiff_face_case(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    steps = args.steps or (20 if args.quick else 1000)
    per_id = 4 if args.quick else 50  # the reference samples one identity per batch of 50
    big = args.batch or (8 if args.quick else 250)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        ddpm = write_release(folder, args.quick)
        n_params = sum(p.numel() for p in ddpm.eps_model.parameters())
        ctx = torch.nn.functional.normalize(torch.randn(max(big, per_id) // per_id + 1, 512), dim=1)

        # ----------------------------------------------------------------------------- reference
        ddpm = ddpm.to(device)
        probe = get_generator("idiff-face").from_config({"steps": steps})
        probe.load(folder, device=device, dtype=torch.float32)
        size = probe.latent_shape
        decoder = probe.decoder  # the same LDM decoder maths; decoding is ~0.1% of a 1000-step sample
        context = ctx[:1].repeat(per_id, 1).to(device)
        reference_sample(ddpm, decoder, context, size, 3, device)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        reference_sample(ddpm, decoder, context, size, steps, device)
        _sync(device)
        ref_s = time.perf_counter() - t0
        ref_rate = per_id / ref_s
        base = {"generator": "idiff-face", "steps": steps, "unet_params": n_params, "resolution": probe.native_resolution}
        rows.append({**base, "variant": "reference", "dtype": "fp32", "batch": per_id, "seconds": round(ref_s, 3),
                     "img_s": round(ref_rate, 4)})
        del ddpm, probe, decoder

        # ------------------------------------------------------------------------------- frbench
        def run(batch: int, dt: str, **options: Any) -> dict[str, Any]:
            adapter = get_generator("idiff-face").from_config({"steps": steps, **options})
            adapter.load(folder, device=device, dtype=DTYPES[dt])
            rows_ctx = ctx.repeat_interleave(per_id, 0)[:batch]
            seeds = torch.tensor([sample_seed(42, i // per_id, i % per_id) for i in range(batch)])
            timed = adapter.scheduler
            adapter.scheduler = DDPMScheduler(adapter.schedule, 3)
            adapter.generate(rows_ctx, seeds)  # warm-up (allocator, cuDNN, graph capture, compilation)
            adapter.scheduler = timed
            _sync(device)
            t0 = time.perf_counter()
            adapter.generate(rows_ctx, seeds)
            _sync(device)
            sec = time.perf_counter() - t0
            rate = batch / sec
            name = "frbench" + "".join(f" {k}" for k, v in options.items() if v is True)
            return {**base, "variant": name, "dtype": dt, "batch": batch, "seconds": round(sec, 3),
                    "img_s": round(rate, 4), "ratio": round(rate / ref_rate, 3)}

        rows.append(run(per_id, "fp32"))
        rows.append(run(big, dtype))
        if device.type == "cuda":
            rows.append(run(big, dtype, cuda_graph=True))
        if args.compile:
            rows.append(run(big, dtype, compile=True, compile_mode=args.compile_mode))
    return rows


#: generator family → function(args, device) returning its rows (frbench rows carry "ratio" to the reference)
CASES: dict[str, Callable[[argparse.Namespace, torch.device], list[dict[str, Any]]]] = {
    "idiff-face": idiff_face_case,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model and 20 steps (CPU check of the script)")
    ap.add_argument("--generators", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default 1000; quick 20)")
    ap.add_argument("--batch", type=int, default=None, help="frbench batch across identities (default 250; quick 8)")
    ap.add_argument("--dtype", choices=list(DTYPES), default=None, help="frbench dtype (default bf16 on cuda)")
    ap.add_argument("--compile", action="store_true", help="also time frbench with torch.compile")
    ap.add_argument("--compile-mode", default="max-autotune-no-cudagraphs", help="torch.compile mode for --compile")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    rows: list[dict[str, Any]] = []
    for name in args.generators.split(","):
        rows += CASES[name.strip()](args, device)
    best = max((r for r in rows if "ratio" in r), key=lambda r: r["ratio"], default=None)
    print(json.dumps({"benchmark": "generate_speed", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                      else "cpu", "torch": torch.__version__, "quick": args.quick, "rows": rows,
                      "ratio": best["ratio"] if best else None, "best": best["variant"] if best else None}))


if __name__ == "__main__":
    main()
