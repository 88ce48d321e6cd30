"""Batched augmentation against torchvision's ops and AdaFace's OpenCV steps; plan sampling facts."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from fr_bench import augment as A
from trainkit import identity_images


@pytest.fixture(scope="module")
def batch_u8() -> torch.Tensor:
    imgs = [im for ims in identity_images(3, 2, seed=5) for im in ims]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def _theta(op: str, value: float, n: int) -> torch.Tensor:
    return A._thetas(torch.full((n,), A.RA_OPS.index(op)), torch.full((n,), value, dtype=torch.float64))


def _same(mine: torch.Tensor, ref: torch.Tensor) -> None:
    assert mine.shape == ref.shape
    assert torch.equal(mine, ref.float()), f"max diff {(mine - ref.float()).abs().max().item()}"


@pytest.mark.parametrize("factor", [0.1, 0.55, 1.0, 1.43, 1.9])
def test_photometric_ops_equal_torchvision(batch_u8: torch.Tensor, factor: float) -> None:
    x = batch_u8.float()
    f = torch.full((len(x),), factor, dtype=torch.float64)
    for mine, ref in ((A.brightness, TF.adjust_brightness), (A.saturation, TF.adjust_saturation),
                      (A.contrast, TF.adjust_contrast), (A.sharpness, TF.adjust_sharpness)):
        _same(mine(x.clone(), f), torch.stack([ref(i, factor) for i in batch_u8]))


def test_pixel_ops_equal_torchvision(batch_u8: torch.Tensor) -> None:
    x = batch_u8.float()
    n = len(x)
    for bits in (4, 6, 7):
        _same(A.posterize(x.clone(), torch.full((n,), float(bits))), torch.stack([TF.posterize(i, bits) for i in batch_u8]))
    for thr in (0.0, 119.0, 255.0):
        _same(A.solarize(x.clone(), torch.full((n,), thr)), torch.stack([TF.solarize(i, thr) for i in batch_u8]))
    _same(A.autocontrast(x.clone()), torch.stack([TF.autocontrast(i) for i in batch_u8]))
    _same(A.equalize(x.clone()), torch.stack([TF.equalize(i) for i in batch_u8]))
    _same(A.grayscale(x.clone()).expand(-1, 3, -1, -1), torch.stack([TF.rgb_to_grayscale(i, 3) for i in batch_u8]))


@pytest.mark.parametrize("value", [0.27, -0.13])
def test_shear_x_about_the_top_left_corner_equals_torchvision(batch_u8: torch.Tensor, value: float) -> None:
    theta = _theta("ShearX", value, len(batch_u8))
    ref = [TF.affine(i, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(value)), 0.0],
                     interpolation=InterpolationMode.NEAREST, center=[0, 0]) for i in batch_u8]
    _same(A.affine_nearest(batch_u8.float(), theta), torch.stack(ref))


@pytest.mark.parametrize("value", [37.9, -12.6])
def test_translate_x_truncates_to_whole_pixels_like_the_reference(batch_u8: torch.Tensor, value: float) -> None:
    theta = _theta("TranslateX", value, len(batch_u8))
    ref = [TF.affine(i, angle=0.0, translate=[int(value), 0], scale=1.0, shear=[0.0, 0.0], interpolation=InterpolationMode.NEAREST) for i in batch_u8]
    _same(A.affine_nearest(batch_u8.float(), theta), torch.stack(ref))


@pytest.mark.parametrize("value", [23.0, -7.5])
def test_rotate_is_counter_clockwise_like_torchvision_rotate(batch_u8: torch.Tensor, value: float) -> None:
    theta = _theta("Rotate", value, len(batch_u8))
    ref = [TF.rotate(i, value, interpolation=InterpolationMode.NEAREST) for i in batch_u8]
    _same(A.affine_nearest(batch_u8.float(), theta), torch.stack(ref))


def test_magnitude_tables_follow_idiff_face() -> None:
    assert A.ra_magnitudes("Rotate")[16].item() == pytest.approx(16.0)
    assert A.ra_magnitudes("ShearX")[30].item() == pytest.approx(0.3)
    assert A.ra_magnitudes("TranslateX")[30].item() == pytest.approx(150 / 331 * 112, rel=1e-6)
    assert A.ra_magnitudes("Posterize")[[0, 4, 16, 30]].tolist() == [8, 7, 6, 4]
    assert A.ra_magnitudes("Solarize")[[0, 30]].tolist() == [255.0, 0.0]
    assert len(A.RA_OPS) == 13 and "ShearY" not in A.RA_OPS and "TranslateY" not in A.RA_OPS


def test_randaugment_draws_bins_1_to_magnitude_all_13_ops_and_both_signs() -> None:
    spec = A.AugmentSpec(ra_num_ops=4, ra_magnitude=16)
    plan = A.sample_plan(spec, 4000, torch.Generator().manual_seed(0))
    assert plan.ra_op.shape == (4000, 4)
    assert set(plan.ra_op.flatten().tolist()) == set(range(13))
    rot = plan.ra_value[plan.ra_op == A.RA_OPS.index("Rotate")]
    bins = torch.round(rot.abs() / 1.0).long()  # Rotate: bin k ↔ k degrees
    assert bins.min().item() == 1 and bins.max().item() == 16  # 1…magnitude inclusive, never bin 0
    assert (rot > 0).any() and (rot < 0).any()
    post = plan.ra_value[plan.ra_op == A.RA_OPS.index("Posterize")]
    assert (post > 0).all()  # unsigned ops keep their sign


def test_plan_is_a_pure_function_of_the_generator_seed() -> None:
    spec = A.AugmentSpec(ra_num_ops=2, ra_magnitude=9, crop_prob=0.2, lowres_prob=0.2, photometric_prob=0.2)
    a = A.sample_plan(spec, 64, torch.Generator().manual_seed(7))
    b = A.sample_plan(spec, 64, torch.Generator().manual_seed(7))
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("flip", "box", "side", "ra_op", "ra_value", "photo_factor"))


def test_resized_crop_boxes_follow_random_resized_crop_limits() -> None:
    boxes = A._resized_crop_boxes(3000, torch.Generator().manual_seed(1))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 112).all() and (left + w <= 112).all()
    area = (h * w).double() / 112**2
    assert area.min() >= 0.19 and area.max() <= 1.0
    ratio = w.double() / h.double()
    assert ratio.min() >= 0.7 and ratio.max() <= 1.4


def test_adaface_crop_zeroes_outside_the_box_without_resizing() -> None:
    img = identity_images(1, 1, seed=2)[0][0]
    plan = A.sample_plan(A.AugmentSpec(crop_prob=1.0), 1, torch.Generator().manual_seed(3))
    batch = img[None].copy()
    A.apply_cpu(batch, plan)
    top, left, h, w = plan.box[0].tolist()
    want = np.zeros_like(img)
    want[top : top + h, left : left + w] = img[top : top + h, left : left + w]
    assert np.array_equal(batch[0], want)


def test_adaface_low_resolution_is_opencv_down_and_up() -> None:
    img = identity_images(1, 1, seed=4)[0][0]
    plan = A.sample_plan(A.AugmentSpec(lowres_prob=1.0), 1, torch.Generator().manual_seed(5))
    batch = img[None].copy()
    A.apply_cpu(batch, plan)
    s = int(plan.side[0])
    down, up = (A.LOWRES_INTERPOLATIONS[i] for i in plan.interp[0].tolist())
    want = cv2.resize(cv2.resize(img, (s, s), interpolation=down), (112, 112), interpolation=up)
    assert 22 <= s <= 112 and np.array_equal(batch[0], want)


def test_device_stage_applies_each_sample_its_own_ops(batch_u8: torch.Tensor) -> None:
    """The batched pass equals applying each sample's plan one at a time."""
    spec = A.AugmentSpec(flip=True, ra_num_ops=3, ra_magnitude=16, photometric_prob=0.7)
    plan = A.sample_plan(spec, len(batch_u8), torch.Generator().manual_seed(11))
    whole = A.apply_device(batch_u8.float(), A.pack(plan), spec.ra_num_ops)
    one_by_one = torch.cat([A.apply_device(batch_u8[i : i + 1].float(), A.pack(plan[i : i + 1]), spec.ra_num_ops) for i in range(len(batch_u8))])
    assert torch.equal(whole, one_by_one)
    assert not torch.equal(whole, batch_u8.float())
