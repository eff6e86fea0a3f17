"""benchmarks/transfer.py: the split of the shared aorta task keeps the test slab unseen,
and the table reports what the runs measured."""

import numpy as np
import pytest

from benchmarks import transfer
from genesis_jax.data.volumes import read_volume


def test_the_slabs_are_disjoint_with_a_gap_and_sit_where_they_were(tmp_path):
    if not (transfer.DATA / "chest_ct_cropped.nii.gz").is_file():
        pytest.skip("the shared data is not here")
    import nibabel as nib
    paths = transfer.split_volumes(tmp_path)
    full = nib.load(transfer.DATA / "chest_ct_cropped.nii.gz")
    whole = read_volume(transfer.DATA / "chest_ct_cropped.nii.gz").array
    mask = read_volume(transfer.DATA / "chest_ct_cropped_aorta.nii.gz").array
    test = set(range(*transfer.SPLITS["test"]))
    for split in ("train", "val"):  # 16 slices (24 mm) or more between what fine-tuning reads and the test
        assert min(abs(z - t) for z in range(*transfer.SPLITS[split]) for t in test) >= 17
    for split, (lo, hi) in transfer.SPLITS.items():
        image, labels = (read_volume(p).array for p in paths[split])
        np.testing.assert_array_equal(image, whole[:, :, lo:hi])
        np.testing.assert_array_equal(labels, mask[:, :, lo:hi])
        slab = nib.load(paths[split][0])  # the slab's first slice lies where slice `lo` of the volume lay
        np.testing.assert_allclose(slab.affine[:3, 3], (full.affine @ [0, 0, lo, 1])[:3], atol=1e-4)
    assert read_volume(paths["test"][1]).array.sum() > 10_000  # the test slab holds aorta to find


def test_the_summary_is_the_runs_mean_and_spread():
    rows = [{"init": "scratch", "seed": s, "test_dice": d, "seconds": 60.0} for s, d in enumerate((0.5, 0.7, 0.6))]
    rows += [{"init": "genesis", "seed": s, "test_dice": d, "seconds": 90.0} for s, d in enumerate((0.8, 0.8, 0.8))]
    summary = transfer.summarize(rows)
    assert summary["scratch"]["mean"] == pytest.approx(0.6) and summary["scratch"]["stdev"] == pytest.approx(0.1)
    assert summary["genesis"] == {"mean": pytest.approx(0.8), "stdev": 0.0, "min": 0.8, "max": 0.8, "n": 3}
    table = transfer.markdown({"runs": rows, "summary": summary})
    assert "| scratch | 0.6000 | 0.1000 | 0.5000 .. 0.7000 | 3 |" in table
    assert "| genesis | 2 | 0.8000 | 1.5 min |" in table
