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

``uiface``: the released UIFace UNet size (the same 216M UNet + the learnable empty context, random
weights), DDIM-50 two-stage sampling with the adaptive switch and attention injection (2 UNet passes
per step), 128×128 decode → 112×112.

* reference: ``sample_ddim_2stage`` re-run literally (``tests/_uiface_reference.py``): one identity per
  batch of 50, einsum attention that materialises every self-attention map, the context path
  recomputed every pass, every step's latent copied to the host, fp32, then decode and resize;
* frbench: the ``uiface`` adapter (fused attention; only the 32-token cross-attention logits are
  formed, self-attention is injected through the fused kernel), in fp32 at batch 50 and in
  ``--dtype`` at ``--batch``; the ``baseline`` row (plain CFG, no capture) shows what the two-stage
  machinery costs.

    python benchmarks/generate_speed.py            # real size, cuda when present
    python benchmarks/generate_speed.py --quick    # tiny model, 20 steps: a CPU check of the script
    python benchmarks/generate_speed.py --generators uiface

Every variant is timed ``--repeat`` times, interleaved with the others (min and median); images/s and
ratios come from medians. The headline, ``ratio_like_for_like``, is frbench at the reference's batch and
dtype against the reference; ``ratio_fastest_setting`` is the best of frbench's own settings.

