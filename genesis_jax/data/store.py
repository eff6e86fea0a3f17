"""Cube stores: the on-disk format (TensorStore zarr v3), its writer and its reader.

A store is a zarr v3 array (N, X, Y, Z, C) float32 (the paper's cubes: (N, 64, 64, 32,
1)), one chunk per cube (zstd), whose attributes record the channel names (`channels`)
and where the cubes came from (`genesis` key: sources, spacing, window, filter, seed,
package version). Stores written before channels existed are (N, X, Y, Z): they open
as one channel, "image" (store_channels, StoreBatches). A 2D store (Models Genesis 2D)
is (N, H, W, C) with the attribute `dims: 2` (store_dims; absent: 3). Writers build it beside
the target and rename it into place at the end: CubeStoreWriter in a temporary directory
(a failed run leaves nothing behind), prepare in its work directory (data/parts.py: a
failed or killed run keeps what it finished, to resume).

A store's location is a path or a TensorStore kvstore URL (`gs://bucket/cubes.zarr/`,
`s3://...`, `file:///data/cubes.zarr`, `memory://...`): pod workers read one store
from a bucket. `file://` URLs are paths. Object stores have no rename: there the cubes
are written in place and the attributes carry `complete: false` until the commit, so
a store whose writer died is refused on open (CubeStoreWriter deletes what it wrote when
it fails; prepare keeps it to resume).

The batch sources that read stores during training live in data/batches.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import tensorstore as ts

from genesis_jax.data.publish import clean_leftovers, publish, remove_tree, temporary_beside
from genesis_jax.errors import UserError, write_failure

ATTRIBUTES_KEY = "genesis"
# One context for every open in this process: a memory:// store written by prepare is
# the same store when training opens it (tests, notebooks).
_CONTEXT = ts.Context()


def store_location(store) -> Path | str:
    """A local Path, or a kvstore URL string (anything with '://' except file://)."""
    text = str(store)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if "://" in text:
        return text if text.endswith("/") else text + "/"
    return Path(text)


def work_location(location):
    """Where the store at `location` is prepared (data/parts.py): a directory beside a
    local store (`.NAME.preparing`, renamed into place at the end), a key prefix inside
    a URL's (`prepare/`, deleted at the end)."""
    if isinstance(location, Path):
        return location.parent / f".{location.name}.preparing"
    return f"{location}prepare/"


def _being_prepared(path) -> UserError | None:
    """The refusal of a store whose prepare has not finished, if one is under way."""
    work = work_location(store_location(path))
    if not open_kvstore(work).list().result():
        return None
    return UserError(f"{path}: an incomplete cube store: its prepare has not finished (interrupted, or shards not "
                     f"yet finalized; its work is in {work}). Run the same prepare command again to finish it, "
                     f"or, after prepare --shard I/N on every shard, prepare --finalize --out {path}")


def _kvstore(location) -> dict | str:
    return location if isinstance(location, str) else {"driver": "file", "path": str(location)}


def read_metadata(location) -> dict | None:
    """zarr.json of the store at `location` (a path or a URL), or None when there is none."""
    try:
        result = open_kvstore(location).read("zarr.json").result()
    except ValueError as e:  # an unknown URL scheme or an unreachable bucket
        raise UserError(f"{location}: cannot open this store location ({str(e).splitlines()[0]})") from None
    if result.state != "value":
        return None
    try:
        return json.loads(result.value)
    except json.JSONDecodeError as e:
        raise UserError(f"{location}: a damaged cube store (its zarr.json is not JSON: {e.msg}, line {e.lineno}); "
                        f"prepare it again") from None


def write_attributes(location, attributes: dict) -> None:
    """Set the `genesis` attributes in the zarr.json of the store at `location`."""
    kvstore = open_kvstore(location)
    meta = json.loads(kvstore.read("zarr.json").result().value)
    meta.setdefault("attributes", {})[ATTRIBUTES_KEY] = attributes
    kvstore.write("zarr.json", json.dumps(meta, indent=2).encode()).result()


def open_kvstore(location) -> ts.KvStore:
    """The store's directory as a key-value store (keys: zarr.json, c/...)."""
    if isinstance(location, Path):  # a file kvstore path is a key prefix: the directory needs its '/'
        return ts.KvStore.open({"driver": "file", "path": f"{location}/"}, context=_CONTEXT).result()
    return ts.KvStore.open(location, context=_CONTEXT).result()


def child_location(location, name: str):
    """A location inside `location`: a sub-directory of a path, a key prefix of a URL."""
    return location / name if isinstance(location, Path) else f"{location}{name}/"


def reset_array(location) -> None:
    """Remove an array's metadata and chunks at `location` (zarr.json, c/...), nothing
    else: a store being prepared keeps its journal beside them (data/parts.py)."""
    kvstore = open_kvstore(location)
    kvstore.write("zarr.json", None).result()
    kvstore.delete_range(ts.KvStore.KeyRange("c/", "c0")).result()


def create_cube_array(location, cube_shape, attributes: dict) -> ts.TensorStore:
    """A new, empty cube array (0, *cube_shape) at `location`, replacing the array there."""
    reset_array(location)
    return ts.open(_spec(location, cube_shape, attributes, create=True), context=_CONTEXT).result()


def open_cube_array(location) -> ts.TensorStore:
    return ts.open(_spec(location, None), context=_CONTEXT).result()


def resize_cubes(array: ts.TensorStore, count: int) -> ts.TensorStore:
    """The array grown or cut to `count` cubes (chunks past the end are deleted)."""
    return array.resize(exclusive_max=[count, *array.shape[1:]]).result()


def write_cubes(array: ts.TensorStore, start: int, cubes: np.ndarray) -> ts.TensorStore:
    """The array grown (or cut) to start + len(cubes) cubes, these written at [start, ...)."""
    array = resize_cubes(array, start + len(cubes))
    if len(cubes):
        array[start:start + len(cubes)].write(cubes).result()
    return array


def store_attributes(attributes: dict, channels, cube_shape, count: int, cubes_sha256: str) -> dict:
    """A committed store's `genesis` attributes: the writer's, then channels, dims (2D
    stores only: a 3D store's attributes as before 2D), count and contents."""
    dims = {"dims": 2} if len(cube_shape) == 3 else {}
    return {**attributes, "channels": list(channels), **dims, "cubes": count, "cubes_sha256": cubes_sha256}


def metadata_digest(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _spec(location, cube_shape, attributes=None, create=False) -> dict:
    spec = {"driver": "zarr3", "kvstore": _kvstore(location)}
    if create:
        spec.update(create=True, metadata={
            "shape": [0, *cube_shape],
            "data_type": "float32",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, *cube_shape]}},
            "chunk_key_encoding": {"name": "default"},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "zstd", "configuration": {"level": 3, "checksum": False}}],
            "fill_value": 0.0,
            "attributes": {ATTRIBUTES_KEY: attributes or {}},
        })
    return spec


