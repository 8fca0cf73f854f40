"""``ich-model cv``: patient-grouped stratified folds, and a tiny two-fold run followed by ``cv-report``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ich import spec  # noqa: E402
from ich.scoring import CaseModel  # noqa: E402
from tests.support.ct_ich_data import synthetic_ct_ich  # noqa: E402
from tests.support.train_run import TINY_WEIGHT  # noqa: E402
from training.cli import main  # noqa: E402
from training.cv import (  # noqa: E402
    OOF_FILE,
    fold_split,
    load_folds,
    patient_folds,
    predict_ensemble,
    run_cache,
)
from training.oof_report import _earlier_records, run_records  # noqa: E402
from training.records import TABLES, Records, opened_slice_max  # noqa: E402
from training.selections import SliceTable  # noqa: E402

N_PATIENTS, N_HEMORRHAGE = 20, 8


def _table(n_patients: int = N_PATIENTS, n_hemorrhage: int = N_HEMORRHAGE, seed: int = 0) -> SliceTable:
    """Patients p00..; the first ``n_hemorrhage`` have hemorrhage on some of their 3-6 slices."""
    rng = np.random.default_rng(seed)
    pids, positive = [], []
    for i in range(n_patients):
        n = int(rng.integers(3, 7))
        pids += [f"p{i:02d}"] * n
        positive += [i < n_hemorrhage and z in (1, 2) for z in range(n)]
    m = len(pids)
    return SliceTable(
        pids=np.asarray(pids),
        subtypes=np.zeros((m, 5), dtype=np.int8),
        positive=np.asarray(positive),
        mask_pixels=np.asarray(positive, dtype=np.int64) * 10,
        patient_volume_ml={f"p{i:02d}": 1.0 for i in range(n_patients)},
    )


HEMORRHAGE = {f"p{i:02d}" for i in range(N_HEMORRHAGE)}


@pytest.mark.parametrize("k", [2, 3, 4])
def test_patient_folds_partition_the_patients_stratified(k: int) -> None:
    table = _table()
    folds = patient_folds(table, k, seed=7)
    assert len(folds) == k
    every = [p for fold in folds for p in fold]
    assert len(every) == len(set(every))  # no patient in two folds
    assert sorted(every) == sorted(set(table.pids.tolist()))  # each out of fold exactly once
    for fold in folds:
        assert fold == sorted(fold)
        n_ich = sum(p in HEMORRHAGE for p in fold)
        n_normal = len(fold) - n_ich
        # in proportion: 8 of 20 with hemorrhage, so each fold holds 8/k and 12/k of them, rounded
        assert N_HEMORRHAGE // k <= n_ich <= -(-N_HEMORRHAGE // k)
        assert (N_PATIENTS - N_HEMORRHAGE) // k <= n_normal <= -(-(N_PATIENTS - N_HEMORRHAGE) // k)


def test_patient_folds_are_seeded() -> None:
    table = _table()
    assert patient_folds(table, 4, seed=1) == patient_folds(table, 4, seed=1)
    assert patient_folds(table, 4, seed=1) != patient_folds(table, 4, seed=2)
    # the folds depend on the patients, not on how many slices each has
    assert patient_folds(_table(seed=5), 4, seed=1) == patient_folds(table, 4, seed=1)


@pytest.mark.parametrize("k", [0, 1, N_HEMORRHAGE + 1, N_PATIENTS])
def test_patient_folds_refuse_impossible_counts(k: int) -> None:
    with pytest.raises(ValueError, match="folds need"):
        patient_folds(_table(), k, seed=0)


def test_patient_folds_accept_as_many_folds_as_the_rarer_class() -> None:
    folds = patient_folds(_table(), N_HEMORRHAGE, seed=0)
    assert all(sum(p in HEMORRHAGE for p in fold) == 1 for fold in folds)


def test_fold_split_trains_on_every_other_fold_without_validation() -> None:
    folds = patient_folds(_table(), 4, seed=3)
    for k, held_out in enumerate(folds):
        split = fold_split(folds, k)
        assert split["val"] == []
        assert not set(split["train"]) & set(held_out)
        assert sorted(split["train"] + held_out) == sorted(p for f in folds for p in f)
        assert split["train"] == sorted(split["train"])


def test_load_folds_writes_then_reads_back(tmp_path: Path) -> None:
    table = _table()
    path = tmp_path / "folds.json"
    made = load_folds(path, table, 4, seed=11)
    stored = json.loads(path.read_text())
    assert stored == {"seed": 11, "k": 4, "folds": made}
    assert made == patient_folds(table, 4, seed=11)
    # a resumed run keeps its folds, whatever the config now says
    assert load_folds(path, table, 3, seed=12) == made
    # folds that do not cover exactly the data's patients are refused
    with pytest.raises(ValueError, match="do not cover"):
        load_folds(path, _table(n_patients=N_PATIENTS + 1), 4, seed=11)
    path.write_text(json.dumps({"folds": made[:-1]}))
    with pytest.raises(ValueError, match="do not cover"):
        load_folds(path, table, 4, seed=11)


# ------------------------------------------------------------------------------ a tiny two-fold run
PATIENTS = {  # new id -> (fixture patient, keeps its hemorrhage)
    "101": ("049", True),
    "102": ("081", True),
    "103": ("049", True),
    "104": ("081", True),
    "201": ("049", False),
    "202": ("081", False),
    "203": ("049", False),
    "204": ("081", False),
}
_STEP = """iterations = 2
lr = 1e-3
warmup = 1
batch = 4
eval_every = 1"""
CONFIG = f"""
[run]
name = "tiny-cv"
seed = 5
size = 32
threads = 1
val_patients = 0
eval_batch = 8

