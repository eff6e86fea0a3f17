"""The device mesh and the shardings of the data-parallel step.

One mesh axis, 'data': parameters, BatchNorm statistics and optimizer state are
replicated; batches are split along their first axis. Axis type Auto (jax >= 0.10 makes
Explicit the default of jax.make_mesh) so that the step's collectives, BatchNorm's
global-batch means included, are inserted by the compiler.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from genesis_jax.errors import UserError


def make_mesh(devices=None) -> Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    return Mesh(np.array(devices), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's rows of the global batch -> one global array split over 'data'."""
    return jax.make_array_from_process_local_data(batch_sharded(mesh), local)


def check_batch_size(global_batch_size: int, devices: int) -> None:
    if global_batch_size % devices:
        raise UserError(f"batch_size {global_batch_size} does not split over {devices} devices; "
                         f"use a multiple of {devices}")
