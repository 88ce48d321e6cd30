"""UIFace: checkpoint loading, the two-stage sampler against the released code's maths, attention injection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from _uiface_reference import (ref_attn_map, ref_ddim_loop, ref_sample_2stage, ref_unet, tiny_reference_model,
                               write_tiny_uiface)
from fr_bench.cli import cli
from fr_bench.generators.attention import (AttentionStore, AttnProcessor, InjectSelfQK, RecordCross, RecordSelfQK,
                                           RenormCross, average_maps, cross_attention_map, inject_cross_logits)
from fr_bench.generators.base import get_generator, seeded_noise
from fr_bench.generators.samplers import SCHEDULE_KEYS
from fr_bench.generators.two_stage import VARIANTS, update_switch

REPO = Path(__file__).resolve().parents[1]
TH = 0.025  # switches the tiny model's rows at different steps (margin checked where it matters)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("uiface") / "release"
    write_tiny_uiface(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def ref_unet_model():
    return tiny_reference_model(seed=0).eps_model  # the weights write_tiny_uiface saved


def adapter(folder: Path, **options):
    """The adapter as ``frbench generate`` builds it, on the tiny model."""
    a = get_generator("uiface").from_config({"unet_config": str(folder / "unet_cond_ca_tiny.yaml"), "image_size": 16,
                                             **options})
    a.load(folder)
    return a


def inputs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ctx = torch.nn.functional.normalize(torch.randn(n, 512, generator=g), dim=1)
    seeds = torch.arange(100, 100 + n)
    return ctx, seeds, seeded_noise(seeds, (3, 8, 8), "cpu")


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    # the untrained model's latents grow to O(100): compare relative to their scale (float noise: ≤ 1.2e-6 of it;
    # treating one of the 50 steps differently moves them by ≥ 1e-5 of it)
    torch.testing.assert_close(got, want, rtol=0, atol=5e-6 * float(want.abs().max()))


def literal(unet, x_T, ctx, use_id, w: float = 1.0):
    """Plain DDIM-50 where step k uses CFG on the identity if use_id(k), else the empty context."""
    def eps(x, t, k):
        e_empty = ref_unet(unet, x, t, None)[0]
        return (1 + w) * ref_unet(unet, x, t, ctx)[0] - w * e_empty if use_id(k) else e_empty
    return ref_ddim_loop(unet, x_T, eps)


# -------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("layout", ["module.eps_model.", "eps_model."])
def test_reference_layout_checkpoint_loads_with_zero_missing_keys(tmp_path, layout):
    ref = write_tiny_uiface(tmp_path, seed=0, layout=layout)
    a = adapter(tmp_path)
    assert a.report.missing == [] and a.report.unexpected == []
    assert a.report.ignored == sorted(SCHEDULE_KEYS)  # the wrapper's buffers: the reference rebuilds them too
    assert a.report.loaded == len(a.unet.state_dict())
    assert torch.equal(a.unet.empty_context_embedding.detach(), ref.eps_model.empty_context_embedding.detach())


def test_checkpoint_with_a_missing_key_is_one_clear_line(tmp_path):
    write_tiny_uiface(tmp_path / "w", seed=0)
    ckpt = tmp_path / "w" / "uiface.ckpt"
    state = torch.load(ckpt, weights_only=True)
    del state["module.eps_model.empty_context_embedding"]
    torch.save(state, ckpt)
    np.save(tmp_path / "ids.npy", np.eye(2, 512, dtype=np.float32))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"generate": {"options": {"unet_config": str(tmp_path / "w" / "unet_cond_ca_tiny.yaml"),
                                                            "image_size": 16}}}))
    res = CliRunner().invoke(cli, ["generate", "--generator", "uiface", "--config", str(cfg), "--weights", str(ckpt),
                                   "--identities", str(tmp_path / "ids.npy"), "--out", str(tmp_path / "out"),
                                   "--device", "cpu"])
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert "uiface.ckpt" in line and "1 missing keys (first: empty_context_embedding)" in line
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- against the released code
@pytest.fixture(scope="module")
def released_run(release, ref_unet_model):
    ctx, seeds, x_T = inputs(6)
    want, first_id, changes = ref_sample_2stage(ref_unet_model, x_T, ctx, mse_th=TH, img_size=8)
    a = adapter(release, cross_attention="released", early_switch="released", threshold=TH)
    got, t0 = a.sample_latents(ctx, seeds)
    return got, t0, want, first_id, changes


def test_released_code_settings_reproduce_the_reference_two_stage_sampler(released_run):
    got, t0, want, first_id, changes = released_run
    for t, d in changes.items():  # precondition: no decision sits within float noise of the threshold
        undecided = (first_id < 0) | (first_id < t)
        assert ((d - TH).abs()[undecided] > 2e-4).all(), f"map change within 2e-4 of th at t={t}"
    close(got, want)
    assert torch.equal(t0, first_id)


def test_default_settings_follow_the_papers_reading(release, ref_unet_model):
    ctx, seeds, x_T = inputs(6)
    want, first_id, _ = ref_sample_2stage(ref_unet_model, x_T, ctx, mse_th=TH, img_size=8, paper=True)
    got, t0 = adapter(release, threshold=TH).sample_latents(ctx, seeds)
    assert torch.equal(t0, first_id) and len(set(t0.tolist())) >= 3
    close(got, want)


def test_switch_time_is_per_sample_and_follows_each_rows_own_map(released_run):
    _, t0, _, first_id, changes = released_run
    assert len(set(t0.tolist())) >= 3  # the rows' maps settle at different steps
    for b in range(len(t0)):
        # the first step whose change (vs the previous step) fell below th; the identity is used one step later
        below = [t for t in sorted(changes, reverse=True) if changes[t][b] < TH]
        assert int(t0[b]) == (below[0] - 20 if below and below[0] - 20 >= 500 else 480)


def test_huge_threshold_switches_every_row_at_the_first_comparison_then_samples_plain_cfg(release, ref_unet_model):
    ctx, seeds, x_T = inputs(3)
    got, t0 = adapter(release, variant="2-stage-adaptive", threshold=1e9).sample_latents(ctx, seeds)
    assert t0.tolist() == [940] * 3  # maps compared from the 2nd step (960); the switch takes effect at the 3rd
    close(got, literal(ref_unet_model, x_T, ctx, lambda k: k >= 2))


def test_t0_equal_to_T_is_plain_cfg_sampling(release, ref_unet_model):
    ctx, seeds, x_T = inputs(3)
    got, t0 = adapter(release, variant="baseline").sample_latents(ctx, seeds)
    assert t0.tolist() == [980] * 3
    close(got, literal(ref_unet_model, x_T, ctx, lambda k: True))


def test_zero_threshold_never_switches_and_is_the_empty_context_sampler(release, ref_unet_model):
    ctx, seeds, x_T = inputs(3)
    got, t0 = adapter(release, variant="2-stage-adaptive", threshold=0.0, switch_t=0).sample_latents(ctx, seeds)
    assert t0.tolist() == [-1] * 3
    close(got, literal(ref_unet_model, x_T, ctx, lambda k: False))


def test_fixed_two_stage_uses_the_identity_below_switch_t_and_equals_adaptive_with_zero_threshold(release, ref_unet_model):
    ctx, seeds, x_T = inputs(3)
    fixed, t0 = adapter(release, variant="2-stage-fixed").sample_latents(ctx, seeds)
    assert t0.tolist() == [480] * 3  # t = 500 is still stage 1 (t ≥ switch_t)
    close(fixed, literal(ref_unet_model, x_T, ctx, lambda k: k >= 25))
    never, _ = adapter(release, variant="2-stage-adaptive", threshold=0.0).sample_latents(ctx, seeds)
    assert torch.equal(never, fixed)


def test_batch_composition_does_not_change_any_sample(release):
    a = adapter(release, threshold=TH, steps=25)
    ctx, _, _ = inputs(3, seed=4)
    rows = torch.tensor([0, 0, 1, 2, 2])
    seeds = torch.tensor([7, 8, 9, 10, 11])
    whole, t0 = a.sample_latents(ctx[rows], seeds)
    assert len(set(t0.tolist())) > 1
    parts = [a.sample_latents(ctx[rows[s]], seeds[s]) for s in (slice(0, 2), slice(2, 4), slice(4, 5))]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole) and torch.equal(torch.cat([p[1] for p in parts]), t0)
    order = torch.tensor([4, 1, 3, 0, 2])
    again, t0_again = a.sample_latents(ctx[rows[order]], seeds[order])
    assert torch.equal(again, whole[order]) and torch.equal(t0_again, t0[order])


# ------------------------------------------------------------------------------ attention maths
def test_cross_injection_formula_on_hand_made_maps():
    cond = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])  # one query, four keys: mean 3, unbiased std √(14/3)
    empty = torch.tensor([[[0.0, 4.0, 0.0, 0.0]]])  # mean 1, unbiased std 2
    sd_c, sd_e = (14 / 3) ** 0.5, 2.0
    # paper Eq. 6-7: statistics along the spatial axis (queries), per key: transpose the same numbers
    paper = inject_cross_logits(cond.transpose(-1, -2), empty.transpose(-1, -2), mode="paper")
    torch.testing.assert_close(paper, ((empty - 1.0) / sd_e * sd_c + 3.0).transpose(-1, -2))
    released = inject_cross_logits(cond, empty, mode="released", blend=0.5)
    torch.testing.assert_close(released, (cond - 3.0) / sd_c * (0.5 * sd_e + 0.5 * sd_c) + (0.5 * 1.0 + 0.5 * 3.0))
    full = inject_cross_logits(cond, empty, mode="released", blend=1.0)
    torch.testing.assert_close(full, (cond - 3.0) / sd_c * sd_e + 1.0)
    torch.testing.assert_close(inject_cross_logits(cond, empty, mode="released", blend=0.0), cond)
    stats = (empty.mean(-1, keepdim=True), empty.std(-1, keepdim=True))
    torch.testing.assert_close(inject_cross_logits(cond, None, mode="released", empty_stats=stats), released)
    flat = torch.ones(1, 4, 1)  # a constant map stays finite
    assert torch.isfinite(inject_cross_logits(cond.transpose(-1, -2), flat, mode="paper")).all()


def test_injection_processors_attend_as_eq6_and_eq7():
    from fr_bench.generators.idiff_unet import MultiHeadAttention

    g = torch.Generator().manual_seed(0)
    attn = MultiHeadAttention(64, 2, 32)
    q_e, k_e, v_e, q_c, k_c, v_c = (torch.randn(2, 2, 16, 32, generator=g) for _ in range(6))
    kx_e, kx_c, vx_c = (torch.randn(2, 2, 32, 32, generator=g) for _ in range(3))  # 32 context tokens
    store = AttentionStore(map_size=8)
    RecordSelfQK(store, "s")(attn, q_e, k_e, v_e)
    RecordCross(store, "c", maps=True, keep="logits")(attn, q_e, kx_e, vx_c)
    got_self = InjectSelfQK(store, "s")(attn, q_c, k_c, v_c)
    torch.testing.assert_close(got_self, torch.softmax(q_e @ k_e.transpose(-1, -2) / 32 ** 0.5, -1) @ v_c)
    got_cross = RenormCross(store, "c", mode="paper", blend=0.5)(attn, q_c, kx_c, vx_c)
    a_e, a_c = q_e @ kx_e.transpose(-1, -2) / 32 ** 0.5, q_c @ kx_c.transpose(-1, -2) / 32 ** 0.5
    # Eq. 6: statistics along the spatial axis (the 16 queries), per head and context token
    want = (a_e - a_e.mean(-2, keepdim=True)) / a_e.std(-2, keepdim=True) * a_c.std(-2, keepdim=True) + a_c.mean(-2, keepdim=True)
    torch.testing.assert_close(got_cross, torch.softmax(want, -1) @ vx_c, rtol=1e-4, atol=1e-5)
    assert store.switch_map().shape == (2, 8, 8)


def test_switch_map_equals_the_reference_get_attn_map():
    g = torch.Generator().manual_seed(1)
    layers = [torch.randn(3, h, n * n, 32, generator=g) * 3 for h, n in ((2, 4), (4, 2), (2, 4))]
    ours = average_maps([cross_attention_map(x, 8) for x in layers])
    theirs = ref_attn_map([x.reshape(-1, *x.shape[2:]) for x in layers], 3, 8)  # reference layout: (b·heads, Lq, Lk)
    torch.testing.assert_close(ours, theirs)


def test_switch_rule_is_strictly_below_the_threshold():
    prev = torch.zeros(3, 4, 4)
    cur = torch.full((3, 4, 4), 0.25)  # every row changed by exactly 0.25
    done = torch.tensor([False, True, False])
    assert update_switch(prev, cur, done, 0.25).tolist() == [False, True, False]
    assert update_switch(prev, cur, done, 0.2500001).tolist() == [True, True, True]
    assert update_switch(prev, cur, done, 0.0).tolist() == [False, True, False]


def test_only_what_a_variant_needs_is_materialised(release, monkeypatch):
    """The fused kernel everywhere for baseline; for UIFace, explicit softmax only over the 32 context tokens."""
    shapes: list[tuple[int, ...]] = []
    real = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda x, *a, **k: shapes.append(tuple(x.shape)) or real(x, *a, **k))
    ctx, seeds, _ = inputs(2)
    base = adapter(release, variant="baseline", steps=10)
    base.sample_latents(ctx, seeds)
    assert shapes == []
    assert all(type(p) is AttnProcessor for p in base.unet.attn_processors.values())  # left clean after sampling
    adapter(release, steps=10, threshold=TH).sample_latents(ctx, seeds)
    assert shapes and {s[-1] for s in shapes} == {32}  # cross-attention maps only, never L×L self-attention


def test_default_processor_keeps_the_unet_output_bit_for_bit(release):
    a = adapter(release)
    ctx, _, x = inputs(2)
    t = torch.tensor([500])
    with torch.no_grad():
        before = a.unet(x, t, ctx)
        a.unet.set_attn_processor(AttnProcessor())
        assert torch.equal(a.unet(x, t, ctx), before)
    with pytest.raises(ValueError, match="missing"):
        a.unet.set_attn_processor({"down.3.attn.self_attention": AttnProcessor()})


# ------------------------------------------------------------------------------------ CLI, presets
def test_frbench_generate_uiface_end_to_end(release, tmp_path):
    cfg = tmp_path / "uiface-tiny.yaml"
    cfg.write_text(yaml.safe_dump({"generate": {"generator": "uiface", "options": {
        "unet_config": str(release / "unet_cond_ca_tiny.yaml"), "image_size": 16, "threshold": TH}}}))
    ids = tmp_path / "ids.npy"
    np.save(ids, inputs(3)[0].numpy())
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["generate", "--config", str(cfg), "--weights", str(release), "--identities", str(ids),
                                   "--per-identity", "2", "--steps", "10", "--batch-size", "4", "--out", str(out),
                                   "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 6 and (out / "manifest.parquet").is_file()
    assert all(Image.open(p).size == (112, 112) for p in pngs)
    settings = json.loads((out / "generate.json").read_text())
    assert settings["generator"] == "uiface" and settings["resolution"] == 112 and settings["needs_alignment"] is False
    adapter_info = settings["adapter"]
    assert (adapter_info["variant"], adapter_info["steps"], adapter_info["threshold"]) == ("2-stage-adaptive+attn", 10, TH)
    assert len(adapter_info["checkpoint_sha256"]) == 64


def test_native_output_keeps_the_decoder_resolution_for_alignment(release):
    a = adapter(release, output="native", steps=4, variant="baseline")
    ctx, seeds, _ = inputs(2)
    img = a.generate(ctx, seeds)
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.uint8 and a.needs_alignment


def test_presets_cover_the_ablation_and_are_valid_uiface_options():
    from fr_bench.config import load_config

    files = [REPO / "configs" / "uiface.yaml", *sorted((REPO / "configs" / "uiface").glob("*.yaml"))]
    variants = set()
    for path in files:
        cfg = load_config(path)
        assert cfg.generate.generator == "uiface", path
        variants.add(get_generator("uiface").from_config(cfg.generate.options).options.variant)
    assert variants == set(VARIANTS)
    default = get_generator("uiface").from_config(load_config(REPO / "configs" / "uiface.yaml").generate.options).options
    assert (default.variant, default.steps, default.threshold, default.switch_t, default.w) == \
        ("2-stage-adaptive+attn", 50, 0.006, 500, 1.0)
