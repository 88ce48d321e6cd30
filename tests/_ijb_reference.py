"""A literal re-implementation of insightface ``recognition/arcface_torch/eval_ijbc.py`` (test oracle).

Written independently from the facts in /work/shared/reference/protocols.md §2 and the script's
behaviour: one image at a time — ``cv2.imread``, skimage similarity to the 96×112(+8) template in
float32, ``warpAffine`` 112×112, BGR→RGB, the mirror stacked after each crop, batches normalised as
``(x/255 − 0.5)/0.5``, features reshaped to ``[n, 2·D]`` and the halves summed; faceness scores as
float32; per-template loops over media (mean of frames, sum over media); ``sklearn`` normalise;
scores in sub-lists of 100,000 pairs; ``roc_curve`` defaults, curves flipped, nearest-FPR index by
``min`` over (|fpr − x|, index) tuples. Deliberately slow and plain: it is the oracle, not the code.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import cv2
import numpy as np
import pandas as pd
import torch
from skimage import transform as sktf
from sklearn.metrics import auc, roc_curve
from sklearn.preprocessing import normalize

X_LABELS = [10 ** -6, 10 ** -5, 10 ** -4, 10 ** -3, 10 ** -2, 10 ** -1]


def reference_src() -> np.ndarray:
    src = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
                   dtype=np.float32)
    src[:, 0] += 8.0
    return src


def reference_crop(img_bgr: np.ndarray, landmark5: np.ndarray) -> np.ndarray:
    """The script's ``Embedding.get`` without the model: aligned RGB crop, HWC uint8."""
    tform = sktf.SimilarityTransform()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # skimage 0.26 deprecates estimate()
        tform.estimate(landmark5, reference_src())
    m = tform.params[0:2, :]
    img = cv2.warpAffine(img_bgr, m, (112, 112), borderValue=0.0)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def reference_image_features(image_dir: str, lines: list[str], forward: Callable[[torch.Tensor], np.ndarray],
                             batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``[N, 2·D]`` features (original | mirror) and float32 faceness, one image at a time."""
    feats: list[np.ndarray] = []
    faceness: list[str] = []
    blob: list[np.ndarray] = []

    def flush() -> None:
        data = np.stack(blob).astype(np.float64)  # the script fills a float64 array
        x = torch.Tensor(data)
        x.div_(255).sub_(0.5).div_(0.5)
        out = np.asarray(forward(x), dtype=np.float32)
        feats.append(out.reshape(len(blob) // 2, 2 * out.shape[1]))
        blob.clear()

    for line in lines:
        parts = line.strip().split(" ")
        img = cv2.imread(os.path.join(image_dir, parts[0]))
        lmk = np.array([float(v) for v in parts[1:-1]], dtype=np.float32).reshape((5, 2))
        crop = reference_crop(img, lmk)
        blob.append(np.transpose(crop, (2, 0, 1)))
        blob.append(np.transpose(np.fliplr(crop), (2, 0, 1)))
        faceness.append(parts[-1])
        if len(blob) == 2 * batch_size:
            flush()
    if blob:
        flush()
    return np.concatenate(feats), np.array(faceness).astype(np.float32)


def reference_templates(img_feats: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique_templates = np.unique(templates)
    out = np.zeros((len(unique_templates), img_feats.shape[1]))
    for i, tid in enumerate(unique_templates):
        (rows,) = np.where(templates == tid)
        t_feats = img_feats[rows]
        t_medias = medias[rows]
        per_media = []
        for mid, count in zip(*np.unique(t_medias, return_counts=True)):
            (mrows,) = np.where(t_medias == mid)
            per_media.append(t_feats[mrows] if count == 1 else np.mean(t_feats[mrows], axis=0, keepdims=True))
        out[i] = np.sum(np.array(per_media), axis=0)
    return normalize(out), unique_templates


def reference_scores(tfeats: np.ndarray, unique_templates: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for i, tid in enumerate(unique_templates):
        template2id[tid] = i
    score = np.zeros((len(p1),))
    everything = np.arange(len(p1))
    for s in [everything[i : i + 100000] for i in range(0, len(p1), 100000)]:
        f1 = tfeats[template2id[p1[s]]]
        f2 = tfeats[template2id[p2[s]]]
        score[s] = np.sum(f1 * f2, -1).flatten()
    return score


def reference_tar(label: np.ndarray, score: np.ndarray) -> tuple[dict[str, float], float, np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(label, score)
    roc_auc = auc(fpr, tpr)
    fpr = np.flipud(fpr)
    tpr = np.flipud(tpr)
    out = {}
    for x in X_LABELS:
        _, idx = min(list(zip(abs(fpr - x), range(len(fpr)))))
        out[str(x)] = float(tpr[idx])
    return out, float(roc_auc), fpr, tpr


def run_reference(root: str, target: str, forward: Callable[[torch.Tensor], np.ndarray], batch_size: int = 32) -> dict:
    """The whole script on ``root`` (= ``.../IJBC``) with ``forward`` as the network."""
    prefix = target.lower()
    meta = pd.read_csv(os.path.join(root, "meta", f"{prefix}_face_tid_mid.txt"), sep=" ", header=None).values
    templates, medias = meta[:, 1].astype(int), meta[:, 2].astype(int)
    pairs = pd.read_csv(os.path.join(root, "meta", f"{prefix}_template_pair_label.txt"), sep=" ", header=None).values
    p1, p2, label = pairs[:, 0].astype(int), pairs[:, 1].astype(int), pairs[:, 2].astype(int)
    with open(os.path.join(root, "meta", f"{prefix}_name_5pts_score.txt")) as f:
        lines = f.readlines()
    img_feats, faceness = reference_image_features(os.path.join(root, "loose_crop"), lines, forward, batch_size)
    half = img_feats.shape[1] // 2
    feats = img_feats[:, :half] + img_feats[:, half:]
    feats = feats * faceness[:, np.newaxis]
    tfeats, unique_templates = reference_templates(feats, templates, medias)
    score = reference_scores(tfeats, unique_templates, p1, p2)
    tar, roc_auc, _, _ = reference_tar(label, score)
    return {"template_feats": tfeats, "unique_templates": unique_templates, "scores": score, "labels": label,
            "tar": tar, "auc": roc_auc, "image_feats": feats}
