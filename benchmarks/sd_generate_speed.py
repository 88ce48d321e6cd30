"""SD1.5 sampling throughput (images/s): frbench's Arc2Face adapter vs the stock diffusers pipeline.

Both run in the same process on the same random-weight SD1.5-size components (UNet 860M parameters,
KL-f8 VAE, CLIP-L-size text encoder), saved as local diffusers folders in the Arc2Face layout so that
frbench's real loader runs offline. 512×512, DPM-Solver++ 25 steps, CFG 3, batch 16 identities.

* stock: ``StableDiffusionPipeline`` (default SDPA processors, safety checker off) called as the Arc2Face
  README does, with ``prompt_embeds`` (the identity projection) and the "" negative embedding, the same
  initial latents, ``output_type="np"``;
* frbench: ``Arc2FaceAdapter.generate`` (projection + sampling + decode to uint8), once per ``--variants``
  entry: ``eager`` (channels_last, cuDNN autotune), ``compile`` (+ ``torch.compile`` of UNet and VAE
  decoder), ``regional`` (+ compile of the repeated transformer blocks only), ``compile-max``
  (``max-autotune-no-cudagraphs``; compiles for minutes), ``fused-qkv`` (eager + fused QKV projections).

Each variant gets a warm-up batch (compilation happens there; its time is reported as ``warmup_s``),
then stock and every variant are timed interleaved, ``--repeats`` (≥ 3) batches each; images/s and ratios
come from medians. The headline ``ratio_like_for_like`` is the ``eager`` variant (same dtype, batch and
sampler, no compilation); ``ratio_fastest_setting`` the best variant. ``max_abs_diff``/``mean_abs_diff``
compare the variant's uint8 images with the stock pipeline's for the same latents (fp16 rounding only).

    python benchmarks/sd_generate_speed.py                # SD1.5 size, cuda, fp16
    python benchmarks/sd_generate_speed.py --quick        # tiny components on CPU: a check of the script

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WORDS = ["photo", "of", "a", "id", "person"]
VARIANTS = {
    "eager": {},
    "compile": {"compile": "full"},
    "regional": {"compile": "regional"},
    "compile-max": {"compile": "full", "compile_mode": "max-autotune-no-cudagraphs"},
    "fused-qkv": {"fuse_qkv": True},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tokenizer_files(folder: Path, max_len: int) -> None:
    """A CLIP BPE tokenizer that knows the Arc2Face prompt's words (the real vocab is not needed here)."""
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[str] = []
    for word in WORDS:
        cur = word[0]
        for nxt in list(word[1:-1]) + [word[-1] + "</w>"] if len(word) > 1 else []:
            merges.append(f"{cur} {nxt}")
            cur += nxt
            vocab.setdefault(cur, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": max_len}))


def write_components(root: Path, quick: bool, device: torch.device) -> int:
    """Random-weight SD1.5-size (or tiny) components in the Arc2Face + SD1.5 folder layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if quick:
        unet_cfg = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=512,
                        attention_head_dim=8, norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        vae_cfg = dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, sample_size=64)
        text_cfg = dict(hidden_size=512, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000)
    else:  # stable-diffusion-v1-5 unet/vae configs; CLIP ViT-L/14 text tower
        unet_cfg = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
                        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        vae_cfg = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512)
        text_cfg = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        vocab_size=49408, hidden_act="quick_gelu")
    torch.manual_seed(0)
    save_dtype = torch.float32 if quick else torch.float16
    with torch.device(device):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **unet_cfg)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, **vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                            **text_cfg))
    params = sum(p.numel() for p in unet.parameters())
    unet.to(save_dtype).save_pretrained(root / "arc2face")
    text.to(save_dtype).save_pretrained(root / "encoder")
    vae.to(save_dtype).save_pretrained(root / "vae")
    _tokenizer_files(root / "tokenizer", 77)
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}))
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "clip_sample": False, "prediction_type": "epsilon"}))
    del unet, vae, text
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return params


def _time(fn: Any, repeats: int, device: torch.device) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = None
    for _ in range(repeats):
        out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from fr_bench.generators.arc2face import Arc2FaceAdapter, project_identities
    from fr_bench.generators.base import sample_seed, seeded_noise
    from fr_bench.generators.sd_common import encode_prompts

    import warnings

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    warnings.filterwarnings("ignore", category=FutureWarning)
    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype_name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    dtype = DTYPES[dtype_name]
    steps = args.steps or (2 if args.quick else 25)
    batch = args.batch or (2 if args.quick else 16)
    repeats = max(3, args.repeats or 3)  # interleaved: at least 3 timed batches of each
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    seeds = torch.tensor([sample_seed(0, i, 0) for i in range(batch)])
    ids = torch.nn.functional.normalize(torch.randn(batch, 512, generator=torch.Generator().manual_seed(1)), dim=1)
    with tempfile.TemporaryDirectory(prefix="sd-speed-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        unet_params = write_components(root, args.quick, device)
        setup_s = time.perf_counter() - t0
        opts = {"steps": steps, "guidance_scale": args.guidance}
        rows: list[dict[str, Any]] = []

        # ---- stock pipeline, loaded and run the way the Arc2Face README does (diffusers defaults)
        torch.backends.cudnn.benchmark = False
        unet = UNet2DConditionModel.from_pretrained(root / "arc2face", torch_dtype=dtype, local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(root / "encoder", local_files_only=True).to(dtype)
        pipe = StableDiffusionPipeline.from_pretrained(root, unet=unet, text_encoder=encoder, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False,
                                                       torch_dtype=dtype, local_files_only=True).to(device)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        res = pipe.unet.config.sample_size * pipe.vae_scale_factor
        shape = (4, res // pipe.vae_scale_factor, res // pipe.vae_scale_factor)
        with torch.inference_mode():
            uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""], device)

        def stock() -> torch.Tensor:
            with torch.inference_mode():
                cond = project_identities(pipe.tokenizer, pipe.text_encoder, ids)
                latents = seeded_noise(seeds, shape, device, dtype)
                imgs = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond.expand(batch, -1, -1), latents=latents,
                            num_inference_steps=steps, guidance_scale=args.guidance, height=res, width=res,
                            output_type="np").images
            return torch.from_numpy((imgs * 255).round().astype("uint8")).permute(0, 3, 1, 2)

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _compare import interleaved

        stock_warm, _ = _time(stock, 1, device)
        # ---- frbench variants, each loaded and warmed (compiled) up front, then all timed interleaved
        candidates: dict[str, Any] = {"stock": stock}
        warmups: dict[str, float] = {"stock": stock_warm}
        for v in variants:
            a = Arc2FaceAdapter.from_config({**opts, **VARIANTS[v]})
            a.load(root, device=device, dtype=dtype)
            warmups[v], _ = _time(lambda a=a: a.generate(ids, seeds), 1, device)
            candidates[v] = lambda a=a: a.generate(ids, seeds)
        stats, outs = interleaved(candidates, repeats, warmup=False)
        stock_imgs = outs["stock"]
        stock_rate = batch / stats["stock"]["median_s"]
        rows.append({"name": "stock StableDiffusionPipeline", "dtype": dtype_name, "batch": batch, "steps": steps,
                     "resolution": res, "warmup_s": round(warmups["stock"], 2), **stats["stock"], "img_s": round(stock_rate, 4)})
        for v in variants:
            rate = batch / stats[v]["median_s"]
            diff = (outs[v].int() - stock_imgs.int()).abs()
            rows.append({"name": f"frbench arc2face ({v})", "variant": v, "dtype": dtype_name, "batch": batch, "steps": steps,
                         "resolution": res, "warmup_s": round(warmups[v], 2), **stats[v], "img_s": round(rate, 4),
                         "ratio": round(rate / stock_rate, 3), "max_abs_diff": int(diff.max()),
                         "mean_abs_diff": round(float(diff.float().mean()), 4)})
        if device.type == "cuda":
            rows[-1]["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    head = [r for r in rows if "ratio" in r]
    like = next((r["ratio"] for r in head if r["variant"] == "eager"), None)
    return {"benchmark": "sd_generate_speed", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "quick": args.quick, "cfg": args.guidance, "unet_params": unet_params,
            "setup_s": round(setup_s, 1), "repeats": repeats,
            "rows": rows, "stock_img_s": round(stock_rate, 4),
            "ratio_like_for_like": like,  # eager: same dtype, batch, sampler, no compilation
            "ratio_fastest_setting": max(r["ratio"] for r in head) if head else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny components, 64×64, 2 steps, batch 2 (CPU check)")
    ap.add_argument("--variants", default="eager,compile", help=f"frbench settings to time, of: {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=None, help="DPM-Solver++ steps (default 25; quick 2)")
    ap.add_argument("--batch", type=int, default=None, help="identities per batch (default 16; quick 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed batches per row (default 3; quick 1)")
    ap.add_argument("--guidance", type=float, default=3.0, help="CFG scale (Arc2Face: 3)")
    ap.add_argument("--dtype", choices=list(DTYPES), default=None, help="default fp16 on cuda, fp32 on cpu")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
