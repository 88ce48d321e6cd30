"""Fused-attention processor, adapter and trainer on tiny random-weight SD components."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sd_tiny import IMAGE, build_sd_base, tiny_unet

STEPS = 3


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sd_base(tmp_path_factory.mktemp("fused") / "sd15")


@pytest.fixture(scope="module")
def weights(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Linear_kf/vf file for the tiny UNet (random, not trained: enough to exercise the maths)."""
    from fr_bench.generators.fused_attention import install_fusion
    from fr_bench.generators.sd_common import load_unet

    torch.manual_seed(3)
    layers = install_fusion(load_unet(base / "unet"), init="random")
    path = tmp_path_factory.mktemp("fa-weights") / "fused_attention.safetensors"
    layers.save(path, metadata={"reference_timestep": "0", "reference_prompt": ""})
    return path


@pytest.fixture(scope="module")
def adapter(base: Path, weights: Path):
    from fr_bench.generators.fused_attention import FusedAttentionAdapter

    a = FusedAttentionAdapter.from_config({"base": str(base), "steps": STEPS,
                                           "prompts": ["a photo of a person", "a close up portrait of a smiling man"]})
    a.load(weights, device="cpu")
    return a


def _refs(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (b * n, 3, 4, 4), generator=g).float()
    big = torch.nn.functional.interpolate(small, size=(IMAGE, IMAGE), mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8).reshape(b, n, 3, IMAGE, IMAGE)


def _cross_attention(unet):
    name, attn = next((n, m) for n, m in unet.named_modules() if n.endswith("attn2"))
    return name, attn


# ------------------------------------------------------------------------------------ processor
def test_adapter_is_registered_with_its_contract():
    from fr_bench.generators.base import get_generator
    from fr_bench.generators.fused_attention import FusedAttentionAdapter

    assert get_generator("fused-attention") is FusedAttentionAdapter
    assert FusedAttentionAdapter.needs_alignment is True and FusedAttentionAdapter.identity_kind == "images"


def test_no_reference_is_exactly_the_plain_processor():
    from diffusers.models.attention_processor import AttnProcessor2_0

    from fr_bench.generators.fused_attention import install_fusion

    plain = tiny_unet(0)
    plain.set_attn_processor(AttnProcessor2_0())
    fused = copy.deepcopy(plain)
    layers = install_fusion(fused, init="random")
    x, ctx, t = torch.randn(2, 4, 4, 4), torch.randn(2, 77, 512), torch.tensor([10, 700])
    with torch.no_grad():
        expected = plain(x, t, encoder_hidden_states=ctx).sample
        st = layers.state
        st.mode = "fuse"
        st.refs = {name: torch.zeros(2, 0, proc.to_k_f.in_features) for name, proc in layers.by_name().items()}
        got_n0 = fused(x, t, encoder_hidden_states=ctx).sample
        st.reset()
        got_off = fused(x, t, encoder_hidden_states=ctx).sample
    assert torch.equal(got_n0, expected) and torch.equal(got_off, expected)


def test_fused_keys_are_text_keys_then_one_block_per_reference(adapter):
    unet = adapter.unet
    name, attn = _cross_attention(unet)
    proc = attn.processor
    n_c, n_h, n, c = 77, 16, 3, attn.query_dim
    ctx = torch.randn(2, n_c, attn.cross_attention_dim)
    h = [torch.randn(2, n_h, c) for _ in range(n)]
    with torch.no_grad():
        key, value = proc.fused_keys_values(attn, ctx, torch.cat(h, dim=1))
        assert key.shape == value.shape == (2, n_c + n * n_h, attn.inner_dim)
        assert torch.equal(key[:, :n_c], attn.to_k(ctx)) and torch.equal(value[:, :n_c], attn.to_v(ctx))
        for i in range(n):
            block = slice(n_c + i * n_h, n_c + (i + 1) * n_h)
            torch.testing.assert_close(key[:, block], proc.to_k_f(h[i]), rtol=0, atol=1e-6)
            torch.testing.assert_close(value[:, block], proc.to_v_f(h[i]), rtol=0, atol=1e-6)


def test_fused_output_is_softmax_attention_over_the_concatenated_keys(adapter):
    """Row 0 (uncond) attends to the text only, row 1 to [K_c; K_f1; K_f2] — checked by a literal
    per-head softmax(QKᵀ/√d)V written out here."""
    name, attn = _cross_attention(adapter.unet)
    proc = attn.processor
    st = proc.state
    hidden = torch.randn(2, 16, attn.query_dim)
    ctx = torch.randn(2, 77, attn.cross_attention_dim)
    refs = torch.randn(1, 2 * 16, attn.query_dim)
    st.mode, st.start, st.refs = "fuse", 1, {name: refs}
    try:
        with torch.no_grad():
            got = attn(hidden, encoder_hidden_states=ctx)
    finally:
        st.reset()

    def literal(x: torch.Tensor, keys_in: torch.Tensor, values_in: torch.Tensor) -> torch.Tensor:
        heads, d = attn.heads, attn.inner_dim // attn.heads
        q = attn.to_q(x).view(-1, heads, d).transpose(0, 1)
        k = keys_in.view(-1, heads, d).transpose(0, 1)
        v = values_in.view(-1, heads, d).transpose(0, 1)
        w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)
        return attn.to_out[0]((w @ v).transpose(0, 1).reshape(x.shape[0], -1))

    with torch.no_grad():
        row0 = literal(hidden[0], attn.to_k(ctx[0]), attn.to_v(ctx[0]))
        row1 = literal(hidden[1], torch.cat([attn.to_k(ctx[1]), proc.to_k_f(refs[0])]),
                       torch.cat([attn.to_v(ctx[1]), proc.to_v_f(refs[0])]))
    torch.testing.assert_close(got[0], row0, rtol=0, atol=2e-5)
    torch.testing.assert_close(got[1], row1, rtol=0, atol=2e-5)


