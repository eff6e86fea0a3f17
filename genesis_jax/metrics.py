"""TensorBoard scalars and labelled PNG grids of validation examples for a run directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def labelled_grid(columns: dict, title: str = "", row_labels=None, scale: int = 3, channels=None,
                  dims: int = 3) -> np.ndarray:
    """uint8 (H, W) image readable at a glance: one row per example; for each named column
    (e.g. corrupted / restored / original) two views of the cube, the middle axial (Z)
    slice and the middle coronal (Y) slice, each upsampled by `scale` without blurring
    (nearest neighbour); column and view names on top, a title above, row labels at the
    left. columns: name -> array (N, X, Y, Z) or (N, X, Y, Z, C) in [0, 1]; C > 1 gives a
    column per channel, named by `channels` (the data's channel names) or "channel c".
    dims=2: images (N, H, W) or (N, H, W, C), one view each, the image itself."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    columns = split_channels(columns, channels, dims)
    names = list(columns)
    volumes = [np.clip(np.asarray(columns[name], np.float32), 0.0, 1.0) for name in names]
    if dims == 2:
        n, dx, dy = volumes[0].shape
        views, sizes = (("image", lambda v: v),), (dy,)
    else:
        n, dx, dy, dz = volumes[0].shape
        views = (("axial z=%d" % (dz // 2), lambda v: v[:, :, dz // 2]),
                 ("coronal y=%d" % (dy // 2), lambda v: v[:, dy // 2, :]))
        sizes = (dy, dz)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    # a view's slot is as wide as its tile or its name, whichever is wider (names never overlap)
    tile_w = [int(max(size * scale, probe.textlength(view, font=font) + 4)) for size, (view, _) in zip(sizes, views)]
    left = 12 + max((probe.textlength(str(label), font=font) for label in row_labels), default=0) \
        if row_labels else 6
    gap, left, top = 6, int(left), 44 if title else 30
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


def split_channels(columns: dict, channels=None, dims: int = 3) -> dict:
    """name -> (N, X, Y, Z) (2D: (N, H, W)): channel axes squeezed (C = 1) or spread over
    columns (C > 1), each named by its channel's name when `channels` has one per channel."""
    out = {}
    for name, array in columns.items():
        array = np.asarray(array)
        if array.ndim == dims + 2 and array.shape[-1] == 1:
            out[name] = array[..., 0]
        elif array.ndim == dims + 2:
            named = channels is not None and len(channels) == array.shape[-1]
            out.update({f"{name}, {channels[c] if named else f'channel {c}'}": array[..., c]
                        for c in range(array.shape[-1])})
        else:
            out[name] = array
    return out
