"""Tiny random-weight Stable Diffusion components saved in the released folder layouts.

Shared by the Arc2Face and fused-attention tests: an SD1.5-style base folder (``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) and an Arc2Face folder (``arc2face/`` UNet,
``encoder/`` CLIP text encoder stored as the released ``pytorch_model.bin`` with ``text_model.`` keys).
The tokenizer is a real CLIP BPE tokenizer built from a small vocabulary and merge list written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["photo", "of", "a", "id", "person", "face", "smiling", "man", "woman", "close", "up", "portrait"]
HIDDEN = 512  # Arc2Face zero-pads 512-d ArcFace vectors to the encoder width, so the width must be ≥ 512
MAX_LEN = 77
IMAGE = 32  # pixels; latents are 4×4 with the 8× VAE


def _vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary where each word is built by left-to-right merges of its letters."""
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[str] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            rule = f"{current} {nxt}"
            if rule not in merges:
                merges.append(rule)
            current = current + nxt
            vocab.setdefault(current, len(vocab))
    return vocab, merges


def write_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges(WORDS)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LEN, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}))


def tiny_text_encoder(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab, _ = _vocab_and_merges(WORDS)
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=MAX_LEN, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, projection_dim=HIDDEN)
    return CLIPTextModel(cfg).eval()


def tiny_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=IMAGE // 8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=HIDDEN, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def tiny_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4,
        sample_size=IMAGE,
    ).eval()


def write_scheduler(folder: Path) -> None:
    """The SD1.5 ``scheduler/scheduler_config.json`` (a PNDM config; adapters build DPM-Solver++ from it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "clip_sample": False, "prediction_type": "epsilon", "trained_betas": None}))


def build_sd_base(root: Path, seed: int = 0) -> Path:
    """An SD1.5-layout folder: unet/, vae/, text_encoder/, tokenizer/, scheduler/, model_index.json."""
    root.mkdir(parents=True, exist_ok=True)
    tiny_unet(seed).save_pretrained(root / "unet")
    tiny_vae(seed + 1).save_pretrained(root / "vae")
    tiny_text_encoder(seed + 2).save_pretrained(root / "text_encoder")
    write_tokenizer(root / "tokenizer")
    write_scheduler(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def build_arc2face(root: Path, seed: int = 10) -> Path:
    """The released Arc2Face layout: arc2face/ (diffusers UNet) and encoder/ (CLIPTextModelWrapper, .bin)."""
    root.mkdir(parents=True, exist_ok=True)
    tiny_unet(seed).save_pretrained(root / "arc2face")
    enc = tiny_text_encoder(seed + 1)
    folder = root / "encoder"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = enc.config.to_dict()
    cfg["architectures"] = ["CLIPTextModelWrapper"]
    (folder / "config.json").write_text(json.dumps(cfg))
    # the released file is a transformers-4.x pickle whose keys carry the ``text_model.`` prefix
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v.clone() for k, v in enc.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    return root