class CubeStoreWriter:
    """Append cubes, then `commit(attributes)` publishes the finished store.

    Local paths: built in a temporary directory beside the target, put into place by
    commit; a store already there is exchanged with the new one atomically, so a kill at
    any moment leaves either it or the new one complete at the path (where the exchange
    is not supported: two renames, and a kill between them leaves the old store beside
    the path, named by the next writer). URLs: written in place, marked complete by commit.
    Used as a context manager: leaving the block with an exception removes what was
    written (a local target is left untouched). The leftovers of killed writers of the
    same target are cleaned up, or named, when a writer starts (`self.leftovers`).
    """

    def __init__(self, path, cube_shape=(64, 64, 32), channels=("image",)):
        self.location = store_location(path)
        self.channels = tuple(channels)
        self.cube_shape = (*tuple(cube_shape), len(self.channels))
        self.leftovers = []
        if isinstance(self.location, Path):
            try:
                self.location.parent.mkdir(parents=True, exist_ok=True)
                self.leftovers = clean_leftovers(self.location)
                self.tmp = temporary_beside(self.location, "writing")
            except OSError as e:
                raise UserError(f"{path}: cannot create a cube store there ({e.strerror})") from None
            target, attributes = self.tmp, {}
        else:
            self.tmp, target, attributes = None, self.location, {"complete": False}
        try:
            self.array = create_cube_array(target, self.cube_shape, attributes)
        except ValueError as e:  # an unknown URL scheme, a bucket that does not exist or refuses us
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
            raise UserError(f"{path}: cannot create a cube store there ({str(e).splitlines()[0]})") from None
        self.count = 0
        self.committed = False
        self.content = hashlib.sha256()  # of every cube written, in order: the store's digest sees contents

    def append(self, cubes: np.ndarray) -> None:
        if len(cubes) == 0:
            return
        if cubes.ndim == len(self.cube_shape) and self.cube_shape[-1] == 1:  # one channel, given without its axis
            cubes = cubes[..., None]
        if cubes.shape[1:] != self.cube_shape:
            raise UserError(f"cubes of shape {cubes.shape[1:]} do not fit a store of {self.cube_shape}")
        cubes = np.ascontiguousarray(cubes, np.float32)
        with self._write_errors():
            self.array = write_cubes(self.array, self.count, cubes)
        self.content.update(cubes.tobytes())
        self.count += len(cubes)

    def commit(self, attributes: dict):
        """Record the attributes, then publish the store at its final location."""
        with self._write_errors():
            write_attributes(self.tmp or self.location, store_attributes(
                attributes, self.channels, self.cube_shape, self.count, self.content.hexdigest()))
            if self.tmp is not None:
                publish(self.tmp, self.location)
        self.committed = True
        return self.location

    @contextlib.contextmanager
    def _write_errors(self):
        """A full or read-only disk, a quota: one line naming the store (TensorStore's
        ValueError names the file and the system's reason)."""
        try:
            yield
        except (ValueError, OSError) as e:
            raise UserError(f"{self.location}: cannot write the cube store ({write_failure(e)}); nothing was "
                            f"published there") from None

    def abort(self) -> None:
        if self.tmp is not None:
            remove_tree(self.tmp)
        else:
            open_kvstore(self.location).delete_range(ts.KvStore.KeyRange()).result()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None or not self.committed:
            self.abort()
        return False


