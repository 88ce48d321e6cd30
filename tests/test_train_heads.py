"""Margin heads against their formulas, computed by hand in float64 from the same cosines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fr_bench.models.heads import AdaFace, ArcFace, CombinedMargin, CosFace, build_head

S = 64.0


def _setup(head: torch.nn.Module, seed: int = 0, n: int = 5, classes: int = 4, dim: int = 6, scale: float = 3.0):
    """Fixed embeddings/centres; returns (emb, labels, cos as float64 numpy)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, dim, generator=g) * scale
    with torch.no_grad():
        head.weight.copy_(torch.randn(classes, dim, generator=g))
    labels = torch.arange(n) % classes
    e = emb.double().numpy()
    w = head.weight.detach().double().numpy()
    cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    return emb, labels, cos


def _expected(cos: np.ndarray, labels: torch.Tensor, target_fn) -> np.ndarray:
    out = cos.copy()
    for i, y in enumerate(labels.tolist()):
        out[i, y] = target_fn(cos[i, y], i)
    return S * out


def test_cosface_subtracts_m_from_the_target_cosine_only() -> None:
    head = CosFace(6, 4, s=S, m=0.35)
    emb, labels, cos = _setup(head)
    got = head(emb, labels).detach().double().numpy()
    np.testing.assert_allclose(got, _expected(cos, labels, lambda c, i: c - 0.35), atol=2e-4)


def test_arcface_adds_m_to_the_target_angle() -> None:
    head = ArcFace(6, 4, s=S, m=0.5)
    emb, labels, cos = _setup(head)
    got = head(emb, labels).detach().double().numpy()
    np.testing.assert_allclose(got, _expected(cos, labels, lambda c, i: math.cos(math.acos(c) + 0.5)), atol=2e-4)


def test_combined_margin_is_cos_m1_theta_plus_m2_minus_m3() -> None:
    head = CombinedMargin(6, 4, s=S, m1=0.9, m2=0.2, m3=0.15)
    emb, labels, cos = _setup(head, seed=3)
    got = head(emb, labels).detach().double().numpy()
    np.testing.assert_allclose(got, _expected(cos, labels, lambda c, i: math.cos(0.9 * math.acos(c) + 0.2) - 0.15), atol=2e-4)


def test_arcface_gradient_textbook_vs_arcface_torch_straight_through() -> None:
    """Textbook: d logit/d cos = s·sin(θ+m)/sin θ; arcface_torch (no_grad margin): exactly s."""
    for straight in (False, True):
        head = ArcFace(6, 4, s=S, m=0.5, straight_through=straight)
        cos = torch.tensor([[0.3, 0.1, -0.2, 0.5]], dtype=torch.float32, requires_grad=True)
        logits = head.margin(cos, torch.tensor([0]), torch.ones(1, 6))
        logits[0, 0].backward()
        theta = math.acos(0.3)
        want = S if straight else S * math.sin(theta + 0.5) / math.sin(theta)
        assert cos.grad[0, 0].item() == pytest.approx(want, rel=1e-4)
        assert logits[0, 0].item() == pytest.approx(S * math.cos(theta + 0.5), rel=1e-5)


def _adaface_reference(cos: np.ndarray, norms: np.ndarray, labels: list[int], mean: float, std: float, m: float, h: float, alpha: float):
    """mk-minchul/AdaFace head.py, written out: EMA first, then the margins."""
    eps = 1e-3
    c = np.clip(cos, -1 + eps, 1 - eps)
    safe = np.clip(norms, 0.001, 100)
    mean = safe.mean() * alpha + (1 - alpha) * mean
    std = safe.std(ddof=1) * alpha + (1 - alpha) * std
    g = np.clip((safe - mean) / (std + eps) * h, -1, 1)
    out = c.copy()
    for i, y in enumerate(labels):
        theta = min(max(math.acos(c[i, y]) - m * g[i], eps), math.pi - eps)
        out[i, y] = math.cos(theta) - (m + m * g[i])
    return S * out, mean, std


def test_adaface_matches_reference_including_ema_norm_statistics() -> None:
    head = AdaFace(6, 4, s=S, m=0.4, h=0.333, t_alpha=0.3).train()
    mean, std = 20.0, 100.0
    for seed in (0, 1, 2):  # three batches: the EMA carries over
        emb, labels, cos = _setup(head, seed=seed, scale=10.0 + 5 * seed)
        norms = np.linalg.norm(emb.double().numpy(), axis=1)
        want, mean, std = _adaface_reference(cos, norms, labels.tolist(), mean, std, 0.4, 0.333, 0.3)
        got = head(emb, labels).detach().double().numpy()
        np.testing.assert_allclose(got, want, atol=5e-4)
        assert head.batch_mean.item() == pytest.approx(mean, rel=1e-5)
        assert head.batch_std.item() == pytest.approx(std, rel=1e-5)


def test_adaface_statistics_are_frozen_in_eval_mode() -> None:
    head = AdaFace(6, 4, t_alpha=0.5).eval()
    emb, labels, _ = _setup(head)
    head(emb, labels)
    assert head.batch_mean.item() == 20.0 and head.batch_std.item() == 100.0


def test_margin_maths_stays_fp32_under_bf16_autocast() -> None:
    head = CosFace(6, 4, s=S, m=0.35)
    emb, labels, _ = _setup(head)
    ref = head(emb, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(emb.bfloat16(), labels)
    assert got.dtype == torch.float32
    # only the bf16 rounding of the *embedding* remains (0.4% relative), not bf16 logits (0.25 steps at s=64)
    np.testing.assert_allclose(got.detach().numpy(), ref.detach().numpy(), atol=0.2)
    assert not torch.equal(torch.round(got * 4) / 4, got)


def test_build_head_rejects_parameters_of_another_head() -> None:
    with pytest.raises(ValueError, match="takes s, m, not h"):
        build_head("cosface", 8, 3, s=64.0, m=0.3, h=0.3)
