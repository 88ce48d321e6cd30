"""IDiff-Face family: released-layout loading, the UNet against the reference maths, samplers, VQ-f4."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from _idiff_reference import TINY_MODEL, TINY_VQ, RefConditionalUNet, RefDDPM, ref_schedule, write_tiny_release
from fr_bench.cli import cli
from fr_bench.generators.base import get_generator
from fr_bench.generators.idiff_unet import ConditionalUNet, UNetConfig
from fr_bench.generators.samplers import DDIMScheduler, DDPMScheduler, NoiseSchedule
from fr_bench.generators.vq import VQConfig, load_vq_decoder, load_vq_encoder


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two shared cores are slower for these tiny ops
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RefDDPM]:
    folder = tmp_path_factory.mktemp("idiff") / "unet-cond-ca-tiny"
    return folder, write_tiny_release(folder, seed=0)


def _loaded_adapter(folder: Path, **options):
    """The adapter exactly as ``frbench generate`` builds and loads it."""
    adapter = get_generator("idiff-face").from_config(options)
    adapter.load(folder, device="cpu", dtype=torch.float32)
    return adapter


def test_released_unet_config_has_the_published_parameter_count():
    # configs/model/unet_cond_ca_cpd25.yaml: "# PARAMS: 216341187"
    cfg = UNetConfig.from_mapping({
        "_target_": "models.diffusion.unet.ConditionalUNet", "input_channels": 3, "initial_channels": 96,
        "channel_multipliers": [1, 2, 2, 2], "is_attention": [False, True, True, True], "attention_heads": -1,
        "attention_head_channels": 32, "n_blocks_per_resolution": 2, "condition_type": "CA",
        "is_context_conditional": True, "n_context_classes": 0, "context_input_channels": 512,
        "context_channels": 256, "learn_empty_context": False, "context_dropout_probability": 0.25}, "config.yaml")
    with torch.device("meta"):
        model = ConditionalUNet(cfg)
    assert sum(p.numel() for p in model.parameters()) == 216_341_187


def test_eps_equals_the_reference_conditional_unet_in_fp32(release):
    folder, ref_ddpm = release
    adapter = _loaded_adapter(folder)
    ref = ref_ddpm.eps_model.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([999, 500, 17, 0])
    ctx = torch.nn.functional.normalize(torch.randn(4, 512, generator=g), dim=1)
    with torch.no_grad():
        want = ref(x, t, ctx)
        got = adapter.unet(x, t, ctx)
        cached = adapter.unet(x, t, cache=adapter.unet.encode_context(ctx))
        want_empty, got_empty = ref(x, t, None), adapter.unet(x, t, None)
    assert want.abs().max() > 0.1  # a real signal, not a zero-initialised output layer
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_empty, want_empty, rtol=0, atol=1e-5)


def test_one_timestep_for_the_batch_equals_a_repeated_timestep_vector(release):
    folder, ref_ddpm = release
    adapter = _loaded_adapter(folder)
    x = torch.randn(3, 3, 8, 8)
    ctx = torch.nn.functional.normalize(torch.randn(3, 512), dim=1)
    with torch.no_grad():
        want = ref_ddpm.eps_model(x, torch.tensor([321] * 3), ctx)
        got = adapter.unet(x, torch.tensor([321]), ctx)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_schedule_constants_equal_the_reference_formulas():
    ours = NoiseSchedule.linear(1000).buffers()
    for key, value in ref_schedule(1000).items():
        assert torch.equal(ours[key], value), key


def test_ddpm_update_equals_the_reference_formula_at_every_step():
    ref = RefDDPM(torch.nn.Identity(), T=1000)
    sched = DDPMScheduler(NoiseSchedule.from_buffers(dict(ref.named_buffers())))
    assert sched.timesteps == list(range(999, -1, -1))
    g = torch.Generator().manual_seed(0)
    x_ref = x = torch.randn(2, 3, 4, 4, generator=g)
    for k, t in enumerate(sched.timesteps):
        eps = torch.tanh(x * 0.7 + 0.001 * t)  # any deterministic function of the state
        z = torch.randn(2, 3, 4, 4, generator=g)
        x = sched.step(eps, k, x, z if sched.needs_noise(k) else None)
        x_ref = ref.ddpm_update(t, x_ref, torch.tanh(x_ref * 0.7 + 0.001 * t), z)
        assert torch.equal(x, x_ref), f"step {k} (t={t})"
    assert [k for k in range(1000) if not sched.needs_noise(k)] == [998, 999]  # t = 1 and t = 0


def test_respaced_ddpm_keeps_the_endpoints_and_skips_noise_on_the_last_two_steps():
    sched = DDPMScheduler(NoiseSchedule.linear(1000), steps=10)
    assert sched.timesteps[0] == 999 and sched.timesteps[-1] == 0 and len(sched.timesteps) == 10
    assert [sched.needs_noise(k) for k in range(10)] == [True] * 8 + [False, False]


def test_ddim_standard_matches_diffusers_ddim_scheduler():
    from diffusers import DDIMScheduler as DiffusersDDIM

    ours = DDIMScheduler(NoiseSchedule.linear(1000), steps=20, variant="standard")
    theirs = DiffusersDDIM(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                           clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0)
    theirs.set_timesteps(20)
    assert ours.timesteps == theirs.timesteps.tolist()
    x_a = x_b = torch.randn(2, 3, 4, 4)
    for k, t in enumerate(ours.timesteps):
        x_a = ours.step(torch.sin(x_a + t * 1e-3), k, x_a)
        x_b = theirs.step(torch.sin(x_b + t * 1e-3), t, x_b, eta=0.0).prev_sample
    torch.testing.assert_close(x_a, x_b, rtol=1e-4, atol=1e-5)


def test_ddim_negfacediff_variant_uses_alphas_prev_indexed_by_prev_t():
    schedule = NoiseSchedule.linear(1000)
    sched = DDIMScheduler(schedule, steps=200, variant="negfacediff")
    ab = schedule.alpha_bars
    alphas_prev = torch.cat([torch.tensor([1.0]), ab[:-1]])  # the reference's [1, ᾱ_0, …, ᾱ_{T-2}]
    x_ours = x_ref = torch.randn(2, 3, 4, 4)
    for k, i in enumerate(sched.timesteps):
        prev = i - 5
        a_t = ab[i]
        a_prev = alphas_prev[prev] if prev >= 0 else torch.tensor(1.0)
        eps = torch.cos(x_ref)
        x0 = (x_ref - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        eps2 = (x_ref - a_t ** 0.5 * x0) / (1 - a_t) ** 0.5
        x_ref = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps2
        x_ours = sched.step(torch.cos(x_ours), k, x_ours)
        torch.testing.assert_close(x_ours, x_ref, rtol=1e-5, atol=1e-6)
    assert sched.timesteps[:2] == [995, 990] and sched.timesteps[-1] == 0


def test_checkpoint_with_mismatched_keys_names_them(tmp_path: Path):
    folder = tmp_path / "model"
    ddpm = write_tiny_release(folder, seed=3)
    state = ddpm.state_dict()
    state["eps_model.final.weight_renamed"] = state.pop("eps_model.final.weight")
    state["eps_model.extra_block.bias"] = torch.zeros(3)
    torch.save(state, folder / "checkpoints" / "ema_averaged_model.ckpt")
    ids = tmp_path / "ids.npy"
    import numpy as np

    np.save(ids, np.eye(2, 512, dtype=np.float32))
    res = CliRunner().invoke(cli, ["generate", "--generator", "idiff-face", "--weights", str(folder),
                                   "--identities", str(ids), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())  # rich may wrap the one line
    assert "ema_averaged_model.ckpt" in line
    assert "1 missing keys (first: eps_model.final.weight)" in line
    assert "2 unexpected keys (first: eps_model.final.weight_renamed, eps_model.extra_block.bias)" in line
    assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_missing_vq_first_stage_says_where_it_looked(tmp_path: Path):
    folder = tmp_path / "model"
    write_tiny_release(folder)
    (folder / "first_stage_decoder_state_dict.pt").unlink()
    adapter = get_generator("idiff-face").from_config({})
    with pytest.raises(Exception) as err:
        adapter.load(folder)
    assert "first_stage_decoder_state_dict.pt" in str(err.value) and str(folder) in str(err.value)


def _ldm_to_diffusers(state: dict[str, torch.Tensor], n_levels: int) -> dict[str, torch.Tensor]:
    """LDM first-stage keys → diffusers VQModel keys (independent layout, for the comparison)."""
    import re

    out = {}
    for k, v in state.items():
        k2 = k.replace("nin_shortcut", "conv_shortcut").replace(".norm_out.", ".conv_norm_out.")
        k2 = re.sub(r"^encoder\.down\.(\d+)\.block\.(\d+)", r"encoder.down_blocks.\1.resnets.\2", k2)
        k2 = re.sub(r"^encoder\.down\.(\d+)\.downsample\.conv", r"encoder.down_blocks.\1.downsamplers.0.conv", k2)
        m = re.match(r"^decoder\.up\.(\d+)\.(block|upsample)(.*)$", k2)
        if m:
            i = n_levels - 1 - int(m.group(1))
            k2 = (f"decoder.up_blocks.{i}.resnets" + m.group(3)) if m.group(2) == "block" else \
                 (f"decoder.up_blocks.{i}.upsamplers.0" + m.group(3))
        k2 = re.sub(r"\.mid\.block_(\d)", lambda mm: f".mid_block.resnets.{int(mm.group(1)) - 1}", k2)
        attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
        m = re.match(r"^(.*)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", k2)
        if m:
            k2 = f"{m.group(1)}.mid_block.attentions.0.{attn[m.group(2)]}.{m.group(3)}"
            if m.group(2) != "norm" and m.group(3) == "weight":
                v = v[:, :, 0, 0]
        out[k2] = v
    return out


def test_vq_first_stage_matches_diffusers_vqmodel(release):
    from diffusers import VQModel

    folder, _ = release
    dec, enc = load_vq_decoder(folder), load_vq_encoder(folder)
    assert dec.config == VQConfig(**{**TINY_VQ, "ch_mult": (1, 2), "attn_resolutions": ()}, embed_dim=3, n_embed=64)
    theirs = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                     up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
                     latent_channels=3, sample_size=16, num_vq_embeddings=64, norm_num_groups=32, vq_embed_dim=3).eval()
    both = {**_ldm_to_diffusers(enc.state_dict(), 2), **_ldm_to_diffusers(dec.state_dict(), 2)}
    theirs.load_state_dict(both, strict=True)
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        h = enc(img)
        torch.testing.assert_close(h, theirs.encode(img).latents, rtol=1e-5, atol=1e-5)
        z = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(dec(z), theirs.decode(z).sample, rtol=1e-4, atol=1e-4)  # quantises first
        torch.testing.assert_close(dec(z, quantize=False), theirs.decode(z, force_not_quantize=True).sample,
                                   rtol=1e-4, atol=1e-4)
        assert not torch.allclose(dec(z), dec(z, quantize=False))


def test_unsupported_condition_type_is_refused(tmp_path: Path):
    folder = tmp_path / "model"
    write_tiny_release(folder)
    cfg = folder / ".hydra" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("condition_type: CA", "condition_type: AdaGN"))
    with pytest.raises(Exception) as err:
        _loaded_adapter(folder)
    assert "condition_type" in str(err.value) and "config.yaml" in str(err.value)


def test_tiny_reference_model_matches_its_config():
    ref = RefConditionalUNet(input_channels=3, **TINY_MODEL)
    ours = ConditionalUNet(UNetConfig(**{**TINY_MODEL, "channel_multipliers": (1, 2), "is_attention": (False, True)}))
    assert list(ref.state_dict()) == list(ours.state_dict())