[cv]
folds = 2

[decision]
target_sensitivity = 1.0
band_sensitivity = 1.0
band_specificity = 0.95

[network]
width = 4
depth = 2

[steps.all]
{_STEP}

[steps.subtype]
init = "all"
cls_iterations = 1
{_STEP}

[steps.sdh]
init = "all"
{_STEP}

[steps.sah]
init = "all"
{_STEP}

[steps.small]
init = "all"
{_STEP}

[weight]
{TINY_WEIGHT}
"""


def _mtimes(run_dir: Path) -> dict[str, int]:
    files = [p for p in run_dir.glob("fold_*/**/*") if p.is_file()]
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Fold 0 alone, then every fold (fold 0 skipped), then again (both skipped)."""
    root = tmp_path_factory.mktemp("cv")
    data = synthetic_ct_ich(root / "data", PATIENTS)
    config = root / "tiny.toml"
    config.write_text(CONFIG)
    run_dir = root / "run"
    argv = ["cv", "--data", str(data), "--config", str(config), "--run-dir", str(run_dir)]
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.INFO)  # pytest's handlers make the CLI's basicConfig a no-op
    try:
        assert main([*argv, "--folds", "0"]) == 0
        after_first = {
            "oof": sorted(p.parent.name for p in run_dir.glob(f"fold_*/{OOF_FILE}")),
            "mtimes": _mtimes(run_dir),
        }
        assert main(argv) == 0
        after_second = _mtimes(run_dir)
        assert main(argv) == 0
        after_third = _mtimes(run_dir)
    finally:
        logger.setLevel(level)
    yield {
        "data": data,
        "run_dir": run_dir,
        "first": after_first,
        "second": after_second,
        "third": after_third,
    }


