"""ich.calibration and training.calibration against values worked out by hand and known generating models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sklearn")

from ich.calibration import (
    IsotonicCalibration,
    PlattCalibration,
    calibration_from_dict,
    logit,
    sigmoid,
)
from training import calibration as cal

# Hand-made set. Positives 0.9, 0.8, 0.8 (tie), 0.6, 0.4; negatives 0.7, 0.5, 0.3, 0.2.
SCORES = np.array([0.9, 0.8, 0.8, 0.6, 0.4, 0.7, 0.5, 0.3, 0.2])
LABELS = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0])


def _sensitivity(t: float, s: np.ndarray = SCORES, y: np.ndarray = LABELS) -> float:
    return float(np.mean(s[y == 1] >= t))


def _specificity(t: float, s: np.ndarray = SCORES, y: np.ndarray = LABELS) -> float:
    return float(np.mean(s[y == 0] < t))


# --- runtime maps -------------------------------------------------------------------------------------


def test_platt_apply_by_hand() -> None:
    c = PlattCalibration(a=2.0, b=0.5)
    assert c.apply(0.5) == pytest.approx(1 / (1 + math.exp(-0.5)))  # logit(0.5) = 0
    assert c.apply(0.8) == pytest.approx(1 / (1 + math.exp(-0.5) / 16))  # 2 * ln 4 + 0.5
    assert isinstance(c.apply(0.3), float)
    out = c.apply(np.array([[0.2, 0.5], [0.8, 0.5]]))
    assert isinstance(out, np.ndarray) and out.shape == (2, 2)
    assert out[0, 1] == pytest.approx(c.apply(0.5)) and out[0, 0] < out[0, 1] < out[1, 0]


def test_platt_identity_and_clip() -> None:
    identity = PlattCalibration(a=1.0, b=0.0)
    s = np.array([0.01, 0.3, 0.5, 0.97])
    np.testing.assert_allclose(identity.apply(s), s, rtol=1e-12)
    # 0 and 1 are clipped to 1e-6 and 1 - 1e-6 rather than giving an infinite logit
    np.testing.assert_allclose(identity.apply(np.array([0.0, 1.0])), [1e-6, 1 - 1e-6], rtol=1e-9)
    edge = math.log((1 - 1e-6) / 1e-6)
    np.testing.assert_allclose(logit(np.array([0.0, 1.0])), [-edge, edge])
    assert sigmoid(np.array([-800.0, 800.0])).tolist() == [0.0, 1.0]  # no overflow


def test_apply_refuses_nan() -> None:
    with pytest.raises(ValueError, match="finite"):
        PlattCalibration(1.0, 0.0).apply(float("nan"))
    with pytest.raises(ValueError, match="finite"):
        IsotonicCalibration((0.0, 1.0), (0.0, 1.0)).apply(np.array([0.2, np.inf]))


def test_isotonic_apply_interpolates_and_clips() -> None:
    c = IsotonicCalibration(x=(0.2, 0.4, 0.8), y=(0.0, 0.5, 0.9))
    assert c.apply(0.3) == pytest.approx(0.25)
    assert c.apply(0.6) == pytest.approx(0.7)
    assert c.apply(0.05) == 0.0 and c.apply(0.95) == pytest.approx(0.9)  # end values outside the points
    assert isinstance(c.apply(0.5), float)


@pytest.mark.parametrize("c", [PlattCalibration(a=1.7, b=-0.3),
                               IsotonicCalibration(x=(0.1, 0.35, 0.9), y=(0.02, 0.4, 0.96))])
def test_round_trip_through_json(c: PlattCalibration | IsotonicCalibration) -> None:
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    back = calibration_from_dict(d)
    assert back == c and type(back) is type(c)
    assert type(c).from_dict(d) == c
    assert d["method"] == {PlattCalibration: "platt", IsotonicCalibration: "isotonic"}[type(c)]


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"method": "beta", "a": 1.0, "b": 0.0}, "unknown calibration method"),
        ({"a": 1.0, "b": 0.0}, "unknown calibration method"),
        ({"method": "platt", "a": 1.0}, "keys"),
        ({"method": "platt", "a": 1.0, "b": 0.0, "c": 2.0}, "keys"),
        ({"method": "platt", "a": float("nan"), "b": 0.0}, "finite"),
        ({"method": "platt", "a": 1.0, "b": float("inf")}, "finite"),
        ({"method": "platt", "a": "1.0", "b": 0.0}, "finite number"),
        ({"method": "platt", "a": True, "b": 0.0}, "finite number"),
        ({"method": "platt", "a": -1.0, "b": 0.0}, "positive"),
        ({"method": "isotonic", "x": [0.1, 0.5], "y": [0.2]}, "one length"),
        ({"method": "isotonic", "x": [], "y": []}, "non-empty"),
        ({"method": "isotonic", "x": [0.5, 0.1], "y": [0.2, 0.4]}, "strictly increasing"),
        ({"method": "isotonic", "x": [0.1, 0.5], "y": [0.6, 0.4]}, "non-decreasing"),
        ({"method": "isotonic", "x": [0.1, 0.5], "y": [0.2, 1.5]}, r"\[0, 1\]"),
        ({"method": "isotonic", "x": [0.1, float("nan")], "y": [0.2, 0.4]}, "finite"),
        ({"method": "isotonic", "x": "0.1", "y": [0.2]}, "list of numbers"),
    ],
)
def test_from_dict_rejects_bad_dicts(d: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        calibration_from_dict(d)


def test_class_from_dict_rejects_the_other_method() -> None:
    with pytest.raises(ValueError, match="not a platt"):
        PlattCalibration.from_dict(IsotonicCalibration((0.0, 1.0), (0.0, 1.0)).to_dict())
    with pytest.raises(ValueError, match="JSON object"):
        calibration_from_dict([("method", "platt")])  # type: ignore[arg-type]


def test_runtime_module_does_not_import_sklearn() -> None:
    code = "import sys, ich.calibration; sys.exit('sklearn' in sys.modules or 'matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- fitting ------------------------------------------------------------------------------------------


def _logistic_sample(a: float, b: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose logits are N(0, 1.5^2), labels drawn from P(y=1) = sigmoid(a * logit + b)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(a * z + b)))).astype(int)
    return 1 / (1 + np.exp(-z)), y


@pytest.mark.parametrize(("a", "b"), [(2.0, -0.5), (0.6, 0.8), (1.0, 0.0)])
def test_fit_platt_recovers_the_generating_model(a: float, b: float) -> None:
    s, y = _logistic_sample(a, b, n=60_000, seed=7)
    fit = cal.fit_platt(s, y)
    assert fit.a == pytest.approx(a, abs=0.05)
    assert fit.b == pytest.approx(b, abs=0.05)


def test_fit_platt_refuses_reversed_scores_and_one_class() -> None:
    s, y = _logistic_sample(2.0, 0.0, n=2000, seed=1)
    with pytest.raises(ValueError, match="not positive"):
        cal.fit_platt(1 - s, y)
    with pytest.raises(ValueError, match="one positive and one negative"):
        cal.fit_platt([0.2, 0.7], [1, 1])


def test_fit_platt_on_separated_scores_is_finite_and_separates() -> None:
    fit = cal.fit_platt([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [0, 0, 0, 1, 1, 1])
    assert math.isfinite(fit.a) and math.isfinite(fit.b) and fit.a > 0
    assert calibration_from_dict(json.loads(json.dumps(fit.to_dict()))) == fit
    assert fit.apply(0.3) < 0.05 and fit.apply(0.7) > 0.95


def test_fit_isotonic_is_monotone_and_matches_sklearn() -> None:
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(5)
    s = rng.random(500)
    y = (rng.random(500) < s**2).astype(int)
    fit = cal.fit_isotonic(s, y)
    grid = np.linspace(-0.2, 1.2, 301)
    out = fit.apply(grid)
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1
    reference = IsotonicRegression(out_of_bounds="clip").fit(s, y)
    np.testing.assert_allclose(out, reference.predict(grid), atol=1e-12)
    assert out[-1] > out[0]  # it does respond to the score


def test_fit_isotonic_maps_separated_data_to_zero_and_one() -> None:
    neg, pos = [0.05, 0.2, 0.35, 0.4], [0.55, 0.6, 0.8, 0.95]
    fit = cal.fit_isotonic(neg + pos, [0] * 4 + [1] * 4)
    np.testing.assert_array_equal(fit.apply(np.array(neg)), 0.0)
    np.testing.assert_array_equal(fit.apply(np.array(pos)), 1.0)
    assert fit.apply(0.0) == 0.0 and fit.apply(1.0) == 1.0


# --- calibration quality ------------------------------------------------------------------------------


def test_brier_by_hand() -> None:
    # (0.1-0)^2 + (0.9-1)^2 + (0.8-0)^2 + (0.3-1)^2 = 0.01 + 0.01 + 0.64 + 0.49 = 1.15, over 4
    assert cal.brier_score([0.1, 0.9, 0.8, 0.3], [0, 1, 0, 1]) == pytest.approx(0.2875)
    assert cal.brier_score([1.0, 0.0], [1, 0]) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cal.brier_score([1.2, 0.0], [1, 0])


def test_ece_zero_when_calibrated_within_bins() -> None:
    # bin (0.2, 0.3]: four cases at 0.25, one positive; bin (0.7, 0.8]: four at 0.75, three positive
    p = [0.25] * 4 + [0.75] * 4
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    assert cal.expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_a_known_miscalibration() -> None:
    # (0.2, 0.3]: 4 at 0.25, 3 positive -> gap 0.5; (0.8, 0.9]: 6 at 0.85, 3 positive -> gap 0.35;
    # (0.6, 0.7]: 0.61 (pos) and 0.69 (neg) -> mean 0.65, observed 0.5, gap 0.15.
    # ECE = (4 * 0.5 + 6 * 0.35 + 2 * 0.15) / 12 = 4.4 / 12
    p = [0.25] * 4 + [0.85] * 6 + [0.61, 0.69]
    y = [1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0]
    assert cal.expected_calibration_error(p, y) == pytest.approx(4.4 / 12)
    # one bin: mean predicted 7.4 / 12, observed 7 / 12
    assert cal.expected_calibration_error(p, y, bins=1) == pytest.approx(0.4 / 12)


def test_reliability_bins_by_hand_keeps_empty_bins() -> None:
    p = [0.25] * 4 + [0.85] * 6 + [0.61, 0.69]
    y = [1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0]
    table = cal.reliability_bins(p, y, bins=10)
    assert len(table) == 10 and [b.count for b in table] == [0, 0, 4, 0, 0, 0, 2, 0, 6, 0]
    assert table[6].mean_predicted == pytest.approx(0.65) and table[6].observed_fraction == pytest.approx(0.5)
    assert table[2].lower == pytest.approx(0.2) and table[2].upper == pytest.approx(0.3)
    assert table[0].mean_predicted is None and table[0].observed_fraction is None


def test_reliability_bins_match_sklearn_calibration_curve() -> None:
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(11)
    p = np.concatenate([rng.random(400), np.linspace(0, 1, 11)])  # includes the bin edges themselves
    y = (rng.random(p.size) < p).astype(int)
    table = [b for b in cal.reliability_bins(p, y, bins=10) if b.count]
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(np.array([b.observed_fraction for b in table], dtype=float), prob_true)
    np.testing.assert_allclose(np.array([b.mean_predicted for b in table], dtype=float), prob_pred)
    assert sum(b.count for b in table) == p.size


# --- operating point ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected", "reached"),
    [
        (1.0, 0.4, 1.0),  # every positive: the lowest positive score
        (0.7, 0.6, 0.8),  # 3.5 of 5 -> 4 positives -> 4th highest, 0.6
        (0.6, 0.8, 0.6),  # exactly 3 of 5 -> 3rd highest, 0.8
        (0.4, 0.8, 0.6),  # 2 of 5 -> 2nd highest is 0.8, tied with the 3rd: both detected, 3/5 >= 0.4
        (0.2, 0.9, 0.2),  # 1 of 5 -> the highest
    ],
)
def test_threshold_for_sensitivity_by_hand(target: float, expected: float, reached: float) -> None:
    t = cal.threshold_for_sensitivity(SCORES, LABELS, target)
    assert t == expected
    assert _sensitivity(t) == pytest.approx(reached) and _sensitivity(t) >= target
    assert _sensitivity(np.nextafter(t, np.inf)) < target  # any higher threshold misses the target


def test_threshold_for_sensitivity_is_the_highest_on_random_ties() -> None:
    rng = np.random.default_rng(2)
    s = np.round(rng.random(300), 2)  # many ties
    y = (rng.random(300) < s).astype(int)
    for target in (0.5, 0.8, 0.9, 0.95, 0.99, 1.0):
        t = cal.threshold_for_sensitivity(s, y, target)
        assert _sensitivity(t, s, y) >= target
        assert _sensitivity(np.nextafter(t, np.inf), s, y) < target


def test_threshold_for_sensitivity_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="target"):
        cal.threshold_for_sensitivity(SCORES, LABELS, 0.0)
    with pytest.raises(ValueError, match="target"):
        cal.threshold_for_sensitivity(SCORES, LABELS, 1.01)
    with pytest.raises(ValueError, match="positive"):
        cal.threshold_for_sensitivity([0.2, 0.3], [0, 0], 0.9)


def test_operating_point_counts() -> None:
    # score >= 0.6: positives 0.9, 0.8, 0.8, 0.6 and negative 0.7 -> TP 4, FN 1 (0.4), FP 1, TN 3
    op = cal.operating_point(SCORES, LABELS, 0.6)
    assert (op["tp"], op["fn"], op["fp"], op["tn"], op["n"]) == (4, 1, 1, 3, 9)
    assert op["sensitivity"] == pytest.approx(0.8) and op["specificity"] == pytest.approx(0.75)
    assert op["ppv"] == pytest.approx(0.8) and op["npv"] == pytest.approx(0.75)
    assert op["threshold"] == 0.6
    json.dumps(op, allow_nan=False)


def test_operating_point_undefined_rates_are_none() -> None:
    op = cal.operating_point([0.9, 0.8], [1, 1], 0.5)
    assert (op["tp"], op["fn"], op["fp"], op["tn"]) == (2, 0, 0, 0)
    assert op["sensitivity"] == 1.0 and op["ppv"] == 1.0
    assert op["specificity"] is None and op["npv"] is None


# --- indeterminate band -------------------------------------------------------------------------------


def test_band_by_hand() -> None:
    # low: every positive detected -> lowest positive 0.4. high: all 4 negatives (0.95 of 4 -> 4) must lie
    # below t; candidates >= 0.6: 0.6 (3/4), 0.7 (3/4, 0.7 itself is not below), 0.8 (4/4) -> 0.8.
    assert cal.indeterminate_band(SCORES, LABELS, 0.6) == (0.4, 0.8)
    # specificity 0.75 is already met at the threshold: the upper edge collapses onto it
    assert cal.indeterminate_band(SCORES, LABELS, 0.6, high_specificity=0.75) == (0.4, 0.6)
    # 4 of 5 positives -> 0.6 = threshold; 2 of 5 -> 0.8, capped at the threshold
    assert cal.indeterminate_band(SCORES, LABELS, 0.6, low_sensitivity=0.8)[0] == 0.6
    assert cal.indeterminate_band(SCORES, LABELS, 0.6, low_sensitivity=0.4)[0] == 0.6


def test_band_when_a_negative_has_the_highest_score() -> None:
    s = np.append(SCORES, 0.95)
    y = np.append(LABELS, 0)
    low, high = cal.indeterminate_band(s, y, 0.6)
    assert low == 0.4
    assert high == np.nextafter(0.95, np.inf) and _specificity(high, s, y) == 1.0


def test_band_satisfies_its_definition_on_random_scores() -> None:
    rng = np.random.default_rng(9)
    y = (rng.random(400) < 0.3).astype(int)
    s = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1), 3)
    threshold = cal.threshold_for_sensitivity(s, y, 0.9)
    for low_sens, high_spec in [(1.0, 0.95), (0.97, 0.9), (0.95, 0.99)]:
        low, high = cal.indeterminate_band(s, y, threshold, low_sens, high_spec)
        assert low <= threshold <= high
        assert cal.operating_point(s, y, low)["sensitivity"] >= low_sens
        assert cal.operating_point(s, y, high)["specificity"] >= high_spec
        if low < threshold:  # the highest such low: just above it, the sensitivity target is missed
            assert _sensitivity(np.nextafter(low, np.inf), s, y) < low_sens
        lower_candidates = [t for t in [threshold, *s] if threshold <= t < high]
        assert all(_specificity(t, s, y) < high_spec for t in lower_candidates)  # the lowest such high
    low, high = cal.indeterminate_band(s, y, threshold)
    assert not np.any(s[y == 1] < low)  # default: no positive below the band
    assert np.mean(s[y == 0] > high) <= 0.05  # at most 5 % of negatives above it


def test_band_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="one positive and one negative"):
        cal.indeterminate_band([0.2, 0.7], [1, 1], 0.5)
    with pytest.raises(ValueError, match="high_specificity"):
        cal.indeterminate_band(SCORES, LABELS, 0.6, high_specificity=0.0)
    with pytest.raises(ValueError, match="threshold"):
        cal.indeterminate_band(SCORES, LABELS, float("nan"))


# --- figures ------------------------------------------------------------------------------------------


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        image.load()
    assert width > 100 and height > 100


def test_reliability_diagram_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    p = rng.random(200)
    y = (rng.random(200) < p).astype(int)
    out = tmp_path / "reliability.png"
    cal.reliability_diagram(p, y, out, bins=10, title="test")
    _assert_png(out)


def test_roc_diagram_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "roc.png"
    cal.roc_diagram(SCORES, LABELS, out, title="test", threshold=0.6)
    _assert_png(out)
    with pytest.raises(ValueError, match="one positive and one negative"):
        cal.roc_diagram([0.2, 0.7], [1, 1], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
