"""Negative-context guidance: NegFaceDiff (fixed w) and AdaptDiff (w_t = w·(1 − t/T))."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _idiff_reference import write_tiny_release
from fr_bench.generators.base import get_generator, sample_seed
from fr_bench.generators.guidance import LinearNegativeGuidance, NegativeGuidance, NoGuidance, guided_eps


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("guidance") / "model"
    return folder, write_tiny_release(folder, seed=5)


def _adapter(name: str, folder: Path, **options):
    adapter = get_generator(name).from_config({"steps": 6, **options})
    adapter.load(folder, device="cpu", dtype=torch.float32)
    return adapter


def _batch(n_ids: int = 2, per: int = 2):
    g = torch.Generator().manual_seed(7)
    ctx = torch.nn.functional.normalize(torch.randn(n_ids, 512, generator=g), dim=1)
    rows = torch.arange(n_ids).repeat_interleave(per)
    seeds = torch.tensor([sample_seed(42, int(i), k % per) for k, i in enumerate(rows)])
    return ctx[rows], ctx.flip(0)[rows], seeds


def test_adaptdiff_weight_is_zero_at_T_half_at_T_over_2_and_full_at_0():
    g = LinearNegativeGuidance(w_max=1.0)
    assert (g.weight(1000, 1000), g.weight(500, 1000), g.weight(0, 1000)) == (0.0, 0.5, 1.0)
    g2 = LinearNegativeGuidance(w_max=2.0)
    assert (g2.weight(1000, 1000), g2.weight(500, 1000), g2.weight(0, 1000)) == (0.0, 1.0, 2.0)
    rev = LinearNegativeGuidance(w_max=1.0, reverse=True)
    assert (rev.weight(1000, 1000), rev.weight(500, 1000), rev.weight(0, 1000)) == (1.0, 0.5, 0.0)
    assert NegativeGuidance(0.5).weight(999, 1000) == NegativeGuidance(0.5).weight(0, 1000) == 0.5
    assert NoGuidance().weight(0, 1000) == 0.0


def test_negfacediff_with_w_0_reproduces_idiff_face_images(release):
    folder, _ = release
    pos, neg, seeds = _batch()
    idiff, w0, w05 = _adapter("idiff-face", folder), _adapter("negfacediff", folder, w=0.0), _adapter("negfacediff", folder)
    assert torch.equal(idiff.sample_latents(pos, seeds), w0.sample_latents(pos, seeds, negatives=neg))
    assert torch.equal(idiff.generate(pos, seeds), w0.generate(pos, seeds, negatives=neg))
    assert not torch.equal(idiff.generate(pos, seeds), w05.generate(pos, seeds, negatives=neg))  # w > 0 acts


def test_batched_negative_branch_equals_two_reference_calls(release):
    _, ref_ddpm = release
    ref = ref_ddpm.eps_model.eval()
    pos, neg, _ = _batch(3, 1)
    x = torch.randn(3, 3, 8, 8)
    w = 0.5

    def eps_fn(xx, tt, ctx):
        return ref(xx, tt.expand(len(xx)), ctx)

    with torch.no_grad():
        want = (1 + w) * ref(x, torch.tensor([700] * 3), pos) - w * ref(x, torch.tensor([700] * 3), neg)
        got = guided_eps(eps_fn, x, torch.tensor([700]), 700, 1000, NegativeGuidance(w), pos, torch.cat([pos, neg]))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_adaptdiff_sampler_asks_the_schedule_at_each_visited_timestep(release):
    folder, _ = release
    adapter = _adapter("adaptdiff", folder)
    seen: list[tuple[int, int]] = []
    weight = adapter.guidance.weight
    adapter.guidance.weight = lambda t, T: (seen.append((t, T)), weight(t, T))[1]
    pos, neg, seeds = _batch(1, 2)
    adapter.generate(pos, seeds, negatives=neg)
    assert seen == [(t, 1000) for t in adapter.scheduler.timesteps]
    assert adapter.scheduler.timesteps[0] == 999 and adapter.scheduler.timesteps[-1] == 0


def test_negative_guidance_adapters_require_negatives(release):
    folder, _ = release
    pos, _, seeds = _batch(1, 2)
    with pytest.raises(Exception, match="negative"):
        _adapter("negfacediff", folder).generate(pos, seeds)