def test_cv_predicts_every_patient_once_out_of_fold(cv_run: dict[str, Any]) -> None:
    run_dir: Path = cv_run["run_dir"]
    folds = json.loads((run_dir / "folds.json").read_text())["folds"]
    assert sorted(p for f in folds for p in f) == sorted(PATIENTS)
    for fold in folds:  # stratified: two of each class in each fold
        assert sum(PATIENTS[p][1] for p in fold) == 2 and len(fold) == 4
    cache = np.load(run_dir / "cache_32.npz")
    seen: list[str] = []
    for k, held_out in enumerate(folds):
        fold_dir = run_dir / f"fold_{k}"
        for step in (*spec.MODEL_KEYS, "weight"):
            assert (fold_dir / step / "best.pt").is_file() and (fold_dir / step / "done.json").is_file()
            done = json.loads((fold_dir / step / "done.json").read_text())
            assert done["best"]["iteration"] == 2  # no validation patients: the last iteration is kept
        z = np.load(fold_dir / OOF_FILE)
        rows = z["rows"]
        n = len(rows)
        assert sorted(set(z["pids"].tolist())) == held_out
        # all the held-out patients' slices, in cache order, and nobody else's
        assert rows.tolist() == np.flatnonzero(np.isin(cache["pids"], held_out)).tolist()
        assert z["pids"].tolist() == cache["pids"][rows].tolist()
        assert z["probs"].shape == (n, 5, 32, 32) and z["fused"].shape == (n, 32, 32)
        assert z["slice_prob"].shape == (n,) and z["weights"].shape == (n, 5)
        np.testing.assert_allclose(z["weights"].sum(axis=1), 1.0, atol=1e-5)
        assert np.all((z["slice_prob"] >= 0) & (z["slice_prob"] <= 1))
        seen += z["pids"].tolist()
    assert sorted(seen) == sorted(cache["pids"].tolist())  # every slice out of fold exactly once
    log = (run_dir / "cv.log").read_text()
    assert "cv: fold 0: 4 training, 4 held-out patients" in log
    assert "cv: fold 1: 4 training, 4 held-out patients" in log


def test_cv_runs_requested_folds_and_skips_finished_ones(cv_run: dict[str, Any]) -> None:
    run_dir: Path = cv_run["run_dir"]
    first, second, third = cv_run["first"], cv_run["second"], cv_run["third"]
    assert first["oof"] == ["fold_0"]  # --folds 0 ran fold 0 only
    fold0 = {k: v for k, v in second.items() if k.startswith("fold_0/")}
    assert fold0 == first["mtimes"]  # the second run left fold 0 untouched
    assert any(k.startswith("fold_1/") for k in second)
    assert third == second  # the third run trained nothing
    log = (run_dir / "cv.log").read_text()
    assert log.count("cv: fold 0 already done, skipped") == 2
    assert log.count("cv: fold 1 already done, skipped") == 1
    assert log.count("cv: fold 0: 4 training") == 1 and log.count("cv: fold 1: 4 training") == 1


def test_cv_report_on_the_tiny_models_says_what_is_missing(cv_run: dict[str, Any], tmp_path: Path) -> None:
    """Two iterations teach the tiny networks little: their maps may hold no lesion candidate of one class
    or rank the cases backwards. The report then stops with a clear reason; if they do, it is complete."""
    out = tmp_path / "report"
    argv = [
        "cv-report",
        "--run-dir",
        str(cv_run["run_dir"]),
        "--data",
        str(cv_run["data"]),
        "--out",
        str(out),
    ]
    try:
        assert main(argv) == 0
    except ValueError as exc:
        assert "lesion model needs true and false lesion candidates" in str(exc) or "Platt slope" in str(exc)
        assert not (out / "case_model.json").exists() and not (out / "report.json").exists()
        records = Records.read(out)  # the records are written first, so they can be inspected
        assert sorted(str(r["case"]) for r in records.cases) == sorted(PATIENTS)
    else:
        CaseModel.load(out / "case_model.json")


