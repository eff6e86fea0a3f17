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


def labelled_grid(columns: dict, title: str = "", row_labels=None, scale: int = 3) -> np.ndarray:
    """uint8 (H, W) image readable at a glance: one row per example; for each named column
    (e.g. corrupted / restored / original) two views of the cube, the middle axial (Z)
    slice and the middle coronal (Y) slice, each upsampled by `scale` without blurring
    (nearest neighbour); column and view names on top, a title above, row labels at the
    left. columns: name -> array (N, X, Y, Z) in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    names = list(columns)
    volumes = [np.clip(np.asarray(columns[name], np.float32), 0.0, 1.0) for name in names]
    n, dx, dy, dz = volumes[0].shape
    views = (("axial z=%d" % (dz // 2), lambda v: v[:, :, dz // 2]), ("coronal y=%d" % (dy // 2), lambda v: v[:, dy // 2, :]))
    tile_w = [dy * scale, dz * scale]
    gap, left, top = 6, 110 if row_labels else 6, 44 if title else 30
    width = left + len(names) * (sum(tile_w) + 3 * gap) + gap
    height = top + n * (dx * scale + gap) + gap
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((6, 4), title, fill=0, font=font)
    for c, (name, volume) in enumerate(zip(names, volumes)):
        x0 = left + c * (sum(tile_w) + 3 * gap)
        draw.text((x0, top - 26), name, fill=0, font=font)
        for k, (view, _) in enumerate(views):
            draw.text((x0 + sum(tile_w[:k]) + k * gap, top - 13), view, fill=96, font=font)
        for r in range(n):
            y0 = top + r * (dx * scale + gap)
            for k, (_, cut) in enumerate(views):
                pixels = np.kron(cut(volume[r]), np.ones((scale, scale)))
                tile = Image.fromarray((pixels * 255).round().astype(np.uint8))
                image.paste(tile, (x0 + sum(tile_w[:k]) + k * gap, y0))
    for r, label in enumerate(row_labels or []):
        draw.text((6, top + r * (dx * scale + gap) + 4), str(label), fill=0, font=font)
    return np.asarray(image)


def save_png(image: np.ndarray, path) -> None:
    from PIL import Image
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


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
