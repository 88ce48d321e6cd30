"""IR-SE backbones (the "ir_se" family of InsightFace_Pytorch / AdaFace ``net.py``).

IR-SE-50 is the backbone Arc2Face and DCFace train with AdaFace. Its layout differs from
arcface_torch's iresnet, so it lives here with AdaFace's parameter names:

* ``input_layer``: conv3×3(3→64) → BN → PReLU;
* ``body``: a flat sequence of units; each unit is ``res_layer`` = BN → conv3×3 → BN → PReLU →
  conv3×3 (carries the stride) → BN → SE (global pool → 1×1 conv C→C/16 → ReLU → 1×1 conv → sigmoid,
  no biases) plus ``shortcut_layer`` = 1×1 max-pool with the stride when the width is unchanged,
  else 1×1 conv + BN; units per stage [2,2,2,2] (18), [3,4,6,3] (34), [3,4,14,3] (50),
  [3,13,30,3] (100);
* ``output_layer``: BN2d → Dropout → flatten → Linear(512·7·7 → D) → BatchNorm1d(D, affine=False).

The forward returns the raw embedding (AdaFace's backbone returns it normalised plus its norm; the
frbench heads compute both from the raw vector). Models trained by frbench take RGB input like every
frbench model; AdaFace's released checkpoints expect BGR and are not loaded through this module.
"""

from __future__ import annotations

import torch
from torch import nn

IRSE_LAYOUTS: dict[str, list[int]] = {
    "irse18": [2, 2, 2, 2],
    "irse34": [3, 4, 6, 3],
    "irse50": [3, 4, 14, 3],
    "irse100": [3, 13, 30, 3],
}
_WIDTHS = (64, 128, 256, 512)


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BasicBlockIRSE(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cin == cout:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            SEModule(cout, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE(nn.Module):
    """IR-SE backbone: 112×112 RGB in (x−127.5)/127.5, raw embedding out."""

    def __init__(self, units: list[int], dropout: float = 0.0, num_features: int = 512):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        blocks: list[nn.Module] = []
        cin = 64
        for width, n in zip(_WIDTHS, units):
            blocks.append(BasicBlockIRSE(cin, width, 2))
            blocks += [BasicBlockIRSE(width, width, 1) for _ in range(n - 1)]
            cin = width
        self.body = nn.Sequential(*blocks)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, num_features),
            nn.BatchNorm1d(num_features, affine=False),
        )
        for m in self.modules():  # AdaFace's initialisation: kaiming (fan_out) for conv and linear
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, SEModule):
                nn.init.xavier_uniform_(m.fc1.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


def irse(arch: str, dropout: float = 0.0, num_features: int = 512) -> IRSE:
    """Build ``irse18``/``irse34``/``irse50``/``irse100`` (``ir_se_50`` and ``ir-se-50`` spellings too)."""
    key = arch.lower().replace("_", "").replace("-", "")
    if key not in IRSE_LAYOUTS:
        raise ValueError(f"unknown IR-SE arch {arch!r}; known: {', '.join(IRSE_LAYOUTS)}")
    return IRSE(IRSE_LAYOUTS[key], dropout=dropout, num_features=num_features)


def is_irse_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    return "input_layer.0.weight" in state_dict and any(k.startswith("body.") for k in state_dict)


def infer_irse_arch(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The IR-SE depth from the number of units of each width; None if it is not an IR-SE."""
    if not is_irse_state_dict(state_dict):
        return None
    units = {int(k.split(".")[1]) for k in state_dict if k.startswith("body.")}
    counts = [0, 0, 0, 0]
    for u in units:
        w = state_dict.get(f"body.{u}.res_layer.1.weight")
        if w is None or int(w.shape[0]) not in _WIDTHS:
            return None
        counts[_WIDTHS.index(int(w.shape[0]))] += 1
    for name, layout in IRSE_LAYOUTS.items():
        if counts == layout:
            return name
    return None


def build_irse(path, state_dict: dict[str, torch.Tensor]) -> tuple[IRSE, str, int]:
    """Build the IR-SE a state dict describes and load it strictly; InputError names the file."""
    from ..errors import InputError

    arch = infer_irse_arch(state_dict)
    if arch is None:
        raise InputError(path, "state dict looks like an IR-SE backbone but its unit counts match none of " + ", ".join(IRSE_LAYOUTS))
    lin = state_dict.get("output_layer.3.weight")
    if lin is None or lin.ndim != 2:
        raise InputError(path, "IR-SE state dict has no 'output_layer.3.weight' (the embedding layer)")
    model = irse(arch, num_features=int(lin.shape[0]))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise InputError(path, f"state dict does not match IR-SE {arch}: {str(err).splitlines()[0][:200]}") from None
    return model, arch, int(lin.shape[0])
