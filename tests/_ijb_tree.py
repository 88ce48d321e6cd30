"""Synthetic IJB-style data and a tiny iresnet (tests/test_ijb.py and benchmarks/ijb_speed.py).

``<data_dir>/IJBC/loose_crop/<k>.jpg`` plus ``meta/ijbc_face_tid_mid.txt``,
``ijbc_template_pair_label.txt`` and ``ijbc_name_5pts_score.txt``. Each subject has one smooth random
"face"; every loose crop is that face under a random similarity transform on a larger canvas, with
per-media brightness and per-frame noise, and its five landmarks are where the transform puts the
arcface template points (plus jitter). Templates span several media, media several frames (video),
and some media ids recur in two templates of the same subject, as in IJB-C.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

# the 96×112 SphereFace points shifted right by 8 px: where aligned crops put the five landmarks
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])

#: pixel-level spreads: identity around the common base, per-media lighting, per-frame noise
IDENTITY, LIGHTING, NOISE = 30.0, 30.0, 10.0

_FACES: np.ndarray | None = None


def _init(faces: np.ndarray) -> None:
    global _FACES
    _FACES = faces
    cv2.setNumThreads(1)


def _render(spec: tuple) -> None:
    path, subject, w, h, affine, lighting_seed, seed, quality = spec
    assert _FACES is not None
    rng = np.random.default_rng(seed)
    # per-media lighting: a smooth random field shared by the frames of one media
    light = np.random.default_rng(lighting_seed).normal(0, LIGHTING, (3, 3, 3)).astype(np.float32)
    face = _FACES[subject].astype(np.float32) + cv2.resize(light, (112, 112), interpolation=cv2.INTER_CUBIC)
    img = cv2.warpAffine(face, affine, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    noisy = img + rng.normal(0, NOISE, img.shape).astype(np.float32)
    cv2.imwrite(path, np.clip(noisy, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])


def write_ijb_tree(
    data_dir: str | Path,
    name: str = "ijbc",
    *,
    subjects: int = 16,
    templates_per_subject: int = 4,
    max_media: int = 3,
    max_frames: int = 3,
    size: tuple[int, int] = (120, 220),
    max_impostors: int | None = None,
    seed: int = 0,
    workers: int = 1,
    quality: int = 90,
) -> dict:
    """Write the tree under ``data_dir/<NAME>``; returns counts."""
    rng = np.random.default_rng(seed)
    root = Path(data_dir) / name.upper()
    crops = root / "loose_crop"
    (root / "meta").mkdir(parents=True, exist_ok=True)
    crops.mkdir(parents=True, exist_ok=True)
    # subjects share a common base so impostor scores are not trivially low
    base = rng.uniform(40, 215, (6, 6, 3))
    faces = np.stack([
        cv2.resize((base + rng.normal(0, IDENTITY, (6, 6, 3))).astype(np.float32), (112, 112), interpolation=cv2.INTER_CUBIC)
        for _ in range(subjects)
    ])

    n_templates = subjects * templates_per_subject
    template_ids = rng.choice(np.arange(1, 20 * n_templates + 1), n_templates, replace=False)  # sparse, unsorted
    next_media = 1000
    tid_rows, lmk_rows, specs = [], [], []
    template_subject = []
    k = 0
    for s in range(subjects):
        subject_media: list[int] = []
        for t in range(templates_per_subject):
            tid = int(template_ids[s * templates_per_subject + t])
            template_subject.append((tid, s))
            for _ in range(int(rng.integers(1, max_media + 1))):
                if subject_media and rng.random() < 0.15:  # the same video/photo in another template
                    mid = int(rng.choice(subject_media))
                else:
                    next_media += int(rng.integers(1, 50))
                    mid = next_media
                    subject_media.append(mid)
                lighting_seed = int(rng.integers(2**31))
                for _ in range(int(rng.integers(1, max_frames + 1))):
                    k += 1
                    w, h = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
                    scale = rng.uniform(0.7, 0.95) * min(w, h) / 112
                    angle = rng.uniform(-0.35, 0.35)
                    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
                    centre = np.array([w / 2, h / 2]) + rng.uniform(-0.05, 0.05, 2) * min(w, h)
                    affine = np.hstack([rot, (centre - rot @ np.array([56.0, 56.0]))[:, None]])
                    lmk = TEMPLATE @ rot.T + affine[:, 2] + rng.normal(0, 0.8, (5, 2))
                    decimals = int(rng.integers(1, 7))
                    fname = f"{k}.jpg"
                    tid_rows.append(f"{fname} {tid} {mid}")
                    coords = " ".join(f"{v:.{decimals}f}" for v in lmk.reshape(-1))
                    lmk_rows.append(f"{fname} {coords} {rng.uniform(0.3, 1.0):.6f}")
                    specs.append((str(crops / fname), s, w, h, affine, lighting_seed, int(rng.integers(2**31)), quality))

    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init, initargs=(faces,)) as pool:
            list(pool.map(_render, specs, chunksize=64))
    else:
        _init(faces)
        for spec in specs:
            _render(spec)

    # pairs: every same-subject template pair is genuine; impostors are all the others, or a sample
    tids = np.array([t for t, _ in template_subject], dtype=np.int64)
    subj = np.array([s for _, s in template_subject], dtype=np.int64)
    gi, gj = _genuine_indices(subj)
    n_t = len(tids)
    if max_impostors is None or n_t * (n_t - 1) // 2 <= 2 * max_impostors:
        ii, ij = np.triu_indices(n_t, 1)
    else:  # never list all n_t² pairs of a big tree
        a, b = rng.integers(0, n_t, (2, 3 * max_impostors))
        ii, ij = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], 1), axis=0).T
    other = subj[ii] != subj[ij]
    ii, ij = ii[other], ij[other]
    if max_impostors is not None and len(ii) > max_impostors:
        keep = np.sort(rng.choice(len(ii), max_impostors, replace=False))
        ii, ij = ii[keep], ij[keep]
    i, j = np.r_[gi, ii], np.r_[gj, ij]
    label = np.r_[np.ones(len(gi), np.int64), np.zeros(len(ii), np.int64)]
    order = rng.permutation(len(i))
    pairs = np.stack([tids[i[order]], tids[j[order]], label[order]], 1)
    prefix = name.lower()
    (root / "meta" / f"{prefix}_face_tid_mid.txt").write_text("\n".join(tid_rows) + "\n")
    (root / "meta" / f"{prefix}_name_5pts_score.txt").write_text("\n".join(lmk_rows) + "\n")
    np.savetxt(root / "meta" / f"{prefix}_template_pair_label.txt", pairs, fmt="%d", delimiter=" ")
    return {"root": root, "images": k, "templates": n_templates, "pairs": len(pairs), "genuine": len(gi)}


def _genuine_indices(subj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of templates with the same subject (templates are grouped by subject)."""
    out_i, out_j = [], []
    for s in np.unique(subj):
        idx = np.flatnonzero(subj == s)
        a, b = np.triu_indices(len(idx), 1)
        out_i.append(idx[a])
        out_j.append(idx[b])
    return np.concatenate(out_i), np.concatenate(out_j)


