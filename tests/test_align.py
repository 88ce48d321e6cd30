"""Alignment: detector none, a real (tiny, hand-built) SCRFD-layout ONNX detector, norm_crop, policies, resume."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pandas as pd
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import face_like_images
from fr_bench.cli import cli

DET = 128  # the fake detector's fixed input size
STRIDES = (8, 16, 32)
ANCHORS = 2  # SCRFD "_2.5g/_10g"-style heads: 3 strides × 2 anchors, 9 outputs with keypoints
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])

# Two faces the detector reports on a bright image, in detector-input pixels. Encoded as SCRFD
# predictions at one anchor each: box distances and keypoint offsets in units of the stride.
_ROT = np.deg2rad(12.0)
_A_KPS = (ARCFACE_112 - [56.0, 72.0]) @ np.array([[np.cos(_ROT), np.sin(_ROT)], [-np.sin(_ROT), np.cos(_ROT)]]) / 56.0
FACES = {
    # large, centred; its 5 points are the arcface template rotated by 12° and scaled, so the
    # similarity warp has no residual and each point must land exactly on its template position
    "A": {"stride": 32, "cell": (2, 2), "weight": 0.9, "box": (1.0, 1.0, 1.0, 1.25), "kps": tuple(map(tuple, _A_KPS))},
    "B": {"stride": 16, "cell": (1, 1), "weight": 1.0,  # small, top-left, higher score
          "box": (0.75, 0.75, 0.75, 0.75), "kps": ((-0.3, -0.2), (0.3, -0.2), (0.0, 0.05), (-0.2, 0.4), (0.2, 0.4))},
}


def run_cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args), obj={})
    return res.exit_code, res.output


def expected_landmarks(face: str, image_side: int) -> np.ndarray:
    """Where the fake detector puts ``face``'s 5 points on a square image of ``image_side`` pixels."""
    f = FACES[face]
    cx, cy = f["cell"][0] * f["stride"], f["cell"][1] * f["stride"]  # anchor centre
    pts = np.array([(cx + dx * f["stride"], cy + dy * f["stride"]) for dx, dy in f["kps"]])
    return pts * (image_side / DET)  # a square image is resized to fill the detector input


def build_detector(path: Path, keypoints: bool = True) -> Path:
    """A real ONNX graph in insightface's SCRFD output layout (scores, boxes, keypoints per stride).

    Its "face score" is sigmoid(20·mean of the normalised red channel): bright-red images contain the
    two FACES, dark ones nothing.
    """
    nodes = [
        helper.make_node("Gather", ["input.1", "red"], ["r"], axis=1),
        helper.make_node("ReduceMean", ["r"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["s"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "red"), numpy_helper.from_array(np.array(20.0, np.float32), "gain")]
    outputs: dict[str, list] = {"score": [], "bbox": [], "kps": []}
    for stride in STRIDES:
        side = DET // stride
        k = side * side * ANCHORS
        weight = np.zeros((k, 1), np.float32)
        box = np.zeros((k, 4), np.float32)
        kps = np.zeros((k, 10), np.float32)
        for f in FACES.values():
            if f["stride"] == stride:
                a = (f["cell"][1] * side + f["cell"][0]) * ANCHORS  # row-major cells, anchors consecutive
                weight[a, 0], box[a], kps[a] = f["weight"], f["box"], np.ravel(f["kps"])
        inits += [numpy_helper.from_array(weight, f"w{stride}"), numpy_helper.from_array(box, f"b{stride}"),
                  numpy_helper.from_array(kps, f"k{stride}")]
        nodes += [helper.make_node("Mul", ["s", f"w{stride}"], [f"score_{stride}"]),
                  helper.make_node("Identity", [f"b{stride}"], [f"bbox_{stride}"]),
                  helper.make_node("Identity", [f"k{stride}"], [f"kps_{stride}"])]
        outputs["score"].append(helper.make_tensor_value_info(f"score_{stride}", TensorProto.FLOAT, [k, 1]))
        outputs["bbox"].append(helper.make_tensor_value_info(f"bbox_{stride}", TensorProto.FLOAT, [k, 4]))
        outputs["kps"].append(helper.make_tensor_value_info(f"kps_{stride}", TensorProto.FLOAT, [k, 10]))
    outs = outputs["score"] + outputs["bbox"] + (outputs["kps"] if keypoints else [])
    graph = helper.make_graph(nodes, "fake_scrfd", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, DET, DET])],
                              outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


