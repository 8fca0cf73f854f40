"""ich.scoring on hand-made volumes: 3D lesions, their features, the lesion-model case score, the volume.

Every case is built here from numpy arrays: a fused map, five base maps, and the model input with a square
bone ring on the bone-window channel (value 1.0) and a stripped-brain disc on the last channel, so that
each feature has a value that can be worked out by hand.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from api.decision import CASE_MODEL_FILENAME, decision_for, load_case_model
from api.settings import Settings
from ich import spec
from ich.aggregate import aggregate
from ich.calibration import IsotonicCalibration, PlattCalibration
from ich.scoring import (
    FEATURES,
    NO_LESION_SCORE,
    CaseModel,
    burden_kept,
    burden_raw,
    candidate_mask,
    find_lesions,
    lesion_features,
    score_case,
)
from ich.seg import build_segmentation
from ich_devtools.dicom_writer import series_datasets
from tests.support.ensemble_case import Output, Volume

N, S = 4, 32
#: Model-grid pixel (row, column) in mm; different so that a swapped sampling shows.
PIXEL_MM = (1.0, 1.5)
SLICE_MM = 5.0
VOXEL_ML = PIXEL_MM[0] * PIXEL_MM[1] * SLICE_MM / 1000.0
#: Radius of the stripped-brain disc per slice (slice 0 holds the largest brain, slice 3 is the vertex).
BRAIN_RADIUS = (12.0, 10.0, 10.0, 6.0)
BRAIN_LEVEL = 0.5  # brain-window channel value inside the head: 40 HU

# The central lesion: 3 x 3 at 0.9 on slice 1 under 2 x 2 at 0.7 on slice 2 (one bleed over two slices).
CENTRAL = ((1, slice(14, 17), slice(14, 17), 0.9), (2, slice(14, 16), slice(14, 16), 0.7))
CENTRAL_VOXELS = 9 + 4
# The vault focus: one voxel on slice 3 just inside the inner table (bone rows 1-2), outside the brain.
VAULT = (3, 3, 15)


def _disc(radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    return (yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= radius**2


def make_images() -> np.ndarray:
    """``[N, 4, S, S]``: a square bone ring two pixels thick (rows/columns 1-2 and 29-30) on channel 2, a
    brain disc on channel 3, the brain window at 40 HU inside the head."""
    images = np.zeros((N, spec.IN_CHANNELS, S, S), np.float32)
    ring = np.zeros((S, S), bool)
    ring[1:31, 1:31] = True
    ring[3:29, 3:29] = False
    for i, radius in enumerate(BRAIN_RADIUS):
        images[i, 2][ring] = 1.0
        images[i, 1, 3:29, 3:29] = BRAIN_LEVEL
        images[i, 3][_disc(radius)] = BRAIN_LEVEL
    z, y, x = VAULT
    images[z, 1, y, x] = 0.875  # 70 HU
    return images


def empty_maps() -> tuple[np.ndarray, np.ndarray]:
    """(fused [N, S, S], base maps [N, 5, S, S]) without any lesion."""
    return np.zeros((N, S, S), np.float32), np.full((N, len(spec.MODEL_KEYS), S, S), 0.1, np.float32)


def add_central(fused: np.ndarray, probs: np.ndarray) -> None:
    for z, rows, cols, value in CENTRAL:
        fused[z, rows, cols] = value
        probs[z, :, rows, cols] = 0.2
        probs[z, :2, rows, cols] = 0.9  # two of the five base models see it


def add_vault(fused: np.ndarray, probs: np.ndarray, value: float = 0.95) -> None:
    z, y, x = VAULT
    fused[z, y, x] = value
    probs[z, :, y, x] = 0.2
    probs[z, 4, y, x] = 0.9  # only the small-lesion model sees it


def two_lesion_case() -> tuple[np.ndarray, np.ndarray]:
    fused, probs = empty_maps()
    add_central(fused, probs)
    add_vault(fused, probs)
    return fused, probs


def hand_case_model(**changes: Any) -> CaseModel:
    """Lesions far from the bone and large are hemorrhage; small foci hugging the bone are not.

    Standardisation is the identity, so ``z = 2 * log_volume_ml + 0.5 * bone_distance_mm - 4``.
    """
    n = len(FEATURES)
    coef = [0.0] * n
    coef[FEATURES.index("log_volume_ml")] = 2.0
    coef[FEATURES.index("bone_distance_mm")] = 0.5
    model = CaseModel(
        mean=(0.0,) * n,
        scale=(1.0,) * n,
        coef=tuple(coef),
        intercept=-4.0,
        keep=0.5,
        calibration=PlattCalibration(a=2.0, b=-0.5),
        threshold=0.4,
        band=(0.3, 0.6),
        info={"fitted_on": "hand"},
    )
    return replace(model, **changes) if changes else model


def hand_probability(volume_ml: float, bone_mm: float) -> float:
    return 1.0 / (1.0 + math.exp(-(2.0 * math.log1p(volume_ml) + 0.5 * bone_mm - 4.0)))


def hand_calibrated(raw: float) -> float:
    return 1.0 / (1.0 + math.exp(-(2.0 * math.log(raw / (1.0 - raw)) - 0.5)))


def lesions_of(fused: np.ndarray, probs: np.ndarray, images: np.ndarray | None = None) -> list[Any]:
    labels, count = find_lesions(candidate_mask(fused))
    return lesion_features(
        labels, count, fused, probs, make_images() if images is None else images, PIXEL_MM, VOXEL_ML
    )


def by_first_slice(lesions: list[Any]) -> list[Any]:
    return sorted(lesions, key=lambda les: les.first_slice)


# ---------------------------------------------------------------------------------------- lesions


def test_a_lesion_over_two_adjacent_slices_is_one_lesion() -> None:
    fused, probs = empty_maps()
    add_central(fused, probs)
    (lesion,) = lesions_of(fused, probs)
    assert (lesion.first_slice, lesion.last_slice, lesion.n_slices) == (1, 2, 2)
    assert lesion.voxels == CENTRAL_VOXELS
    assert lesion.volume_ml == pytest.approx(CENTRAL_VOXELS * VOXEL_ML)
    assert lesion.peak_slice == 1  # 9 pixels there, 4 on slice 2


def test_diagonal_neighbours_on_adjacent_slices_are_connected_in_3d() -> None:
    fused, probs = empty_maps()
    fused[1, 10, 10] = 0.9
    fused[2, 11, 11] = 0.9  # touches the first only by a corner across the slices (26-connectivity)
    fused[2, 11, 13] = 0.9  # one pixel apart from it on the same slice: separate
    labels, count = find_lesions(candidate_mask(fused))
    assert count == 2
    assert labels[1, 10, 10] == labels[2, 11, 11] != labels[2, 11, 13]
    (joined,) = [les for les in lesions_of(fused, probs) if les.voxels == 2]
    assert joined.n_slices == 2


def test_candidates_are_strictly_above_the_mask_threshold() -> None:
    fused, _ = empty_maps()
    fused[0, 5, 5] = spec.MASK_THRESHOLD
    fused[0, 9, 9] = np.nextafter(np.float32(spec.MASK_THRESHOLD), np.float32(1))
    assert candidate_mask(fused).sum() == 1 and candidate_mask(fused)[0, 9, 9]
    assert candidate_mask(fused[:, None]).shape == (N, S, S)  # [N, 1, S, S] is accepted too
    assert find_lesions(np.zeros((N, S, S), bool))[1] == 0


def test_two_blobs_are_two_lesions_with_hand_computed_features() -> None:
    central, vault = by_first_slice(lesions_of(*two_lesion_case()))

    assert central.voxels == CENTRAL_VOXELS and vault.voxels == 1
    assert central.peak_probability == pytest.approx(0.9)
    assert central.mean_probability == pytest.approx((9 * 0.9 + 4 * 0.7) / 13)
    assert vault.peak_probability == pytest.approx(0.95) == vault.mean_probability
    assert central.agreement == pytest.approx(2 / 5)
    assert vault.agreement == pytest.approx(1 / 5)
    assert central.inside_brain_fraction == 1.0
    assert vault.inside_brain_fraction == 0.0
    # Bone: the ring's inner rows are 2 and 29 (1.0 mm per row), its inner columns 2 and 29 (1.5 mm).
    # The central pixels lie 12 or 13 rows from the ring (5 at 12, 8 at 13): median 13 mm.
    assert central.bone_distance_mm == pytest.approx(13.0)
    assert vault.bone_distance_mm == pytest.approx(1.0)  # one row below the inner table
    # Brain area of the peak slice over the largest brain area of the study (slice 0's disc).
    largest = _disc(BRAIN_RADIUS[0]).sum()
    assert central.brain_area_fraction == pytest.approx(_disc(BRAIN_RADIUS[1]).sum() / largest)
    assert vault.brain_area_fraction == pytest.approx(_disc(BRAIN_RADIUS[3]).sum() / largest)
    assert vault.brain_area_fraction < central.brain_area_fraction < 1.0
    assert central.mean_hu == pytest.approx(40.0)
    assert vault.mean_hu == pytest.approx(70.0)


def test_bone_distance_uses_the_column_spacing_across_and_is_clipped() -> None:
    fused, probs = empty_maps()
    fused[0, 15, 3] = 0.9  # one column right of the ring's inner column
    (lesion,) = lesions_of(fused, probs)
    assert lesion.bone_distance_mm == pytest.approx(PIXEL_MM[1])
    fused, probs = empty_maps()
    fused[1, 15, 15] = 0.9
    no_bone = make_images()
    no_bone[:, 2] = 0.0
    (far,) = lesions_of(fused, probs, no_bone)
    assert far.bone_distance_mm == 20.0  # no bone on the slice: the clip


def test_feature_vector_follows_the_features_order() -> None:
    central, _ = by_first_slice(lesions_of(*two_lesion_case()))
    vector = central.feature_vector()
    assert vector.shape == (len(FEATURES),)
    expected = {
        "log_volume_ml": math.log1p(CENTRAL_VOXELS * VOXEL_ML),
        "logit_peak": math.log(0.9 / 0.1),
        "mean_probability": central.mean_probability,
        "log_slices": math.log(2),
        "bone_distance_mm": 13.0,
        "brain_area_fraction": central.brain_area_fraction,
        "inside_brain_fraction": 1.0,
        "mean_hu": 40.0,
        "agreement": 0.4,
    }
    assert set(expected) == set(FEATURES)
    for name, value in expected.items():
        assert vector[FEATURES.index(name)] == pytest.approx(value, rel=1e-5), name


# ---------------------------------------------------------------------------------------- case score


def _score(fused: np.ndarray, probs: np.ndarray, slice_prob: list[float], model: CaseModel | None) -> Any:
    return score_case(
        fused, probs, np.array(slice_prob, np.float32), make_images(), PIXEL_MM, VOXEL_ML, model
    )


def test_the_case_model_removes_a_vault_focus_and_keeps_the_central_lesion() -> None:
    fused, probs = two_lesion_case()
    scored = _score(fused, probs, [0.1, 0.9, 0.7, 0.95], hand_case_model())
    central, vault = by_first_slice(scored.lesions)
    assert central.probability == pytest.approx(hand_probability(CENTRAL_VOXELS * VOXEL_ML, 13.0))
    assert vault.probability == pytest.approx(hand_probability(VOXEL_ML, 1.0))
    assert vault.probability < 0.5 <= central.probability  # keep = 0.5
    assert [les.label for les in scored.kept] == [central.label]
    z, y, x = VAULT
    assert not scored.mask[z, y, x]
    assert scored.mask.sum() == CENTRAL_VOXELS
    assert scored.mask[1, 14:17, 14:17].all() and scored.mask[2, 14:16, 14:16].all()
    # The case score is the highest lesion probability, calibrated; the paper's maximum stays beside it.
    assert scored.raw_score == pytest.approx(central.probability)
    assert scored.ich_probability == pytest.approx(hand_calibrated(central.probability))
    assert scored.max_slice_probability == pytest.approx(0.95)
    assert scored.model_voxel_ml == VOXEL_ML


def test_the_case_score_is_the_highest_lesion_probability_even_if_none_is_kept() -> None:
    fused, probs = empty_maps()
    add_vault(fused, probs)
    scored = _score(fused, probs, [0.1, 0.1, 0.1, 0.95], hand_case_model())
    (vault,) = scored.lesions
    assert scored.kept == [] and not scored.mask.any()
    assert scored.raw_score == pytest.approx(vault.probability)
    assert scored.ich_probability == pytest.approx(hand_calibrated(vault.probability))


def test_no_lesion_gives_the_no_lesion_score() -> None:
    fused, probs = empty_maps()
    scored = _score(fused, probs, [0.1, 0.2, 0.3, 0.4], hand_case_model())
    assert scored.lesions == [] and scored.kept == []
    assert not scored.mask.any() and scored.mask.shape == (N, S, S)
    assert scored.raw_score == NO_LESION_SCORE
    assert scored.ich_probability == pytest.approx(hand_calibrated(NO_LESION_SCORE))
    assert scored.max_slice_probability == pytest.approx(0.4)


def test_the_burden_is_the_probability_weighted_volume_and_its_largest_lesions_carry_it() -> None:
    shares = [0.02, 0.5, 0.1]
    assert burden_raw(shares) == pytest.approx(0.62 / 1.62)
    assert burden_raw([]) == NO_LESION_SCORE and burden_raw([0.0]) == NO_LESION_SCORE
    assert burden_kept(shares, 0.5 / 1.5) == [1]  # the largest alone reaches keep
    assert burden_kept(shares, 0.55 / 1.55) == [1, 2]
    assert burden_kept(shares, burden_raw(shares)) == [1, 2, 0]
    assert burden_kept(shares, 0.5) == []  # the whole burden stays below keep
    assert burden_kept([], 0.0) == []


def test_a_burden_case_model_sums_the_lesions_and_masks_those_that_carry_the_call() -> None:
    fused, probs = two_lesion_case()
    slice_prob = [0.1, 0.9, 0.7, 0.95]
    scored = _score(fused, probs, slice_prob, hand_case_model(score="burden"))
    central, vault = by_first_slice(scored.lesions)
    share_c = central.probability * central.volume_ml
    share_v = vault.probability * vault.volume_ml
    raw = (share_c + share_v) / (1.0 + share_c + share_v)
    assert scored.raw_score == pytest.approx(raw)
    assert scored.ich_probability == pytest.approx(hand_calibrated(raw))
    assert scored.uncertainty == pytest.approx(central.model_spread)  # the larger share decided
    # keep at the central lesion's own burden: it is kept, the vault focus is not
    keep = share_c / (1.0 + share_c)
    kept = _score(fused, probs, slice_prob, hand_case_model(score="burden", keep=keep))
    assert [les.label for les in kept.kept] == [central.label]
    assert kept.mask.sum() == CENTRAL_VOXELS and not kept.mask[VAULT]
    # keep above the whole burden: nothing is kept, nothing is masked
    above = _score(fused, probs, slice_prob, hand_case_model(score="burden", keep=raw * 1.01))
    assert above.kept == [] and not above.mask.any()


def test_without_a_case_model_every_candidate_counts_and_the_slice_maximum_is_the_score() -> None:
    fused, probs = two_lesion_case()
    scored = _score(fused, probs, [0.1, 0.9, 0.7, 0.95], None)
    assert len(scored.lesions) == 2 and scored.kept == scored.lesions
    assert all(les.probability is None for les in scored.lesions)
    np.testing.assert_array_equal(scored.mask, candidate_mask(fused))
    assert scored.ich_probability == pytest.approx(0.95) == scored.max_slice_probability
    assert scored.raw_score == scored.ich_probability


def test_without_a_case_model_slices_whose_slice_prob_stays_low_hold_no_candidate() -> None:
    # The paper's rule: SLICE_PROB is taken after the weight model's opening, so a focus on a slice whose
    # SLICE_PROB stayed at or below the mask threshold is a stray the opening removed.
    fused, probs = two_lesion_case()
    scored = _score(fused, probs, [0.1, 0.9, 0.7, 0.3], None)
    (central,) = scored.lesions
    assert central.first_slice == 1 and not scored.mask[3].any()
    assert scored.ich_probability == pytest.approx(0.9)
    # A case model sees the focus as a candidate and decides on it itself.
    with_model = _score(fused, probs, [0.1, 0.9, 0.7, 0.3], hand_case_model())
    assert len(with_model.lesions) == 2


# ---------------------------------------------------------------------------------------- aggregate


#: A 64 x 96 source matrix at 0.5 mm: model pixels of 1.0 x 1.5 mm on the 32 x 32 grid, as above.
MATRIX = (64, 96)
SPACING = (0.5, 0.5)


def aggregate_case() -> tuple[Output, Volume, list[pydicom.Dataset]]:
    fused, probs = two_lesion_case()
    output = Output(
        fused=fused[:, None],
        slice_prob=np.array([0.1, 0.9, 0.7, 0.95], np.float32),
        weights=np.full((N, len(spec.MODEL_KEYS)), 0.2, np.float32),
        probs={key: probs[:, j : j + 1] for j, key in enumerate(spec.MODEL_KEYS)},
    )
    hu = np.full((N, *MATRIX), 30.0, np.float32)
    headers = series_datasets(hu, pixel_spacing_mm=SPACING, slice_thickness_mm=SLICE_MM)
    volume = Volume(hu, SPACING, SLICE_MM, [str(ds.SOPInstanceUID) for ds in headers])
    return output, volume, headers


def _seg_voxels(headers: list[pydicom.Dataset], mask: np.ndarray) -> tuple[int, float]:
    """(voxels, voxel mL) of the SEG built from ``mask``, read back from its encoded bytes."""
    seg = build_segmentation(headers, mask, model_version="2026.12.01-test")
    assert seg is not None
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    measures = back.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    row_mm, col_mm = (float(v) for v in measures.PixelSpacing)
    voxel_ml = row_mm * col_mm * float(measures.SliceThickness) / 1000.0
    return int(np.count_nonzero(back.pixel_array)), voxel_ml


def test_aggregate_volume_is_the_source_mask_and_the_seg_holds_exactly_those_voxels() -> None:
    output, volume, headers = aggregate_case()
    findings = aggregate(output, volume, make_images(), case_model=hand_case_model())

    assert findings.voxel_volume_ml == pytest.approx(VOXEL_ML)  # the model grid matches PIXEL_MM
    assert findings.source_mask.shape == (N, *MATRIX) and findings.source_mask.dtype == np.bool_
    voxels = int(np.count_nonzero(findings.source_mask))
    assert voxels > 0
    source_ml = SPACING[0] * SPACING[1] * SLICE_MM / 1000.0
    assert findings.hemorrhage_volume_ml == pytest.approx(voxels * source_ml)
    assert sum(s.hemorrhage_volume_ml for s in findings.slices) == pytest.approx(
        findings.hemorrhage_volume_ml
    )
    for i, s in enumerate(findings.slices):
        assert s.hemorrhage_volume_ml == pytest.approx(np.count_nonzero(findings.source_mask[i]) * source_ml)
    # Only the central lesion is kept: its slices hold the voxels, the vault focus's slice none.
    assert findings.source_mask[1].any() and findings.source_mask[2].any()
    assert not findings.source_mask[0].any() and not findings.source_mask[3].any()
    assert findings.mask.sum() == CENTRAL_VOXELS
    assert len(findings.lesions) == 2

    seg_voxels, seg_voxel_ml = _seg_voxels(headers, findings.source_mask)
    assert seg_voxels == voxels
    assert seg_voxels * seg_voxel_ml == pytest.approx(findings.hemorrhage_volume_ml)

    # The case model's call and operating point.
    central = max(findings.lesions, key=lambda les: les.voxels)
    assert central.probability is not None  # the same model-grid geometry as the direct scoring above
    assert central.probability == pytest.approx(hand_probability(CENTRAL_VOXELS * VOXEL_ML, 13.0))
    assert findings.ich_probability == pytest.approx(hand_calibrated(central.probability), rel=1e-6)
    assert findings.max_slice_probability == pytest.approx(0.95)
    assert (findings.threshold, findings.indeterminate_band) == (0.4, (0.3, 0.6))


def test_aggregate_without_a_case_model_keeps_the_vault_focus_in_volume_and_seg() -> None:
    output, volume, headers = aggregate_case()
    findings = aggregate(output, volume, make_images())
    assert findings.source_mask[3].any()  # the one-voxel focus survives the resize at 0.95
    assert findings.ich_probability == pytest.approx(0.95)
    voxels = int(np.count_nonzero(findings.source_mask))
    assert findings.hemorrhage_volume_ml == pytest.approx(voxels * SPACING[0] * SPACING[1] * SLICE_MM / 1000)
    with_model = aggregate(output, volume, make_images(), case_model=hand_case_model())
    assert findings.hemorrhage_volume_ml > with_model.hemorrhage_volume_ml
    assert _seg_voxels(headers, findings.source_mask)[0] == voxels


# ---------------------------------------------------------------------------------------- CaseModel I/O


def test_case_model_round_trips_through_dict_and_file(tmp_path: Path) -> None:
    model = hand_case_model()
    d = model.to_dict()
    assert d["features"] == list(FEATURES)
    assert CaseModel.from_dict(json.loads(json.dumps(d))) == model
    isotonic = hand_case_model(calibration=IsotonicCalibration(x=(0.1, 0.5, 0.9), y=(0.0, 0.4, 1.0)))
    assert CaseModel.from_dict(json.loads(json.dumps(isotonic.to_dict()))) == isotonic
    path = tmp_path / "case_model.json"
    model.save(path)
    loaded = CaseModel.load(path)
    assert loaded == model
    assert loaded.info == {"fitted_on": "hand"}
    assert loaded.calibration == PlattCalibration(a=2.0, b=-0.5)


@pytest.mark.parametrize(
    "features",
    [list(reversed(FEATURES)), list(FEATURES[:-1]), [*FEATURES, "extra"], None],
)
def test_a_wrong_feature_list_is_refused(features: list[str] | None) -> None:
    d = hand_case_model().to_dict()
    if features is None:
        del d["features"]
    else:
        d["features"] = features
    with pytest.raises(ValueError, match="features"):
        CaseModel.from_dict(d)


@pytest.mark.parametrize(
    ("threshold", "band"),
    [(0.5, (0.6, 0.8)), (0.5, (0.2, 0.4)), (0.5, (0.6, 0.4)), (0.5, (-0.1, 0.6)), (0.5, (0.4, 1.1))],
)
def test_a_band_that_does_not_hold_the_threshold_is_refused(
    threshold: float, band: tuple[float, float]
) -> None:
    with pytest.raises(ValueError, match="band"):
        hand_case_model(threshold=threshold, band=band)
    d = hand_case_model().to_dict()
    d["threshold"], d["band"] = threshold, list(band)
    with pytest.raises(ValueError, match="band"):
        CaseModel.from_dict(d)


def test_the_band_may_touch_the_threshold() -> None:
    assert hand_case_model(threshold=0.3, band=(0.3, 0.6)).threshold == 0.3


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("intercept", float("nan")),
        ("keep", float("inf")),
        ("threshold", float("nan")),
        ("coef", [float("nan")] + [0.0] * (len(FEATURES) - 1)),
        ("mean", [float("inf")] + [0.0] * (len(FEATURES) - 1)),
        ("scale", [0.0] + [1.0] * (len(FEATURES) - 1)),
    ],
)
def test_non_finite_values_and_zero_scales_are_refused(key: str, value: Any) -> None:
    d = json.loads(json.dumps(hand_case_model().to_dict()))
    d[key] = value
    with pytest.raises(ValueError, match="finite"):
        CaseModel.from_dict(d)


def test_a_wrong_number_of_coefficients_or_band_values_is_refused() -> None:
    d = hand_case_model().to_dict()
    d["coef"] = d["coef"][:-1]
    with pytest.raises(ValueError, match="coef"):
        CaseModel.from_dict(d)
    d = hand_case_model().to_dict()
    d["band"] = [0.3, 0.5, 0.6]
    with pytest.raises(ValueError, match="band"):
        CaseModel.from_dict(d)


# ---------------------------------------------------------------------------------------- api.decision


@pytest.fixture(autouse=True)
def _fresh_case_model_cache(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("ICH_THRESHOLD", raising=False)
    monkeypatch.delenv("ICH_MODEL_REPOSITORY", raising=False)
    load_case_model.cache_clear()
    yield
    load_case_model.cache_clear()


def _repository(tmp_path: Path, model: CaseModel | None) -> Path:
    root = tmp_path / "model_repository"
    root.mkdir()
    if model is not None:
        model.save(root / CASE_MODEL_FILENAME)
    return root


def test_the_decision_comes_from_the_repositorys_case_model(tmp_path: Path) -> None:
    model = hand_case_model(threshold=0.35, band=(0.2, 0.5))
    decision = decision_for(Settings(model_repository=_repository(tmp_path, model)))
    assert decision.case_model == model
    assert decision.threshold == 0.35
    assert decision.band == (0.2, 0.5)


def test_ich_threshold_overrides_the_models_threshold_but_not_its_band(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _repository(tmp_path, hand_case_model(threshold=0.35, band=(0.2, 0.5)))
    decision = decision_for(Settings(model_repository=root, threshold=0.7))
    assert decision.threshold == 0.7 and decision.band == (0.2, 0.5)
    assert decision.case_model is not None
    monkeypatch.setenv("ICH_THRESHOLD", "0.25")
    assert decision_for(Settings(model_repository=root)).threshold == 0.25


def test_without_a_case_model_the_papers_rule_applies(tmp_path: Path) -> None:
    root = _repository(tmp_path, None)
    decision = decision_for(Settings(model_repository=root))
    assert decision.case_model is None
    assert decision.threshold == 0.5
    assert decision.band == spec.INDETERMINATE_BAND
    assert decision_for(Settings(model_repository=root, threshold=0.45)).threshold == 0.45


def test_a_malformed_case_model_is_an_error_not_the_papers_rule(tmp_path: Path) -> None:
    root = _repository(tmp_path, None)
    d = hand_case_model().to_dict()
    d["features"] = ["log_volume_ml"]
    (root / CASE_MODEL_FILENAME).write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ValueError, match="features"):
        decision_for(Settings(model_repository=root))


def test_a_slice_score_model_calibrates_the_max_slice_and_keeps_lesions_by_their_opened_peak() -> None:
    fused, probs = two_lesion_case()  # the vault focus is one pixel: the 3x3 opening erases it
    model = hand_case_model(score="max_slice", keep=0.6)
    scored = _score(fused, probs, [0.1, 0.9, 0.7, 0.95], model)
    central, vault = by_first_slice(scored.lesions)
    assert vault.opened_peak < 0.5 < 0.6 <= central.opened_peak
    assert [les.label for les in scored.kept] == [central.label]
    assert scored.raw_score == pytest.approx(0.95)
    assert scored.ich_probability == pytest.approx(hand_calibrated(0.95))
    assert CaseModel.from_dict(model.to_dict()) == model


def test_an_unknown_raw_score_is_refused() -> None:
    with pytest.raises(ValueError, match="score"):
        hand_case_model(score="mean_slice")
