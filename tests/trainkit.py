"""Helpers for the training tests: tiny datasets in the real formats and a tiny backbone."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

REC_MAGIC = 0xCED7230A


class TinyNet(nn.Module):
    """A 112×112 → D backbone cheap enough for CPU tests (BN, PReLU and dropout like the real ones)."""

    def __init__(self, dropout: float = 0.0, num_features: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, 4, 1, bias=False), nn.BatchNorm2d(8), nn.PReLU(8),
            nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.PReLU(16),
            nn.AvgPool2d(2),
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(16 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.dropout(torch.flatten(self.body(x), 1))))


def register_tiny() -> None:
    from fr_bench.train import register_backbone

    register_backbone("tiny")(lambda dropout=0.0, num_features=512: TinyNet(dropout, num_features))


def identity_images(n_ids: int, per_id: int, seed: int = 0) -> list[list[np.ndarray]]:
    """Per identity, noisy variants of one smooth random face-sized pattern (learnable classes)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_ids):
        base = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (112, 112), interpolation=cv2.INTER_CUBIC).astype(int)
        out.append([np.clip(base + rng.integers(-25, 26, base.shape), 0, 255).astype(np.uint8) for _ in range(per_id)])
    return out


def encode(img: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def make_folder_dataset(root: Path, n_ids: int = 4, per_id: int = 6, seed: int = 0) -> Path:
    for i, imgs in enumerate(identity_images(n_ids, per_id, seed)):
        d = root / f"id{i:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(imgs):
            (d / f"{k:02d}.jpg").write_bytes(encode(img))
    return root


# ---------------------------------------------------------------------- RecordIO, written by hand
def rec_payload(label: float | list[float], image: bytes, id1: int = 0) -> bytes:
    """mxnet ``pack``: IRHeader 'IfQQ' (flag, label, id, id2), label array after it when flag > 0."""
    if isinstance(label, (list, tuple)):
        return struct.pack("<IfQQ", len(label), 0.0, id1, 0) + struct.pack(f"<{len(label)}f", *label) + image
    return struct.pack("<IfQQ", 0, float(label), id1, 0) + image


def rec_frame(payload: bytes) -> bytes:
    """dmlc RecordIO framing: split where the magic word sits at a 4-byte-aligned offset."""
    magic = struct.pack("<I", REC_MAGIC)
    parts, start = [], 0
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i : i + 4] == magic:
            parts.append(payload[start:i])
            start = i + 4
    parts.append(payload[start:])
    out = b""
    for k, part in enumerate(parts):
        cflag = 0 if len(parts) == 1 else (1 if k == 0 else (3 if k == len(parts) - 1 else 2))
        out += magic + struct.pack("<I", (cflag << 29) | len(part)) + part
        if k == len(parts) - 1:
            out += b"\0" * (-len(part) % 4)
    return out


def write_rec(folder: Path, records: list[tuple[int, bytes]]) -> tuple[Path, Path, dict[int, int]]:
    """Write ``train.rec`` / ``train.idx`` from (key, payload) pairs; returns the offsets."""
    folder.mkdir(parents=True, exist_ok=True)
    offsets: dict[int, int] = {}
    blob = b""
    for key, payload in records:
        offsets[key] = len(blob)
        blob += rec_frame(payload)
    (folder / "train.rec").write_bytes(blob)
    (folder / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in offsets.items()))
    return folder / "train.rec", folder / "train.idx", offsets


def make_rec_dataset(folder: Path, n_ids: int = 3, per_id: int = 4, seed: int = 1, header0: bool = True) -> tuple[Path, dict[int, int], list[int]]:
    """An insightface-style face set: record 0 = (images + 1, …) index header, then image records."""
    images = identity_images(n_ids, per_id, seed)
    recs: list[tuple[int, bytes]] = []
    labels: list[int] = []
    key = 1
    for label, imgs in enumerate(images):
        for img in imgs:
            recs.append((key, rec_payload(float(label), encode(img), key)))
            labels.append(label)
            key += 1
    if header0:
        recs.insert(0, (0, rec_payload([float(key), float(key + n_ids)], b"")))
    _, _, offsets = write_rec(folder, recs)
    return folder, offsets, labels


# ------------------------------------------------------------------------------------- DDP
class TinyNoBN(nn.Module):
    """TinyNet without BatchNorm: its forward is per-sample, so a 2-process run must equal 1 process
    (BatchNorm statistics are per process under DDP, as in arcface_torch)."""

    def __init__(self, dropout: float = 0.0, num_features: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1), nn.PReLU(8), nn.Conv2d(8, 16, 3, 2, 1), nn.PReLU(16), nn.AvgPool2d(2))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(16 * 7 * 7, num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.body(x), 1)))


def register_tiny_nobn() -> None:
    from fr_bench.train import register_backbone

    register_backbone("tiny-nobn")(lambda dropout=0.0, num_features=512: TinyNoBN(dropout, num_features))


def ddp_recipe() -> dict:
    return {"model": {"arch": "tiny-nobn", "dropout": 0.3, "embedding_size": 16},
            "head": {"type": "cosface", "s": 64.0, "m": 0.35},
            "optimizer": {"lr": 0.1, "lr_batch_size": 8, "grad_clip": 5.0, "clip_head": True},
            "augment": {"flip": True, "randaugment": {"num_ops": 2, "magnitude": 9}},
            "epochs": 2, "batch_size": 8}


def ddp_worker(rank: int, world: int, port: int, dataset: str, output: str, cache: str) -> None:
    """One torchrun-like process: environment as torchrun sets it, then frbench's trainer."""
    import faulthandler
    import os

    faulthandler.enable()  # a crash in a child shows its Python stack in the test log
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    register_tiny_nobn()
    from fr_bench.config import TrainRecipe
    from fr_bench.train import TrainOptions, train

    opts = TrainOptions(output=Path(output), cache_dir=Path(cache), device="cpu", seed=5, workers=1, deterministic=True)
    train(dataset, TrainRecipe.model_validate(ddp_recipe()), opts, say=lambda m: None, warn=lambda m: None)
