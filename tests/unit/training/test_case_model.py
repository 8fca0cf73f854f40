"""``training.case_model`` on synthetic records whose true lesions and false foci differ as on real heads."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from ich import spec
from ich.scoring import FEATURES, NO_LESION_SCORE, burden_contribution, burden_raw
from training import metrics
from training.case_model import (
    DecisionTargets,
    ScoredCase,
    apply_case_model,
    cross_fit,
    fit_case_model,
    kept_dice_counts,
    lesion_matrix,
    paper_rule,
    subset,
)
from training.records import Records

FOLDS = 4
PER_FOLD = 12  # half of them with hemorrhage
SLICES = 4


def _features(rng: np.random.Generator, true: bool) -> dict[str, float]:
    """True lesions: large, several slices, central, inside the brain, seen by most base models; false
    foci: tiny, one slice, against the bone, at the edge of the brain, seen by few."""
    if true:
        return {
            "log_volume_ml": rng.normal(1.5, 0.5),
            "logit_peak": rng.normal(3.0, 1.0),
            "mean_probability": rng.uniform(0.7, 0.9),
            "log_slices": math.log(rng.integers(1, 4)),
            "bone_distance_mm": rng.uniform(6.0, 20.0),
            "brain_area_fraction": rng.uniform(0.5, 1.0),
            "inside_brain_fraction": rng.uniform(0.85, 1.0),
            "mean_hu": rng.normal(60.0, 8.0),
            "agreement": rng.uniform(0.6, 1.0),
        }
    return {
        "log_volume_ml": abs(rng.normal(0.05, 0.05)),
        "logit_peak": rng.normal(1.0, 1.0),
        "mean_probability": rng.uniform(0.55, 0.75),
        "log_slices": 0.0,
        "bone_distance_mm": rng.uniform(0.0, 3.0),
        "brain_area_fraction": rng.uniform(0.1, 0.6),
        "inside_brain_fraction": rng.uniform(0.3, 0.9),
        "mean_hu": rng.normal(50.0, 15.0),
        "agreement": rng.uniform(0.2, 0.6),
    }


def synthetic_records(seed: int = 0) -> Records:
    """``FOLDS`` folds of ``PER_FOLD`` cases. A hemorrhage case has one true lesion (on slices 1-2, most of
    it on the truth) and maybe a false focus; a normal case has zero to two false foci. In each fold one
    normal case has a false focus that looks true and one hemorrhage case a true lesion that looks false,
    so that nothing separates perfectly."""
    rng = np.random.default_rng(seed)
    rec = Records()
    for fold in range(FOLDS):
        for i in range(PER_FOLD):
            case, label = f"f{fold}c{i:02d}", int(i % 2 == 0)
            truth = [0, 30, 20, 0] if label else [0] * SLICES
            slice_prob = rng.uniform(0.0, 0.4, SLICES) + (np.array([0, 0.5, 0.5, 0]) if label else 0.1)
            rec.cases.append(
                {
                    "case": case,
                    "fold": fold,
                    "label": label,
                    "slices": SLICES,
                    "max_slice_probability": float(slice_prob.max()),
                    "truth_voxels": sum(truth),
                    "voxel_ml": 0.01,
                }
            )
            for z in range(SLICES):
                row: dict[str, Any] = {
                    "case": case,
                    "fold": fold,
                    "slice": z,
                    "label": int(truth[z] > 0),
                    "truth_voxels": truth[z],
                    "slice_prob": float(slice_prob[z]),
                    "candidate_inter": 0,
                    "candidate_voxels": 0,
                }
                for key in spec.MODEL_KEYS:
                    row.update({f"prob_{key}": float(slice_prob[z]), f"inter_{key}": 0, f"voxels_{key}": 0})
                rec.slices.append(row)
            lesions: list[tuple[bool, bool, dict[int, tuple[int, int]]]] = []  # (is ICH, looks true, slices)
            if label:
                lesions.append((True, i != 0, {1: (28, 22), 2: (18, 14)}))
                if rng.random() < 0.5:
                    lesions.append((False, False, {3: (3, 0)}))
            else:
                lesions += [
                    (False, i == 1, {int(rng.integers(0, SLICES)): (4, 0)})
                    for _ in range(1 if i == 1 else int(rng.integers(0, 3)))
                ]
            for label_no, (is_ich, looks_true, per_slice) in enumerate(lesions, start=1):
                features = _features(rng, looks_true)
                rec.lesions.append(
                    {
                        "case": case,
                        "fold": fold,
                        "lesion": label_no,
                        "voxels": sum(v for v, _ in per_slice.values()),
                        "truth_overlap": sum(t for _, t in per_slice.values()),
                        "is_hemorrhage": int(is_ich),
                        "volume_ml": math.expm1(max(0.0, features["log_volume_ml"])),
                        **features,
                    }
                )
                for z, (voxels, inter) in per_slice.items():
                    rec.lesion_slices.append(
                        {"case": case, "lesion": label_no, "slice": z, "voxels": voxels, "inter": inter}
                    )
                    rec.slices[-SLICES + z]["candidate_voxels"] += voxels
                    rec.slices[-SLICES + z]["candidate_inter"] += inter
    return rec


@pytest.fixture(scope="module")
def records() -> Records:
    return synthetic_records()


def _sensitivity(scored: list[ScoredCase]) -> float:
    positives = [s for s in scored if s.label == 1]
    return sum(s.detected for s in positives) / len(positives)


def test_lesion_model_ranks_true_lesions_above_false_foci(records: Records) -> None:
    model = fit_case_model(records, DecisionTargets())
    x, y = lesion_matrix(records.lesions)
    assert x.shape == (len(records.lesions), len(FEATURES)) and 0 < y.sum() < len(y)
    p = model.lesion_probabilities(x)
    assert metrics.roc_auc(y, p) > 0.9
    assert p[y == 1].mean() > p[y == 0].mean() + 0.3
    # the standardised coefficients of the clearest differences point the way the features were drawn
    coef = dict(zip(FEATURES, model.coef, strict=True))
    assert coef["agreement"] > 0 and coef["bone_distance_mm"] > 0
    assert model.info["cases"] == FOLDS * PER_FOLD and model.info["lesion_candidates"] == len(x)
    # the case probability ranks the cases as well as the best lesion does
    scored = apply_case_model(model, records)
    y_case = np.array([s.label for s in scored])
    assert metrics.roc_auc(y_case, np.array([s.probability for s in scored])) > 0.85


@pytest.mark.parametrize("target", [0.75, 0.9, 1.0])
def test_threshold_reaches_the_target_sensitivity_and_no_higher_one_does(
    records: Records, target: float
) -> None:
    model = fit_case_model(records, DecisionTargets(target_sensitivity=target))
    assert model.band[0] <= model.threshold <= model.band[1]
    scored = apply_case_model(model, records)
    assert _sensitivity(scored) >= target
    higher = apply_case_model(model, records, threshold=float(np.nextafter(model.threshold, 1.0)))
    assert _sensitivity(higher) < target
    # the threshold is one of the hemorrhage cases' probabilities (the lowest one still detected)
    assert min(s.probability for s in scored if s.label == 1 and s.detected) == pytest.approx(model.threshold)
    # a stricter target never raises the threshold
    if target < 1.0:
        assert fit_case_model(records, DecisionTargets(target_sensitivity=1.0)).threshold <= model.threshold


@pytest.mark.parametrize("target", [0.75, 0.9, 1.0])
def test_a_case_is_detected_exactly_when_it_keeps_a_lesion(records: Records, target: float) -> None:
    model = fit_case_model(records, DecisionTargets(target_sensitivity=target))
    scored = apply_case_model(model, records)
    assert any(s.detected for s in scored) and not all(s.detected for s in scored)
    for s in scored:
        assert s.detected == bool(s.kept_lesions), s
    # on other draws too: the case that sets the threshold sits exactly on it, and keep must not land an
    # ulp above its best lesion (it did with the closed-form inverse of the calibration, for 68 of 160 fits)
    for seed in range(30, 40):
        other = synthetic_records(seed)
        fitted = fit_case_model(other, DecisionTargets(target_sensitivity=target))
        for s in apply_case_model(fitted, other):
            assert s.detected == bool(s.kept_lesions), (seed, s)
    # kept lesions are those at or above keep; a case's raw score is its best lesion (or NO_LESION_SCORE)
    x, _ = lesion_matrix(records.lesions)
    p = model.lesion_probabilities(x)
    by_case = {s.case: s for s in scored}
    for row, v in zip(records.lesions, p, strict=True):
        assert (row["lesion"] in by_case[row["case"]].kept_lesions) == (v >= model.keep)
    with_lesions = {row["case"] for row in records.lesions}
    for s in scored:
        if s.case not in with_lesions:
            assert s.raw == NO_LESION_SCORE and not s.detected
        assert s.probability == pytest.approx(model.calibration.apply(s.raw))
        assert s.indeterminate == (model.band[0] <= s.probability <= model.band[1])


def _flip_fold(records: Records, fold: int) -> Records:
    """The same records with fold ``fold``'s case labels and lesion labels flipped."""
    flipped = Records(
        **{
            name: [dict(r) for r in getattr(records, name)]
            for name in ("cases", "slices", "lesions", "lesion_slices")
        }
    )
    for row in flipped.cases:
        if row["fold"] == fold:
            row["label"] = 1 - row["label"]
    for row in flipped.lesions:
        if row["fold"] == fold:
            row["is_hemorrhage"] = 1 - row["is_hemorrhage"]
    return flipped


