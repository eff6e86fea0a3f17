"""Cases of several channels: co-registered volumes (MR sequences, PET/CT, CT phases) read
as one array (X, Y, Z, C).

Two ways to list them:
- a CSV manifest: a header row naming the channels (`t1,t1c,t2,flair`), then one row per
  case, one path per channel, relative to the CSV's folder unless absolute. Fine-tuning
  manifests add a `label` column (the label volume of the case).
- a folder per case (the shorthand, `channels` given): every directory that directly
  holds image files is a case; channel NAME is the one file whose name, without its
  image suffix, is NAME or ends with `_NAME`, `-NAME` or `.NAME` (case-insensitive):
  `case_001/case_001_t1.nii.gz`, `case_001/flair.nii.gz`. A missing or doubled channel
  is refused naming the folder and the channel.

Every channel of a case must lie on the first channel's grid: the same shape and an
affine (voxel index to LPS mm) within 1e-3 mm, else one line names the case and the channel.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from genesis_jax.data.images import read_volume_or_image
from genesis_jax.data.volumes import IMAGE_SUFFIXES, Volume, VolumeError, is_image_file, read_volume, \
    to_unit_range
from genesis_jax.errors import UserError

GRID_TOLERANCE_MM = 1e-3
LABEL_COLUMN = "label"
MODALITIES = ("ct", "mr", "xray")  # xray: radiographs, windowed per image by percentiles as MR is


@dataclasses.dataclass(frozen=True)
class Case:
    """One case: a name (the manifest row or the folder), its channels' names and files,
    and its label volume (fine-tuning manifests) or None."""

    name: str
    channels: tuple[str, ...]
    paths: tuple[Path, ...]
    label: Path | None = None

    @classmethod
    def single(cls, path, channel: str = "image") -> "Case":
        return cls(str(path), (channel,), (Path(path),))


def parse_channel_names(text, field: str) -> tuple[str, ...]:
    """'t1,t1c,t2' -> ('t1', 't1c', 't2'); UserError naming the field for empty or repeated names."""
    names = tuple(n.strip() for n in str(text).split(","))
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise UserError(f"{field}: channel names must be distinct and non-empty, got {text!r}")
    return names


def read_manifest(path, with_label: bool | str = False) -> tuple[tuple[str, ...], list[Case]]:
    """(channel names, cases) of a CSV manifest; with_label: the `label` column is required
    and is not a channel ("optional": it may be there). UserError naming the file (and row)
    for anything malformed."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read this manifest ({e})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise UserError(f"{path}: a manifest needs a header row naming the channels and one row per case")
    header = [h.strip() for h in rows[0]]
    if with_label == "optional":
        with_label = LABEL_COLUMN in header
    if with_label and LABEL_COLUMN not in header:
        raise UserError(f"{path}: no '{LABEL_COLUMN}' column (header: {','.join(header)}): one column per channel, "
                        f"then the label volume")
    channels = parse_channel_names(",".join(h for h in header if not (with_label and h == LABEL_COLUMN)),
                                   f"{path} header")
    cases = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UserError(f"{path}: row {number} has {len(row)} fields, the header {len(header)}")
        cells = {h: _resolve(path.parent, cell.strip()) for h, cell in zip(header, row)}
        cases.append(Case(f"{path.name} row {number}", channels, tuple(cells[c] for c in channels),
                          cells.get(LABEL_COLUMN) if with_label else None))
    return channels, cases


def _resolve(folder: Path, cell: str) -> Path:
    path = Path(cell)
    return path if path.is_absolute() else folder / path


def is_manifest(path) -> bool:
    return str(path).lower().endswith(".csv")


def _stem(path: Path) -> str:
    name = path.name.lower()
    return next((name[: -len(s)] for s in IMAGE_SUFFIXES if name.endswith(s)), path.stem.lower())


