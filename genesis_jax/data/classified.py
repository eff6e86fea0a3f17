"""Labelled cubes for classification fine-tuning, listed in a CSV file.

A CSV (header row required) lists one example per row, in either form:

    image,x,y,z,label     a cube of data.cube_shape centred on voxel (x, y, z) of the volume
                          `image` (a path, relative to the CSV's folder unless absolute; any
                          format the readers take), cut on demand, padded where it leaves
                          the volume (edge values). x, y, z index the volume as
                          genesis-jax reads it: `read_volume(image).array`, LPS order (x to
                          the patient's left, y to posterior, z to superior), which for a
                          NIfTI stored in RAS order is the file's x and y reversed
    cube,label            cube number `cube` of the cube store data.store (python -m
                          genesis_jax.prepare), read on demand
    image,label           2D (data.cube_shape of two sizes): a whole 2D image (PNG, JPEG,
                          TIFF, DICOM radiograph), windowed by the modality (xray: its own
                          0.5-99.5 percentiles) and resized to data.cube_shape

`label` is the class, an integer 0 .. classes - 1. Rows of a batch are served as float32
(n, X, Y, Z, C + 1) (2D: (n, H, W, C + 1)): channels 0 .. C - 1 the cube in [0, 1] (C = 1
from a volume or an image; a store's channels), channel C the label (the same value in every voxel, so batches keep
the one-array form the loop shards). Training batches walk
seeded permutations of the rows (epoch after epoch), so step s's batch is the same
whenever it is asked for.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from genesis_jax.data.batches import StoreBatches, global_indices, process_slice
from genesis_jax.data.volumes import read_volume, to_unit_range
from genesis_jax.errors import UserError

VOLUME_COLUMNS = ("image", "x", "y", "z", "label")
STORE_COLUMNS = ("cube", "label")
IMAGE_COLUMNS = ("image", "label")


def _int(value: str, path, line: int, column: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"{path}, line {line}: {column} must be an integer, got {value!r}") from None


def read_label_csv(path, classes: int) -> tuple[str, list[tuple]]:
    """('volume', [(image path, (x, y, z), label), ...]), ('store', [(cube, label), ...])
    or ('image', [(image path, label), ...]); UserError naming the file and line of the
    first problem."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = tuple(name.strip() for name in reader.fieldnames or ())
            rows = [(reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k}) for row in reader]
    except FileNotFoundError:
        raise UserError(f"{path}: no such label CSV") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None
    kinds = (("volume", VOLUME_COLUMNS), ("store", STORE_COLUMNS), ("image", IMAGE_COLUMNS))
    kind = next((name for name, columns in kinds if set(columns) <= set(header)), None)
    if kind is None:
        raise UserError(f"{path}: the header must name the columns {','.join(VOLUME_COLUMNS)}, "
                        f"{','.join(STORE_COLUMNS)} or {','.join(IMAGE_COLUMNS)}, got {','.join(header) or 'nothing'}")
    if not rows:
        raise UserError(f"{path}: no examples (only a header)")
    examples = []
    for line, row in rows:
        label = _int(row["label"], path, line, "label")
        if not 0 <= label < classes:
            raise UserError(f"{path}, line {line}: label {label} is not a class 0 .. {classes - 1} "
                            f"(data.classes is {classes})")
        if kind == "store":
            examples.append((_int(row["cube"], path, line, "cube"), label))
            continue
        image = Path(row["image"]) if Path(row["image"]).is_absolute() else path.parent / row["image"]
        if kind == "image":
            examples.append((str(image), label))
        else:
            centre = tuple(_int(row[c], path, line, c) for c in ("x", "y", "z"))
            examples.append((str(image), centre, label))
    return kind, examples