def test_cross_fit_scores_each_fold_with_a_model_fitted_without_it(records: Records) -> None:
    targets = DecisionTargets(target_sensitivity=0.9)
    scored, models = cross_fit(records, targets)
    assert [s.case for s in scored] == [row["case"] for row in records.cases]
    assert [m.info["fitted_without_fold"] for m in models] == list(range(FOLDS))
    assert all(m.info["cases"] == (FOLDS - 1) * PER_FOLD for m in models)
    # fold k's cases are scored by a model fitted on the other folds, exactly
    for k in range(FOLDS):
        others = {row["case"] for row in records.cases if row["fold"] != k}
        mine = {row["case"] for row in records.cases if row["fold"] == k}
        direct = apply_case_model(fit_case_model(subset(records, others), targets), subset(records, mine))
        assert [s for s in scored if s.fold == k] == direct
    # flipping fold 0's labels changes every model that saw fold 0, not the one that scores fold 0
    flipped_scored, flipped_models = cross_fit(_flip_fold(records, 0), targets)
    assert flipped_models[0].to_dict() == models[0].to_dict()
    assert all(flipped_models[k].coef != models[k].coef for k in range(1, FOLDS))
    before = {s.case: s for s in scored}
    after = {s.case: s for s in flipped_scored}
    fold0 = [row["case"] for row in records.cases if row["fold"] == 0]
    for case in fold0:
        assert after[case].probability == before[case].probability
        assert after[case].label == 1 - before[case].label
        assert after[case].detected == before[case].detected
    rest = [row["case"] for row in records.cases if row["fold"] != 0]
    assert any(after[c].probability != before[c].probability for c in rest)
    # a model fitted on everything would have seen fold 0's labels
    assert fit_case_model(_flip_fold(records, 0), targets).coef != fit_case_model(records, targets).coef