def channel_file(folder: Path, files: list[Path], channel: str) -> Path:
    """The one file of `folder` that holds `channel` (module docstring); VolumeError otherwise."""
    name = channel.lower()
    matches = [f for f in files if _stem(f) == name or any(_stem(f).endswith(sep + name) for sep in "_-.")]
    if len(matches) != 1:
        found = ", ".join(f.name for f in matches) if matches else "no file"
        raise VolumeError(folder, f"channel {channel}: {found} (need exactly one file named NAME or ending in "
                                  f"_{channel}, e.g. {folder.name}_{channel}.nii.gz)")
    return matches[0]


def find_cases(directory, channels: tuple[str, ...]) -> list[Case]:
    """The folder-per-case shorthand: every directory at or under `directory` that holds
    image files directly is one case, sorted by path."""
    directory = Path(directory)
    if not directory.is_dir():
        raise VolumeError(directory, "with --channels, every INPUT must be a folder of case folders (or one case)")
    cases = []
    for folder in [directory, *sorted(p for p in directory.rglob("*") if p.is_dir())]:
        files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
        if files:
            cases.append(Case(str(folder), channels, tuple(channel_file(folder, files, c) for c in channels)))
    if not cases:
        raise VolumeError(directory, "no case folders (folders holding image files) found")
    return cases


def check_same_grid(case_name: str, first: Volume, other: Volume, channel: str) -> None:
    """VolumeError naming the case and the channel unless `other` lies on `first`'s grid."""
    if other.array.shape != first.array.shape:
        raise VolumeError(case_name, f"channel {channel} ({other.source}) has shape "
                                     f"{'x'.join(map(str, other.array.shape))}, the first channel "
                                     f"{'x'.join(map(str, first.array.shape))}: the channels of a case must share one "
                                     f"grid (resample them onto the first)")
    if first.affine is not None and other.affine is not None:
        off = float(np.abs(other.affine[:3] - first.affine[:3]).max())
        if off > GRID_TOLERANCE_MM:
            raise VolumeError(case_name, f"channel {channel} ({other.source}) is not on the first channel's grid "
                                         f"(their voxel-to-mm affines differ by up to {off:.3g} mm; allowed "
                                         f"{GRID_TOLERANCE_MM:g}): the channels of a case must be co-registered "
                                         f"and resampled onto one grid")


def read_case(case: Case) -> list[Volume]:
    """The case's channel volumes, each checked to lie on the first's grid."""
    for channel, path in zip(case.channels, case.paths):
        if len(case.paths) > 1 and not path.exists():
            raise VolumeError(case.name, f"channel {channel}: {path}: no such file or directory")
    volumes = [read_volume_or_image(p) for p in case.paths]  # a 2D picture: one slice deep
    for channel, volume in zip(case.channels[1:], volumes[1:]):
        check_same_grid(case.name, volumes[0], volume, channel)
    return volumes


def unknown_modalities(text) -> list[str]:
    """The values of a modality text ('ct', or one per channel: 'ct,mr') that are not in MODALITIES."""
    return [m.strip() for m in str(text).split(",") if m.strip() not in MODALITIES]


def parse_modalities(text, channels) -> tuple[str, ...]:
    """'ct' (every channel) or 'ct,mr' (one per channel, in order) -> one modality per channel."""
    modalities = tuple(m.strip() for m in str(text).split(","))
    if unknown_modalities(text):
        raise UserError(f"modality {text!r}: each must be ct or mr")
    if len(modalities) == 1:
        return modalities * len(channels)
    if len(modalities) != len(channels):
        raise UserError(f"modality {text!r}: {len(modalities)} values for {len(channels)} channels "
                        f"({', '.join(channels)}); give one for all or one per channel")
    return modalities


def unit_channels(volumes: list[Volume], modalities, window=(-1000.0, 1000.0)) -> tuple[np.ndarray, list]:
    """((X, Y, Z, C) float32 in [0, 1], the window used per channel): each channel
    normalised by its own modality (CT: the HU window; MR: its 0.5-99.5 percentiles)."""
    units, windows = zip(*(to_unit_range(v.array, m, window) for v, m in zip(volumes, modalities)))
    return np.stack(units, axis=-1), [list(w) for w in windows]
