"""The device mesh and the shardings of the train, eval and predict steps.

Axis 'data' splits batches along their first axis. Segmentation fine-tuning and
prediction may add a second axis, 'space' (config.mesh.space = k, `predict
--mesh-space k`): each patch's X axis is split over k devices, so one patch can be
larger than one device's memory (spatial partitioning). XLA's partitioner then runs
every 3x3x3 convolution on its own slab of X and exchanges one plane of halo with each
neighbour (collective-permutes); BatchNorm's statistics and the loss's sums are reduced
over all shards (all-reduces), so the numbers are those of the unsplit step
(tests/test_spatial.py proves both from the compiled program).

Parameters, BatchNorm statistics and optimizer state are replicated. Axis type Auto
(jax >= 0.10 makes Explicit the default of jax.make_mesh) so that the step's
collectives are inserted by the compiler.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from genesis_jax.errors import UserError


def make_mesh(devices=None, space: int = 1, within_hosts: bool = True) -> Mesh:
    """('data',) over the devices, or ('data', 'space') with `space` devices per patch;
    a space group's devices are consecutive. within_hosts: refuse a group that spans
    processes (the loader gives each process whole patches); the dry run, which loads
    nothing, compiles such groups and says so (spans_hosts)."""
    devices = list(devices) if devices is not None else jax.devices()
    if space == 1:
        return Mesh(np.array(devices), ("data",), axis_types=(AxisType.Auto,))
    check_space(space, len(devices))
    mesh = Mesh(np.array(devices).reshape(len(devices) // space, space), ("data", "space"),
                axis_types=(AxisType.Auto, AxisType.Auto))
    if within_hosts and spans_hosts(mesh):
        raise UserError(f"mesh.space={space}: a patch's {space} devices would span processes; keep mesh.space "
                        f"within one host's devices ({jax.local_device_count()} here): each process loads whole "
                        f"patches")
    return mesh


def spans_hosts(mesh: Mesh) -> bool:
    """Whether some patch's 'space' group holds devices of more than one process."""
    if "space" not in mesh.axis_names:
        return False
    groups = mesh.devices.reshape(-1, mesh.shape["space"])
    return any(len({getattr(d, "process_index", 0) for d in group}) > 1 for group in groups)


def check_space(space: int, devices: int) -> None:
    if space < 1 or devices % space:
        raise UserError(f"mesh.space={space} must be >= 1 and divide the device count ({devices})")


def data_size(mesh: Mesh) -> int:
    """How many ways the batch splits: the 'data' axis."""
    return mesh.shape["data"]


def space_size(mesh: Mesh) -> int:
    """How many devices share one patch: the 'space' axis (1 without one)."""
    return mesh.shape.get("space", 1)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Batches (N, X, ...): N over 'data', and X over 'space' where the mesh has it."""
    return NamedSharding(mesh, P("data", "space") if "space" in mesh.axis_names else P("data"))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))


def replicated_specs(tree, mesh: Mesh):
    """ShapeDtypeStructs of the tree's leaves, replicated over the mesh: the state a step
    compiled ahead of time takes, without the arrays."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)), tree)


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's rows of the global batch -> one global array split over the mesh."""
    return jax.make_array_from_process_local_data(batch_sharded(mesh), local)


def check_batch_size(global_batch_size: int, devices: int, space: int = 1) -> None:
    """The batch splits over the 'data' axis: devices / space ways."""
    ways = devices // space
    if global_batch_size % ways:
        across = f"{ways} data-parallel groups ({devices} devices, mesh.space={space})" if space > 1 \
            else f"{devices} devices"
        raise UserError(f"batch_size {global_batch_size} does not split over {across}; use a multiple of {ways}")