def _not_a_store(path, field: str = "") -> UserError:
    unfinished = _being_prepared(path)
    if unfinished is not None:
        return UserError(f"{field + ': ' if field else ''}{unfinished}")
    return UserError(f"{field + ': ' if field else ''}{path}: not a cube store (no zarr.json); create one with "
                     f"python -m genesis_jax.prepare")


def check_local_store(path, field: str) -> None:
    """Before any work: a local path names a store (URLs are looked at when opened)."""
    location = store_location(path)
    if isinstance(location, Path) and not (location / "zarr.json").is_file():
        raise _not_a_store(path, field)


def open_store(path):
    """(TensorStore, attributes) of a cube store; UserError with the location if it is not one."""
    location = store_location(path)
    meta = read_metadata(location)
    if meta is None:
        raise _not_a_store(path)
    attributes = meta.get("attributes", {}).get(ATTRIBUTES_KEY, {})
    if attributes.get("complete") is False:
        raise _being_prepared(path) or UserError(f"{path}: an incomplete cube store (the prepare run writing it "
                                                 f"did not finish); run prepare again")
    try:
        return ts.open(_spec(location, None), context=_CONTEXT).result(), attributes
    except ValueError as e:  # TensorStore: metadata it cannot use, a chunk layout it does not know
        reason = str(e).split(" [tensorstore_spec=")[0].strip().splitlines()[0]
        raise UserError(f"{path}: not a readable cube store ({reason[:200]}); prepare it again") from None


def store_channels(array, attributes: dict) -> list[str]:
    """The channel names of an opened store; a store from before channels is one, "image"."""
    return _channel_names(array.shape, attributes)


def _channel_names(shape, attributes: dict) -> list[str]:
    if len(shape) != store_dims(attributes) + 2:  # a store from before channels (or a damaged one, refused when opened)
        return ["image"]
    return list(attributes.get("channels") or [f"channel{c}" for c in range(int(shape[-1]))])


def store_dims(attributes: dict) -> int:
    """3 for cube stores (N, X, Y, Z, C), 2 for image stores (N, H, W, C)."""
    return int(attributes.get("dims", 3))


def store_sample_shape(array, attributes: dict) -> tuple[int, ...]:
    """A stored sample's spatial shape: (X, Y, Z) or (H, W)."""
    return tuple(int(d) for d in array.shape[1:1 + store_dims(attributes)])


def read_store_channels(path) -> list[str]:
    """The channel names of the store at path, from its metadata alone (no cube is read)."""
    meta = read_metadata(store_location(path))
    if meta is None:
        raise _not_a_store(path)
    return _channel_names(meta.get("shape", []), meta.get("attributes", {}).get(ATTRIBUTES_KEY, {}))


def store_digest(path) -> str:
    """sha256 of the store's zarr.json: shape, codecs and the attributes, which name its
    sources and hold the sha256 of its cubes (written by CubeStoreWriter.commit), so a
    store re-prepared with other contents or another size has another digest."""
    meta = read_metadata(store_location(path))
    if meta is None:
        raise UserError(f"{path}: not a cube store (no zarr.json)")
    return metadata_digest(meta)
