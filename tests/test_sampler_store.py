"""The cube sampler equals the spec's loops; stores and batch sources are deterministic,
split over processes, and read only what they serve."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from genesis_jax.data import CubeStoreWriter, SamplerConfig, StoreBatches, VolumeBatches, open_store, sample_cubes, \
    sample_path
from genesis_jax.data.sampler import (accept_corners, borders_for, corner_ranges, draw_corners, filter_table,
                                      lung_weights)

SMALL = SamplerConfig(crop=(8, 8, 6), cubes_per_volume=5, tries_per_cube=20, border=(2, 2, 1))


def loop_lung_score(crop, threshold, depth):
    """The original filter, literally: a 4-deep loop over (d, x, y, k)."""
    total = 0.0
    for d in range(depth):
        for i in range(crop.shape[0]):
            for j in range(crop.shape[1]):
                k_found = 2
                for k in range(3):
                    if crop[i, j, d + k] >= threshold:
                        k_found = k
                        break
                total += 1.0 - k_found / 2.0
    return total


def loop_sampler(volume, cfg, rng):
    """Sequential tries, as the original: draw a corner, cut, judge, until enough."""
    kept, tries = [], 0
    corners = draw_corners(volume.shape, cfg, rng, cfg.cubes_per_volume * cfg.tries_per_cube)
    for x, y, z in corners:
        tries += 1
        crop = volume[x:x + cfg.window[0], y:y + cfg.window[1], z:z + cfg.window[2]]
        if cfg.filter == "lung":
            ok = loop_lung_score(crop, cfg.lung_threshold, cfg.crop[2]) <= cfg.lung_max_share * np.prod(cfg.crop)
        elif cfg.filter == "foreground":
            ok = (crop[..., : cfg.crop[2]] >= cfg.foreground_threshold).mean() >= cfg.min_foreground
        else:
            ok = True
        if ok:
            kept.append(crop[..., : cfg.crop[2]])
            if len(kept) == cfg.cubes_per_volume:
                break
    return np.stack(kept) if kept else np.zeros((0, *cfg.crop)), tries


def lungish_volume(seed, shape=(24, 22, 20)):
    """Half-air, half-tissue blocks: some crops pass the lung filter, some do not."""
    rng = np.random.default_rng(seed)
    volume = rng.random(shape).astype(np.float32) * 0.3  # air-like (< 0.425)
    volume[: shape[0] // 2] += 0.5                        # dense half
    return volume


@pytest.mark.parametrize("filt", ["lung", "foreground", "none"])
def test_vectorised_sampler_equals_the_loop(filt):
    cfg = SamplerConfig(crop=(8, 8, 6), cubes_per_volume=5, tries_per_cube=20, border=(2, 2, 1), filter=filt,
                        lung_max_share=0.4, min_foreground=0.4)
    judged = []
    for seed in range(4):
        volume = lungish_volume(seed)
        corners = draw_corners(volume.shape, cfg, np.random.default_rng(seed), 100)
        judged.extend(accept_corners(filter_table(volume, cfg), corners, cfg))
        ours, our_tries = sample_cubes(volume, cfg, np.random.default_rng(seed))
        ref, ref_tries = loop_sampler(volume, cfg, np.random.default_rng(seed))
        np.testing.assert_array_equal(ours, ref)
        assert our_tries == ref_tries
    if filt != "none":  # the volumes exercise both outcomes of the filter
        assert 0.05 < np.mean(judged) < 0.95, np.mean(judged)


def test_lung_scores_equal_the_loop_for_every_corner():
    cfg = SamplerConfig(crop=(8, 8, 6), border=(0, 0, 0))
    volume = lungish_volume(7)
    corners = draw_corners(volume.shape, cfg, np.random.default_rng(0), 40)
    from genesis_jax.data.sampler import crop_scores
    sums = crop_scores(filter_table(volume, cfg), corners, cfg)
    for (x, y, z), total in zip(corners, sums):
        crop = volume[x:x + 8, y:y + 8, z:z + 9]
        assert total == loop_lung_score(crop, cfg.lung_threshold, 6)
    assert lung_weights(volume, cfg.lung_threshold).shape == (24, 22, 18)


def test_deterministic_for_a_seed():
    volume = lungish_volume(1)
    cfg = SamplerConfig(crop=(8, 8, 6), cubes_per_volume=5, border=(2, 2, 1), filter="none")
    a, _ = sample_cubes(volume, cfg, np.random.default_rng(3))
    b, _ = sample_cubes(volume, cfg, np.random.default_rng(3))
    c, _ = sample_cubes(volume, cfg, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_auto_borders_fit_the_sample_and_keep_luna_borders_on_large_volumes():
    cfg = SamplerConfig()
    assert borders_for((233, 167, 191), cfg) == (42, 25, 30)
    assert borders_for((512, 512, 300), cfg) == (100, 100, 30)  # LUNA16-sized: the original borders
    for low, high in corner_ranges((233, 167, 191), cfg):
        assert 0 <= low <= high
    with pytest.raises(ValueError, match="smaller than one 64x64x35 crop"):
        sample_cubes(np.zeros((60, 80, 80), np.float32), cfg, np.random.default_rng(0))


def test_filter_that_rejects_everything_gives_no_cubes_and_reports_tries():
    dense = np.full((24, 22, 20), 0.9, np.float32)
    cubes, tries = sample_cubes(dense, SamplerConfig(crop=(8, 8, 6), border=(0, 0, 0), cubes_per_volume=3,
                                                     tries_per_cube=10), np.random.default_rng(0))
    assert cubes.shape == (0, 8, 8, 6) and tries == 30


# ---------------------------------------------------------------- stores

def make_store(path, n=10, shape=(8, 8, 6)):
    cubes = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, *shape), np.float32)
    with CubeStoreWriter(path, shape) as writer:
        writer.append(cubes[: n // 2])
        writer.append(cubes[n // 2:])
        writer.commit({"seed": 5, "sources": ["a"]})
    return cubes


def test_store_roundtrip_attributes_and_chunking(tmp_path):
    cubes = make_store(tmp_path / "s.zarr")
    array, attributes = open_store(tmp_path / "s.zarr")
    np.testing.assert_array_equal(array.read().result(), cubes[..., None])
    assert attributes == {"seed": 5, "sources": ["a"], "channels": ["image"], "cubes": 10,
                          "cubes_sha256": hashlib.sha256(cubes.tobytes()).hexdigest()}
    assert list(array.chunk_layout.read_chunk.shape) == [1, 8, 8, 6, 1]


def test_a_store_from_before_channels_reads_as_one_channel(tmp_path):
    """A (N, X, Y, Z) store as genesis-jax wrote them before channels (zarr v3, no channels
    attribute): batches come out (n, X, Y, Z, 1), its one channel named "image"."""
    import tensorstore as ts

    from genesis_jax.data.store import read_store_channels
    cubes = np.random.default_rng(0).random((6, 8, 8, 8), dtype=np.float32)
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "old.zarr")}, "create": True,
            "metadata": {"shape": [6, 8, 8, 8], "data_type": "float32",
                         "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, 8, 8, 8]}},
                         "attributes": {"genesis": {"cubes": 6, "seed": 0}}}}
    ts.open(spec).result().write(cubes).result()
    source = StoreBatches(tmp_path / "old.zarr")
    assert source.channels == ["image"] and read_store_channels(tmp_path / "old.zarr") == ["image"]
    np.testing.assert_array_equal(source.rows(0, 6), cubes[..., None])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with CubeStoreWriter(tmp_path / "s.zarr", (8, 8, 6)) as writer:
            writer.append(np.zeros((2, 8, 8, 6), np.float32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_store_batches_are_deterministic_epoch_permutations_split_over_processes(tmp_path):
    make_store(tmp_path / "s.zarr", n=10)
    source = StoreBatches(tmp_path / "s.zarr", seed=1)
    # 5 steps of 4 = 2 epochs: each epoch serves every cube exactly once.
    served = np.concatenate([source.batch(step, 4)[:, 0, 0, 0] for step in range(5)])
    assert sorted(served[:10]) == list(range(10)) and sorted(served[10:]) == list(range(10))
    np.testing.assert_array_equal(StoreBatches(tmp_path / "s.zarr", seed=1).batch(3, 4), source.batch(3, 4))
    assert not np.array_equal(StoreBatches(tmp_path / "s.zarr", seed=2).batch(0, 4), source.batch(0, 4))
    halves = [source.batch(2, 4, process_index=p, process_count=2) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), source.batch(2, 4))
    with pytest.raises(ValueError, match="does not split"):
        source.batch(0, 4, process_count=3)


def test_store_reads_only_the_requested_cubes(tmp_path, monkeypatch):
    make_store(tmp_path / "s.zarr", n=10)
    source = StoreBatches(tmp_path / "s.zarr")
    asked = []
    original = source.read
    monkeypatch.setattr(source, "read", lambda idx: asked.append(len(idx)) or original(idx))
    source.batch(0, 4)
    assert asked == [4]


def test_on_the_fly_batches(tmp_path):
    volumes = [lungish_volume(0), lungish_volume(1)]
    cfg = SamplerConfig(crop=(8, 8, 6), border=(2, 2, 1), filter="foreground", min_foreground=0.4)
    source = VolumeBatches(volumes, cfg, seed=3)
    a = source.batch(7, 4)
    assert a.shape == (4, 8, 8, 6) and a.dtype == np.float32
    np.testing.assert_array_equal(VolumeBatches(volumes, cfg, seed=3).batch(7, 4), a)
    np.testing.assert_array_equal(np.concatenate([source.batch(7, 4, p, 2) for p in range(2)]), a)
    assert not np.array_equal(source.batch(8, 4), a)
    assert ((a >= cfg.foreground_threshold).mean(axis=(1, 2, 3)) >= 0.4).all()


SHARED_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_ct.nii.gz"
# (volume, its shape, the borders min(LUNA16's 100/100/30, (dim - crop - 1) // 4) give it):
# the bundled sample in every clone; the full scan it was cropped from where it is present.
PREPARE_CASES = [pytest.param(sample_path, [160, 128, 96], [23, 15, 15], id="bundled-sample"),
                 pytest.param(lambda: SHARED_CT, [233, 167, 191], [42, 25, 30], id="shared-chest-ct",
                              marks=pytest.mark.skipif(not SHARED_CT.exists(), reason=f"not found: {SHARED_CT}"))]


@pytest.mark.parametrize("volume, shape, border", PREPARE_CASES)
def test_prepare_on_a_real_chest_ct(volume, shape, border, tmp_path, capsys):
    from genesis_jax.prepare import run
    assert run([str(volume()), "--out", str(tmp_path / "c.zarr"), "--filter", "foreground", "--seed", "3"]) == 0
    array, attributes = open_store(tmp_path / "c.zarr")
    assert array.shape == (32, 64, 64, 32, 1)
    cubes = array.read().result()
    assert 0.0 <= cubes.min() and cubes.max() <= 1.0
    source = attributes["sources"][0]
    assert source["shape"] == shape and source["border"] == border and source["cubes"] == 32
    assert attributes["filter"] == "foreground" and attributes["seed"] == 3 and attributes["version"]
    assert "32 cubes written" in capsys.readouterr().out


# ---------------------------------------------------------------- stores at kvstore URLs

@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_store_at_a_url_roundtrips_and_feeds_training(tmp_path, scheme):
    """gs:// and s3:// go through the same code as memory:// (TensorStore kvstore URLs,
    written in place, committed by a flag); file:// is a path (renamed into place)."""
    from genesis_jax.data.sources import load_run_data
    from genesis_jax.configs.base import base_config
    url = f"memory://roundtrip-{tmp_path.name}/s.zarr" if scheme == "memory" else f"file://{tmp_path}/s.zarr"
    cubes = make_store(url)
    array, attributes = open_store(url)
    np.testing.assert_array_equal(array.read().result(), cubes[..., None])
    assert attributes == {"seed": 5, "sources": ["a"], "channels": ["image"], "cubes": 10,
                          "cubes_sha256": hashlib.sha256(cubes.tobytes()).hexdigest()}
    np.testing.assert_array_equal(StoreBatches(url, seed=1).batch(0, 4), StoreBatches(url, seed=1).batch(0, 4))
    data = base_config().data
    data.source, data.store, data.cube_shape, data.val_fraction = "store", url, (8, 8, 6), 0.2
    run_data = load_run_data(data, seed=0)
    assert run_data.train_cubes == 8 and run_data.validation.rows(0, 2).shape == (2, 8, 8, 6, 1) and len(run_data.digest) == 64
    if scheme == "file":
        assert (tmp_path / "s.zarr" / "zarr.json").exists()


