"""FR model loading: arcface_torch iresnet state dicts and insightface ONNX files behind one embed()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import face_like_images
from fr_bench.errors import InputError
from fr_bench.models import iresnet, load_fr_model
from fr_bench.models.iresnet import infer_arch


def _images(n: int = 6) -> np.ndarray:
    return np.stack(face_like_images(n, seed=7))


def test_iresnet50_has_arcface_torch_layout() -> None:
    sd = iresnet("r50").state_dict()
    assert infer_arch(sd) == "r50"
    assert sd["fc.weight"].shape == (512, 512 * 7 * 7)
    assert sd["layer3.13.conv2.weight"].shape == (256, 256, 3, 3)
    assert "layer1.0.downsample.0.weight" in sd and "layer1.0.downsample.1.running_var" in sd
    assert "features.weight" in sd and not iresnet("r50").features.weight.requires_grad
    assert "layer1.1.downsample.0.weight" not in sd


def test_state_dict_embeddings_are_raw_model_outputs(tiny_iresnet_path: Path) -> None:
    emb = load_fr_model(tiny_iresnet_path, device="cpu")
    x = _images()
    out = emb.embed(x, batch_size=4)
    model = iresnet("r18", num_features=32)
    model.load_state_dict(torch.load(tiny_iresnet_path, weights_only=True))
    ref = model.eval()((torch.from_numpy(x).permute(0, 3, 1, 2).float() - 127.5) / 127.5).detach().numpy()
    assert out.shape == (6, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_flip_sums_raw_embeddings_of_image_and_mirror(tiny_iresnet_path: Path) -> None:
    emb = load_fr_model(tiny_iresnet_path, device="cpu")
    x = _images()
    both = emb.embed(x, flip=True)
    np.testing.assert_allclose(both, emb.embed(x) + emb.embed(np.ascontiguousarray(x[:, :, ::-1])), rtol=1e-4, atol=1e-4)


def test_ddp_prefix_and_wrapper_are_accepted(tiny_iresnet_path: Path, tmp_path: Path) -> None:
    sd = torch.load(tiny_iresnet_path, weights_only=True)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    torch.save(wrapped, tmp_path / "ddp.pth")
    assert load_fr_model(tmp_path / "ddp.pth", device="cpu").dim == 32


def test_onnx_export_matches_torch(tiny_iresnet_path: Path, tiny_onnx_path: Path) -> None:
    x = _images()
    a = load_fr_model(tiny_iresnet_path, device="cpu").embed(x, flip=True)
    b = load_fr_model(tiny_onnx_path, device="cpu").embed(x, flip=True)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_wrong_arch_state_dict_names_the_mismatch(tiny_iresnet_path: Path, tmp_path: Path) -> None:
    sd = torch.load(tiny_iresnet_path, weights_only=True)
    del sd["layer2.0.bn1.weight"]
    sd["head.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(InputError, match=r"broken.pt: state dict does not match iresnet r18: missing 1 keys \(layer2.0.bn1.weight"):
        load_fr_model(tmp_path / "broken.pt", device="cpu")


def test_forced_arch_mismatch_is_reported(tiny_iresnet_path: Path) -> None:
    with pytest.raises(InputError, match="does not match iresnet r50.*looks like r18"):
        from fr_bench.models.loader import build_iresnet, load_state_dict

        build_iresnet(tiny_iresnet_path, load_state_dict(tiny_iresnet_path), arch="r50")


def test_non_iresnet_state_dict_is_reported(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(InputError, match="not an arcface_torch iresnet"):
        load_fr_model(tmp_path / "linear.pt", device="cpu")


def test_file_that_is_neither_onnx_nor_state_dict(tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(InputError, match="not an ONNX model or a PyTorch state dict"):
        load_fr_model(tmp_path / "notes.pt", device="cpu")
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(InputError, match="garbage.onnx: not a readable ONNX model"):
        load_fr_model(tmp_path / "garbage.onnx", device="cpu")


def test_pickled_code_in_state_dict_is_not_executed(tmp_path: Path) -> None:
    import os
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"fc.weight": Evil()}, f)
    with pytest.raises(InputError):
        load_fr_model(tmp_path / "evil.pt", device="cpu")
    assert not marker.exists()


def _onnx_model(path: Path, out_shape: list, op: str = "Identity") -> Path:
    """A recognition-shaped input (N×3×112×112) whose output is not an N×D embedding."""
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)
    node = helper.make_node(op, ["input.1"], ["out"])
    graph = helper.make_graph([node], "g", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_onnx_whose_output_is_not_an_embedding(tmp_path: Path) -> None:
    path = _onnx_model(tmp_path / "featuremap.onnx", ["N", 3, 112, 112])
    with pytest.raises(InputError, match=r"featuremap.onnx: ONNX output has shape \[2, 3, 112, 112\], not an N×D embedding"):
        load_fr_model(path, device="cpu")


def test_onnx_that_is_not_a_recognition_model(tmp_path: Path) -> None:
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 192, 192])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 192, 192])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "landmark.onnx")
    with pytest.raises(InputError, match="not a face-recognition embedder"):
        load_fr_model(tmp_path / "landmark.onnx", device="cpu")


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model file not found"):
        load_fr_model(tmp_path / "nope.onnx")
