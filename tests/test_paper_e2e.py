"""Shipped paper configs run end to end on tiny artefacts built in the released layouts; only the
`paths:` block and the sizes are overridden (with --set, as a user would)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import face_like_images
from fr_bench.cli import cli

pytestmark = pytest.mark.slow  # each trains a tiny recognizer

SMALL = ["identities.n=4", "generate.num_identities=4", "generate.per_identity=3", "generate.batch_size=6",
         "train.identities=4", "train.per_identity=3", "eval.benchmarks=[lfw]", "metrics.identities=4",
         "metrics.per_identity=3", "metrics.lpips_identities=2", "runtime.device=cpu", "runtime.batch_size=16",
         "train.overrides={model: {arch: r18, embedding_size: 64, dropout: 0.0}, epochs: 1, batch_size: 4, "
         "augment: {randaugment: null}}"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from fr_bench.demo import prepare_demo

    import torch

    from fr_bench.models.iresnet import iresnet

    root = tmp_path_factory.mktemp("demo")
    demo = prepare_demo(root)  # tiny IDiff-Face release, .bin packs, FR model
    torch.manual_seed(0)  # the contexts' encoder: 512-d like every generator's contexts
    torch.save(iresnet("r18", num_features=512).eval().state_dict(), root / "context_encoder.pt")
    return {"idiff": demo.generator, "bins": demo.benchmarks, "fr": demo.fr_model, "ctx": root / "context_encoder.pt"}


def run(config: str, work: Path, sets: list[str]) -> dict:
    args = ["run", config, "--workdir", str(work), "--no-track"]
    res = CliRunner().invoke(cli, args + [a for s in sets for a in ("--set", s)], obj={})
    assert res.exit_code == 0, res.output
    runs = next((work / "runs").iterdir())
    out = {p.name.split("-")[0]: p for p in runs.iterdir() if (p / "DONE.json").is_file()}
    return {"stages": sorted(out), "eval": json.loads(next(out["eval"].glob("eval.json")).read_text()),
            "metrics": json.loads(next(out["metrics"].glob("metrics.json")).read_text())}


def check(result: dict, stages: list[str], consistency_model: Path | None = None) -> None:
    assert result["stages"] == sorted(stages)
    assert 0.0 <= result["eval"]["benchmarks"]["lfw"]["accuracy"] <= 1.0
    assert 0.0 <= result["metrics"]["separability"]["eer"] <= 1.0
    if consistency_model is not None:  # measured in the contexts' space, not the separability model's
        con = result["metrics"]["consistency"]
        assert con["fr_model_path"] == str(consistency_model) and -1.0 <= con["mean"] <= 1.0
        assert result["metrics"]["fr_model"]["dim"] == 64 and con["images_without_context"] == 0


def test_idiff_face_config_runs_end_to_end(tmp_path: Path, assets: dict[str, Path]) -> None:
    sets = [f"paths.weights={assets['idiff']}", f"paths.benchmarks={assets['bins']}",
            f"paths.separability_fr_model={assets['fr']}", f"paths.context_encoder={assets['ctx']}", "generate.steps=2", *SMALL]
    check(run("configs/idiff-face.yaml", tmp_path / "w", sets), ["identities", "generate", "align", "train", "eval", "metrics"],
          assets["ctx"])


def test_uiface_config_runs_end_to_end(tmp_path: Path, assets: dict[str, Path]) -> None:
    from _uiface_reference import write_tiny_uiface

    release = tmp_path / "release"
    write_tiny_uiface(release, seed=0)
    ids = tmp_path / "synthetic_ids.npy"  # the released identity embeddings
    np.save(ids, np.random.default_rng(1).standard_normal((6, 512)).astype(np.float32))
    real = tmp_path / "real"  # real crops for P/R and FID (listed as not computed without Inception weights)
    (real / "0").mkdir(parents=True)
    cv2.imwrite(str(real / "0" / "0.png"), face_like_images(1)[0])
    sets = [f"paths.weights={release}", f"paths.identities={ids}", f"paths.real_reference={real}", f"paths.benchmarks={assets['bins']}", f"paths.separability_fr_model={assets['fr']}",
            f"paths.context_encoder={assets['ctx']}", f"generate.options.unet_config={release / 'unet_cond_ca_tiny.yaml'}", "generate.options.image_size=16",
            "generate.steps=4", *SMALL]
    check(run("configs/uiface.yaml", tmp_path / "w", sets), ["identities", "generate", "align", "train", "eval", "metrics"],
          assets["ctx"])


def test_arc2face_config_runs_end_to_end(tmp_path: Path, assets: dict[str, Path]) -> None:
    from sd_tiny import build_arc2face, build_sd_base
    from test_align import build_detector

    ref = tmp_path / "ref_embeddings.npy"  # the real-embedding cloud the PCA identities are drawn from
    np.save(ref, np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32))
    sets = [f"paths.weights={build_arc2face(tmp_path / 'Arc2Face')}", f"paths.sd15={build_sd_base(tmp_path / 'sd15')}",
            f"paths.reference_embeddings={ref}", f"paths.detector={build_detector(tmp_path / 'scrfd.onnx')}",
            f"paths.benchmarks={assets['bins']}", f"paths.separability_fr_model={assets['fr']}",
            f"paths.context_encoder={assets['ctx']}", "identities.max_similarity=0.9", "generate.steps=2", "generate.dtype=fp32", "align.on_failure=resize",
            *SMALL]
    check(run("configs/arc2face.yaml", tmp_path / "w", sets), ["identities", "generate", "align", "train", "eval", "metrics"],
          assets["ctx"])


def test_casia_webface_config_runs_end_to_end(tmp_path: Path, assets: dict[str, Path]) -> None:
    data = tmp_path / "casia"
    for ident in range(4):
        (data / f"{ident:07d}").mkdir(parents=True)
        for i, img in enumerate(face_like_images(3, seed=ident)):
            cv2.imwrite(str(data / f"{ident:07d}" / f"{i:03d}.jpg"), img)
    sets = [f"paths.casia={data}", f"paths.benchmarks={assets['bins']}", f"paths.separability_fr_model={assets['fr']}",
            *[s for s in SMALL if not s.startswith(("identities.", "generate."))]]
    check(run("configs/casia-webface.yaml", tmp_path / "w", sets), ["train", "eval", "metrics"])
