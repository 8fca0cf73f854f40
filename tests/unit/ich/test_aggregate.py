"""Case findings from ensemble output: probability, call, band, volume at the source matrix, slices."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ich import spec
from ich.aggregate import aggregate, voxel_volume_ml
from ich.calibration import PlattCalibration
from ich.scoring import FEATURES, CaseModel
from tests.support.ensemble_case import Output, Volume


def blank_images(n: int, size: int) -> np.ndarray:
    """Model input without bone or brain: the lesion features stay neutral (no case model reads them)."""
    return np.zeros((n, spec.IN_CHANNELS, size, size), np.float32)


def images_of(output: Output) -> np.ndarray:
    n, _, size, _ = output.fused.shape
    return blank_images(n, size)


def make_case(
    slice_probs: list[float], *, size: int = 8, matrix: tuple[int, int] = (32, 32)
) -> tuple[Output, Volume]:
    """FUSED carries each slice's probability at one pixel; members differ so their maxima are checkable."""
    n = len(slice_probs)
    fused = np.zeros((n, 1, size, size), np.float32)
    for i, p in enumerate(slice_probs):
        fused[i, 0, 0, 0] = p
    probs = {
        key: np.full((n, 1, size, size), 0.1 * (j + 1), np.float32) for j, key in enumerate(spec.MODEL_KEYS)
    }
    weights = np.tile(np.array([0.4, 0.3, 0.1, 0.1, 0.1], np.float32), (n, 1))
    output = Output(fused=fused, slice_prob=np.array(slice_probs, np.float32), weights=weights, probs=probs)
    volume = Volume(
        hu=np.zeros((n, *matrix), np.float32),
        pixel_spacing_mm=(0.5, 0.5),
        slice_thickness_mm=5.0,
        sop_instance_uids=[f"1.2.3.{i}" for i in range(n)],
    )
    return output, volume


def test_case_probability_is_the_highest_slice_and_slices_keep_order() -> None:
    output, volume = make_case([0.1, 0.93, 0.2])
    findings = aggregate(output, volume, images_of(output), threshold=0.5)
    assert findings.ich_probability == pytest.approx(0.93)
    assert findings.ich_detected is True
    assert findings.indeterminate is False
    assert [s.index for s in findings.slices] == [0, 1, 2]
    assert [s.sop_instance_uid for s in findings.slices] == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    assert findings.slices[1].probability == pytest.approx(0.93)
    assert findings.slices[0].model_probabilities == pytest.approx(
        {"all": 0.1, "subtype": 0.2, "sdh": 0.3, "sah": 0.4, "small": 0.5}
    )
    assert findings.slices[2].weights == pytest.approx(
        {"all": 0.4, "subtype": 0.3, "sdh": 0.1, "sah": 0.1, "small": 0.1}
    )


@pytest.mark.parametrize(
    ("probability", "threshold", "detected", "indeterminate"),
    [
        (0.39, 0.5, False, False),
        (0.40, 0.5, False, True),  # the band is closed at both ends
        (0.55, 0.5, True, True),
        (0.60, 0.5, True, True),
        (0.61, 0.5, True, False),
        (0.61, 0.7, False, False),  # the call follows the threshold setting
        (0.70, 0.7, True, False),  # at the threshold counts as detected
    ],
)
def test_call_and_indeterminate_band(
    probability: float, threshold: float, detected: bool, indeterminate: bool
) -> None:
    output, volume = make_case([0.01, probability])
    findings = aggregate(output, volume, images_of(output), threshold=threshold)
    assert findings.ich_detected is detected
    assert findings.indeterminate is indeterminate
    assert findings.threshold == threshold
    assert findings.indeterminate_band == spec.INDETERMINATE_BAND


def _volume_case() -> tuple[Output, Volume]:
    # 512 x 256 matrix at 0.5 x 0.8 mm, resized to 64: one model pixel covers 8 x 4 source pixels.
    size = 64
    n = 2
    fused = np.zeros((n, 1, size, size), np.float32)
    fused[0, 0, 10:20, 10:20] = 1.0  # 100 model pixels: 80 x 40 source pixels
    fused[1, 0, 0:5, 0:2] = 1.0  # 10 model pixels at the edge: 40 x 8 source pixels
    fused[1, 0, 40, 40] = 0.5  # exactly at the threshold: not lesion (strictly greater), at either matrix
    output = Output(
        fused=fused,
        slice_prob=np.array([0.9, 0.8], np.float32),
        weights=np.full((n, 5), 0.2, np.float32),
        probs={key: fused.copy() for key in spec.MODEL_KEYS},
    )
    return output, Volume(np.zeros((n, 512, 256), np.float32), (0.5, 0.8), 2.5, ["a", "b"])


