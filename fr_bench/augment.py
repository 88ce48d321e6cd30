"""Training augmentation, batched: horizontal flip, IDiff-Face's RandAugment and AdaFace's augmenter.

Every random decision for a batch is drawn up front, on the CPU, from one ``torch.Generator``
seeded by (run seed, step) — a :class:`Plan` of per-sample parameters. The plan is then applied in
two stages:

* **CPU stage** (data-loader thread, uint8 HWC, OpenCV — exactly AdaFace's ``Augmenter``):
  ``crop`` keeps a ``RandomResizedCrop(scale=(0.2, 1), ratio=(3/4, 4/3))`` box in place and zeroes
  the rest (no resize); ``lowres`` resizes to a side of ``int(U(0.2, 1)·112)`` and back, each way with
  an interpolation drawn from {nearest, linear, area, cubic, lanczos4}.
* **Device stage** (whole batch at once on the GPU, or on the CPU when training there), on float
  tensors holding uint8 values: ``photometric`` = ColorJitter(brightness 0.5, contrast 0.5,
  saturation 0.5, hue 0) in a random order; ``flip`` with p = 0.5; then ``RandAugment(num_ops,
  magnitude)`` as in IDiff-Face's ``utils/rand_augment.py``: per op one of 13 (Identity, ShearX,
  TranslateX, Rotate, Brightness, Color, Contrast, Sharpness, Posterize, Solarize, AutoContrast,
  Equalize, Grayscale — no ShearY/TranslateY), a magnitude bin drawn uniformly from 1…magnitude of 31
  bins (not fixed), a random sign for signed ops, nearest interpolation, zero fill.

Order: crop → low-res → photometric → flip → RandAugment (AdaFace augments before its flip;
IDiff-Face flips before RandAugment; both orders are kept).

Differences from the references, on purpose: the ops follow torchvision's *tensor* implementations
(the references run the same ops on PIL images: brightness/contrast/colour can differ by one grey
level, geometric ops by a pixel at sampling boundaries); each op's output is truncated to whole
grey levels as torchvision's uint8 path does; random numbers come from the per-step generator, not
the global Python/NumPy/torch RNGs, so a batch's augmentation is a pure function of (seed, step) and
independent of the device and of the number of GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 112
RA_OPS = (
    "Identity", "ShearX", "TranslateX", "Rotate", "Brightness", "Color", "Contrast",
    "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Grayscale",
)
RA_BINS = 31
_SIGNED = {"ShearX", "TranslateX", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
_GEOMETRIC = {"ShearX", "TranslateX", "Rotate"}
#: OpenCV interpolations of AdaFace's low-resolution augmentation
LOWRES_INTERPOLATIONS = (0, 1, 3, 2, 4)  # cv2 INTER_NEAREST, LINEAR, AREA, CUBIC, LANCZOS4


def ra_magnitudes(op: str, image_width: int = SIZE) -> torch.Tensor:
    """The 31-bin float32 magnitude table of one RandAugment op (IDiff-Face / torchvision values)."""
    if op == "ShearX":
        return torch.linspace(0.0, 0.3, RA_BINS)
    if op == "TranslateX":
        return torch.linspace(0.0, 150.0 / 331.0 * image_width, RA_BINS)
    if op == "Rotate":
        return torch.linspace(0.0, 30.0, RA_BINS)
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return torch.linspace(0.0, 0.9, RA_BINS)
    if op == "Posterize":
        return (8 - (torch.arange(RA_BINS) / ((RA_BINS - 1) / 4)).round()).float()
    if op == "Solarize":
        return torch.linspace(255.0, 0.0, RA_BINS)
    return torch.zeros(RA_BINS)


_RA_TABLE = torch.stack([ra_magnitudes(op) for op in RA_OPS])
_RA_SIGNED = torch.tensor([op in _SIGNED for op in RA_OPS])


@dataclass(frozen=True)
class AugmentSpec:
    """What to apply (a recipe's ``augment`` section)."""

    flip: bool = True
    ra_num_ops: int = 0  # 0 = no RandAugment
    ra_magnitude: int = 0
    crop_prob: float = 0.0
    lowres_prob: float = 0.0
    photometric_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.ra_num_ops and not 1 <= self.ra_magnitude <= RA_BINS - 1:
            raise ValueError(f"RandAugment magnitude must be in 1…{RA_BINS - 1}")

    @property
    def needs_cpu_stage(self) -> bool:
        return self.crop_prob > 0 or self.lowres_prob > 0


@dataclass
class Plan:
    """Per-sample augmentation parameters of one batch (CPU tensors, first dimension = sample)."""

    flip: torch.Tensor  # bool [n]
    crop: torch.Tensor  # bool [n]
    box: torch.Tensor  # int64 [n, 4]: top, left, height, width
    lowres: torch.Tensor  # bool [n]
    side: torch.Tensor  # int64 [n]
    interp: torch.Tensor  # int64 [n, 2]: down, up (index into LOWRES_INTERPOLATIONS)
    photo: torch.Tensor  # bool [n]
    photo_factor: torch.Tensor  # float64 [n, 3]: brightness, contrast, saturation
    photo_order: torch.Tensor  # int64 [n, 3]: order of (0 brightness, 1 contrast, 2 saturation)
    ra_op: torch.Tensor  # int64 [n, K]
    ra_value: torch.Tensor  # float64 [n, K]: signed magnitude from the table

    def __len__(self) -> int:
        return len(self.flip)

    def __getitem__(self, sl: slice) -> "Plan":
        return Plan(**{f.name: getattr(self, f.name)[sl] for f in fields(self)})


def sample_plan(spec: AugmentSpec, n: int, generator: torch.Generator) -> Plan:
    """Draw a batch's parameters; the same draws happen whatever the probabilities (stable streams)."""

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    flip = (u(n) < 0.5) & spec.flip
    crop = u(n) < spec.crop_prob
    box = _resized_crop_boxes(n, generator)
    lowres = u(n) < spec.lowres_prob
    side = (u(n) * 0.8 + 0.2).mul(SIZE).floor().long()  # int(U(0.2, 1.0) · 112)
    interp = torch.randint(len(LOWRES_INTERPOLATIONS), (n, 2), generator=generator)
    photo = u(n) < spec.photometric_prob
    photo_factor = 0.5 + u(n, 3)  # U(1 − 0.5, 1 + 0.5)
    perm = torch.argsort(u(n, 4), dim=1)  # ColorJitter's randperm(4); hue (3) is off
    photo_order = perm[perm != 3].view(n, 3)
    k = spec.ra_num_ops
    ra_op = torch.randint(len(RA_OPS), (n, k), generator=generator)
    ra_bin = torch.randint(1, max(spec.ra_magnitude, 1) + 1, (n, k), generator=generator)
    ra_sign = torch.randint(2, (n, k), generator=generator).bool()
    value = _RA_TABLE.double()[ra_op, ra_bin]
    value = torch.where(_RA_SIGNED[ra_op] & ra_sign, -value, value)
    return Plan(flip, crop, box, lowres, side, interp, photo, photo_factor, photo_order, ra_op, value)


def _resized_crop_boxes(n: int, g: torch.Generator, scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision ``RandomResizedCrop.get_params`` for n square SIZE images (10 tries, then whole image)."""
    tries = 10
    area = float(SIZE * SIZE)
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=g, dtype=torch.float64))
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * torch.rand(n, tries, generator=g, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    pos = torch.rand(n, tries, 2, generator=g, dtype=torch.float64)
    ok = (w > 0) & (w <= SIZE) & (h > 0) & (h <= SIZE)
    first = torch.where(ok.any(1), ok.long().argmax(1), torch.full((n,), -1))
    out = torch.tensor([[0, 0, SIZE, SIZE]]).repeat(n, 1)  # fallback: ratio 1 is inside (3/4, 4/3)
    rows = torch.nonzero(first >= 0).flatten()
    t = first[rows]
    hh, ww = h[rows, t], w[rows, t]
    top = (pos[rows, t, 0] * (SIZE - hh + 1)).floor().long()
    left = (pos[rows, t, 1] * (SIZE - ww + 1)).floor().long()
    out[rows] = torch.stack([top, left, hh, ww], 1)
    return out


# ------------------------------------------------------------------------------------ CPU stage
def apply_cpu(images: np.ndarray, plan: Plan) -> None:
    """AdaFace's crop and low-resolution steps, in place on uint8 ``N×112×112×3`` images."""
    import cv2

    for i in torch.nonzero(plan.crop).flatten().tolist():
        top, left, h, w = plan.box[i].tolist()
        keep = images[i, top : top + h, left : left + w].copy()
        images[i] = 0
        images[i, top : top + h, left : left + w] = keep
    for i in torch.nonzero(plan.lowres).flatten().tolist():
        s = int(plan.side[i])
        down, up = (LOWRES_INTERPOLATIONS[j] for j in plan.interp[i].tolist())
        small = cv2.resize(images[i], (s, s), interpolation=down)
        images[i] = cv2.resize(small, (SIZE, SIZE), interpolation=up)


# --------------------------------------------------------------------------------- device stage
@dataclass
class Packed:
    """A plan's device-stage work as two flat tensors plus host-side slices (no syncs to read)."""

    ints: torch.Tensor
    floats: torch.Tensor
    layout: dict[str, tuple[str, int, int]]  # name -> (which, start, length)

    def to(self, device: torch.device, non_blocking: bool = True) -> "Packed":
        return Packed(self.ints.to(device, non_blocking=non_blocking), self.floats.to(device, non_blocking=non_blocking), self.layout)

    def pin_memory(self) -> "Packed":
        return Packed(self.ints.pin_memory(), self.floats.pin_memory(), self.layout)

    def get(self, name: str) -> torch.Tensor | None:
        entry = self.layout.get(name)
        if entry is None:
            return None
        which, start, length = entry
        src = self.ints if which == "i" else self.floats
        return src[start : start + length]


def pack(plan: Plan) -> Packed:
    """Turn a plan into index lists and parameters for :func:`apply_device`."""
    ints: list[torch.Tensor] = []
    floats: list[torch.Tensor] = []
    layout: dict[str, tuple[str, int, int]] = {}
    sizes = {"i": 0, "f": 0}

    def add(name: str, t: torch.Tensor, which: str) -> None:
        t = t.reshape(-1)
        if t.numel() == 0:
            return
        layout[name] = (which, sizes[which], t.numel())
        sizes[which] += t.numel()
        (ints if which == "i" else floats).append(t.long() if which == "i" else t.double())

    photo_idx = torch.nonzero(plan.photo).flatten()
    for slot in range(3):
        for op in range(3):
            sel = photo_idx[plan.photo_order[photo_idx, slot] == op]
            add(f"photo{slot}.{op}", sel, "i")
            add(f"photo{slot}.{op}.f", plan.photo_factor[sel, op], "f")
    add("flip", torch.nonzero(plan.flip).flatten(), "i")
    geo = torch.tensor([RA_OPS.index(o) for o in _GEOMETRIC])
    for slot in range(plan.ra_op.shape[1]):
        ops, vals = plan.ra_op[:, slot], plan.ra_value[:, slot]
        sel = torch.nonzero(torch.isin(ops, geo)).flatten()
        if len(sel):
            add(f"ra{slot}.geo", sel, "i")
            add(f"ra{slot}.geo.theta", _thetas(ops[sel], vals[sel]), "f")
        for op_id, op in enumerate(RA_OPS):
            if op == "Identity" or op in _GEOMETRIC:
                continue
            sel = torch.nonzero(ops == op_id).flatten()
            add(f"ra{slot}.{op}", sel, "i")
            add(f"ra{slot}.{op}.v", vals[sel], "f")
    empty_i, empty_f = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    return Packed(torch.cat(ints) if ints else empty_i, torch.cat(floats) if floats else empty_f, layout)


def _thetas(ops: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Inverse affine matrices (2×3, row-major, float32) of RandAugment's geometric ops, per sample.

    torchvision's ``_get_inverse_affine_matrix`` at scale 1: ShearX shears by atan(value) about the
    top-left corner, TranslateX moves by ``int(value)`` pixels, Rotate turns counter-clockwise by
    ``value`` degrees about the centre. Vectorised so the loader thread holds the GIL briefly.
    """
    ops_np, v = ops.numpy(), values.numpy()
    shear = ops_np == RA_OPS.index("ShearX")
    trans = ops_np == RA_OPS.index("TranslateX")
    rot = np.where(ops_np == RA_OPS.index("Rotate"), np.radians(-v), 0.0)
    sx = np.where(shear, np.arctan(v), 0.0)  # radians(degrees(atan(v)))
    cx = np.where(shear, -SIZE * 0.5, 0.0)
    cy = cx
    tx = np.where(trans, np.trunc(v), 0.0)
    a, b = np.cos(rot), -np.cos(rot) * np.tan(sx) - np.sin(rot)
    c, d = np.sin(rot), -np.sin(rot) * np.tan(sx) + np.cos(rot)
    m = np.stack([d, -b, np.zeros_like(d), -c, a, np.zeros_like(d)], 1)
    m[:, 2] += m[:, 0] * (-cx - tx) + m[:, 1] * (-cy) + cx
    m[:, 5] += m[:, 3] * (-cx - tx) + m[:, 4] * (-cy) + cy
    return torch.from_numpy(m.astype(np.float32))


_BASE_GRID: dict[tuple[str, int | None], torch.Tensor] = {}


def _base_grid(device: torch.device) -> torch.Tensor:
    key = (device.type, device.index)
    if key not in _BASE_GRID:  # pixel centres relative to the image centre, homogeneous
        grid = torch.empty(1, SIZE, SIZE, 3, device=device)
        grid[..., 0].copy_(torch.linspace(-SIZE * 0.5 + 0.5, SIZE * 0.5 - 0.5, SIZE, device=device))
        grid[..., 1].copy_(torch.linspace(-SIZE * 0.5 + 0.5, SIZE * 0.5 - 0.5, SIZE, device=device).unsqueeze(-1))
        grid[..., 2].fill_(1)
        _BASE_GRID[key] = grid.view(1, SIZE * SIZE, 3)
    return _BASE_GRID[key]


def affine_nearest(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Per-sample inverse affine warp, nearest neighbour, zero fill (torchvision tensor semantics)."""
    n = x.shape[0]
    rescaled = theta.float().view(n, 2, 3).transpose(1, 2) / (0.5 * SIZE)  # square images: one scale
    grid = _base_grid(x.device).expand(n, -1, -1).bmm(rescaled).view(n, SIZE, SIZE, 2)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _per(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    # both weights are rounded to float32 from double, as torchvision's python-float ratio is
    r = ratio.double()
    return (_per(r.float()) * a + _per((1.0 - r).float()) * b).clamp_(0, 255).floor_()


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma truncated to whole levels, ``[n, 1, H, W]``."""
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).floor_()


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), f)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), f)


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)


def sharpness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(3, 1, 3, 3)
    blurred = x.clone()
    blurred[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=3).round_()
    return _blend(x, blurred, f)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    step = _per(torch.pow(2.0, 8.0 - bits.floor()).float())
    return (x / step).floor_() * step


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= _per(threshold.float()), 255.0 - x, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi == lo
    scale = torch.where(flat, torch.ones_like(hi), 255.0 / (hi - lo).clamp_min(1e-12))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((x - lo) * scale).clamp_(0, 255).floor_()


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation (torchvision's LUT rule), all channels at once."""
    n, c, h, w = x.shape
    v = x.reshape(n * c, h * w).long()
    rows = torch.arange(n * c, device=x.device).unsqueeze(1) * 256
    # scatter_add, not bincount: bincount reads the maximum back to the host (a sync on CUDA)
    hist = torch.zeros(n * c * 256, dtype=torch.long, device=x.device).scatter_add_(0, (v + rows).view(-1), torch.ones_like(v).view(-1)).view(n * c, 256)
    top = hist.gather(1, v.amax(1, keepdim=True))  # count of the highest occupied level
    step = torch.div(h * w - top, 255, rounding_mode="floor")  # sum of occupied bins but the last
    safe = step.clamp_min(1)
    lut = torch.div(hist.cumsum(1) + torch.div(safe, 2, rounding_mode="floor"), safe, rounding_mode="floor")
    lut = F.pad(lut, (1, 0))[:, :-1].clamp_(0, 255)
    out = torch.where(step == 0, v, lut.gather(1, v))
    return out.view(n, c, h, w).to(x.dtype)


_PHOTO = (brightness, contrast, saturation)
_RA_FN: dict[str, Any] = {
    "Brightness": lambda x, v: brightness(x, 1.0 + v),
    "Color": lambda x, v: saturation(x, 1.0 + v),
    "Contrast": lambda x, v: contrast(x, 1.0 + v),
    "Sharpness": lambda x, v: sharpness(x, 1.0 + v),
    "Posterize": posterize,
    "Solarize": solarize,
    "AutoContrast": lambda x, v: autocontrast(x),
    "Equalize": lambda x, v: equalize(x),
    "Grayscale": lambda x, v: grayscale(x).expand(-1, 3, -1, -1),
}


def _on_subset(x: torch.Tensor, idx: torch.Tensor | None, fn: Any, *args: Any) -> None:
    if idx is None:
        return
    x.index_copy_(0, idx, fn(x.index_select(0, idx), *args))


def apply_device(x: torch.Tensor, packed: Packed, ra_num_ops: int) -> torch.Tensor:
    """Photometric → flip → RandAugment on float ``N×3×112×112`` images in [0, 255] (in place)."""
    for slot in range(3):
        for op in range(3):
            _on_subset(x, packed.get(f"photo{slot}.{op}"), _PHOTO[op], packed.get(f"photo{slot}.{op}.f"))
    _on_subset(x, packed.get("flip"), lambda t: t.flip(3))
    for slot in range(ra_num_ops):
        _on_subset(x, packed.get(f"ra{slot}.geo"), affine_nearest, packed.get(f"ra{slot}.geo.theta"))
        for op, fn in _RA_FN.items():
            _on_subset(x, packed.get(f"ra{slot}.{op}"), fn, packed.get(f"ra{slot}.{op}.v"))
    return x


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 levels → (x − 127.5)/127.5, the arcface input convention."""
    return x.sub_(127.5).div_(127.5)