Prints one JSON line.
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
        base = {"generator": "idiff-face", "steps": steps, "unet_params": n_params, "resolution": probe.native_resolution}

        # ------------------------------------------------------------------------------- frbench
        def prepared(batch: int, dt: str, **options: Any) -> Callable[[], Any]:
            adapter = get_generator("idiff-face").from_config({"steps": steps, **options})
            adapter.load(folder, device=device, dtype=DTYPES[dt])
            rows_ctx = ctx.repeat_interleave(per_id, 0)[:batch]
            seeds = torch.tensor([sample_seed(42, i // per_id, i % per_id) for i in range(batch)])
            timed = adapter.scheduler
            adapter.scheduler = DDPMScheduler(adapter.schedule, 3)
            adapter.generate(rows_ctx, seeds)  # warm-up (allocator, cuDNN, graph capture, compilation)
            adapter.scheduler = timed
            return lambda: adapter.generate(rows_ctx, seeds)

        variants: dict[str, tuple[int, str, Callable[[], Any]]] = {
            "reference": (per_id, "fp32", lambda: reference_sample(ddpm, decoder, context, size, steps, device)),
            "frbench": (per_id, "fp32", prepared(per_id, "fp32")),  # like for like: same batch and dtype
            f"frbench {dtype} batch {big}": (big, dtype, prepared(big, dtype)),
        }
        if device.type == "cuda":
            variants["frbench cuda_graph"] = (big, dtype, prepared(big, dtype, cuda_graph=True))
        if args.compile:
            variants["frbench compile"] = (big, dtype, prepared(big, dtype, compile=True, compile_mode=args.compile_mode))
        rows += _rows(base, variants, args.repeat)
    return rows


def _rows(base: dict[str, Any], variants: dict[str, tuple[int, str, Callable[[], Any]]], repeat: int) -> list[dict[str, Any]]:
    """Time every variant interleaved; per-image throughput and its ratio to the reference's, by medians."""
    from _compare import interleaved

    stats, _ = interleaved({name: fn for name, (_, _, fn) in variants.items()}, repeat, warmup=False)
    ref_rate = variants["reference"][0] / stats["reference"]["median_s"]
    rows = []
    for name, (batch, dt, _) in variants.items():
        rate = batch / stats[name]["median_s"]
        row = {**base, "variant": name, "dtype": dt, "batch": batch, **stats[name], "img_s": round(rate, 4)}
        if name != "reference":
            row["ratio"] = round(rate / ref_rate, 3)
        rows.append(row)
    return rows


def uiface_case(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    from _uiface_reference import ref_sample_2stage, write_tiny_uiface

    from fr_bench.generators.samplers import DDIMScheduler, NoiseSchedule
    from fr_bench.generators.uiface import RELEASED_UNET as UIFACE_UNET, to_uint8_112

    steps = 50  # UIFace's ddim_step; the stage split (t ≥ 500) needs the real grid
    per_id = 4 if args.quick else 50
    big = args.batch or (8 if args.quick else 250)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "uiface"
        if args.quick:
            ddpm = write_tiny_uiface(folder, seed=0)
            options: dict[str, Any] = {"unet_config": str(folder / "unet_cond_ca_tiny.yaml"), "image_size": 16}
        else:
            folder.mkdir()
            torch.manual_seed(0)
            arch = {k: v for k, v in UIFACE_UNET.items() if k not in ("condition_type", "is_context_conditional",
                                                                        "n_context_classes")}
            ddpm = RefDDPM(RefConditionalUNet(**arch), T=1000).eval()
            torch.save({"module." + k: v for k, v in ddpm.state_dict().items()}, folder / "uiface.ckpt")
            torch.save(VQDecoder(VQConfig()).state_dict(), folder / "first_stage_decoder_state_dict.pt")
            options = {}
        n_params = sum(p.numel() for p in ddpm.eps_model.parameters())
        ctx = torch.nn.functional.normalize(torch.randn(max(big, per_id) // per_id + 1, 512), dim=1)

        # ----------------------------------------------------------------------------- reference
        unet = ddpm.eps_model.to(device)
        probe = get_generator("uiface").from_config({**options, "steps": steps})
        probe.load(folder, device=device, dtype=torch.float32)
        size, decoder, side = probe.latent_shape, probe.decoder, probe.latent_shape[-1]

        def reference(unet: torch.nn.Module, decoder: VQDecoder, n_steps: int) -> torch.Tensor:
            context = ctx[:1].repeat(per_id, 1).to(device)
            x_T = torch.randn(per_id, *size).to(device)
            x, _, _ = ref_sample_2stage(unet, x_T, context, ddim_step=n_steps, img_size=side)
            with torch.no_grad():
                return to_uint8_112(decoder(x).cpu(), resize=True)

        reference(unet, decoder, 5)  # warm-up
        base = {"generator": "uiface", "steps": steps, "unet_params": n_params, "resolution": 112}

        # ------------------------------------------------------------------------------- frbench
        def prepared(batch: int, dt: str, **extra: Any) -> Callable[[], Any]:
            adapter = get_generator("uiface").from_config({**options, "steps": steps, **extra})
            adapter.load(folder, device=device, dtype=DTYPES[dt])
            rows_ctx = ctx.repeat_interleave(per_id, 0)[:batch]
            seeds = torch.tensor([sample_seed(42, i // per_id, i % per_id) for i in range(batch)])
            timed = adapter.sampler.scheduler, adapter._t
            adapter.sampler.scheduler = DDIMScheduler(NoiseSchedule.linear(1000), 5, variant="negfacediff")
            adapter._t = [torch.tensor([t], device=device) for t in adapter.sampler.scheduler.timesteps]
            adapter.generate(rows_ctx, seeds)  # warm-up
            adapter.sampler.scheduler, adapter._t = timed
            return lambda: adapter.generate(rows_ctx, seeds)

        variants = {
            "reference": (per_id, "fp32", lambda: reference(unet, decoder, steps)),
            "frbench": (per_id, "fp32", prepared(per_id, "fp32")),  # like for like: same algorithm, batch and dtype
            f"frbench {dtype} batch {big}": (big, dtype, prepared(big, dtype)),
            "frbench baseline (plain CFG, no two-stage)": (big, dtype, prepared(big, dtype, variant="baseline")),
        }
        rows += _rows(base, variants, args.repeat)
        rows[-1].pop("ratio", None)  # another algorithm: no ratio to the reference
        rows[-1]["two_stage_cost"] = round(rows[-1]["img_s"] / rows[-2]["img_s"], 3)  # baseline img/s ÷ UIFace img/s
    return rows


#: generator family → function(args, device) returning its rows (frbench rows carry "ratio" to the reference)
CASES: dict[str, Callable[[argparse.Namespace, torch.device], list[dict[str, Any]]]] = {
    "idiff-face": idiff_face_case,
    "uiface": uiface_case,
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
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per variant, interleaved")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    rows: list[dict[str, Any]] = []
    for name in args.generators.split(","):
        rows += CASES[name.strip()](args, device)
    # headline per generator: the like-for-like row (same batch and dtype as the reference)
    like = {r["generator"]: r["ratio"] for r in rows if r["variant"] == "frbench"}
    fastest = {}
    for r in rows:
        if "ratio" in r:
            fastest[r["generator"]] = max(fastest.get(r["generator"], 0.0), r["ratio"])
    print(json.dumps({"benchmark": "generate_speed", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                      else "cpu", "torch": torch.__version__, "quick": args.quick, "repeat": args.repeat, "rows": rows,
                      "ratio_like_for_like": like, "ratio_fastest_setting": fastest}))


if __name__ == "__main__":
    main()