def _truth_maps(truth: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Fused and base maps that see the truth (dilated: a lesion of several pixels) and one false focus.

    The lesion is 0.9 on the fused map and seen by every base model; the false focus, one pixel of 0.6 on
    the first slice near the top edge, only by "all". So the lesion model has both kinds of candidate and
    every hemorrhage case outranks every normal one.
    """
    from scipy import ndimage

    n = len(truth)
    lesion = np.stack([ndimage.binary_dilation(t, iterations=2) if t.any() else t for t in truth])
    fused = np.full(truth.shape, 0.1, dtype=np.float32)
    fused[lesion] = 0.9
    fused[0, 2, 8 + offset] = 0.6
    probs = np.where(lesion[:, None], np.float32(0.8), np.float32(0.2)).repeat(5, axis=1).astype(np.float32)
    probs[:, 0] = fused
    assert probs.shape == (n, 5, *truth.shape[1:])
    return fused, probs


def test_cv_report_writes_records_figures_and_a_loadable_case_model(
    cv_run: dict[str, Any], tmp_path: Path
) -> None:
    """The report part on a copy of the run whose out-of-fold maps are replaced by maps that see the truth."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(cv_run["run_dir"], run_dir, ignore=shutil.ignore_patterns("*.pt", "maps.npz"))
    cache = np.load(run_dir / "cache_32.npz")
    folds = json.loads((run_dir / "folds.json").read_text())["folds"]
    for k in range(len(folds)):
        path = run_dir / f"fold_{k}" / OOF_FILE
        z = dict(np.load(path))
        fused, probs = np.empty_like(z["fused"]), np.empty_like(z["probs"])
        for i, pid in enumerate(sorted(set(z["pids"].tolist()))):
            mine = z["pids"] == pid
            f, p = _truth_maps(cache["masks"][z["rows"][mine], 0] > 0, offset=i)
            fused[mine], probs[mine] = f, p
        z.update(fused=fused, probs=probs, slice_prob=opened_slice_max(fused, 3))
        np.savez_compressed(path, **z)

    out = tmp_path / "report"
    argv = ["cv-report", "--run-dir", str(run_dir), "--data", str(cv_run["data"]), "--out", str(out)]
    assert main(argv) == 0
    for name in TABLES:
        assert (out / f"{name}.csv").is_file()
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "folds.json").read_text() == (run_dir / "folds.json").read_text()
    records = Records.read(out)
    fold_of = {p: k for k, f in enumerate(folds) for p in f}
    assert sorted(r["case"] for r in records.cases) == sorted(PATIENTS)
    assert all(r["fold"] == fold_of[r["case"]] for r in records.cases)
    assert all(r["label"] == int(PATIENTS[r["case"]][1]) for r in records.cases)
    assert len(records.slices) == len(cache["pids"])
    assert {r["is_hemorrhage"] for r in records.lesions} == {0, 1}

    report = json.loads((out / "report.json").read_text())
    assert report["patients"] == 8 and report["patients_with_hemorrhage"] == 4
    assert report["slices"] == len(cache["pids"]) and report["folds"] == 2
    auc = report["case"]["ich_probability"]
    assert 0.0 <= auc["auc_ci"][0] <= auc["auc"] <= auc["auc_ci"][1] <= 1.0
    op = report["operating_point"]
    for key in ("sensitivity", "specificity", "indeterminate"):
        lo, hi = op[key]["ci"]
        assert 0.0 <= lo <= op[key]["value"] <= hi <= 1.0
    assert len(op["thresholds_by_fold"]) == 2 and all(0.0 <= t <= 1.0 for t in op["thresholds_by_fold"])
    for low, high in op["bands_by_fold"]:
        assert 0.0 <= low <= high <= 1.0
    assert 0.0 <= report["calibration"]["brier"] <= 1.0 and 0.0 <= report["calibration"]["ece"] <= 1.0
    assert sum(b["count"] for b in report["calibration"]["bins"]) == 8
    for block in report["dice"].values():
        assert 0.0 <= block["per_patient"] <= 1.0 and block["patients"] == 4
    assert set(report["models"]) == {"ensemble", *spec.MODEL_KEYS}
    assert [c["case"] for c in report["cases"]] == [r["case"] for r in records.cases]
    # maps that see the truth: every hemorrhage case outranks every normal one, out of fold too
    assert auc["auc"] == 1.0 and report["dice"]["kept_lesions"]["per_patient"] > 0.0

    model = CaseModel.load(out / "case_model.json")
    assert model.info["fitted_on"] == "every out-of-fold record" and model.info["cases"] == 8
    assert model.info["targets"]["target_sensitivity"] == 1.0

    # --records-only makes the same report from the committed records alone
    (out / "report.json").rename(tmp_path / "first.json")
    assert main(["cv-report", "--records-only", "--out", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())
    assert [(c["case"], c["label"], c["fold"]) for c in again["cases"]] == [
        (c["case"], c["label"], c["fold"]) for c in report["cases"]
    ]
    assert again["case"]["ich_probability"]["auc"] == auc["auc"]
    assert again["operating_point"]["sensitivity"] == op["sensitivity"]

    # a fold whose maps are not in this run (another session's checkout) keeps its committed records
    (run_dir / "fold_1" / OOF_FILE).unlink()
    assert main(argv) == 0
    resumed = Records.read(out)
    for name in TABLES:
        assert getattr(resumed, name) == getattr(records, name)
    # records made on other folds are not mixed in
    other = json.loads((out / "folds.json").read_text())
    other["folds"] = other["folds"][::-1]
    (out / "folds.json").write_text(json.dumps(other))
    assert _earlier_records(out, run_dir) is None
    assert {r["fold"] for r in run_records(run_dir, cv_run["data"], None).cases} == {0}


def test_cv_folds_from_another_run_trains_on_those_folds(cv_run: dict[str, Any], tmp_path: Path) -> None:
    folds = json.loads((cv_run["run_dir"] / "folds.json").read_text())
    first, second = folds["folds"]  # ids sort hemorrhage (1xx) before normal (2xx): swap the former
    swapped = [sorted(second[:2] + first[2:]), sorted(first[:2] + second[2:])]
    assert swapped != folds["folds"]
    given = tmp_path / "folds.json"
    given.write_text(json.dumps({**folds, "folds": swapped}))
    run_dir = tmp_path / "run"
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG)
    argv = ["cv", "--data", str(cv_run["data"]), "--config", str(config), "--run-dir", str(run_dir)]
    assert main([*argv, "--folds-from", str(given), "--folds", "0"]) == 0
    assert json.loads((run_dir / "folds.json").read_text())["folds"] == swapped
    z = np.load(run_dir / "fold_0" / OOF_FILE)
    assert sorted(set(z["pids"].tolist())) == swapped[0]


