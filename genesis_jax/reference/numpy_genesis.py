"""Reference Genesis pipeline in NumPy + Python loops, written from GUIDE.md section 3.

It works the way the official code does: one cube at a time, scalar draws from
Python's `random`, a Python loop over the 10,000 local-shuffle blocks with a NumPy
shuffle of each block, and the Bezier map applied with np.interp over 100,000 curve
samples. It is the baseline of benchmarks/deform_throughput.py and a second, independent
implementation the statistical tests compare against.

Every rule of the spec is written per side, so the same code corrupts 3D cubes (X, Y, Z)
and 2D images (H, W), Models Genesis 2D (DeformConfig.dims): loops over the array's axes.
"""

from __future__ import annotations

import random

import numpy as np

BEZIER_SAMPLES = 100_000


class ReferencePipeline:
    """Per-cube deformations; every method draws from this object's generators."""

    def __init__(self, seed: int = 0, flip_rate=0.4, local_rate=0.5, nonlinear_rate=0.9,
                 paint_rate=0.9, inpaint_rate=0.2, local_blocks=10_000, flip_axes="original"):
        self.random = random.Random(seed)
        # Legacy RandomState, like the official np.random.shuffle/rand calls (and ~30%
        # faster per call than a Generator, so the baseline is not handicapped).
        self.np_random = np.random.RandomState(seed)
        self.flip_rate, self.local_rate, self.nonlinear_rate = flip_rate, local_rate, nonlinear_rate
        self.paint_rate, self.inpaint_rate, self.local_blocks = paint_rate, inpaint_rate, local_blocks
        self.flip_axes = flip_axes

    def flip(self, x, y):
        # "original": the choices are axes 0, 1, 2 of a (1, *spatial) array, so 0 is a no-op.
        choices = (None, 0, 1) if self.flip_axes == "original" else tuple(range(x.ndim))
        for _ in range(3):
            if self.random.random() >= self.flip_rate:
                break
            axis = choices[self.random.randint(0, len(choices) - 1)]
            if axis is not None:
                x, y = np.flip(x, axis), np.flip(y, axis)
        return x, y

    def local_pixel_shuffle(self, x):
        original = x.copy()
        out = x.copy()
        for _ in range(self.local_blocks):
            sizes = [self.random.randint(1, max(d // 10, 1)) for d in x.shape]
            corners = [self.random.randint(0, d - s) for d, s in zip(x.shape, sizes)]
            box = tuple(slice(c, c + s) for c, s in zip(corners, sizes))
            window = original[box].flatten()
            self.np_random.shuffle(window)
            out[box] = window.reshape(sizes)
        return out

    def bezier_map(self):
        """(xs, ys) of the intensity map for np.interp, as the original builds them."""
        p1 = (self.random.random(), self.random.random())
        p2 = (self.random.random(), self.random.random())
        t = np.linspace(0.0, 1.0, BEZIER_SAMPLES)
        # Bernstein basis with t running from the (1, 1) end to the (0, 0) end.
        basis = np.stack([t ** 3, 3 * t ** 2 * (1 - t), 3 * t * (1 - t) ** 2, (1 - t) ** 3])
        xs = np.array([0.0, p1[0], p2[0], 1.0]) @ basis
        ys = np.array([0.0, p1[1], p2[1], 1.0]) @ basis
        if self.random.random() < 0.5:
            return np.sort(xs), ys  # decreasing map
        return np.sort(xs), np.sort(ys)

    def nonlinear_intensity(self, x):
        xs, ys = self.bezier_map()
        return np.interp(x, xs, ys).astype(x.dtype)

    def inpaint(self, x):
        x = x.copy()
        for _ in range(5):
            if self.random.random() >= 0.95:
                break
            sizes = [self.random.randint(d // 6, d // 3) for d in x.shape]
            corners = [self.random.randint(3, d - s - 3) for d, s in zip(x.shape, sizes)]
            x[tuple(slice(c, c + s) for c, s in zip(corners, sizes))] = self.np_random.random_sample(sizes)
        return x

    def _outpaint_window(self, dims):
        sizes = [d - self.random.randint(3 * d // 7, 4 * d // 7) for d in dims]
        corners = [self.random.randint(3, d - s - 3) for d, s in zip(dims, sizes)]
        return tuple(slice(c, c + s) for c, s in zip(corners, sizes))

    def outpaint(self, x):
        out = self.np_random.random_sample(x.shape).astype(x.dtype)
        window = self._outpaint_window(x.shape)
        out[window] = x[window]
        for _ in range(4):
            if self.random.random() >= 0.95:
                break
            window = self._outpaint_window(x.shape)
            out[window] = x[window]
        return out

    def pair(self, cube):
        """(corrupted, target) for one cube (X, Y, Z) or image (H, W), in the spec's order."""
        x, y = self.flip(cube, cube)
        if self.random.random() < self.local_rate:
            x = self.local_pixel_shuffle(x)
        if self.random.random() < self.nonlinear_rate:
            x = self.nonlinear_intensity(x)
        if self.random.random() < self.paint_rate:
            x = self.inpaint(x) if self.random.random() < self.inpaint_rate else self.outpaint(x)
        return np.ascontiguousarray(x), np.ascontiguousarray(y)

    def batch(self, cubes):
        pairs = [self.pair(c) for c in cubes]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