def _hand_records() -> Records:
    """Case a: lesion 1 on slices 0-1, lesion 2 on slice 1; case b: lesion 1 on slice 0."""
    slices = [
        {"case": "a", "slice": 0, "truth_voxels": 8},
        {"case": "a", "slice": 1, "truth_voxels": 6},
        {"case": "a", "slice": 2, "truth_voxels": 0},
        {"case": "b", "slice": 0, "truth_voxels": 0},
        {"case": "b", "slice": 1, "truth_voxels": 5},
    ]
    lesion_slices = [
        {"case": "a", "lesion": 1, "slice": 0, "voxels": 10, "inter": 6},
        {"case": "a", "lesion": 1, "slice": 1, "voxels": 5, "inter": 5},
        {"case": "a", "lesion": 2, "slice": 1, "voxels": 3, "inter": 0},
        {"case": "b", "lesion": 1, "slice": 0, "voxels": 4, "inter": 0},
    ]
    return Records(slices=slices, lesion_slices=lesion_slices)


def _scored(kept: dict[str, set[int]]) -> list[ScoredCase]:
    return [
        ScoredCase(
            case=c,
            fold=0,
            label=1,
            raw=0.5,
            probability=0.5,
            detected=bool(k),
            indeterminate=False,
            kept_lesions=frozenset(k),
        )
        for c, k in kept.items()
    ]