def test_url_store_whose_writer_died_is_refused_and_a_failed_write_is_removed(tmp_path):
    import tensorstore as ts
    from genesis_jax.data.store import _CONTEXT
    url = f"memory://died-{tmp_path.name}/s.zarr/"
    writer = CubeStoreWriter(url, (8, 8, 6))
    writer.append(np.zeros((2, 8, 8, 6), np.float32))  # no commit: the process "died" here
    with pytest.raises(ValueError, match="incomplete cube store"):
        open_store(url)
    with pytest.raises(RuntimeError):
        with CubeStoreWriter(url, (8, 8, 6)) as writer:
            writer.append(np.zeros((2, 8, 8, 6), np.float32))
            raise RuntimeError("boom")
    assert ts.KvStore.open(url, context=_CONTEXT).result().list().result() == []
    with pytest.raises(ValueError, match="not a cube store"):
        open_store(url)


def test_prepare_writes_to_a_url(tmp_path, capsys):
    from genesis_jax.data import sample_path
    from genesis_jax.prepare import run
    url = f"memory://prepare-{tmp_path.name}/cubes.zarr"
    assert run([str(sample_path()), "--out", url, "--filter", "none", "--cubes-per-volume", "3",
                "--border", "0", "0", "0"]) == 0
    array, attributes = open_store(url)
    assert array.shape[0] == 3 and attributes["cubes"] == 3 and "complete" not in attributes
    assert f"3 cubes written to {url}" in capsys.readouterr().out


