"""``frbench doctor``: what is installed, and which files a config needs, which are there, where to get the rest.

Nothing is downloaded or loaded: files are checked for presence, packages through their metadata.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .extras import extra_status, installed
from .protocols.base import FIVE_BENCHMARKS

#: where the pieces a config names are published (for a missing file: what to fetch, from where)
WHERE = {
    "idiff": "IDiff-Face release (fdbtrs/IDiff-Face README, pre-trained models on request) — a model folder holding "
             ".hydra/config.yaml and checkpoints/ema_averaged_model.ckpt; the LDM ffhq256 VQ-f4 first stage "
             "(first_stage_decoder_state_dict.pt) in models/autoencoder/ beside it",
    "negfacediff": "NegFaceDiff / AdaptDiff release (EduardaCaldeira/NegFaceDiff README, CASIA-IDiff-cpd25 on request) — "
                   "same folder layout as IDiff-Face",
    "uiface": "UIFace release (Tencent/TFace generation/uiface README) — the diffusion .ckpt "
              "(ema_averaged_model_250000.ckpt) and the VQ-f4 decoder of IDiff-Face",
    "arc2face": "Arc2Face on the Hugging Face hub (FoivosPar/Arc2Face: arc2face/ and encoder/) over a Stable Diffusion 1.5 "
                "base folder (vae/, tokenizer/, scheduler/)",
    "fused-attention": "your trained kf/vf safetensors (frbench train-adapter) over a Stable Diffusion 1.5 base folder",
    "bin": "insightface's recognition datasets (the faces_webface_112x112 / faces_emore / ms1m-retinaface packs ship "
           "lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin); put them side by side in eval.data_dir",
    "ijbc": "insightface's IJB release (IJB_release.tar → IJBC/ with meta/ijbc_face_tid_mid.txt, "
            "meta/ijbc_template_pair_label.txt, loose_crop/, and ijbc_name_5pts_score.txt)",
    "rfw": "RFW from its authors on request: African_test.bin, Asian_test.bin, Caucasian_test.bin, Indian_test.bin",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth → $TORCH_HOME/hub/checkpoints/ (or metrics.vgg16_weights)",
    "inception": "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth "
                 "→ $TORCH_HOME/hub/checkpoints/ (or metrics.inception_weights)",
    "fr_model": "an ONNX recognition model (e.g. an insightface model pack's w600k_r50.onnx) or an arcface_torch iresnet state dict",
    "context_encoder": "the encoder the generator's contexts came from: ElasticFace-Arc R100 for the IDiff-Face family and "
                       "UIFace (fdbtrs/ElasticFace README: Elastic_R100_295672backbone.pth), antelopev2's arcface.onnx "
                       "for Arc2Face (FoivosPar/Arc2Face on the Hugging Face hub)",
    "yours": "your own file",
}
GENERATOR_WHERE = {"idiff-face": "idiff", "negfacediff": "negfacediff", "adaptdiff": "negfacediff", "uiface": "uiface",
                   "arc2face": "arc2face", "fused-attention": "fused-attention"}


@dataclass
class Need:
    section: str
    what: str
    path: Optional[Path]
    present: bool
    where: str
    optional: bool = False  # a metric that is skipped, not failed, without it (LPIPS, FID backbones)


def environment() -> list[tuple[str, str]]:
    """(item, value) rows: versions, torch build, CUDA devices, ONNX Runtime providers, extras."""
    rows = [("frbench", __version__), ("python", f"{sys.version.split()[0]} ({platform.platform()})")]
    try:
        import torch

        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
        rows.append(("torch", f"{torch.__version__} ({build})"))
        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            rows.append(("CUDA devices", f"{torch.cuda.device_count()}: {names}"))
        else:
            rows.append(("CUDA devices", "none available (--device cuda is refused; everything runs on the CPU)"))
    except ImportError:  # pragma: no cover - torch is a hard dependency
        rows.append(("torch", "not installed"))
    try:
        import onnxruntime as ort

        rows.append(("onnxruntime", f"{ort.__version__}; providers: {', '.join(ort.get_available_providers())}"))
    except ImportError:
        rows.append(("onnxruntime", "not installed (ONNX models cannot be scored): pip install 'frbench[cpu]'"))
    for extra, info in extra_status().items():
        mods = ", ".join(f"{m} {v}" if v else f"{m} missing" for m, v in info["modules"].items())  # type: ignore[union-attr]
        state = "installed" if info["installed"] else f"incomplete — pip install 'frbench[{extra}]'"
        if extra == "align" and not installed("facenet_pytorch"):
            state += "; MTCNN: pip install --no-deps facenet-pytorch"
        rows.append((f"[{extra}]", f"{state} ({mods}) — {info['for']}"))
    return rows


def _file(section: str, what: str, path: Any, where: str, *, folder: bool = False) -> Need:
    p = None if path is None else Path(path)
    ok = p is not None and (p.is_dir() if folder else p.is_file())
    return Need(section, what, p, ok, where)


def preflight(cfg: Any, stages: set[str]) -> None:
    """Every file the planned ``stages`` will read, checked before anything runs: all problems in one
    :class:`~fr_bench.errors.InputError` (exit 2), nothing created."""
    from .errors import InputError

    # `inputs` feed whichever stage comes first, so they are always read
    missing = [n for n in requirements(cfg) if not n.present and not n.optional
               and (n.section in stages or n.section == "inputs")]
    if missing:
        items = "; ".join(f"{n.section}: {n.what} — {n.path if n.path is not None else 'not set'}" for n in missing)
        raise InputError(None, f"{len(missing)} missing before anything ran (nothing was created; `frbench doctor CONFIG` "
                               f"says where to get each): {items}")


def requirements(cfg: Any) -> list[Need]:
    """Every file the config's stages would read, present or not."""
    from .metrics.diversity import hub_checkpoint

    needs: list[Need] = []
    fields = cfg.model_fields_set
    if "identities" in fields:
        ic = cfg.identities
        for key in ("reference_embeddings", "images", "fr_model", "file"):
            value = getattr(ic, key)
            if value is not None:
                needs.append(_file("identities", key, value, WHERE["fr_model" if key == "fr_model" else "yours"],
                                   folder=key == "images"))
    if "generate" in fields and cfg.generate.generator:
        gc = cfg.generate
        where = WHERE.get(GENERATOR_WHERE.get(gc.generator, ""), "the adapter's documentation (frbench adapters)")
        if gc.weights is None and not cfg.demo:
            needs.append(Need("generate", f"{gc.generator} weights (generate.weights)", None, False, where))
        elif gc.weights is not None:
            w = Path(gc.weights)
            needs.append(_file("generate", f"{gc.generator} weights", w, where, folder=w.suffix == ""))
            if GENERATOR_WHERE.get(gc.generator) in ("idiff", "negfacediff") and w.is_dir():
                needs.append(_file("generate", "model config", w / ".hydra" / "config.yaml", where))
                needs.append(_file("generate", "EMA checkpoint", w / "checkpoints" / "ema_averaged_model.ckpt", where))
    if "align" in fields:
        det = str(cfg.align.detector)
        if det == "mtcnn":
            needs.append(Need("align", "facenet-pytorch (MTCNN weights ship in its wheel)", None, installed("facenet_pytorch"),
                              "pip install --no-deps facenet-pytorch"))
        elif det != "none":
            needs.append(_file("align", "detector ONNX", det, "an insightface model pack's det_10g.onnx or a scrfd_*_bnkps.onnx"))
    if cfg.inputs.dataset is not None:
        needs.append(_file("inputs", "dataset", cfg.inputs.dataset, WHERE["yours"], folder=True))
    if cfg.inputs.model is not None:
        needs.append(_file("inputs", "model", cfg.inputs.model, WHERE["fr_model"]))
    if "eval" in fields and cfg.eval.data_dir is not None:
        d = Path(cfg.eval.data_dir)
        names = cfg.eval.benchmarks or list(FIVE_BENCHMARKS)
        for name in names:
            if name in ("ijbc", "ijbb"):
                sub = d / name.upper()
                needs.append(_file("eval", f"{name.upper()}/ meta and loose_crop", sub / "meta", WHERE["ijbc"], folder=True))
            elif name == "rfw":
                for g in ("African", "Asian", "Caucasian", "Indian"):
                    needs.append(_file("eval", f"RFW {g}_test.bin", d / f"{g}_test.bin", WHERE["rfw"]))
            elif name in cfg.eval.groups:
                for f in cfg.eval.groups[name]:
                    needs.append(_file("eval", f"group {name}: {f}", d / f, WHERE["yours"]))
            else:
                needs.append(_file("eval", f"{name}.bin", d / f"{name}.bin", WHERE["bin"]))
    if "metrics" in fields:
        mc = cfg.metrics
        if mc.fr_model is not None or not cfg.demo:
            needs.append(_file("metrics", "FR model for separability (metrics.fr_model)", mc.fr_model, WHERE["fr_model"]))
        if mc.consistency_fr_model is not None:
            needs.append(_file("metrics", "contexts' encoder for identity consistency (metrics.consistency_fr_model)",
                               mc.consistency_fr_model, WHERE["context_encoder"]))
        if mc.reference is not None:
            needs.append(_file("metrics", "real reference set", mc.reference, WHERE["yours"], folder=True))
        vgg = _file("metrics", "LPIPS VGG16 weights", mc.vgg16_weights or hub_checkpoint("vgg16-397923af.pth"), WHERE["vgg16"])
        vgg.optional = mc.vgg16_weights is None  # a configured file must exist; the hub copy is optional
        needs.append(vgg)
        if mc.reference is not None:
            inc = _file("metrics", "Inception weights (FID, P/R)",
                        mc.inception_weights or hub_checkpoint("weights-inception-2015-12-05-6726825d.pth"), WHERE["inception"])
            inc.optional = mc.inception_weights is None
            needs.append(inc)
        for key in ("training_images", "training_embeddings", "training_labels"):
            if getattr(mc, key) is not None:
                needs.append(_file("metrics", f"leakage {key}", getattr(mc, key), WHERE["yours"], folder=key == "training_images"))
    return needs
