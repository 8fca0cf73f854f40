"""Case findings from ensemble output: probability, call, band, volume with the resize factor, slices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from ich import spec
from ich.aggregate import aggregate, voxel_volume_ml


@dataclass(frozen=True)
class Volume:
    hu: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    sop_instance_uids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Output:
    fused: np.ndarray
    slice_prob: np.ndarray
    weights: np.ndarray
    probs: dict[str, np.ndarray]


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
    findings = aggregate(output, volume, threshold=0.5)
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
    findings = aggregate(output, volume, threshold=threshold)
    assert findings.ich_detected is detected
    assert findings.indeterminate is indeterminate
    assert findings.threshold == threshold
    assert findings.indeterminate_band == spec.INDETERMINATE_BAND


def test_volume_scales_pixel_area_by_the_resize_factor() -> None:
    # 512 x 256 matrix at 0.5 x 0.8 mm, resized to 64: one model pixel covers (0.5*512/64) x (0.8*256/64) mm.
    size = 64
    n = 2
    fused = np.zeros((n, 1, size, size), np.float32)
    fused[0, 0, 10:20, 10:20] = 0.9  # 100 pixels above the mask threshold
    fused[1, 0, 0:5, 0:2] = 0.8  # 10 pixels
    fused[1, 0, 40, 40] = 0.5  # exactly at the threshold: not lesion (strictly greater)
    output = Output(
        fused=fused,
        slice_prob=np.array([0.9, 0.8], np.float32),
        weights=np.full((n, 5), 0.2, np.float32),
        probs={key: fused.copy() for key in spec.MODEL_KEYS},
    )
    volume = Volume(np.zeros((n, 512, 256), np.float32), (0.5, 0.8), 2.5, ["a", "b"])
    findings = aggregate(output, volume, threshold=0.5)
    voxel_ml = (0.5 * 512 / size) * (0.8 * 256 / size) * 2.5 / 1000.0
    assert findings.voxel_volume_ml == pytest.approx(voxel_ml)
    assert findings.hemorrhage_volume_ml == pytest.approx(110 * voxel_ml)
    assert findings.slices[0].hemorrhage_volume_ml == pytest.approx(100 * voxel_ml)
    assert findings.slices[1].hemorrhage_volume_ml == pytest.approx(10 * voxel_ml)
    assert int(findings.mask.sum()) == 110
    assert findings.mask.shape == (n, size, size)


def test_strays_on_slices_the_post_processing_cleared_add_no_volume() -> None:
    output, volume = make_case([0.3, 0.3])
    output.fused[0, 0, 3, 3] = 0.9  # a stray pixel the opening removed: SLICE_PROB stayed 0.3
    findings = aggregate(output, volume)
    assert findings.hemorrhage_volume_ml == 0.0
    assert not findings.mask.any()


def test_voxel_volume_is_independent_of_input_size_for_the_same_field_of_view() -> None:
    volume = Volume(np.zeros((1, 512, 512), np.float32), (0.45, 0.45), 5.0, ["a"])
    # Whole field of view: S*S model pixels always cover 512*512 native pixels.
    for size in (128, 256, 512):
        whole_ml = voxel_volume_ml(volume, size) * size * size
        assert whole_ml == pytest.approx(512 * 512 * 0.45 * 0.45 * 5 / 1000)


def test_single_slice_case() -> None:
    output, volume = make_case([0.8])
    findings = aggregate(output, volume)
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
        aggregate(bad_output, bad_volume)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_threshold_out_of_range_is_refused(threshold: float) -> None:
    output, volume = make_case([0.1])
    with pytest.raises(ValueError, match="threshold"):
        aggregate(output, volume, threshold=threshold)
