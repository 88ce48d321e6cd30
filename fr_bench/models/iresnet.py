"""iResNet backbones with arcface_torch-compatible parameter names.

A state dict saved by insightface ``recognition/arcface_torch`` (``backbones/iresnet.py``) loads here
strictly, and one saved here loads there: same module names, same shapes, same forward.
"""

from __future__ import annotations

import torch
from torch import nn

LAYOUTS: dict[str, list[int]] = {
    "r18": [2, 2, 2, 2],
    "r34": [3, 4, 6, 3],
    "r50": [3, 4, 14, 3],
    "r100": [3, 13, 30, 3],
    "r200": [6, 26, 60, 6],
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN → conv3×3 → BN → PReLU → conv3×3(stride) → BN, plus shortcut; no activation after the sum."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """arcface_torch iResNet: 112×112 RGB in (x−127.5)/127.5, raw (unnormalised) embedding out."""

    fc_scale = 7 * 7

    def __init__(self, layers: list[int], dropout: float = 0.0, num_features: int = 512, fp16: bool = False):
        super().__init__()
        self.fp16 = fp16
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # fixed to 1 in the reference; only the bias trains
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-05),
        )
        mods = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        mods += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.bn2(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp16 and x.is_cuda:
            with torch.autocast("cuda", dtype=torch.float16):
                x = self.dropout(self.forward_trunk(x))
        else:
            x = self.dropout(self.forward_trunk(x))
        # arcface_torch keeps the final fc (and the BN1d after it) in fp32, also under a caller's autocast
        with torch.autocast(x.device.type, enabled=False):
            return self.features(self.fc(x.float()))


def iresnet(arch: str, dropout: float = 0.0, num_features: int = 512, fp16: bool = False) -> IResNet:
    """Build ``r18``/``r34``/``r50``/``r100``/``r200`` (also accepts ``iresnet50`` style names)."""
    key = arch.lower().replace("iresnet", "r")
    if key not in LAYOUTS:
        raise ValueError(f"unknown iresnet arch {arch!r}; known: {', '.join(LAYOUTS)}")
    return IResNet(LAYOUTS[key], dropout=dropout, num_features=num_features, fp16=fp16)


def infer_arch(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Guess the iresnet depth from a state dict's block counts; None if it is not an iresnet."""
    counts = []
    for layer in range(1, 5):
        idx = {int(k.split(".")[1]) for k in state_dict if k.startswith(f"layer{layer}.")}
        counts.append(max(idx) + 1 if idx else 0)
    for name, layout in LAYOUTS.items():
        if counts == layout:
            return name
    return None
