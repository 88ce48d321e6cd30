"""MTCNN alignment on a real photo: facenet-pytorch's network and released weights, two templates, IDiff-Face's policy."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fr_bench.cli import cli

pytestmark = pytest.mark.slow  # end-to-end: deselected by make test-fast (-m 'not slow')

facenet = pytest.importorskip("facenet_pytorch", reason="install with: pip install --no-deps facenet-pytorch")
skdata = pytest.importorskip("skimage.data")

# the two templates as the NegFaceDiff repository's utils/align_trans.py writes them
ARCFACE_REF = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]], np.float32)
ARCFACE_EVAL_REF = ARCFACE_REF + np.array([8.0, 0.0], np.float32)


def reference_crop(rgb: np.ndarray, *, template: np.ndarray, min_face_size: int, select_largest: bool) -> np.ndarray:
    """facenet-pytorch's own MTCNN detection + the repositories' norm_crop (skimage similarity + warpAffine)."""
    from facenet_pytorch import MTCNN
    from skimage import transform

    mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, post_process=False, select_largest=select_largest)
    boxes, _, points = mtcnn.detect(rgb, landmarks=True)
    assert boxes is not None and len(boxes) == 1
    tform = transform.SimilarityTransform()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tform.estimate(np.float32(points[0]), template)
    return cv2.warpAffine(rgb, tform.params[0:2, :], (112, 112), borderValue=0.0)


@pytest.fixture(scope="module")
def astronaut_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("astronaut") / "in"
    (root / "eileen").mkdir(parents=True)
    cv2.imwrite(str(root / "eileen" / "0.png"), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    return root


def aligned_rgb(out: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(out / "eileen" / "0.png")), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("template,reference,min_face,pick", [
    ("arcface-112", ARCFACE_EVAL_REF, 1, "center"),          # IDiff-Face align.py
    ("negfacediff-96x112", ARCFACE_REF, 60, "largest"),       # NegFaceDiff MTCNN_alignment.py
])
def test_mtcnn_crop_equals_facenet_detection_plus_template_warp(tmp_path: Path, astronaut_dir: Path, template: str,
                                                               reference: np.ndarray, min_face: int, pick: str) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["align", str(astronaut_dir), "--detector", "mtcnn", "--template", template,
                                   "--min-face-size", str(min_face), "--pick", pick, "--out", str(out), "--device", "cpu"], obj={})
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "align.json").read_text())
    assert summary["images"]["aligned"] == 1 and summary["multiple_faces"] == 0  # one face in the photo
    assert summary["settings"]["template"] == template and summary["settings"]["detector"] == "mtcnn"
    expected = reference_crop(skdata.astronaut(), template=reference, min_face_size=min_face, select_largest=pick == "largest")
    np.testing.assert_array_equal(aligned_rgb(out), expected)


def test_the_two_templates_differ_by_the_eight_pixel_shift(tmp_path: Path, astronaut_dir: Path) -> None:
    crops = {}
    for template in ("arcface-112", "negfacediff-96x112"):
        out = tmp_path / template
        res = CliRunner().invoke(cli, ["align", str(astronaut_dir), "--detector", "mtcnn", "--template", template,
                                       "--out", str(out), "--device", "cpu"], obj={})
        assert res.exit_code == 0, res.output
        crops[template] = aligned_rgb(out).astype(int)
    # the un-shifted template puts the face 8 px further left: columns 8… of one are columns 0… of the other
    shifted = np.abs(crops["arcface-112"][:, 8:] - crops["negfacediff-96x112"][:, :-8]).mean()
    unshifted = np.abs(crops["arcface-112"] - crops["negfacediff-96x112"]).mean()
    assert shifted < 0.1 * unshifted


def test_mtcnn_weights_are_read_from_the_installed_package_without_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from fr_bench.align import MTCNNDetector

    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append((Path(args[0]).name, kwargs.get("weights_only")))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    det = MTCNNDetector(device="cpu")
    assert calls == [("pnet.pt", True), ("rnet.pt", True), ("onet.pt", True)]
    assert set(det.describe()["weights_sha256"]) == {"pnet.pt", "rnet.pt", "onet.pt"}


def test_resize_identity_policy_resizes_every_image_of_an_identity_with_a_failure(tmp_path: Path, astronaut_dir: Path) -> None:
    src = tmp_path / "in"
    (src / "eileen").mkdir(parents=True)
    face = cv2.imread(str(astronaut_dir / "eileen" / "0.png"))
    cv2.imwrite(str(src / "eileen" / "0.png"), face)
    cv2.imwrite(str(src / "eileen" / "1.png"), np.zeros((128, 128, 3), np.uint8))  # a blank grid tile: no face
    (src / "solo").mkdir()
    cv2.imwrite(str(src / "solo" / "0.png"), face)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["align", str(src), "--detector", "mtcnn", "--on-failure", "resize-identity",
                                   "--out", str(out), "--device", "cpu"], obj={})
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "align.json").read_text())
    assert summary["images"]["resized"] == 2 and summary["images"]["aligned"] == 1
    whole = cv2.resize(face, (112, 112), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(cv2.imread(str(out / "eileen" / "0.png")), whole)  # the face image too
    assert not np.array_equal(cv2.imread(str(out / "solo" / "0.png")), whole)  # other identities are aligned