def test_volume_counts_the_source_matrix_voxels_of_the_kept_lesions() -> None:
    output, volume = _volume_case()
    size = 64
    findings = aggregate(output, volume, images_of(output), threshold=0.5)
    model_voxel_ml = (0.5 * 512 / size) * (0.8 * 256 / size) * 2.5 / 1000.0
    source_voxel_ml = 0.5 * 0.8 * 2.5 / 1000.0
    assert findings.voxel_volume_ml == pytest.approx(model_voxel_ml)
    assert findings.source_mask.shape == (2, 512, 256) and findings.source_mask.dtype == np.bool_
    # Bilinear, then > 0.5: across a block's edge the map of 1.0 crosses 0.5 exactly at the edge, so the
    # block keeps its pixel areas, except at its interior corners, where the row and column weights
    # multiply: of the source pixels whose row weight is 9/16 or 11/16 and column weight 5/8 or 7/8, three
    # stay at or below 0.5 (9/16*5/8, 9/16*7/8, 11/16*5/8) at each interior corner.
    assert findings.source_mask[0, 80:160, 40:80].sum() == 80 * 40 - 4 * 3
    assert not findings.source_mask[0, 80, 40] and findings.source_mask[0, 82, 40]  # 13/16*5/8 > 0.5
    assert int(findings.source_mask[0].sum()) == 80 * 40 - 4 * 3  # nothing outside the block
    assert int(findings.source_mask[1].sum()) == 40 * 8 - 3  # one interior corner; the matrix edges hold
    assert not findings.source_mask[1, 320:328, 160:164].any()  # the pixel at the threshold
    voxels = 3200 - 12 + 320 - 3
    assert int(np.count_nonzero(findings.source_mask)) == voxels
    assert findings.hemorrhage_volume_ml == pytest.approx(voxels * source_voxel_ml)
    # The source volume stays within the corners' share of the model-grid count.
    assert findings.hemorrhage_volume_ml == pytest.approx(110 * model_voxel_ml, rel=0.01)
    assert findings.slices[0].hemorrhage_volume_ml == pytest.approx((3200 - 12) * source_voxel_ml)
    assert findings.slices[1].hemorrhage_volume_ml == pytest.approx((320 - 3) * source_voxel_ml)
    assert int(findings.mask.sum()) == 110
    assert findings.mask.shape == (2, size, size)
    assert sorted(les.voxels for les in findings.lesions) == [10, 100]


def test_volume_follows_the_bilinear_contour_not_the_model_pixel_count() -> None:
    output, volume = _volume_case()
    output.fused[0, 0, 10:20, 10:20] = 0.8  # a dimmer block: the 0.5 contour lies inside its pixel areas
    findings = aggregate(output, volume, images_of(output), threshold=0.5)
    voxels = int(np.count_nonzero(findings.source_mask))
    assert int(findings.mask.sum()) == 110  # the model grid still counts every pixel above 0.5
    assert int(findings.source_mask[0].sum()) < 80 * 40
    assert 320 < voxels < 3200 + 320
    assert findings.hemorrhage_volume_ml == pytest.approx(voxels * 0.5 * 0.8 * 2.5 / 1000.0)
    assert sum(s.hemorrhage_volume_ml for s in findings.slices) == pytest.approx(
        findings.hemorrhage_volume_ml
    )


def test_strays_on_slices_the_post_processing_cleared_add_no_volume() -> None:
    output, volume = make_case([0.3, 0.3])
    output.fused[0, 0, 3, 3] = 0.9  # a stray pixel the opening removed: SLICE_PROB stayed 0.3
    findings = aggregate(output, volume, images_of(output))
    assert findings.ich_detected is False
    assert findings.hemorrhage_volume_ml == 0.0
    assert not findings.mask.any()
    assert not findings.source_mask.any()
    assert findings.lesions == []


def _case_model(*, threshold: float = 0.3, band: tuple[float, float] = (0.2, 0.45)) -> CaseModel:
    """Every lesion gets probability 0.5 (all coefficients 0) and is kept; identity calibration."""
    n = len(FEATURES)
    return CaseModel(
        mean=(0.0,) * n,
        scale=(1.0,) * n,
        coef=(0.0,) * n,
        intercept=0.0,
        keep=0.4,
        calibration=PlattCalibration(1.0, 0.0),
        threshold=threshold,
        band=band,
    )


def test_without_a_case_model_the_paper_threshold_and_band_apply() -> None:
    output, volume = make_case([0.1, 0.45])
    findings = aggregate(output, volume, images_of(output))
    assert findings.threshold == 0.5
    assert findings.indeterminate_band == spec.INDETERMINATE_BAND
    assert findings.ich_detected is False and findings.indeterminate is True
    assert findings.max_slice_probability == pytest.approx(0.45) == findings.ich_probability