def crop_centred(volume: np.ndarray, centre, shape) -> np.ndarray:
    """The `shape` cube of volume centred on voxel `centre` (start = centre - size // 2),
    edge-padded where it leaves the volume (the centre must lie inside it)."""
    starts = [c - p // 2 for c, p in zip(centre, shape)]
    pads = [(max(0, -s), max(0, s + p - n)) for s, p, n in zip(starts, shape, volume.shape)]
    where = tuple(slice(max(0, s), min(n, s + p)) for s, p, n in zip(starts, shape, volume.shape))
    return np.pad(volume[where], pads, mode="edge")


class LabelledCubes:
    """The examples of one CSV: len(), rows(start, stop) in CSV order (validation) and
    batch(step, n, ...) from seeded permutations (training); float32 (n, X, Y, Z, C + 1)."""

    def __init__(self, csv_path, classes: int, cube_shape, store: str = "", modality: str = "ct", seed: int = 0):
        self.cube_shape, self.seed = tuple(int(d) for d in cube_shape), seed
        kind, examples = read_label_csv(csv_path, classes)
        self.labels = np.array([e[-1] for e in examples], np.int64)
        self.channels = ["image"]  # a volume's crop; store cubes: the store's channels
        if kind == "store":
            self._read = self._store_reader(csv_path, store, [e[0] for e in examples])
            self.sources = [store]
        elif kind == "image" or len(self.cube_shape) == 2:
            self._read = self._image_reader(csv_path, kind, examples, modality)
            self.sources = sorted({e[0] for e in examples})
        else:
            self._read = self._volume_reader(examples, modality)
            self.sources = sorted({e[0] for e in examples})

    def _store_reader(self, csv_path, store, cubes):
        if not store:
            raise UserError(f"{csv_path} lists store cubes (column 'cube') but data.store is empty: "
                            f"pass --config.data.store=PATH")
        source = StoreBatches(store)
        self.channels = source.channels
        if source.cube_shape != self.cube_shape:
            raise UserError(f"{store}: cubes are {source.cube_shape}, data.cube_shape is {self.cube_shape}")
        cubes = np.asarray(cubes)
        if cubes.min() < 0 or cubes.max() >= len(source):
            raise UserError(f"{csv_path}: cube numbers must be 0 .. {len(source) - 1} ({store} holds "
                            f"{len(source)}), got {int(cubes.min())} .. {int(cubes.max())}")
        return lambda indices: source.read(cubes[indices])

    def _volume_reader(self, examples, modality):
        volumes = {path: to_unit_range(read_volume(path).array, modality)[0] for path in {e[0] for e in examples}}
        for path, centre, _ in examples:
            if any(not 0 <= c < s for c, s in zip(centre, volumes[path].shape)):
                raise UserError(f"{path}: centre {centre} is outside the volume of shape {volumes[path].shape}")

        def read(indices):
            return np.stack([crop_centred(volumes[examples[i][0]], examples[i][1], self.cube_shape)
                             for i in indices])[..., None]
        return read

    def _image_reader(self, csv_path, kind, examples, modality):
        """Whole 2D images, windowed and resized to cube_shape once."""
        from genesis_jax.data.images import read_image, resize
        if kind != "image" or len(self.cube_shape) != 2:
            raise UserError(f"{csv_path}: rows {','.join(IMAGE_COLUMNS)} are 2D images and data.cube_shape "
                            f"{self.cube_shape} must then be two sizes (H, W), --config=classification_2d; "
                            f"volumes take rows {','.join(VOLUME_COLUMNS)}")
        images = {path: resize(to_unit_range(read_image(path), modality)[0], self.cube_shape)
                  for path in {e[0] for e in examples}}
        return lambda indices: np.stack([images[examples[i][0]] for i in indices])[..., None]

    def __len__(self) -> int:
        return len(self.labels)

    def _rows(self, indices) -> np.ndarray:
        """(n, X, Y, Z, C + 1) or (n, H, W, C + 1): the cube's C channels, then its label in
        every voxel."""
        indices = np.asarray(indices)
        cubes = self._read(indices)
        labels = np.broadcast_to(self.labels[indices].reshape((-1,) + (1,) * (cubes.ndim - 1)),
                                 (*cubes.shape[:-1], 1))
        return np.concatenate([cubes, labels.astype(np.float32)], axis=-1)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self._rows(np.arange(start, stop))

    def batch(self, step: int, n: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        indices = global_indices(step, n, len(self), self.seed)
        return self._rows(indices[process_slice(n, process_index, process_count)])


def class_counts(labels: np.ndarray, classes: int) -> list[int]:
    return np.bincount(labels, minlength=classes).tolist()