def test_kept_dice_counts_recount_from_lesion_slices() -> None:
    rec = _hand_records()
    got = kept_dice_counts(rec, _scored({"a": {1}, "b": set()}))
    assert got.tolist() == [[6, 10, 8], [5, 5, 6], [0, 0, 0], [0, 0, 0], [0, 0, 5]]
    got = kept_dice_counts(rec, _scored({"a": {1, 2}, "b": {1}}))
    assert got.tolist() == [[6, 10, 8], [5, 8, 6], [0, 0, 0], [0, 4, 0], [0, 0, 5]]
    got = kept_dice_counts(rec, _scored({"a": {2}}))  # b not scored: nothing kept
    assert got.tolist() == [[0, 0, 8], [0, 3, 6], [0, 0, 0], [0, 0, 0], [0, 0, 5]]
    # on the synthetic records, keeping every lesion gives back the candidate counts
    syn = synthetic_records(1)
    every: dict[str, set[int]] = {row["case"]: set() for row in syn.cases}
    for row in syn.lesions:
        every[row["case"]].add(row["lesion"])
    counts = kept_dice_counts(syn, _scored(every))
    assert counts[:, 0].tolist() == [r["candidate_inter"] for r in syn.slices]
    assert counts[:, 1].tolist() == [r["candidate_voxels"] for r in syn.slices]
    assert counts[:, 2].tolist() == [r["truth_voxels"] for r in syn.slices]


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_paper_rule_is_the_maximum_slice_probability(records: Records, threshold: float) -> None:
    scored = paper_rule(records, threshold)
    slice_max: dict[str, float] = {}
    for row in records.slices:
        slice_max[row["case"]] = max(slice_max.get(row["case"], 0.0), row["slice_prob"])
    lesions: dict[str, set[int]] = {}
    for row in records.lesions:
        lesions.setdefault(row["case"], set()).add(row["lesion"])
    assert [s.case for s in scored] == [row["case"] for row in records.cases]
    for s in scored:
        assert s.probability == s.raw == pytest.approx(slice_max[s.case])
        assert s.detected == (s.probability >= threshold)
        assert s.indeterminate == (spec.INDETERMINATE_BAND[0] <= s.probability <= spec.INDETERMINATE_BAND[1])
        assert s.kept_lesions == frozenset(lesions.get(s.case, set()))  # every candidate kept
    assert any(s.detected for s in scored) and not all(s.detected for s in scored)


def _with_slice_scores(records: Records, informative: bool, seed: int = 5) -> Records:
    """``records`` with every case's max slice probability (and its lesions' opened peaks) replaced:
    informative (hemorrhage cases high, normal low) or noise."""
    rng = np.random.default_rng(seed)
    score = {}
    for row in records.cases:
        high = informative and row["label"] == 1
        low, top = (0.8, 0.99) if high else (0.5, 0.9 if informative else 0.99)
        score[row["case"]] = float(rng.uniform(low, top))
        row["max_slice_probability"] = score[row["case"]]
    for row in records.lesions:  # the slice score comes from the case's lesions: each reaches it
        row["opened_peak"] = score[row["case"]]
    return records


def test_select_prefers_the_slice_score_when_only_it_separates_the_cases() -> None:
    records = _with_slice_scores(synthetic_records(), informative=True)
    for row in records.lesions:  # the lesions say nothing: same features whatever they are
        row.update(dict.fromkeys(FEATURES, 0.0))
        row["log_volume_ml"] = float(np.random.default_rng(len(row["case"])).normal())
    model = fit_case_model(records, DecisionTargets(score="select"))
    assert model.score == "max_slice"
    brier = model.info["selection_brier"]
    assert brier["max_slice"] < brier["lesion"]


def test_select_prefers_a_lesion_score_when_the_slice_score_is_noise() -> None:
    records = _with_slice_scores(synthetic_records(), informative=False)
    model = fit_case_model(records, DecisionTargets(score="select"))
    # the true lesions are the larger ones here, so the burden and the best lesion both separate the cases
    assert model.score in ("lesion", "burden")
    brier = model.info["selection_brier"]
    assert brier[model.score] < brier["max_slice"]


