"""``ich.lesion_shape`` and the uncertainty rule of ``ich.scoring`` on a hand-made head.

One head on a 96 x 96 grid of 1 mm pixels, the same on every slice: the inner table at radius 40 mm (a bone
ring 40-44 mm), the skull-stripped brain inside 36 mm (extra-axial blood is stripped with the bone), 40 HU
brain with a CSF ventricle (8 HU) at the centre. One lesion per slice, on slices 0, 2, 4 and 6 so that they
stay apart in 3D:

- a **crescent** (subdural) along the right inner table: 37-40 mm from the centre, 140 degrees of arc;
- a **lens** (epidural) against the left inner table: the part inside the table of a 14 mm disc centred
  6 mm outside it, 8 mm thick;
- a **blob** (intraparenchymal): a 5 mm disc 16 mm from the centre, deep in the brain;
- a **ventricular** clot: a 3 mm disc inside the ventricle, at the centre.
"""

from __future__ import annotations

import numpy as np
import pytest

from ich import spec
from ich.lesion_shape import SHAPE_FEATURES
from ich.scoring import Lesion, case_uncertainty, find_lesions, lesion_features, slice_spread

N, S = 7, 96
PIXEL_MM = (1.0, 1.0)
CENTRE = 47.5
yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
R = np.hypot(yy - CENTRE, xx - CENTRE)
ANGLE = np.degrees(np.arctan2(yy - CENTRE, xx - CENTRE))  # 0: to the right

CRESCENT = (R >= 37) & (R < 40) & (np.abs(ANGLE) <= 70)
LENS = (R < 40) & (np.hypot(yy - CENTRE, xx - (CENTRE - 46)) < 14)
BLOB = np.hypot(yy - (CENTRE + 14), xx - (CENTRE + 8)) < 5
VENTRICLE = np.hypot((yy - CENTRE) / 6, (xx - CENTRE) / 10) < 1
CLOT = np.hypot(yy - CENTRE, xx - CENTRE) < 3
SHAPES = {"crescent": (0, CRESCENT), "lens": (2, LENS), "blob": (4, BLOB), "clot": (6, CLOT)}


def head() -> np.ndarray:
    images = np.zeros((N, spec.IN_CHANNELS, S, S), np.float32)
    images[:, 2][:, (R >= 40) & (R < 44)] = 0.9  # bone window: cortical bone
    images[:, 1][:, R < 40] = 0.5  # brain window: 40 HU
    images[:, 1][:, VENTRICLE] = 0.1  # 8 HU
    images[:, 3][:, R < 36] = 0.5  # the skull-stripped brain
    for z, where in SHAPES.values():
        images[z, 1][where] = 0.9  # 72 HU
    return images


@pytest.fixture(scope="module")
def lesions() -> dict[str, Lesion]:
    fused = np.zeros((N, S, S), np.float32)
    for z, where in SHAPES.values():
        fused[z][where] = 0.9
    probs = np.repeat(fused[:, None], len(spec.MODEL_KEYS), axis=1) * np.array([1.0, 0.9, 0.8, 0.7, 0.0])[
        None, :, None, None
    ].astype(np.float32)
    labels, count = find_lesions(fused > 0.5)
    assert count == 4
    found = lesion_features(labels, count, fused, probs, head(), PIXEL_MM, 0.005)
    by_slice = {les.first_slice: les for les in found}
    return {name: by_slice[z] for name, (z, _) in SHAPES.items()}


def test_every_lesion_carries_every_shape_feature(lesions: dict[str, Lesion]) -> None:
    for lesion in lesions.values():
        assert tuple(lesion.shape) == SHAPE_FEATURES
        assert all(np.isfinite(v) for v in lesion.shape.values())


def test_a_crescent_along_the_inner_table_has_the_features_of_a_subdural(lesions: dict[str, Lesion]) -> None:
    f = lesions["crescent"].shape
    assert f["bone_contact_fraction"] == pytest.approx(2 / 3, abs=0.1)  # 2 of its 3 mm lie within 2 mm
    assert np.expm1(f["log_contact_length_mm"]) > 60  # about 95 mm of arc
    assert f["thickness_to_length"] < 0.1 and f["solidity"] < 0.5  # thin and concave
    assert f["depth_mm"] == 0.0 and f["centrality"] > 0.9  # outside the stripped brain, at its edge


def test_a_lens_is_thick_for_its_length_and_convex(lesions: dict[str, Lesion]) -> None:
    lens, crescent = lesions["lens"].shape, lesions["crescent"].shape
    assert lens["bone_contact_fraction"] > 0.2
    assert lens["thickness_to_length"] > 0.25 > 3 * crescent["thickness_to_length"]
    assert lens["solidity"] > 0.85 > crescent["solidity"] + 0.3
    assert np.expm1(lens["log_thickness_mm"]) > 2 * np.expm1(crescent["log_thickness_mm"])


def test_a_deep_blob_lies_inside_the_brain_away_from_bone(lesions: dict[str, Lesion]) -> None:
    f = lesions["blob"].shape
    assert f["bone_contact_fraction"] == 0.0 and f["depth_mm"] > 15
    assert f["solidity"] > 0.85 and f["centrality"] < 0.6 and f["csf_ring_fraction"] < 0.1
    assert f["elongation"] < 0.2  # round


def test_a_ventricular_clot_is_central_and_surrounded_by_csf(lesions: dict[str, Lesion]) -> None:
    f = lesions["clot"].shape
    assert f["csf_ring_fraction"] > 0.8
    assert f["centrality"] < 0.1 and f["midline_distance"] < 0.1
    assert f["depth_mm"] > 25


def test_the_spread_of_the_base_models_on_each_lesion(lesions: dict[str, Lesion]) -> None:
    expected = float(np.std(0.9 * np.array([1.0, 0.9, 0.8, 0.7, 0.0])))
    assert all(les.model_spread == pytest.approx(expected, rel=1e-5) for les in lesions.values())


def test_the_uncertainty_is_the_spread_on_the_deciding_lesion(lesions: dict[str, Lesion]) -> None:
    from dataclasses import replace

    a = replace(lesions["blob"], probability=0.9, opened_peak=0.6, model_spread=0.05)
    b = replace(lesions["lens"], probability=0.4, opened_peak=0.95, model_spread=0.3)
    assert case_uncertainty([a, b], "probability", 0.0) == 0.05  # the lesion model decides by a
    assert case_uncertainty([a, b], "opened_peak", 0.0) == 0.3  # the slice score by b
    assert case_uncertainty([], "probability", 0.12) == 0.12  # no candidate: the top slice's spread
    probs = np.zeros((3, 5, 4, 4), np.float32)
    probs[1, :, 0, 0] = [0.9, 0.1, 0.1, 0.1, 0.1]
    assert slice_spread(probs, np.array([0.1, 0.5, 0.2])) == pytest.approx(np.std([0.9, 0.1, 0.1, 0.1, 0.1]))


def test_a_lesion_at_the_edge_of_the_grid_is_measured() -> None:
    fused = np.zeros((1, S, S), np.float32)
    fused[0, S - 3 :, S - 4 :] = 0.9  # the bottom right corner
    fused[0, :2, :3] = 0.9  # the top left corner
    labels, count = find_lesions(fused > 0.5)
    probs = np.repeat(fused[:, None], len(spec.MODEL_KEYS), axis=1)
    found = lesion_features(labels, count, fused, probs, head()[:1], PIXEL_MM, 0.005)
    assert count == 2 and all(np.isfinite(list(les.shape.values())).all() for les in found)