DOT_COLOURS = [(255, 0, 0), (0, 255, 0), (255, 255, 0), (0, 0, 0), (255, 0, 255)]  # BGR, one per landmark


def bright_face(side: int = 256, seed: int = 0) -> np.ndarray:
    """A bright-red BGR image with a coloured dot on each of face A's landmarks."""
    img = np.zeros((side, side, 3), np.uint8)
    img[:] = (40, 60, 210)
    img = np.clip(img.astype(int) + np.random.default_rng(seed).integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    for (x, y), colour in zip(expected_landmarks("A", side), DOT_COLOURS):
        cv2.circle(img, (int(round(x)), int(round(y))), max(3, side // 48), colour, -1)
    return img


def dark_image(side: int = 256) -> np.ndarray:
    img = np.zeros((side, side, 3), np.uint8)
    img[:] = (90, 90, 20)
    return img


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_detector(tmp_path_factory.mktemp("det") / "fake_scrfd.onnx")


def make_dataset(root: Path, layout: dict[str, list[str]]) -> Path:
    """``layout``: identity → list of "bright"/"dark" (PNG) or "bright.jpg"."""
    for identity, kinds in layout.items():
        (root / identity).mkdir(parents=True)
        for i, kind in enumerate(kinds):
            img = bright_face(seed=i) if kind.startswith("bright") else dark_image()
            ext = ".jpg" if kind.endswith(".jpg") else ".png"
            cv2.imwrite(str(root / identity / f"{i:03d}{ext}"), img)
    return root


def manifest(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "manifest.parquet")


# ---------------------------------------------------------------------------------- detector none
def test_detector_none_resizes_every_image_to_112(tmp_path: Path) -> None:
    src = tmp_path / "gen"
    imgs = {"00000": [face_like_images(1, seed=1, size=128)[0], face_like_images(1, seed=2, size=112)[0]],
            "00001": [face_like_images(1, seed=3, size=96)[0]]}
    for ident, lst in imgs.items():
        (src / ident).mkdir(parents=True)
        for i, img in enumerate(lst):
            cv2.imwrite(str(src / ident / f"{i:03d}.png"), img)
    (src / "manifest.parquet").write_bytes(b"not an identity folder")
    code, out = run_cli("align", str(src), "--detector", "none", "--out", str(tmp_path / "al"))
    assert code == 0, out
    for ident, lst in imgs.items():
        for i, img in enumerate(lst):
            got = cv2.imread(str(tmp_path / "al" / ident / f"{i:03d}.png"))
            interp = cv2.INTER_AREA if img.shape[0] > 112 else cv2.INTER_LINEAR
            np.testing.assert_array_equal(got, img if img.shape[0] == 112 else cv2.resize(img, (112, 112), interpolation=interp))
    m = manifest(tmp_path / "al")
    assert m["status"].tolist() == ["resized"] * 3 and m["path"].tolist() == ["00000/000.png", "00000/001.png", "00001/000.png"]
    summary = json.loads((tmp_path / "al" / "align.json").read_text())
    assert summary["images"]["written"] == 3 and summary["identities"] == {"input": 2, "written": 2, "dropped": 0, "empty": 0}
    assert not (tmp_path / "al" / ".frbench-align").exists()


# ------------------------------------------------------------------------------ with a detector
def test_detected_landmarks_are_warped_onto_the_arcface_template(tmp_path: Path, detector: Path) -> None:
    from insightface.utils import face_align

    src = make_dataset(tmp_path / "gen", {"id0": ["bright", "bright.jpg"]})
    code, out = run_cli("align", str(src), "--detector", str(detector), "--out", str(tmp_path / "al"), "--pick", "largest")
    assert code == 0, out
    m = manifest(tmp_path / "al")
    assert m["status"].tolist() == ["aligned", "aligned"] and m["faces"].tolist() == [2, 2]
    lmk = expected_landmarks("A", 256)
    np.testing.assert_allclose(np.stack(m["landmarks"].to_list()).reshape(-1, 5, 2), [lmk, lmk], atol=2e-3)
    assert m["score"].iloc[0] == pytest.approx(0.9 / (1 + np.exp(-20 * ((210 - 127.5) / 128))), abs=0.01)
    src_img = cv2.imread(str(src / "id0" / "000.png"))
    got = cv2.imread(str(tmp_path / "al" / "id0" / "000.png"))
    np.testing.assert_array_equal(got, face_align.norm_crop(src_img, lmk.astype(np.float32), image_size=112))
    for (x, y), colour in zip(ARCFACE_112, DOT_COLOURS):  # each landmark's dot lands on its template point
        assert np.abs(got[int(round(y)), int(round(x))].astype(int) - colour).max() < 40
    assert (tmp_path / "al" / "id0" / "001.png").is_file()  # JPEG in, PNG out


def test_pick_rules_choose_between_several_faces(tmp_path: Path, detector: Path) -> None:
    from fr_bench.align import load_detector, pick_face

    det = load_detector(detector, det_size=640)
    img = bright_face(side=512)
    faces = det.detect(img)
    assert len(faces) == 2
    for rule, face in (("largest", "A"), ("center", "A"), ("score", "B")):
        np.testing.assert_allclose(pick_face(faces, rule, img.shape).landmarks, expected_landmarks(face, 512), atol=2e-3)
    assert det.detect(dark_image(512)) == []


def test_retinaface_class_reads_the_same_detector(tmp_path: Path, detector: Path) -> None:
    src = make_dataset(tmp_path / "gen", {"id0": ["bright"]})
    code, out = run_cli("align", str(src), "--detector", str(detector), "--detector-kind", "retinaface", "--out", str(tmp_path / "al"))
    assert code == 0, out
    np.testing.assert_allclose(manifest(tmp_path / "al")["landmarks"].iloc[0].reshape(5, 2), expected_landmarks("A", 256), atol=2e-3)


@pytest.mark.parametrize("policy", ["skip", "resize", "drop-identity"])
def test_failure_policy_is_applied_and_recorded(tmp_path: Path, detector: Path, policy: str) -> None:
    src = make_dataset(tmp_path / "gen", {"a": ["bright", "dark", "bright"], "b": ["bright", "bright"]})
    al = tmp_path / "al"
    code, out = run_cli("align", str(src), "--detector", str(detector), "--out", str(al), "--on-failure", policy)
    assert code == 0, out
    m = manifest(al).set_index("source")
    summary = json.loads((al / "align.json").read_text())
    assert m.loc["b/000.png", "status"] == "aligned" and (al / "b" / "001.png").is_file()
    if policy == "skip":
        assert m.loc[["a/000.png", "a/001.png", "a/002.png"], "status"].tolist() == ["aligned", "skipped", "aligned"]
        assert sorted(p.name for p in (al / "a").iterdir()) == ["000.png", "002.png"]
        assert m.loc["a/001.png", "reason"] == "no face detected" and pd.isna(m.loc["a/001.png", "path"])
    elif policy == "resize":
        assert m.loc["a/001.png", "status"] == "resized"
        np.testing.assert_array_equal(cv2.imread(str(al / "a" / "001.png")),
                                      cv2.resize(dark_image(), (112, 112), interpolation=cv2.INTER_AREA))
    else:
        assert m.loc[["a/000.png", "a/001.png", "a/002.png"], "status"].tolist() == ["dropped"] * 3
        assert not (al / "a").exists()
        assert summary["identities"]["dropped"] == 1 and summary["identities"]["written"] == 1
    assert summary["settings"]["on_failure"] == policy
    assert sum(summary["images"][k] for k in ("aligned", "resized", "skipped", "dropped")) == 5
    assert policy in out  # the printed summary names the policy


def test_detector_without_keypoints_or_not_a_detector_is_refused(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "gen", {"a": ["bright"]})
    nokps = build_detector(tmp_path / "nokps.onnx", keypoints=False)
    code, out = run_cli("align", str(src), "--detector", str(nokps), "--out", str(tmp_path / "al"))
    assert code == 2 and "nokps.onnx" in out and "no landmark outputs" in out
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x01garbage")
    code, out = run_cli("align", str(src), "--detector", str(tmp_path / "junk.onnx"), "--out", str(tmp_path / "al"))
    assert code == 2 and "junk.onnx" in out and "Traceback" not in out
    assert not (tmp_path / "al").exists()


# ------------------------------------------------------------------------------------ resume/io
def test_interrupted_run_resumes_without_redoing_finished_identities(tmp_path: Path) -> None:
    src = tmp_path / "gen"
    for ident in ("00000", "00001", "00002"):
        (src / ident).mkdir(parents=True)
        for i, img in enumerate(face_like_images(2, seed=int(ident) + 1, size=128)):
            cv2.imwrite(str(src / ident / f"{i:03d}.png"), img)
    good = (src / "00002" / "001.png").read_bytes()
    (src / "00002" / "001.png").write_bytes(b"\x89PNG truncated")
    al = tmp_path / "al"
    code, out = run_cli("align", str(src), "--out", str(al), "--workers", "2")
    assert code == 2 and "00002/001.png" in out and "cannot decode" in out
    assert (al / "00001" / "001.png").is_file() and not (al / "manifest.parquet").exists()
    (al / "00000" / "000.png").write_bytes(b"sentinel")  # a finished identity must not be redone
    (src / "00002" / "001.png").write_bytes(good)
    code, out = run_cli("align", str(src), "--out", str(al), "--workers", "2")
    assert code == 0, out
    assert (al / "00000" / "000.png").read_bytes() == b"sentinel"
    m = manifest(al)
    assert len(m) == 6 and m["source"].is_unique and set(m["status"]) == {"resized"}
    assert not (al / ".frbench-align").exists() and not list(al.rglob(".*.tmp"))
    code, out = run_cli("align", str(src), "--out", str(al), "--on-failure", "drop-identity")
    assert code == 2 and "on_failure" in out and "another --out" in out


def test_output_inside_the_input_is_refused(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "gen", {"a": ["dark"]})
    code, out = run_cli("align", str(src), "--out", str(src / "aligned"))
    assert code == 2 and "inside" in out


def test_aligned_images_keep_the_context_row_and_contexts_file_generation_recorded(tmp_path: Path) -> None:
    from fr_bench.data.dataset import open_dataset

    src, ctx = tmp_path / "gen", tmp_path / "ids" / "identities.npy"
    ctx.parent.mkdir()
    np.save(ctx, np.eye(3, 512, dtype=np.float32))
    rows = []
    for ident, row in (("00000", 2), ("00001", 0)):
        (src / ident).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(src / ident / f"{i:03d}.png"), face_like_images(1, seed=i, size=128)[0])
            rows.append({"identity": int(ident), "sample": i, "seed": 100 + i, "path": f"{ident}/{i:03d}.png", "context_row": row})
    pd.DataFrame(rows).to_parquet(src / "manifest.parquet")
    (src / "generate.json").write_text(json.dumps({"identities": str(ctx)}))
    code, out = run_cli("align", str(src), "--detector", "none", "--out", str(tmp_path / "al"))
    assert code == 0, out
    ds = open_dataset(tmp_path / "al")
    assert {k: (m.context_row, m.sample, m.seed) for k, m in ds.meta.items()} == {
        "00000/000.png": (2, 0, 100), "00000/001.png": (2, 1, 101), "00001/000.png": (0, 0, 100), "00001/001.png": (0, 1, 101)}
    assert ds.contexts_hint == ctx
