"""TensorBoard scalars and restoration images for a run directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def restoration_grid(corrupted: np.ndarray, target: np.ndarray, restored: np.ndarray) -> np.ndarray:
    """uint8 (H, W) image: one row per example, columns input | target | restoration, each
    the middle Z slice and a middle Y slice; 2-pixel gaps."""
    rows = []
    for c, t, r in zip(corrupted, target, restored):
        tiles = []
        for volume in (c, t, r):
            volume = np.clip(np.asarray(volume, np.float32), 0.0, 1.0)
            axial = volume[:, :, volume.shape[2] // 2]
            coronal = volume[:, volume.shape[1] // 2, :]
            tiles.append(np.concatenate([axial, np.ones((axial.shape[0], 2)), coronal], axis=1))
        gap = np.ones((tiles[0].shape[0], 4))
        rows.append(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1))
        rows.append(np.ones((2, rows[-1].shape[1])))
    return (np.concatenate(rows[:-1], axis=0) * 255).astype(np.uint8)


class MetricWriter:
    """Scalars to TensorBoard (tensorboardX) and images as PNG files (+ TensorBoard)."""

    def __init__(self, workdir, enabled: bool = True):
        self.enabled = enabled
        self.image_dir = Path(workdir) / "images"
        self.tb = None
        if enabled:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
            self.image_dir.mkdir(parents=True, exist_ok=True)

    def scalars(self, step: int, values: dict) -> None:
        if self.tb:
            for name, value in values.items():
                self.tb.add_scalar(name, float(value), step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        if not self.enabled:
            return
        from PIL import Image
        Image.fromarray(image).save(self.image_dir / f"{name.replace('/', '_')}_{step:07d}.png")
        self.tb.add_image(name, image[None], step, dataformats="CHW")

    def close(self) -> None:
        if self.tb:
            self.tb.close()
