"""The anchor for ``eval_speed.py``: insightface ``recognition/arcface_torch/eval/verification.py``'s
``load_bin`` + ``test`` path, re-created step for step (frbench's own code, not a copy).

``load_bin``: unpickle ``(bins, issame_list)``, decode every image one at a time (mxnet's
``imdecode`` → RGB; here OpenCV then BGR→RGB, the same libjpeg decode), HWC → CHW uint8, and keep an
unflipped and a horizontally flipped copy. ``test``: for each copy, batches taken as the window
``data[bb - batch_size : bb]`` (so the last batch overlaps), ``((x / 255) − 0.5) / 0.5``, forward,
embeddings into a float64 array; the mean embedding norm by a Python loop; the two copies summed and
L2-normalised (``sklearn.preprocessing.normalize``); then ``evaluate``: ``calculate_roc`` (10
contiguous folds, thresholds 0…4 step 0.01, a Python loop over thresholds per fold for the training
accuracy and the test TPR/FPR) and ``calculate_val`` (thresholds step 0.001, a Python loop per fold,
``scipy.interpolate.interp1d`` to FAR 1e-3, over the unique FAR values as current SciPy requires).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import torch


def load_bin(path: Path) -> tuple[list[torch.Tensor], list[bool]]:
    with open(path, "rb") as f:
        bins, issame = pickle.load(f, encoding="bytes")
    n = len(issame) * 2
    data = [torch.zeros((n, 3, 112, 112), dtype=torch.uint8) for _ in range(2)]
    for idx in range(n):
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(bins[idx], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))
        data[0][idx][:] = torch.from_numpy(chw)
        data[1][idx][:] = torch.from_numpy(np.ascontiguousarray(chw[:, :, ::-1]))
    return data, list(issame)


def _accuracy(threshold: float, dist: np.ndarray, same: np.ndarray) -> tuple[float, float, float]:
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, same))
    fp = np.sum(np.logical_and(predict, np.logical_not(same)))
    tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(same)))
    fn = np.sum(np.logical_and(np.logical_not(predict), same))
    tpr = 0 if tp + fn == 0 else float(tp) / float(tp + fn)
    fpr = 0 if fp + tn == 0 else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def _val_far(threshold: float, dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    predict = np.less(dist, threshold)
    ta = np.sum(np.logical_and(predict, same))
    fa = np.sum(np.logical_and(predict, np.logical_not(same)))
    return float(ta) / float(np.sum(same)), float(fa) / float(np.sum(np.logical_not(same)))


def evaluate(embeddings: np.ndarray, issame: list[bool], nfolds: int = 10) -> np.ndarray:
    from scipy import interpolate
    from sklearn.model_selection import KFold

    e1, e2 = embeddings[0::2], embeddings[1::2]
    same = np.asarray(issame)
    n = min(len(same), e1.shape[0])
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    folds = list(KFold(n_splits=nfolds, shuffle=False).split(np.arange(n)))
    thresholds = np.arange(0, 4, 0.01)
    accuracy = np.zeros(nfolds)
    tprs, fprs = np.zeros((nfolds, len(thresholds))), np.zeros((nfolds, len(thresholds)))
    for k, (train, test) in enumerate(folds):
        acc_train = np.zeros(len(thresholds))
        for i, t in enumerate(thresholds):
            _, _, acc_train[i] = _accuracy(t, dist[train], same[train])
        best = int(np.argmax(acc_train))
        for i, t in enumerate(thresholds):
            tprs[k, i], fprs[k, i], _ = _accuracy(t, dist[test], same[test])
        _, _, accuracy[k] = _accuracy(thresholds[best], dist[test], same[test])
    thresholds = np.arange(0, 4, 0.001)
    for train, test in folds:
        far_train = np.zeros(len(thresholds))
        for i, t in enumerate(thresholds):
            _, far_train[i] = _val_far(t, dist[train], same[train])
        if np.max(far_train) >= 1e-3:
            # SciPy ≥ 1.x refuses repeated x; insightface's later verification code interpolates over the
            # unique FAR values, which is what the reference computes wherever it still runs
            _, first = np.unique(far_train, return_index=True)
            threshold = interpolate.interp1d(far_train[first], thresholds[first], kind="slinear")(1e-3)
        else:
            threshold = 0.0
        _val_far(threshold, dist[test], same[test])
    return accuracy


@torch.no_grad()
def test(data_set: tuple[list[torch.Tensor], list[bool]], backbone: torch.nn.Module, batch_size: int) -> np.ndarray:
    import sklearn.preprocessing

    data_list, issame = data_set
    embeddings_list = []
    for data in data_list:
        embeddings = None
        ba = 0
        while ba < data.shape[0]:
            bb = min(ba + batch_size, data.shape[0])
            count = bb - ba
            batch = data[bb - batch_size: bb]
            out = backbone(((batch / 255) - 0.5) / 0.5).detach().cpu().numpy()
            if embeddings is None:
                embeddings = np.zeros((data.shape[0], out.shape[1]))
            embeddings[ba:bb, :] = out[(batch_size - count):, :]
            ba = bb
        embeddings_list.append(embeddings)
    xnorm, cnt = 0.0, 0
    for embed in embeddings_list:
        for i in range(embed.shape[0]):
            xnorm += np.linalg.norm(embed[i])
            cnt += 1
    embeddings = sklearn.preprocessing.normalize(embeddings_list[0] + embeddings_list[1])
    return evaluate(embeddings, issame)