def test_a_slice_score_model_calls_a_case_positive_exactly_when_it_keeps_a_lesion() -> None:
    records = _with_slice_scores(synthetic_records(), informative=True)
    model = fit_case_model(records, DecisionTargets(score="max_slice"))
    assert model.score == "max_slice"
    scored = apply_case_model(model, records)
    by_case = {r["case"]: r for r in records.cases}
    for s in scored:
        expected = model.calibration.apply(max(NO_LESION_SCORE, by_case[s.case]["max_slice_probability"]))
        assert s.probability == pytest.approx(expected)
        assert s.detected == bool(s.kept_lesions) or not any(r["case"] == s.case for r in records.lesions)


def test_unknown_score_is_refused() -> None:
    with pytest.raises(ValueError, match="score"):
        fit_case_model(synthetic_records(), DecisionTargets(score="mean_slice"))


# ---------------------------------------------------------------------------------------- the burden


def _multifocal_records(seed: int = 3) -> Records:
    """Cases whose lesions all look alike (the same features, whatever they are), where a hemorrhage case
    holds three to five lesions and a normal case one: only the summed volume tells them apart."""
    rng = np.random.default_rng(seed)
    rec = Records()
    for fold in range(FOLDS):
        for i in range(PER_FOLD):
            case, label = f"f{fold}m{i:02d}", int(i % 2 == 0)
            rec.cases.append(
                {
                    "case": case,
                    "fold": fold,
                    "label": label,
                    "slices": SLICES,
                    "voxel_ml": 0.01,
                    "max_slice_probability": float(rng.uniform(0.5, 0.99)),
                    "truth_voxels": 0,
                }
            )
            for lesion in range(1, int(rng.integers(3, 6)) + 1 if label else 2):
                volume = float(rng.uniform(0.5, 2.0))
                features = _features(rng, True)
                features["log_volume_ml"] = math.log1p(volume)
                rec.lesions.append(
                    {
                        "case": case,
                        "fold": fold,
                        "lesion": lesion,
                        "voxels": 10,
                        "truth_overlap": 0,
                        "is_hemorrhage": label,
                        "volume_ml": volume,
                        "opened_peak": 0.9,
                        **features,
                    }
                )
    return rec


def test_select_prefers_the_burden_when_only_the_summed_volume_separates_the_cases() -> None:
    model = fit_case_model(_multifocal_records(), DecisionTargets(score="select"))
    assert model.score == "burden"
    brier = model.info["selection_brier"]
    assert brier["burden"] < min(brier["lesion"], brier["max_slice"])


@pytest.mark.parametrize("target", [0.75, 0.9, 1.0])
def test_a_burden_model_calls_a_case_positive_exactly_when_it_keeps_a_lesion(target: float) -> None:
    for seed in (3, 4, 5):
        records = _multifocal_records(seed)
        model = fit_case_model(records, DecisionTargets(score="burden", target_sensitivity=target))
        assert model.score == "burden"
        x, _ = lesion_matrix(records.lesions)
        p = model.lesion_probabilities(x)
        contributions: dict[str, dict[int, float]] = {}
        for row, v in zip(records.lesions, p, strict=True):
            contributions.setdefault(row["case"], {})[row["lesion"]] = burden_contribution(
                v, row["volume_ml"]
            )
        scored = apply_case_model(model, records)
        assert _sensitivity(scored) >= target
        for s in scored:
            share = contributions.get(s.case, {})
            assert s.raw == pytest.approx(burden_raw(list(share.values())))
            assert s.probability == pytest.approx(model.calibration.apply(s.raw))
            assert s.detected == bool(s.kept_lesions), (seed, s)
            if s.kept_lesions:  # the largest lesions, and no fewer than reach keep
                kept = sorted((share[k] for k in s.kept_lesions), reverse=True)
                assert min(kept) >= max((v for k, v in share.items() if k not in s.kept_lesions), default=0.0)
                assert burden_raw(kept) >= model.keep
                assert len(kept) == 1 or burden_raw(kept[:-1]) < model.keep