def test_a_case_model_sets_probability_threshold_and_band() -> None:
    output, volume = make_case([0.1, 0.95])
    findings = aggregate(output, volume, images_of(output), case_model=_case_model())
    assert findings.ich_probability == pytest.approx(0.5)  # the lesion model's, not the slice maximum
    assert findings.max_slice_probability == pytest.approx(0.95)
    assert findings.threshold == 0.3 and findings.indeterminate_band == (0.2, 0.45)
    assert findings.ich_detected is True and findings.indeterminate is False
    assert findings.scoring is not None and len(findings.scoring.kept) == 1
    # Explicit settings override the model's operating point.
    override = aggregate(
        output, volume, images_of(output), case_model=_case_model(), threshold=0.6, band=(0.45, 0.55)
    )
    assert override.threshold == 0.6 and override.ich_detected is False
    assert override.indeterminate_band == (0.45, 0.55) and override.indeterminate is True


def test_with_a_case_model_a_focus_on_a_low_slice_is_a_candidate_it_decides_on() -> None:
    output, volume = make_case([0.3, 0.3])
    output.fused[0, 0, 3, 3] = 0.9  # below the paper's slice rule, but a lesion for the lesion model
    findings = aggregate(output, volume, images_of(output), case_model=_case_model())
    assert len(findings.lesions) == 1 and findings.mask[0, 3, 3]
    assert findings.hemorrhage_volume_ml > 0.0


def test_images_of_another_shape_are_refused() -> None:
    output, volume = make_case([0.1, 0.2])
    with pytest.raises(ValueError, match="images must be"):
        aggregate(output, volume, blank_images(2, 4))
    with pytest.raises(ValueError, match="images must be"):
        aggregate(output, volume, blank_images(3, 8))


@pytest.mark.parametrize("band", [(0.6, 0.4), (-0.1, 0.5), (0.5, 1.2)])
def test_band_out_of_order_or_range_is_refused(band: tuple[float, float]) -> None:
    output, volume = make_case([0.1])
    with pytest.raises(ValueError, match="band"):
        aggregate(output, volume, images_of(output), band=band)


def test_voxel_volume_is_independent_of_input_size_for_the_same_field_of_view() -> None:
    volume = Volume(np.zeros((1, 512, 512), np.float32), (0.45, 0.45), 5.0, ["a"])
    # Whole field of view: S*S model pixels always cover 512*512 native pixels.
    for size in (128, 256, 512):
        whole_ml = voxel_volume_ml(volume, size) * size * size
        assert whole_ml == pytest.approx(512 * 512 * 0.45 * 0.45 * 5 / 1000)


def test_single_slice_case() -> None:
    output, volume = make_case([0.8])
    findings = aggregate(output, volume, images_of(output))
    assert findings.ich_probability == pytest.approx(0.8)
    assert len(findings.slices) == 1


def _fewer_slices(o: Output, v: Volume) -> tuple[Output, Volume]:
    return o, Volume(v.hu[:2], v.pixel_spacing_mm, v.slice_thickness_mm, v.sop_instance_uids[:2])


def _fewer_uids(o: Output, v: Volume) -> tuple[Output, Volume]:
    return o, Volume(v.hu, v.pixel_spacing_mm, v.slice_thickness_mm, v.sop_instance_uids[:1])


def _zero_spacing(o: Output, v: Volume) -> tuple[Output, Volume]:
    return o, Volume(v.hu, (0.0, 0.5), v.slice_thickness_mm, v.sop_instance_uids)


def _nan_thickness(o: Output, v: Volume) -> tuple[Output, Volume]:
    return o, Volume(v.hu, v.pixel_spacing_mm, float("nan"), v.sop_instance_uids)


def _four_weights(o: Output, v: Volume) -> tuple[Output, Volume]:
    return Output(o.fused, o.slice_prob, o.weights[:, :4], o.probs), v


def _one_member(o: Output, v: Volume) -> tuple[Output, Volume]:
    return Output(o.fused, o.slice_prob, o.weights, {"all": o.probs["all"]}), v


def _nan_probability(o: Output, v: Volume) -> tuple[Output, Volume]:
    return Output(o.fused, np.array([0.1, np.nan, 0.2], np.float32), o.weights, o.probs), v


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_fewer_slices, "slices"),
        (_fewer_uids, "SOP Instance UIDs"),
        (_zero_spacing, "spacing"),
        (_nan_thickness, "slice spacing"),
        (_four_weights, "WEIGHTS"),
        (_one_member, "lacks"),
        (_nan_probability, "non-finite"),
    ],
)
def test_inconsistent_inputs_are_clear_value_errors(
    mutate: Callable[[Output, Volume], tuple[Output, Volume]], message: str
) -> None:
    output, volume = make_case([0.1, 0.2, 0.3])
    bad_output, bad_volume = mutate(output, volume)
    with pytest.raises(ValueError, match=message):
        aggregate(bad_output, bad_volume, images_of(output))


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_threshold_out_of_range_is_refused(threshold: float) -> None:
    output, volume = make_case([0.1])
    with pytest.raises(ValueError, match="threshold"):
        aggregate(output, volume, images_of(output), threshold=threshold)
