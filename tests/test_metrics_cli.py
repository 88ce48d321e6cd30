"""`frbench metrics` end to end: JSON and table, equality with pyeer on the model's own embeddings,
consistency, the embedding cache, MLflow, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fr_bench.cli import cli
from fr_bench.data.dataset import iter_batches, open_dataset, select
from fr_bench.embed import l2_normalize
from fr_bench.metrics.separability import pair_scores
from fr_bench.models import load_fr_model
from metrics_helpers import no_download, torch_home, write_dataset  # noqa: F401  (fixtures)

SEPARABILITY_KEYS = {"eer", "fmr100", "fmr1000", "fmr100_strict", "fmr1000_strict", "genuine_mean", "genuine_std",
                     "impostor_mean", "impostor_std", "fdr", "d_prime", "genuine_pairs", "impostor_pairs"}


def run(args: list[str]):
    return CliRunner().invoke(cli, args, obj={}, catch_exceptions=False)


def assert_one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error:"), res.output
    for needle in needles:
        assert needle in last, (needle, last)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("metrics") / "ds", 8, 4, size=(40, 40), noise=120, contexts_dim=32)


@pytest.fixture()
def ds_copy(tmp_path: Path, dataset: Path) -> Path:
    shutil.copytree(dataset, tmp_path / "ds")
    return tmp_path / "ds"


@pytest.fixture(scope="module")
def shared_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workdir for the module: its embedding cache spares later tests the FR model."""
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def reference_embeddings(dataset: Path, tiny_iresnet_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Independently decoded and embedded selection (first 1000 identities × 20 images)."""
    sel = select(open_dataset(dataset), 1000, 20)
    images = np.concatenate(list(iter_batches([dataset / f for f in sel.files], 256)))
    return load_fr_model(tiny_iresnet_path, device="cpu").embed(images), sel.labels


def base_args(work: Path, dataset: Path, model: Path) -> list[str]:
    return ["--workdir", str(work), "metrics", str(dataset), "--fr-model", str(model), "--device", "cpu", "--no-track"]


def flat(text: str) -> str:
    return " ".join(text.split())


def test_separability_equals_pyeer_on_the_models_embeddings(tmp_path: Path, shared_work: Path, dataset: Path,
                                                           tiny_iresnet_path: Path, reference_embeddings) -> None:
    from pyeer.eer_stats import calculate_roc, get_eer_values, get_fmr_op

    out = tmp_path / "m.json"
    res = run(base_args(shared_work, dataset, tiny_iresnet_path) + ["--separability", "--output", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    sep = doc["separability"]
    assert SEPARABILITY_KEYS <= set(sep) and set(doc) >= {"dataset", "fr_model", "separability"}
    assert "consistency" not in doc and "lpips" not in doc  # only what was asked for
    # independently: decode, embed, all pairs, pyeer
    emb, labels = reference_embeddings
    gen, imp = pair_scores(emb, labels)
    assert (sep["genuine_pairs"], sep["impostor_pairs"]) == (len(gen), len(imp)) == (8 * 6, 32 * 31 // 2 - 48)
    thr, fm, fnm = calculate_roc(gen, imp, rates=False)
    fmr, fnmr = fm / len(imp), fnm / len(gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, _, _, eer = get_eer_values(fmr, fnmr)
    assert sep["eer"] == pytest.approx(eer, abs=1e-9) and 0 < sep["eer"] < 0.5
    assert sep["fmr100"] == pytest.approx(get_fmr_op(fmr, fnmr, 0.01)[1], abs=1e-9)
    assert sep["fmr1000"] == pytest.approx(get_fmr_op(fmr, fnmr, 0.001)[1], abs=1e-9)
    assert sep["genuine_mean"] == pytest.approx(np.mean(gen), abs=1e-9) and sep["impostor_std"] == pytest.approx(np.std(imp), abs=1e-9)
    assert Path(sep["histogram_png"]).read_bytes()[:4] == b"\x89PNG"
    assert doc["fr_model"]["dim"] == 32 and doc["fr_model"]["sha256"]
    for label in ("EER", "FMR100 strict", "FMR1000", "FDR", "genuine mean"):
        assert label in res.output


def test_every_available_metric_runs_by_default(tmp_path: Path, shared_work: Path, dataset: Path, tiny_iresnet_path: Path,
                                                torch_home: Path, monkeypatch: pytest.MonkeyPatch, no_download: None) -> None:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    real = write_dataset(tmp_path / "real", 3, 3, size=(48, 48), seed=5, manifest=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("metrics:\n  prc_k: 2\n  prc_layer: '64'\n  fid_layer: '64'\n  lpips_identities: 2\n")
    out = tmp_path / "m.json"
    res = run(base_args(shared_work, dataset, tiny_iresnet_path) + ["--reference", str(real), "--config", str(cfg),
                                                                  "--output", str(out), "--per-identity", "3"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert {"separability", "consistency", "lpips", "prc", "fid"} <= set(doc) and doc["not_computed"] == {}
    assert doc["separability"]["genuine_pairs"] == 8 * 3
    assert doc["lpips"]["identities"] == 2 and doc["lpips"]["pairs"] == 2 * 3 and 0 < doc["lpips"]["mean"]
    assert doc["lpips"]["chosen"] == sorted(doc["lpips"]["chosen"]) and doc["lpips"]["net"] == "vgg"
    assert doc["prc"]["k"] == 2 and doc["prc"]["generated_images"] == 24 and doc["prc"]["reference_images"] == 9
    assert 0 <= doc["prc"]["recall"] <= 1 and isinstance(doc["fid"], float)
    assert doc["fid_info"]["input_order"] == "generated = input1, real = input2"
    for label in ("identity consistency", "intra-class LPIPS", "precision / recall", "FID"):
        assert label in res.output


def test_consistency_is_the_cosine_to_each_images_context_row(tmp_path: Path, shared_work: Path, dataset: Path,
                                                             tiny_iresnet_path: Path, reference_embeddings) -> None:
    out = tmp_path / "m.json"
    res = run(base_args(shared_work, dataset, tiny_iresnet_path) + ["--consistency", "--output", str(out)])
    assert res.exit_code == 0, res.output
    con = json.loads(out.read_text())["consistency"]
    raw, labels = reference_embeddings
    emb = l2_normalize(raw)
    ctx = l2_normalize(np.load(dataset / "contexts.npy"))[labels]  # the manifest's context_row = identity
    cos = (emb * ctx).sum(1)
    assert con["mean"] == pytest.approx(cos.mean(), abs=1e-6) and con["std"] == pytest.approx(cos.std(), abs=1e-6)
    assert con["images"] == 32 and con["contexts"].endswith("contexts.npy") and "r18" in con["fr_model"]


@pytest.fixture(scope="module")
def other_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second recognizer, 16-d: contexts made with the 32-d one are not in its space."""
    import torch

    from fr_bench.models.iresnet import iresnet

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("other") / "r18-16d.pt"
    torch.save(iresnet("r18", num_features=16).eval().state_dict(), path)
    return path


def test_consistency_uses_the_contexts_own_encoder_when_one_is_given(tmp_path: Path, shared_work: Path, dataset: Path,
                                                                      tiny_iresnet_path: Path, other_model_path: Path,
                                                                      reference_embeddings) -> None:
    out = tmp_path / "m.json"
    res = run(base_args(shared_work, dataset, other_model_path) + ["--consistency-fr-model", str(tiny_iresnet_path),
                                                                    "--separability", "--consistency", "--output", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["fr_model"]["dim"] == 16 and doc["separability"]["genuine_pairs"] > 0  # separability: the other model
    raw, labels = reference_embeddings
    cos = (l2_normalize(raw) * l2_normalize(np.load(dataset / "contexts.npy"))[labels]).sum(1)
    con = doc["consistency"]
    assert con["mean"] == pytest.approx(cos.mean(), abs=1e-6) and con["fr_model_path"] == str(tiny_iresnet_path)
    assert len(con["fr_model_sha256"]) == 64


def test_consistency_in_another_models_space_is_refused_when_asked(tmp_path: Path, dataset: Path,
                                                                   other_model_path: Path) -> None:
    res = run(base_args(tmp_path / "w", dataset, other_model_path) + ["--consistency"])
    assert_one_line_error(res, "contexts.npy")


def test_second_run_reads_embeddings_from_the_cache(tmp_path: Path, dataset: Path, tiny_iresnet_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    args = base_args(tmp_path / "w", dataset, tiny_iresnet_path) + ["--separability"]
    first, second = tmp_path / "1.json", tmp_path / "2.json"
    assert run(args + ["--output", str(first)]).exit_code == 0
    from fr_bench.embed import Embedder

    monkeypatch.setattr(Embedder, "embed", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-embedded")))
    res = run(args + ["--output", str(second)])
    assert res.exit_code == 0, res.output
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert not a["fr_model"]["embedding_cache"]["hit"] and b["fr_model"]["embedding_cache"]["hit"]
    assert a["separability"] == b["separability"]
    assert Path(b["fr_model"]["embedding_cache"]["cache"]).is_relative_to(tmp_path / "w" / "cache" / "embeddings")


def test_logs_metrics_params_and_plots_to_mlflow(tmp_path: Path, dataset: Path, tiny_iresnet_path: Path) -> None:
    import mlflow

    work = tmp_path / "w"
    res = run(["--workdir", str(work), "metrics", str(dataset), "--fr-model", str(tiny_iresnet_path), "--device", "cpu",
               "--separability", "--consistency"])
    assert res.exit_code == 0, res.output
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{work.resolve() / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("frbench").experiment_id])
    assert r.data.tags["frbench.stage"] == "metrics"
    assert {"separability/eer", "separability/fdr", "separability/fmr100_strict", "consistency/mean"} <= set(r.data.metrics)
    assert r.data.params["identities"] == "8" and r.data.params["per_identity"] == "4"
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"metrics.json", "separability_hist.png", "consistency_hist.png"} <= arts


# ------------------------------------------------------------------------------------ bad input
def test_empty_and_single_image_identity_folders_are_skipped_and_named(tmp_path: Path, ds_copy: Path,
                                                                       tiny_iresnet_path: Path) -> None:
    (ds_copy / "00008").mkdir()
    (ds_copy / "00009").mkdir()
    shutil.copy(ds_copy / "00000" / "000.png", ds_copy / "00009" / "000.png")
    out = tmp_path / "m.json"
    res = run(base_args(tmp_path / "w", ds_copy, tiny_iresnet_path) + ["--separability", "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert "skipped 2 identity folder(s)" in flat(res.output) and "00008 (empty folder)" in flat(res.output)
    doc = json.loads(out.read_text())
    assert doc["dataset"]["skipped"] == [{"identity": "00008", "index": 8, "reason": "empty folder"},
                                         {"identity": "00009", "index": 9, "reason": "1 image (< 2)"}]
    assert doc["dataset"]["identities"] == 8 and doc["separability"]["genuine_pairs"] == 48


def test_unreadable_image_is_one_line_naming_the_file(tmp_path: Path, ds_copy: Path, tiny_iresnet_path: Path) -> None:
    (ds_copy / "00003" / "002.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "m.json"
    res = run(base_args(tmp_path / "w", ds_copy, tiny_iresnet_path) + ["--output", str(out)])
    assert_one_line_error(res, "00003/002.png", "unreadable image")
    assert not out.exists()


def test_missing_reference_is_one_line(tmp_path: Path, dataset: Path, tiny_iresnet_path: Path, torch_home: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    res = run(base_args(tmp_path, dataset, tiny_iresnet_path) + ["--fid", "--reference", str(tmp_path / "no_such_dir")])
    assert_one_line_error(res, "no_such_dir", "reference folder not found")
    res = run(base_args(tmp_path, dataset, tiny_iresnet_path) + ["--prc"])
    assert_one_line_error(res, "--prc: no real reference set (pass --reference DIR)")


def test_contexts_of_another_width_than_the_fr_model_is_one_line(tmp_path: Path, ds_copy: Path, tiny_iresnet_path: Path) -> None:
    np.save(ds_copy / "contexts.npy", np.ones((8, 512), np.float32))
    res = run(base_args(tmp_path / "w", ds_copy, tiny_iresnet_path) + ["--consistency"])
    assert_one_line_error(res, "contexts.npy", "512-d", "32-d")


def test_missing_lpips_weights_say_which_file_to_put_where(tmp_path: Path, shared_work: Path, dataset: Path,
                                                           tiny_iresnet_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    res = run(base_args(tmp_path, dataset, tiny_iresnet_path) + ["--lpips"])
    assert_one_line_error(res, str(tmp_path / "empty_home" / "hub" / "checkpoints" / "vgg16-397923af.pth"),
                          "https://download.pytorch.org/models/vgg16-397923af.pth")
    # not asked for: the run goes on without it and says why
    out = tmp_path / "m.json"
    res = run(base_args(shared_work, dataset, tiny_iresnet_path) + ["--output", str(out)])
    assert res.exit_code == 0, res.output
    assert "LPIPS skipped" in flat(res.output)
    assert "lpips" in json.loads(out.read_text())["not_computed"]


def test_separability_without_an_fr_model_and_a_misspelt_config_key_are_one_line(tmp_path: Path, dataset: Path) -> None:
    res = run(["metrics", str(dataset), "--separability", "--no-track"])
    assert_one_line_error(res, "--separability: no FR model (pass --fr-model PATH)")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("metrics:\n  prc_kk: 3\n")
    res = run(["metrics", str(dataset), "--config", str(cfg), "--no-track"])
    assert_one_line_error(res, "metrics.prc_kk", "did you mean 'prc_k'")


def test_corrupt_fr_model_is_one_line(tmp_path: Path, dataset: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"garbage")
    res = run(base_args(tmp_path, dataset, bad) + ["--separability"])
    assert_one_line_error(res, "model.pt")


def test_interrupted_embedding_resumes_from_finished_chunks(tmp_path: Path, dataset: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import fr_bench.metrics_stage as stage
    from fr_bench.embed import Embedder

    class MeanColour(Embedder):  # deterministic stand-in FR model: per-channel means
        path, dim, calls = tmp_path / "fake.pt", 3, 0

        @property
        def description(self) -> str:
            return "mean colour"

        def _forward(self, batch: np.ndarray, flip: bool) -> np.ndarray:
            type(self).calls += 1
            if type(self).calls == 3:
                raise KeyboardInterrupt  # killed while embedding the third chunk
            return batch.reshape(len(batch), -1, 3).mean(1).astype(np.float32)

    monkeypatch.setattr(stage, "EMBED_CHUNK", 8)
    sel = select(open_dataset(dataset), 1000, 20)  # 32 images → 4 chunks
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        stage.cached_embeddings(sel, MeanColour(), "sha", "fp32", cache, batch_size=8, workers=1)
    (folder,) = cache.iterdir()
    assert len(list((folder / "parts").glob("*.npy"))) == 2 and not (folder / "embeddings.npy").exists()
    emb, info = stage.cached_embeddings(sel, MeanColour(), "sha", "fp32", cache, batch_size=8, workers=1)
    assert MeanColour.calls == 3 + 2 and not info["hit"]  # only the two missing chunks were embedded
    images = np.concatenate(list(iter_batches([dataset / f for f in sel.files], 32)))
    assert emb == pytest.approx(images.reshape(32, -1, 3).mean(1), abs=1e-4)
    assert not (folder / "parts").exists() and stage.cached_embeddings(sel, MeanColour(), "sha", "fp32", cache,
                                                                       batch_size=8, workers=1)[1]["hit"]


def test_leakage_needs_the_separability_model_not_the_contexts_encoder(tmp_path: Path, dataset: Path,
                                                                       tiny_iresnet_path: Path) -> None:
    res = run(["--workdir", str(tmp_path / "w"), "metrics", str(dataset), "--consistency-fr-model", str(tiny_iresnet_path),
               "--leakage", "--training-images", str(dataset), "--device", "cpu", "--no-track"])
    assert_one_line_error(res, "leakage", "no FR model (pass --fr-model PATH)")
