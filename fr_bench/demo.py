"""Tiny random-weight artefacts for the plumbing demo (``configs/demo.yaml``).

``frbench run configs/demo.yaml`` shows every stage on a laptop CPU in minutes. Nothing here is a
result: the generator, the recognizer and the benchmark packs are random, built in the real file
formats (a released-layout IDiff-Face model folder, insightface ``.bin`` packs of JPEG bytes, an
arcface_torch iresnet state dict) so the demo exercises the same loading code as a real run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from .io import atomic_path

DEMO_VERSION = 2


@dataclass(frozen=True)
class DemoAssets:
    generator: Path  # IDiff-Face model folder (.hydra/config.yaml + checkpoints/ema_averaged_model.ckpt + first stage)
    benchmarks: Path  # lfw.bin, cfp_fp.bin, cplfw.bin, agedb_30.bin, calfw.bin
    fr_model: Path  # iresnet r18 state dict (for the metrics stage)


def _hydra_config(latent: int) -> dict:
    return {
        "latent_diffusion": True,
        "constants": {"seed": 0, "image_size": latent, "input_channels": 3, "n_classes": 0},
        "diffusion": {"T": 1000, "schedule_type": "linear"},
        "model": {"input_channels": 3, "initial_channels": 32, "channel_multipliers": [1, 2], "is_attention": [False, True],
                  "attention_heads": -1, "attention_head_channels": 32, "n_blocks_per_resolution": 1,
                  "condition_type": "CA", "is_context_conditional": True, "n_context_classes": 0,
                  "context_input_channels": 512, "context_channels": 32, "learn_empty_context": False,
                  "context_dropout_probability": 0.25},
    }


def write_tiny_idiff_face(folder: Path, seed: int = 0, latent: int = 16) -> Path:
    """A released-layout IDiff-Face folder with a tiny random UNet and a tiny VQ first stage (32×32 images)."""
    from .generators.idiff_checkpoint import build_model, model_spec
    from .generators.vq import VQConfig, VQDecoder, VQEncoder

    cfg = _hydra_config(latent)
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model(model_spec(cfg, folder), folder)
    with torch.no_grad():  # random init barely listens to the context; make identities visibly differ
        for name, p in model.named_parameters():
            if name.endswith(("cross_attention.to_v.weight", "cross_attention.proj_out.weight")):
                p.mul_(5)
    ddconfig = dict(ch=32, out_ch=3, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, in_channels=3,
                    resolution=latent, z_channels=3, double_z=False)
    vq = VQConfig(**{**ddconfig, "ch_mult": (1, 2), "attn_resolutions": ()}, embed_dim=3, n_embed=64)
    dec, enc = VQDecoder(vq), VQEncoder(vq)
    with torch.no_grad():
        dec.quantize.embedding.weight.normal_()
    for target, obj in ((folder / "checkpoints" / "ema_averaged_model.ckpt", model.state_dict()),
                        (folder / "first_stage_decoder_state_dict.pt", dec.state_dict()),
                        (folder / "first_stage_encoder_state_dict.pt", enc.state_dict())):
        with atomic_path(target) as tmp:
            torch.save(obj, tmp)
    (folder / "first_stage_config.yaml").write_text(yaml.safe_dump({
        "target": "ldm.models.autoencoder.VQModelInterface",
        "params": {"embed_dim": 3, "n_embed": 64, "ddconfig": ddconfig, "lossconfig": {"target": "torch.nn.Identity"}}}))
    with atomic_path(folder / ".hydra" / "config.yaml") as tmp:  # last: marks the folder complete
        tmp.write_text(yaml.safe_dump(cfg))
    return folder


def write_tiny_benchmarks(folder: Path, pairs: int = 30, seed: int = 0) -> Path:
    """Five insightface-format packs of smooth random JPEGs (genuine pairs are perturbed copies)."""
    import cv2

    from .data.binfile import write_pack

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw"):
        issame = rng.random(pairs) < 0.5
        bins = []
        for k in range(pairs):
            a = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (112, 112), interpolation=cv2.INTER_CUBIC)
            b = (np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8) if issame[k] else
                 cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (112, 112), interpolation=cv2.INTER_CUBIC))
            bins += [cv2.imencode(".jpg", x)[1].tobytes() for x in (a, b)]
        with atomic_path(folder / f"{name}.bin") as tmp:
            write_pack(tmp, bins, list(issame))
    return folder


def write_tiny_fr_model(path: Path, seed: int = 0) -> Path:
    """A random arcface_torch iresnet r18 (64-d) state dict."""
    from .models.iresnet import iresnet

    torch.manual_seed(seed)
    model = iresnet("r18", num_features=64)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return path


def prepare_demo(workdir: Path, create: bool = True) -> DemoAssets:
    """Create (once) the demo artefacts under ``<workdir>/demo-assets/v<N>``; ``create=False`` only names them."""
    root = Path(workdir) / "demo-assets" / f"v{DEMO_VERSION}"
    gen, bins, fr = root / "idiff-face-tiny", root / "benchmarks", root / "fr-r18-random.pt"
    if not create:  # a dry run plans with the paths and writes nothing
        return DemoAssets(gen, bins, fr)
    if not (gen / ".hydra" / "config.yaml").is_file():
        write_tiny_idiff_face(gen)
    if not all((bins / f"{n}.bin").is_file() for n in ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw")):
        write_tiny_benchmarks(bins)
    if not fr.is_file():
        write_tiny_fr_model(fr)
    return DemoAssets(gen, bins, fr)
