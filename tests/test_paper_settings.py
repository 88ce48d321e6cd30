"""Paper-exact training details, each against a literal re-statement of its source:
TFace's ArcFace fallbacks, IDiff-Face's head clipping, arcface_torch's fp32 fc, subset selection, ONNX devices."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from fr_bench.cli import cli
from fr_bench.config import TrainRecipe
from fr_bench.errors import ConfigError
from fr_bench.models.heads import ArcFace
from fr_bench.train import Dist, TrainOptions, Trainer
from trainkit import make_folder_dataset, register_tiny

register_tiny()


# ------------------------------------------------------------------------------ ArcFace fallbacks
class TFaceArcFace(torch.nn.Module):
    """Tencent/TFace torchkit/head/localfc/arcface.py, restated (kernel stored as [dim, classes])."""

    def __init__(self, kernel: torch.Tensor, scale: float = 64.0, margin: float = 0.5, easy_margin: bool = False):
        super().__init__()
        self.kernel = torch.nn.Parameter(kernel.clone())
        self.scale, self.easy_margin = scale, easy_margin
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.th, self.mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos_theta = torch.mm(F.normalize(embeddings, dim=1), F.normalize(self.kernel, dim=0)).clamp(-1, 1)
        target_logit = cos_theta[torch.arange(0, embeddings.size(0)), labels].view(-1, 1)
        sin_theta = torch.sqrt(1.0 - torch.pow(target_logit, 2))
        cos_theta_m = target_logit * self.cos_m - sin_theta * self.sin_m
        if self.easy_margin:
            final = torch.where(target_logit > 0, cos_theta_m, target_logit)
        else:
            final = torch.where(target_logit > self.th, cos_theta_m, target_logit - self.mm)
        cos_theta = cos_theta.clone().scatter_(1, labels.view(-1, 1).long(), final)
        return cos_theta * self.scale


def _targets_on_both_sides(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings whose target cosines span (−0.99, 0.99): some past cos(π − m) = −0.878, some below 0."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(12) % 4
    wanted = torch.linspace(-0.99, 0.99, 12, dtype=torch.float64)
    ortho = torch.randn(12, 8, generator=g, dtype=torch.float64)
    ortho = F.normalize(ortho - (ortho * centres[labels]).sum(1, keepdim=True) * centres[labels], dim=1)
    emb = wanted[:, None] * centres[labels] + torch.sqrt(1 - wanted[:, None] ** 2) * ortho
    return (3.0 * emb).float(), labels, centres.float()


@pytest.mark.parametrize("flag", ["th_mm", "easy_margin"])
def test_arcface_fallback_equals_tface_in_value_and_gradient(flag: str) -> None:
    emb, labels, centres = _targets_on_both_sides()
    ours = ArcFace(8, 4, s=64.0, m=0.5, **{flag: True})
    with torch.no_grad():
        ours.weight.copy_(centres)
    ref = TFaceArcFace(centres.T, easy_margin=flag == "easy_margin")
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    got, want = ours(e1, labels), ref(e2, labels)
    # both compute cos(θ + m) in fp32 by different identities (acos/cos vs cos·cos_m − sin·sin_m):
    # a few ulp of cosines times s = 64 → ~1e-5
    torch.testing.assert_close(got, want, atol=5e-5, rtol=0)
    up = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    (got * up).sum().backward()
    (want * up).sum().backward()
    torch.testing.assert_close(e1.grad, e2.grad, atol=2e-4, rtol=1e-4)  # d/dt of the two forms differ by rounding near |t|→1
    torch.testing.assert_close(ours.weight.grad, ref.kernel.grad.T, atol=2e-4, rtol=1e-4)


def test_without_the_fallback_targets_past_pi_minus_m_differ_from_tface() -> None:
    emb, labels, centres = _targets_on_both_sides()
    plain = ArcFace(8, 4, s=64.0, m=0.5)
    with torch.no_grad():
        plain.weight.copy_(centres)
    got, want = plain(emb, labels), TFaceArcFace(centres.T)(emb, labels)
    past = torch.arange(12)[torch.linspace(-0.99, 0.99, 12) <= math.cos(math.pi - 0.5)]
    assert len(past) and (got - want)[past, labels[past]].abs().min() > 1.0


def test_uiface_recipe_uses_the_tface_fallback_and_idiff_face_clips_the_head() -> None:
    from fr_bench.recipes import load_recipe

    uiface, _ = load_recipe("uiface")
    idiff, _ = load_recipe("idiff-face")
    assert uiface.head.th_mm is True and not uiface.head.easy_margin
    assert idiff.optimizer.clip_head is True and idiff.optimizer.grad_clip == 5.0


# ----------------------------------------------------------------------------- head clipping
def _trainer(tmp_path: Path, clip_head: bool) -> Trainer:
    recipe = TrainRecipe.model_validate({
        "model": {"arch": "tiny", "dropout": 0.0, "embedding_size": 16},
        "head": {"type": "cosface", "s": 64.0, "m": 0.35},
        "optimizer": {"lr": 0.1, "lr_batch_size": 8, "grad_clip": 5.0, "clip_head": clip_head},
        "epochs": 1, "batch_size": 8})
    return Trainer(recipe, num_classes=4, images=16, opts=TrainOptions(output=tmp_path, cache_dir=tmp_path, device="cpu"), dist=Dist())


@pytest.mark.parametrize("clip_head", [True, False])
def test_clip_head_clips_backbone_and_head_separately_like_idiff_face(tmp_path: Path, clip_head: bool) -> None:
    trainer = _trainer(tmp_path, clip_head)
    backbone, header = copy.deepcopy(trainer.backbone), copy.deepcopy(trainer.head)
    g = torch.Generator().manual_seed(0)
    x, labels = torch.randn(8, 3, 112, 112, generator=g), torch.arange(8) % 4
    torch.manual_seed(0)
    F.cross_entropy(trainer.model(x, labels, torch.float32), labels).backward()
    trainer._clip()
    # IDiff-Face train.py: loss.backward(); clip_grad_norm_(backbone, 5); clip_grad_norm_(header, 5)
    torch.manual_seed(0)
    F.cross_entropy(header(backbone(x), labels), labels).backward()
    torch.nn.utils.clip_grad_norm_(backbone.parameters(), max_norm=5, norm_type=2)
    if clip_head:
        torch.nn.utils.clip_grad_norm_(header.parameters(), max_norm=5, norm_type=2)
    assert header.weight.grad.norm() > 5.0 or clip_head  # the head's raw gradient is large: clipping matters
    torch.testing.assert_close(trainer.head.weight.grad, header.weight.grad, atol=1e-6, rtol=1e-5)
    for (name, p), q in zip(trainer.backbone.named_parameters(), backbone.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


# --------------------------------------------------------------------------- fp32 fc under autocast
def test_iresnet_final_fc_and_bn1d_run_in_fp32_under_bf16_autocast() -> None:
    from fr_bench.models.iresnet import iresnet

    torch.manual_seed(0)
    net = iresnet("r18", num_features=64).eval()
    with torch.no_grad():
        net.features.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = net(x)
        trunk = net.dropout(net.forward_trunk(x))
    # arcface_torch iresnet.forward: autocast(trunk); x = self.fc(x.float()); x = self.features(x)
    with torch.no_grad():
        want = net.features(net.fc(trunk.float()))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net.features(net.fc(trunk))  # what an fc under autocast gives
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert (low.float() - want).abs().max() > 1e-3  # bf16 fc would be visibly different


# --------------------------------------------------------------------------------- subsets
def test_train_on_first_n_identities_times_first_k_images(tmp_path: Path) -> None:
    ds = make_folder_dataset(tmp_path / "ds", n_ids=5, per_id=6)
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, [str(a) for a in (
        "--workdir", tmp_path, "train", ds, "--recipe", "idiff-face", "--set", "model.arch=tiny", "--set", "model.embedding_size=16",
        "--set", "optimizer.lr_batch_size=4", "--set", "model.dropout=0", "--batch-size", 4, "--epochs", 1,
        "--identities", 3, "--per-identity", 4, "--no-track", "--device", "cpu", "--output", out, "--cache-dir", tmp_path / "cache")], obj={})
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "train.json").read_text())
    assert (doc["identities"], doc["images"]) == (3, 12)
    assert doc["selection"]["identities"] == 3 and doc["selection"]["per_identity"] == 4


def test_first_rows_takes_sorted_classes_and_the_first_items_of_each() -> None:
    from fr_bench.data.train_set import first_rows

    labels = np.array([2, 0, 0, 1, 2, 0, 1, 2, 3])
    assert first_rows(labels, 2, 2).tolist() == [1, 2, 3, 6]
    assert first_rows(labels, None, 1).tolist() == [0, 1, 3, 8]
    assert first_rows(labels, 3, None).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


# ----------------------------------------------------------------------------------- devices
def test_onnx_cuda_n_runs_on_that_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    from fr_bench.models import onnx_model

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnx_model, "_cuda_count", lambda: 2)
    assert onnx_model._providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert onnx_model._providers("cuda")[0] == ("CUDAExecutionProvider", {"device_id": 0})
    with pytest.raises(ConfigError, match="2 CUDA device"):
        onnx_model._providers("cuda:2")


def test_onnx_cuda_without_a_cuda_provider_is_an_error_not_a_silent_cpu_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    from fr_bench.models import onnx_model

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="no CUDAExecutionProvider"):
        onnx_model._providers("cuda")
    assert onnx_model._providers("auto") == ["CPUExecutionProvider"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_eval_with_cuda_on_a_cpu_machine_is_one_line_exit_2(kind: str, tiny_iresnet_path: Path, tiny_onnx_path: Path, bin_dir: Path) -> None:
    model = tiny_iresnet_path if kind == "torch" else tiny_onnx_path
    res = CliRunner().invoke(cli, ["eval", "--model", str(model), "--data-dir", str(bin_dir), "--device", "cuda", "--no-track"], obj={})
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "CUDA" in errors[0] and "Traceback" not in res.output, res.output