def test_reference_states_are_grouped_per_identity_in_reference_order(adapter):
    from fr_bench.generators.fused_attention import reference_states

    lat = torch.randn(4, 4, IMAGE // 8, IMAGE // 8)  # 2 identities × 2 references
    ctx = adapter.reference_context.expand(4, -1, -1)
    with torch.no_grad():
        grouped = reference_states(adapter.unet, adapter.layers, lat, ctx, 0, per_identity=2)
        alone = reference_states(adapter.unet, adapter.layers, lat[3:4], ctx[:1], 0, per_identity=1)
    name = adapter.layers.names[0]
    n_h = alone[name].shape[1]
    assert grouped[name].shape == (2, 2 * n_h, alone[name].shape[2])
    torch.testing.assert_close(grouped[name][1, n_h:], alone[name][0], rtol=0, atol=1e-5)


# -------------------------------------------------------------------------------------- adapter
def test_generate_without_references_is_plain_stable_diffusion(adapter, base: Path):
    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler, StableDiffusionPipeline

    from fr_bench.generators.base import seeded_noise
    from fr_bench.generators.fused_attention import prompt_index

    seeds = torch.tensor([5, 6, 7])
    ours = adapter.generate(_refs(3, 0), seeds)
    s = adapter.sampler
    pipe = StableDiffusionPipeline(vae=s.vae, text_encoder=adapter.text_encoder, tokenizer=adapter.tokenizer, unet=s.unet,
                                   scheduler=DPMSolverMultistepScheduler.from_config(
                                       PNDMScheduler.from_pretrained(base / "scheduler").config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = [adapter.cfg.prompts[prompt_index(v, 2)] for v in seeds.tolist()]
    with torch.no_grad():
        stock = pipe(prompt=prompts, negative_prompt=[""] * 3, latents=seeded_noise(seeds, (4, IMAGE // 8, IMAGE // 8), "cpu"),
                     num_inference_steps=STEPS, guidance_scale=3.0, height=IMAGE, width=IMAGE, output_type="np").images
    stock_u8 = torch.from_numpy((stock * 255).round().astype("uint8")).permute(0, 3, 1, 2)
    assert (ours.int() - stock_u8.int()).abs().max() <= 1


def test_references_change_the_image_and_batch_size_does_not(adapter):
    refs, seeds = _refs(3, 2, seed=1), torch.tensor([21, 22, 23])
    whole = adapter.generate(refs, seeds)
    ones = torch.cat([adapter.generate(refs[i:i + 1], seeds[i:i + 1]) for i in range(3)])
    diff = (whole.int() - ones.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
    plain = adapter.generate(refs[:, :0], seeds)
    other = adapter.generate(_refs(3, 2, seed=2), seeds)
    # random tiny weights move pixels only a little; batch-size rounding moves < 1% of them by one level
    assert float((whole.int() - plain.int()).abs().float().mean()) > 0.05
    assert float((whole.int() - other.int()).abs().float().mean()) > 0.05


def test_each_image_gets_a_prompt_from_its_seed_alone():
    from fr_bench.generators.fused_attention import prompt_index

    picks = [prompt_index(s, 3) for s in range(200)]
    assert picks == [prompt_index(s, 3) for s in range(200)]
    assert set(picks) == {0, 1, 2}


def test_weights_load_strictly(adapter, weights: Path, tmp_path: Path):
    from safetensors.torch import load_file, save_file

    from fr_bench.errors import InputError
    from fr_bench.generators.fused_attention import load_fusion_weights

    state = load_file(str(weights))
    for k, v in adapter.layers.adapter_state_dict().items():
        assert torch.equal(v, state[k])
    broken = tmp_path / "broken.safetensors"
    save_file({k: v for k, v in list(state.items())[1:]}, str(broken))
    with pytest.raises(InputError, match="missing .*to_[kv]_f.weight") as err:
        load_fusion_weights(adapter.layers, broken)
    assert str(broken) in str(err.value)


# ------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("captioned")
    rng = np.random.default_rng(0)
    for i in range(2):
        (root / f"id{i}").mkdir()
        for k in range(2):
            img = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (IMAGE, IMAGE), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(root / f"id{i}" / f"{k}.png"), img)
            (root / f"id{i}" / f"{k}.txt").write_text("a photo of a person" if k else "a close up portrait of a man")
    return root


def _train(base: Path, data: Path, out: Path, steps: int, *extra: str, track: bool = False):
    from fr_bench.cli import cli

    args = ["--workdir", str(out.parent / "wd"), "train-adapter", "fused-attention", str(data), "--base", str(base),
            "--out", str(out), "--steps", str(steps), "--batch-size", "2", "--lr", "1e-2", "--save-every", "3",
            "--log-every", "1", *([] if track else ["--no-track"]), *extra]
    return CliRunner().invoke(cli, args, obj={})


def test_train_adapter_reduces_its_loss_and_resumes_exactly(base: Path, train_data: Path, tmp_path: Path):
    from safetensors.torch import load_file

    straight = _train(base, train_data, tmp_path / "a", 6)
    assert straight.exit_code == 0, straight.output
    summary = json.loads((tmp_path / "a" / "train_adapter.json").read_text())
    assert summary["steps"] == 6 and summary["eval_loss_end"] < summary["eval_loss_start"]

    first = _train(base, train_data, tmp_path / "b", 3)
    assert first.exit_code == 0, first.output
    again = _train(base, train_data, tmp_path / "b", 6)  # without --resume: refused, nothing overwritten
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = _train(base, train_data, tmp_path / "b", 6, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed" in resumed.output
    a = load_file(str(tmp_path / "a" / "fused_attention.safetensors"))
    b = load_file(str(tmp_path / "b" / "fused_attention.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "b" / "train_adapter.json").read_text())["resumed_from"] == 3


def test_training_is_logged_to_mlflow(base: Path, train_data: Path, tmp_path: Path):
    import mlflow

    res = _train(base, train_data, tmp_path / "m", 2, track=True)
    assert res.exit_code == 0, res.output
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'wd').resolve() / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("frbench").experiment_id])
    assert run.data.params["references"] == "1" and run.data.tags["frbench.stage"] == "train-adapter"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    assert "train/eval_loss_end" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["train_adapter.json"]


def test_resume_with_other_settings_is_refused(base: Path, train_data: Path, tmp_path: Path):
    assert _train(base, train_data, tmp_path / "c", 1).exit_code == 0
    res = _train(base, train_data, tmp_path / "c", 2, "--resume", "--seed", "9")
    assert res.exit_code == 2 and "seed" in res.output


def test_training_image_without_caption_is_one_line(base: Path, train_data: Path, tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(train_data, data)
    (data / "id1" / "0.txt").unlink()
    res = _train(base, data, tmp_path / "d", 1)
    assert res.exit_code == 2
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "0.png" in lines[0] and "caption" in lines[0]


def test_offline_missing_component_folder_is_one_line_naming_it(base: Path, train_data: Path, tmp_path: Path):
    broken = tmp_path / "sd15"
    shutil.copytree(base, broken)
    shutil.rmtree(broken / "vae")
    res = _train(broken, train_data, tmp_path / "e", 1)
    assert res.exit_code == 2
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and str(broken / "vae") in lines[0] and "missing" in lines[0]
    assert "Traceback" not in res.output


# ------------------------------------------------------------------------ through `frbench generate`
def test_generate_command_maps_identity_rows_to_their_reference_images(adapter, base: Path, weights: Path,
                                                                        train_data: Path, tmp_path: Path):
    """The engine passes identity vectors; rows of an embed-source identities file carry the image label,
    whose folder gives the references (labelled image first)."""
    import yaml
    from PIL import Image

    from fr_bench.cli import cli
    from fr_bench.generators.base import sample_seed
    from fr_bench.generators.fused_attention import read_rgb
    from fr_bench.identities import Identities, write_identities

    rng = np.random.default_rng(5)
    emb = rng.normal(size=(2, 512))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = ["id1/1.png", "id0/0.png"]
    write_identities(tmp_path / "ids", Identities(emb.astype(np.float32), {"source": "embed", "labels": labels}))
    options = {"base": str(base), "steps": STEPS, "prompts": adapter.cfg.prompts, "references": str(train_data),
               "reference_identities": str(tmp_path / "ids"), "references_per_identity": 2}
    cfg = {"generate": {"generator": "fused-attention", "weights": str(weights), "identities": str(tmp_path / "ids"),
                        "per_identity": 1, "batch_size": 2, "out": str(tmp_path / "out"), "options": options}}
    (tmp_path / "fa.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "wd"), "generate", "--config", str(tmp_path / "fa.yaml")],
                             obj={})
    assert res.exit_code == 0, res.output
    for i, (first, second) in enumerate([("id1/1.png", "id1/0.png"), ("id0/0.png", "id0/1.png")]):
        refs = torch.from_numpy(np.stack([read_rgb(train_data / first, IMAGE), read_rgb(train_data / second, IMAGE)]))
        direct = adapter.generate(refs.permute(0, 3, 1, 2)[None], torch.tensor([sample_seed(42, i, 0)]))[0]
        img = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / f"{i:05d}" / "000.png"))).permute(2, 0, 1)
        assert (img.int() - direct.int()).abs().max() <= 1
