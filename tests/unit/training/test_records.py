"""``training.records``: the rows of a hand-made case, the CSV round trip, the exported slice probability."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ich import spec
from ich.scoring import FEATURES
from training.records import TABLES, CasePrediction, Records, case_records, group, opened_slice_max

N, S = 3, 16
PIXEL_MM = (0.5, 0.5)
VOXEL_ML = PIXEL_MM[0] * PIXEL_MM[1] * 5.0 / 1000.0
OPENING = 3


def _case(model_slice_prob: np.ndarray | None = None, case_id: str = "049") -> CasePrediction:
    """Three slices of 16 x 16: lesion A (slices 0-1) overlaps the truth, lesion B (slice 2) does not.

    A: slice 0 rows 2-4 x cols 2-4 at 0.9 (9 px), slice 1 rows 2-5 x cols 2-4 at 0.8 (12 px).
    B: slice 2 rows 10-11 x cols 10-12 at 0.7 (6 px). Elsewhere the fused map is 0.1.
    Truth: slice 0 rows 3-6 x cols 3-6 (16 px, 4 inside A), slice 1 rows 2-3 x cols 2-3 (4 px, all inside
    A), slice 2 rows 0-1 x cols 14-15 (4 px in the corner, none inside B).
    Base maps: "all" = the fused map, "subtype" = 0.9 on the truth (0 elsewhere), the others 0.2 everywhere.
    Images: bone (channel 2) on the one-pixel border, brain window 0.5 (40 HU), stripped brain inside it.
    """
    fused = np.full((N, S, S), 0.1, dtype=np.float32)
    fused[0, 2:5, 2:5] = 0.9
    fused[1, 2:6, 2:5] = 0.8
    fused[2, 10:12, 10:13] = 0.7
    truth = np.zeros((N, S, S), dtype=bool)
    truth[0, 3:7, 3:7] = True
    truth[1, 2:4, 2:4] = True
    truth[2, 0:2, 14:16] = True
    probs = np.full((N, len(spec.MODEL_KEYS), S, S), 0.2, dtype=np.float32)
    probs[:, 0] = fused
    probs[:, 1] = truth * np.float32(0.9)
    images = np.zeros((N, 4, S, S), dtype=np.float32)
    images[:, 2] = 0.9
    images[:, 2, 1:-1, 1:-1] = 0.0
    images[:, 1] = 0.5
    images[:, 3, 1:-1, 1:-1] = 0.5
    return CasePrediction(
        case_id=case_id,
        fold=2,
        fused=fused,
        probs=probs,
        slice_prob=np.array([0.95, 0.85, 0.3], dtype=np.float32),
        images=images,
        truth=truth,
        slice_labels=np.array([1, 1, 1]),
        pixel_mm=PIXEL_MM,
        voxel_ml=VOXEL_ML,
        opening=OPENING,
        model_slice_prob=model_slice_prob,
    )


def _bone_distance(pixels: list[tuple[int, int]]) -> float:
    """Median distance (mm) to the one-pixel bone border, by hand: the nearest border is straight across."""
    return float(np.median([min(r, S - 1 - r, c, S - 1 - c) * PIXEL_MM[0] for r, c in pixels]))


def test_case_slice_and_lesion_rows_of_a_hand_made_case() -> None:
    rec = case_records(_case())
    assert rec.cases == [
        {
            "case": "049",
            "fold": 2,
            "label": 1,
            "slices": 3,
            "max_slice_probability": pytest.approx(0.95),
            "truth_voxels": 16 + 4 + 4,
            "voxel_ml": VOXEL_ML,
            # the five base models' maxima on the top slice (0): all 0.9, subtype 0.9, the others 0.2
            "slice_spread": pytest.approx(np.std([0.9, 0.9, 0.2, 0.2, 0.2]), rel=1e-5),
        }
    ]
    # slices: the candidate (fused > 0.5) and each base model's map > 0.5 against the truth
    assert [r["slice"] for r in rec.slices] == [0, 1, 2]
    assert [r["truth_voxels"] for r in rec.slices] == [16, 4, 4]
    assert [r["candidate_voxels"] for r in rec.slices] == [9, 12, 6]
    assert [r["candidate_inter"] for r in rec.slices] == [4, 4, 0]
    assert [r["inter_all"] for r in rec.slices] == [4, 4, 0]
    assert [r["voxels_all"] for r in rec.slices] == [9, 12, 6]
    assert [r["inter_subtype"] for r in rec.slices] == [16, 4, 4]
    assert [r["voxels_subtype"] for r in rec.slices] == [16, 4, 4]
    for key in ("sdh", "sah", "small"):
        assert [r[f"inter_{key}"] for r in rec.slices] == [0, 0, 0]
        assert [r[f"voxels_{key}"] for r in rec.slices] == [0, 0, 0]
        assert [r[f"prob_{key}"] for r in rec.slices] == pytest.approx([0.2] * 3)
    assert [r["slice_prob"] for r in rec.slices] == pytest.approx([0.95, 0.85, 0.3])
    # each base model's slice probability is its max after the 3x3 opening: B (2 x 3) is opened away and
    # the 0.1 background remains; the truth's interior 2 x 2 block goes, its corner block stays (the
    # opening sees only the image at the edges, as max pooling does)
    assert [r["prob_all"] for r in rec.slices] == pytest.approx([0.9, 0.8, 0.1])
    assert [r["prob_subtype"] for r in rec.slices] == pytest.approx([0.9, 0.0, 0.9])
    assert all(r["case"] == "049" and r["fold"] == 2 for r in rec.slices)

    # lesions: A is label 1 (first in scan order), B label 2
    a, b = rec.lesions
    assert (a["lesion"], a["voxels"], a["first_slice"], a["last_slice"]) == (1, 21, 0, 1)
    assert (b["lesion"], b["voxels"], b["first_slice"], b["last_slice"]) == (2, 6, 2, 2)
    assert (a["truth_overlap"], a["is_hemorrhage"]) == (8, 1)
    assert (b["truth_overlap"], b["is_hemorrhage"]) == (0, 0)
    assert a["volume_ml"] == pytest.approx(21 * VOXEL_ML) and b["volume_ml"] == pytest.approx(6 * VOXEL_ML)
    assert set(FEATURES) <= set(a) and set(FEATURES) <= set(b)
    assert a["log_volume_ml"] == pytest.approx(math.log1p(21 * VOXEL_ML))
    assert a["logit_peak"] == pytest.approx(math.log(0.9 / 0.1), rel=1e-5)
    assert b["logit_peak"] == pytest.approx(math.log(0.7 / 0.3), rel=1e-5)
    assert a["mean_probability"] == pytest.approx((9 * 0.9 + 12 * 0.8) / 21, rel=1e-6)
    assert a["log_slices"] == pytest.approx(math.log(2)) and b["log_slices"] == 0.0
    # agreement: "all" is above 0.5 on every lesion pixel, "subtype" on the 8 truth pixels inside A
    assert a["agreement"] == pytest.approx((21 + 8) / (21 * 5), rel=1e-6)
    assert b["agreement"] == pytest.approx(6 / (6 * 5), rel=1e-6)
    pixels_a = [(r, c) for r in range(2, 5) for c in range(2, 5)]
    pixels_a += [(r, c) for r in range(2, 6) for c in range(2, 5)]
    pixels_b = [(r, c) for r in range(10, 12) for c in range(10, 13)]
    # the base models' peaks on A: all 0.9, subtype 0.9 (the truth inside A), the others 0.2; on B "subtype"
    # is 0 (the truth lies elsewhere)
    assert a["model_spread"] == pytest.approx(np.std([0.9, 0.9, 0.2, 0.2, 0.2]), rel=1e-5)
    assert b["model_spread"] == pytest.approx(np.std([0.7, 0.0, 0.2, 0.2, 0.2]), rel=1e-5)
    assert not any(k.startswith("label_") for k in a)  # no subtype labels given
    assert a["bone_distance_mm"] == pytest.approx(_bone_distance(pixels_a))
    assert b["bone_distance_mm"] == pytest.approx(_bone_distance(pixels_b))
    for row in (a, b):
        assert row["inside_brain_fraction"] == pytest.approx(1.0)
        assert row["brain_area_fraction"] == pytest.approx(1.0)
        assert row["mean_hu"] == pytest.approx(40.0)

    # lesion x slice: voxels and true voxels, for recounting the Dice of any choice of kept lesions
    assert [(r["lesion"], r["slice"], r["voxels"], r["inter"]) for r in rec.lesion_slices] == [
        (1, 0, 9, 4),
        (1, 1, 12, 4),
        (2, 2, 6, 0),
    ]
    # summed over lesions the per-slice counts are the candidate's
    for row in rec.slices:
        mine = [r for r in rec.lesion_slices if r["slice"] == row["slice"]]
        assert sum(r["voxels"] for r in mine) == row["candidate_voxels"]
        assert sum(r["inter"] for r in mine) == row["candidate_inter"]


def test_given_base_model_slice_probabilities_are_recorded_as_given() -> None:
    given = np.arange(N * 5, dtype=np.float32).reshape(N, 5) / 20.0
    rec = case_records(_case(model_slice_prob=given))
    for j, key in enumerate(spec.MODEL_KEYS):
        assert [r[f"prob_{key}"] for r in rec.slices] == pytest.approx(given[:, j].tolist())


def test_normal_case_without_candidates() -> None:
    p = _case()
    quiet = CasePrediction(
        **{
            **p.__dict__,
            "case_id": "n1",
            "fused": np.full((N, S, S), 0.2, dtype=np.float32),
            "truth": np.zeros((N, S, S), dtype=bool),
            "slice_labels": np.zeros(N, dtype=np.int64),
        }
    )
    rec = case_records(quiet)
    assert rec.cases[0]["label"] == 0 and rec.cases[0]["truth_voxels"] == 0
    assert rec.lesions == [] and rec.lesion_slices == []
    assert [r["candidate_voxels"] for r in rec.slices] == [0, 0, 0]


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        for key, value in w.items():
            if isinstance(value, float):
                assert isinstance(g[key], float | int) and g[key] == pytest.approx(value, abs=1e-6), key
            else:
                assert g[key] == value and type(g[key]) is type(value), key


def test_write_read_round_trip(tmp_path: Path) -> None:
    rec = case_records(_case(case_id="049"))
    other = case_records(_case(case_id="1e5"))  # a DICOM case folder name that reads like a number
    rec.extend(other)
    assert len(rec.cases) == 2 and len(rec.lesions) == 4
    rec.write(tmp_path / "records")
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == sorted(f"{t}.csv" for t in TABLES)
    back = Records.read(tmp_path / "records")
    for name in TABLES:
        _assert_same(getattr(back, name), getattr(rec, name))
    # case ids stay strings (a leading zero is part of a CT-ICH patient id)
    assert list(group(back.slices)) == ["049", "1e5"]
    # an empty table (a run without candidates) reads back as empty
    Records(cases=rec.cases, slices=rec.slices).write(tmp_path / "quiet")
    quiet = Records.read(tmp_path / "quiet")
    assert quiet.lesions == [] and quiet.lesion_slices == [] and len(quiet.cases) == 2


@pytest.mark.parametrize("opening", [1, 3, 5])
def test_opened_slice_max_equals_the_exported_slice_probability(opening: int) -> None:
    torch = pytest.importorskip("torch")
    from training.networks import slice_probability

    rng = np.random.default_rng(opening)
    maps = (rng.random((6, 20, 20)) * 0.6).astype(np.float32)
    maps[0, 7, 7] = 0.99  # a stray pixel
    maps[1, 0, 0] = 0.97  # a stray pixel in the corner
    maps[2, 10:16, 4:10] = 0.9  # a blob
    maps[3, 0:3, 17:20] = 0.95  # a blob in the corner: the edge sees only the image
    got = opened_slice_max(maps, opening)
    want = slice_probability(torch.from_numpy(maps[:, None]), opening)[:, 0].numpy()
    assert got.shape == (6,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    if opening == 1:
        np.testing.assert_array_equal(got, maps.reshape(6, -1).max(axis=1))
    else:
        assert got[0] < 0.99 and got[1] < 0.97  # strays removed
        assert got[2] == pytest.approx(0.9) and got[3] == pytest.approx(0.95)  # blobs kept