def meta_file(root: Path, kind: str) -> Path:
    """``kind`` ∈ tid_mid | pairs | landmarks."""
    prefix = Path(root).name.lower()
    name = {"tid_mid": "face_tid_mid", "pairs": "template_pair_label", "landmarks": "name_5pts_score"}[kind]
    return Path(root) / "meta" / f"{prefix}_{name}.txt"


def tiny_iresnet(dim: int = 32, seed: int = 0):
    """A very small network of arcface_torch ``IBasicBlock``s (strided stem, 7×7 head, BN1d features).

    Random weights with non-trivial BN statistics, in eval mode; it costs ~3 MMAC per image, so the
    equality tests run the whole pipeline in seconds on two CPU cores.
    """
    import torch
    from torch import nn

    from fr_bench.models.iresnet import IBasicBlock

    def down(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    class TinyIResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 4, 4, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.prelu = nn.PReLU(8)
            self.layer1 = IBasicBlock(8, 16, 2, down(8, 16))
            self.layer2 = IBasicBlock(16, 32, 2, down(16, 32))
            self.bn2 = nn.BatchNorm2d(32)
            self.fc = nn.Linear(32 * 7 * 7, dim)
            self.features = nn.BatchNorm1d(dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.layer2(self.layer1(self.prelu(self.bn1(self.conv1(x)))))
            return self.features(self.fc(torch.flatten(self.bn2(x), 1)))

    torch.manual_seed(seed)
    model = TinyIResNet()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    print(write_ijb_tree(sys.argv[1], workers=os.cpu_count() or 1))