def test_prepare_to_an_unknown_url_scheme_is_one_line(tmp_path, capsys):
    from genesis_jax.data import sample_path
    from genesis_jax.prepare import run
    assert run([str(sample_path()), "--out", "nosuchscheme://bucket/cubes.zarr"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: nosuchscheme://bucket/cubes.zarr: cannot create"), err


def test_prepare_the_bundled_sample_at_a_cpu_cube_shape_feeds_the_demo(tmp_path, capsys):
    """The README's CPU recipe: @sample, 32x32x16 cubes, then the demo config reads them."""
    from genesis_jax.configs.demo import get_config
    from genesis_jax.data.sources import load_run_data
    from genesis_jax.prepare import run
    assert run(["@sample", "--out", str(tmp_path / "s.zarr"), "--filter", "foreground", "--cube-shape", "32", "32",
                "16", "--cubes-per-volume", "20"]) == 0
    array, attributes = open_store(tmp_path / "s.zarr")
    assert array.shape == (20, 32, 32, 16, 1) and attributes["cube_shape"] == [32, 32, 16]
    data = get_config().data
    data.source, data.store = "store", str(tmp_path / "s.zarr")
    assert load_run_data(data, seed=0).validation.rows(0, 2).shape == (2, 32, 32, 16, 1)


def test_a_lung_filter_that_keeps_nothing_suggests_the_foreground_filter(tmp_path, capsys):
    from genesis_jax.prepare import run
    assert run(["@sample", "--out", str(tmp_path / "s.zarr")]) == 1
    err = capsys.readouterr().err
    assert "the lung filter rejected all 1600 crops" in err and "use --filter foreground" in err
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("shape", [["30", "32", "16"], ["32", "32", "4"]])
def test_a_cube_shape_not_made_of_multiples_of_8_is_refused(tmp_path, capsys, shape):
    from genesis_jax.prepare import run
    with pytest.raises(SystemExit) as exit_:
        run(["@sample", "--out", str(tmp_path / "s.zarr"), "--cube-shape", *shape])
    assert exit_.value.code == 2 and "each size must be a multiple of 8" in capsys.readouterr().err


def test_volumes_of_different_spacings_are_named_unless_resampled(tmp_path, capsys):
    import nibabel as nib
    from genesis_jax.data.preparing import spacing_warning
    from genesis_jax.prepare import run
    volume = np.asarray(nib.load(str(sample_path())).dataobj, np.float32)
    for name, spacing in (("fine", 0.96), ("coarse", 2.0)):
        nib.save(nib.Nifti1Image(volume, np.diag([spacing, spacing, 2.5, 1.0])), str(tmp_path / f"{name}.nii.gz"))
    args = [str(tmp_path / "fine.nii.gz"), str(tmp_path / "coarse.nii.gz"), "--filter", "foreground",
            "--cube-shape", "32", "32", "16", "--cubes-per-volume", "2"]
    assert run([*args, "--out", str(tmp_path / "a.zarr")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [spacing_warning([{"spacing": [0.96, 0.96, 2.5]}, {"spacing": [2.0, 2.0, 2.5]}])]
    assert "(X 0.96-2 mm, Y 0.96-2 mm; each source's spacing is in the store)" in warnings[0]
    assert "--spacing" in warnings[0] and "did not resample" in warnings[0]
    assert run([*args, "--out", str(tmp_path / "b.zarr"), "--spacing", "2"]) == 0
    assert "warning:" not in capsys.readouterr().err
    assert spacing_warning([{"spacing": [1.0, 1.0, 2.5]}, {"spacing": [1.05, 1.0, 2.5]}]) is None  # within 10%