def test_predict_ensemble_can_override_the_flip_averaging(cv_run: dict[str, Any]) -> None:
    run_dir: Path = cv_run["run_dir"]
    fold_dir = run_dir / "fold_0"
    stored = np.load(fold_dir / OOF_FILE)
    images = np.load(run_dir / "cache_32.npz")["images"][stored["rows"]]
    trained = predict_ensemble(fold_dir, images, batch=8)  # the tiny networks train without the flip
    np.testing.assert_allclose(trained["slice_prob"], stored["slice_prob"], atol=1e-6)
    off = predict_ensemble(fold_dir, images, batch=8, flip_tta=False)
    np.testing.assert_array_equal(off["probs"], trained["probs"])
    on = predict_ensemble(fold_dir, images, batch=8, flip_tta=True)
    assert not np.array_equal(on["probs"], trained["probs"])  # the mirrored pass changes the maps


def test_run_cache_reads_a_finished_runs_cache_and_names_a_missing_one(
    cv_run: dict[str, Any], tmp_path: Path
) -> None:
    cache = run_cache(cv_run["run_dir"], 32)
    stored = np.load(cv_run["run_dir"] / "cache_32.npz")
    np.testing.assert_array_equal(cache.images, stored["images"])
    with pytest.raises(FileNotFoundError, match=r"cache_32\.npz: no cache of a cv run at 32 px"):
        run_cache(tmp_path, 32)
