"""Arc2Face adapter on tiny random-weight SD components saved in the released folder layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sd_tiny import IMAGE, build_arc2face, build_sd_base

STEPS = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("arc2face")
    return build_sd_base(root / "sd15"), build_arc2face(root / "Arc2Face")


@pytest.fixture(scope="module")
def adapter(folders: tuple[Path, Path]):
    from fr_bench.generators.arc2face import Arc2FaceAdapter

    base, weights = folders
    a = Arc2FaceAdapter.from_config({"base": str(base), "steps": STEPS})
    a.load(weights, device="cpu", dtype=torch.float32)
    return a


def _identities(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, 512, generator=g), dim=1)


def _reference_projection(tokenizer, encoder, face_emb: torch.Tensor) -> torch.Tensor:
    """One identity at a time, as arc2face.utils.project_face_embs: overwrite the "id" token embedding, then
    positions + causal self-attention layers + final layer norm, written out with the encoder's parts."""
    text = getattr(encoder, "text_model", encoder)  # transformers 4.x nests the parts under text_model
    ids = tokenizer("photo of a id person", truncation=True, padding="max_length",
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    id_token = tokenizer.encode("id", add_special_tokens=False)[0]
    padded = F.pad(face_emb[None], (0, encoder.config.hidden_size - 512))
    token_embs = text.embeddings.token_embedding(ids)
    token_embs[ids == id_token] = padded
    hidden = text.embeddings(inputs_embeds=token_embs)
    length = ids.shape[1]
    causal = torch.full((length, length), torch.finfo(hidden.dtype).min).triu(1)[None, None]
    for layer in text.encoder.layers:
        out = layer(hidden, causal)
        hidden = out[0] if isinstance(out, tuple) else out
    return text.final_layer_norm(hidden)[0]


def test_adapter_is_registered_with_its_contract():
    from fr_bench.generators.arc2face import Arc2FaceAdapter
    from fr_bench.generators.base import get_generator

    assert get_generator("arc2face") is Arc2FaceAdapter
    assert Arc2FaceAdapter.native_resolution == 512 and Arc2FaceAdapter.needs_alignment is True


def test_batched_projection_equals_the_one_at_a_time_reference(adapter):
    ids = _identities(5)
    with torch.no_grad():
        batched = adapter.project(ids)
        reference = torch.stack([_reference_projection(adapter.tokenizer, adapter.text_encoder, e) for e in ids])
        singles = torch.cat([adapter.project(ids[i:i + 1]) for i in range(5)])
    assert batched.shape == (5, 77, 512)
    torch.testing.assert_close(batched, reference, rtol=0, atol=2e-5)
    torch.testing.assert_close(batched, singles, rtol=0, atol=2e-5)
    # the identity really enters: different identities, different embeddings after the "id" position
    assert (batched[0] - batched[1]).abs()[5:].max() > 1e-3


def test_identity_vectors_are_l2_normalised_before_projection(adapter):
    ids = _identities(2)
    with torch.no_grad():
        torch.testing.assert_close(adapter.project(ids * 7.5), adapter.project(ids), rtol=0, atol=1e-5)


def test_unconditional_embedding_is_the_encoder_on_the_empty_prompt(adapter):
    tok = adapter.tokenizer
    ids = tok([""], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = adapter.text_encoder(ids)[0]
    assert torch.equal(adapter.uncond, expected)


def test_sampling_matches_the_stock_stable_diffusion_pipeline(adapter, folders):
    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler, StableDiffusionPipeline

    from fr_bench.generators.base import seeded_noise

    base, _ = folders
    sampler = adapter.sampler
    pipe = StableDiffusionPipeline(
        vae=sampler.vae, text_encoder=adapter.text_encoder, tokenizer=adapter.tokenizer, unet=sampler.unet,
        # as the Arc2Face README: the base pipeline's (PNDM) scheduler config turned into DPM-Solver++
        scheduler=DPMSolverMultistepScheduler.from_config(PNDMScheduler.from_pretrained(base / "scheduler").config),
        safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ids, seeds = _identities(3, seed=1), torch.tensor([11, 12, 13])
    ours = adapter.generate(ids, seeds)
    with torch.no_grad():
        cond = adapter.project(ids)
        stock = pipe(prompt_embeds=cond, negative_prompt_embeds=adapter.uncond.expand(3, -1, -1),
                     latents=seeded_noise(seeds, (4, IMAGE // 8, IMAGE // 8), "cpu"), num_inference_steps=STEPS,
                     guidance_scale=3.0, height=IMAGE, width=IMAGE, output_type="np").images
    stock_u8 = torch.from_numpy((stock * 255).round().astype("uint8")).permute(0, 3, 1, 2)
    assert ours.shape == stock_u8.shape == (3, 3, IMAGE, IMAGE) and ours.dtype == torch.uint8
    assert (ours.int() - stock_u8.int()).abs().max() <= 1


def test_changing_only_the_batch_size_leaves_every_image_unchanged(adapter):
    ids, seeds = _identities(4, seed=2), torch.tensor([101, 102, 103, 104])
    whole = adapter.generate(ids, seeds)
    ones = torch.cat([adapter.generate(ids[i:i + 1], seeds[i:i + 1]) for i in range(4)])
    split = torch.cat([adapter.generate(ids[:3], seeds[:3]), adapter.generate(ids[3:], seeds[3:])])
    for other in (ones, split):
        diff = (whole.int() - other.int()).abs()
        # BLAS picks other kernels for other batch shapes (GEMV for one row), so float rounding may move a
        # pixel by one grey level; anything batch-dependent in seeding or guidance would change whole images
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
    # and the image of a seed is its own: a different seed gives a different image
    other_seed = adapter.generate(ids[:1], torch.tensor([999]))
    assert (other_seed.int() - whole[:1].int()).abs().float().mean() > 1.0


def test_same_seeds_reproduce_exactly(adapter):
    ids, seeds = _identities(2, seed=3), torch.tensor([7, 8])
    assert torch.equal(adapter.generate(ids, seeds), adapter.generate(ids, seeds))


def test_negatives_are_refused(adapter):
    from fr_bench.errors import ConfigError

    with pytest.raises(ConfigError, match="negative"):
        adapter.generate(_identities(1), torch.tensor([1]), negatives=_identities(1))


def test_unknown_config_key_names_the_closest_valid_key():
    from fr_bench.errors import ConfigError
    from fr_bench.generators.arc2face import Arc2FaceAdapter

    with pytest.raises(ConfigError, match="guidance_scal.*did you mean 'guidance_scale'"):
        Arc2FaceAdapter.from_config({"guidance_scal": 2.0})


@pytest.mark.parametrize("missing", ["encoder", "arc2face", "vae"])
def test_missing_component_folder_is_one_line_naming_it(folders, tmp_path: Path, missing: str):
    from fr_bench.errors import InputError
    from fr_bench.generators.arc2face import Arc2FaceAdapter

    base, weights = folders
    weights_copy, base_copy = tmp_path / "Arc2Face", tmp_path / "sd15"
    shutil.copytree(weights, weights_copy)
    shutil.copytree(base, base_copy)
    gone = (base_copy if missing == "vae" else weights_copy) / missing
    shutil.rmtree(gone)
    adapter = Arc2FaceAdapter.from_config({"base": str(base_copy)})
    with pytest.raises(InputError) as err:
        adapter.load(weights_copy, device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and str(gone) in msg and "missing" in msg


# ------------------------------------------------------------------------ through `frbench generate`
def _generate_cli(tmp_path: Path, weights: Path, base: Path, ids: torch.Tensor, out: Path):
    import numpy as np
    import yaml
    from click.testing import CliRunner

    from fr_bench.cli import cli
    from fr_bench.identities import Identities, write_identities

    write_identities(tmp_path / "ids", Identities(ids.numpy().astype(np.float32), {"source": "test"}))
    cfg = {"generate": {"generator": "arc2face", "weights": str(weights), "identities": str(tmp_path / "ids"),
                        "per_identity": 2, "batch_size": 3, "out": str(out), "seed": 5,
                        "options": {"base": str(base), "steps": STEPS}}}
    (tmp_path / "arc2face.yaml").write_text(yaml.safe_dump(cfg))
    return CliRunner().invoke(cli, ["--workdir", str(tmp_path / "wd"), "generate", "--config", str(tmp_path / "arc2face.yaml")],
                              obj={})


def test_generate_command_writes_the_images_the_adapter_makes(adapter, folders, tmp_path: Path):
    import numpy as np
    from PIL import Image

    from fr_bench.generators.base import sample_seed

    base, weights = folders
    ids = _identities(2, seed=4)
    res = _generate_cli(tmp_path, weights, base, ids, tmp_path / "out")
    assert res.exit_code == 0, res.output
    for i in range(2):
        for k in range(2):
            img = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / f"{i:05d}" / f"{k:03d}.png"))).permute(2, 0, 1)
            direct = adapter.generate(ids[i:i + 1], torch.tensor([sample_seed(5, i, k)]))[0]
            assert img.shape == (3, IMAGE, IMAGE)
            assert (img.int() - direct.int()).abs().max() <= 1


def test_generate_command_offline_with_a_missing_folder_prints_one_line(folders, tmp_path: Path):
    base, weights = folders
    broken = tmp_path / "Arc2Face"
    shutil.copytree(weights, broken)
    shutil.rmtree(broken / "encoder")
    res = _generate_cli(tmp_path, broken, base, _identities(1), tmp_path / "out")
    assert res.exit_code == 2
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and str(broken / "encoder") in lines[0] and "Traceback" not in res.output
