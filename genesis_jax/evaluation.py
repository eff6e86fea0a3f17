"""The frozen validation set: scored in sharded batches, pictured from the pass that was scored.

The validation examples are prepared on device with one fixed key (example i always
gets the same corruption), so every evaluation compares like with like. They are
evaluated batch by batch, `batch_size` at a time as the original does (memory does not
grow with the set, and BatchNorm's batch statistics span one batch, as in training);
the metrics are means over all examples, and the PNG grid shows the first examples of
the first batch exactly as they were scored.
"""

from __future__ import annotations

import jax
import numpy as np

from genesis_jax import sharding
from genesis_jax.data.batches import process_slice
from genesis_jax.errors import UserError


def validation_batches(n_examples: int, batch_size: int, n_devices: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch: batch_size examples, the last one shorter; every batch
    splits over the devices, so up to n_devices - 1 trailing examples are left out."""
    usable = n_examples - n_examples % n_devices
    if usable == 0:
        raise UserError(f"{n_examples} validation cubes do not split over {n_devices} devices; "
                        f"use at least {n_devices} (data.val_cubes or data.val_fraction)")
    return [(start, min(start + batch_size, usable)) for start in range(0, usable, batch_size)]


class FrozenValidation:
    def __init__(self, cubes, batch_size: int, mesh, images: int):
        """cubes: len() and rows(start, stop) -> np.ndarray (data/batches.py)."""
        self.cubes, self.mesh = cubes, mesh
        self.batches = validation_batches(len(cubes), batch_size, sharding.data_size(mesh))
        self.size = self.batches[-1][1]
        self.images = min(images, self.batches[0][1])
        self._first_rows = jax.jit(lambda tree: jax.tree.map(lambda a: a[: self.images], tree),
                                   out_shardings=sharding.replicated(mesh))
        self._gather = jax.jit(lambda tree: tree, out_shardings=sharding.replicated(mesh))
        self._local = jax.process_index(), jax.process_count()

    def _global_batch(self, start: int, stop: int):
        index, count = self._local
        rows = process_slice(stop - start, index, count)
        return sharding.global_batch(self.cubes.rows(start + rows.start, start + rows.stop), self.mesh)

    def evaluate(self, eval_step, state, keep: bool = False):
        """(metrics: example-weighted means over the set, (inputs, targets, outputs) of the
        first `images` examples as numpy arrays, keep: (targets, outputs) of every example
        as numpy arrays, for scores of the whole set (small outputs only), else None)."""
        totals, picture, kept = {}, None, []
        for start, stop in self.batches:
            metrics, arrays = eval_step(state, self._global_batch(start, stop), start)
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + float(value) * (stop - start)
            if picture is None:
                picture = tuple(np.asarray(a) for a in self._first_rows(arrays))
            if keep:
                kept.append(tuple(np.asarray(a) for a in self._gather(arrays[1:])))
        scored = tuple(np.concatenate(parts) for parts in zip(*kept)) if keep else None
        return {name: total / self.size for name, total in totals.items()}, picture, scored
