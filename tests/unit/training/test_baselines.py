"""``ich-model baselines``: the four classifiers, the strong mode's saliency loss, a tiny resumable run on
synthetic CT-ICH patients, its records and comparison against an ensemble record, and the weak-CSV mode."""

from __future__ import annotations

import csv
import json
import logging
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from tests.support.ct_ich_data import synthetic_ct_ich  # noqa: E402
from training.baselines import report as baseline_report  # noqa: E402
from training.baselines.networks import ARCHITECTURES, build_classifier  # noqa: E402
from training.baselines.train import (  # noqa: E402
    Unit,
    is_done,
    saliency_loss,
    slice_id,
    train_step,
    train_unit,
    unit_loss,
    unit_settings,
)
from training.cli import main  # noqa: E402
from training.config import (  # noqa: E402
    BaselinesConfig,
    BaselinesTrain,
    ConfigError,
    load_baselines_config,
)
from training.losses import dice_loss  # noqa: E402
from training.model_card import baselines_section  # noqa: E402
from training.records import Records, _read_csv  # noqa: E402
from training.train import build_cache  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
TINY = {  # width and repeats small enough for 32 px in milliseconds
    "densenet121": (0.125, [1, 1, 1, 1]),
    "inception_resnet_v2": (0.0625, [1, 1, 1]),
    "mobilenet_v2": (0.25, [1, 1, 1, 1, 1, 1, 1]),
    "vgg19": (0.125, [1, 1, 1, 1, 1]),
}
#: Parameters of each published network (features and the one-unit head), as their papers' tables give.
PUBLISHED_MILLIONS = {"densenet121": 6.96, "inception_resnet_v2": 54.31, "mobilenet_v2": 2.23, "vgg19": 20.03}

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
FOLDS = [["101", "102", "201", "202"], ["103", "104", "203", "204"]]
_NETWORKS = "\n".join(f"[network.{a}]\nwidth = {w}\nblocks = {b}\n" for a, (w, b) in TINY.items())
CONFIG = f"""
architectures = {json.dumps(list(ARCHITECTURES))}
modes = ["weak", "strong", "weak_csv"]

[run]
name = "tiny"
seed = 3
size = 32
threads = 1
eval_batch = 64

[train]
iterations = 2
batch = 4
lr = 1e-3
warmup = 2
log_every = 1
seg_weight = 1.0
dice = "batch"
augment = {{ flip = true, rotate_deg = 5.0, scale = 0.05, intensity = 0.05 }}

{_NETWORKS}
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One thread: the tests share two cores with whatever else runs, and tiny networks gain nothing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(architecture: str) -> Any:
    width, blocks = TINY[architecture]
    torch.manual_seed(0)
    return build_classifier(architecture, width, blocks)


# ------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_architecture_takes_four_channels_and_gives_its_cam(architecture: str) -> None:
    model = _tiny(architecture).eval()
    with torch.no_grad():
        logit, cam = model(torch.rand(3, 4, 32, 32))
    assert logit.shape == (3,) and cam.shape[:2] == (3, 1) and cam.shape[2] == cam.shape[3] >= 1
    # the slice logit is the CAM's mean: the map explains the score exactly
    torch.testing.assert_close(logit, cam.mean(dim=(2, 3))[:, 0])
    with pytest.raises(RuntimeError):
        model(torch.rand(3, 3, 32, 32))
    assert model.hparams == {
        "architecture": architecture,
        "width": TINY[architecture][0],
        "blocks": TINY[architecture][1],
    }


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_full_networks_have_the_published_size(architecture: str) -> None:
    with torch.device("meta"):
        model = build_classifier(architecture)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(PUBLISHED_MILLIONS[architecture], abs=0.01)


def test_an_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'"):
        build_classifier("resnet50")


# ------------------------------------------------------------------------------------------------ loss
def _mask() -> Any:
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, 0, 4:9, 5:11] = 1.0  # slice 1 is normal: its mask is empty
    return mask


def test_saliency_loss_vanishes_when_the_map_agrees_with_the_mask() -> None:
    mask = _mask()
    assert float(dice_loss(mask, mask)) == 0.0  # the map equal to the mask
    cam = ((mask * 2 - 1) * 30.0).requires_grad_(True)  # a confident CAM that agrees
    keep = torch.tensor([True, True])
    loss = saliency_loss(cam, mask, keep, "batch")
    loss.backward()
    assert float(loss.detach()) < 1e-6
    assert cam.grad is not None and float(cam.grad.abs().max()) < 1e-6


def test_saliency_loss_is_positive_when_the_map_disagrees() -> None:
    mask = _mask()
    keep = torch.tensor([True, True])
    signed = mask * 2 - 1
    for cam in (-signed * 2.0, torch.zeros_like(mask), torch.roll(signed * 2.0, 5, dims=-1)):
        cam = cam.clone().requires_grad_(True)
        loss = saliency_loss(cam, mask, keep, "batch")
        loss.backward()
        assert float(loss.detach()) > 0.2
        assert cam.grad is not None and float(cam.grad.abs().max()) > 1e-4  # it pulls the map to the mask
    # confidently wrong (saturated sigmoid): the loss is near its maximum
    assert float(saliency_loss(-signed * 30.0, mask, keep, "batch")) > 0.99
    # a CAM at feature resolution is upsampled to the mask's grid before the comparison
    coarse = torch.full((2, 1, 2, 2), -30.0)
    assert float(saliency_loss(coarse, mask, keep, "batch")) > 0.9  # an empty map misses the lesion


def test_the_strong_loss_is_bce_plus_the_weighted_saliency_term_on_kept_slices() -> None:
    mask = _mask()
    cam = torch.randn(2, 1, 16, 16)
    logit, labels = cam.mean(dim=(2, 3))[:, 0], torch.tensor([1.0, 0.0])
    keep = torch.tensor([True, False])
    train = BaselinesTrain(iterations=1, batch=2, lr=1e-3, warmup=0, seg_weight=0.5, dice="batch")
    weak, weak_parts = unit_loss(logit, cam, labels, mask, keep, "weak", train)
    strong, parts = unit_loss(logit, cam, labels, mask, keep, "strong", train)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, labels)
    torch.testing.assert_close(weak, bce)
    assert set(weak_parts) == {"bce"}
    seg = saliency_loss(cam, mask, keep, "batch")
    torch.testing.assert_close(strong, bce + 0.5 * seg)
    assert parts["seg"] == pytest.approx(float(seg))
    # only the kept slices count: the second slice's map changes nothing
    other = cam.clone()
    other[1] = 30.0
    torch.testing.assert_close(saliency_loss(other, mask, keep, "batch"), seg)
    assert float(saliency_loss(cam, mask, torch.tensor([False, False]), "batch")) == 0.0


# -------------------------------------------------------------------------------------- tiny data set
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_ct_ich(tmp_path_factory.mktemp("data") / "ct_ich", PATIENTS)


@pytest.fixture(scope="module")
def cache(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_cache(data, 32, tmp_path_factory.mktemp("cache") / "cache_32.npz")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("mode", ["weak", "strong"])
def test_each_architecture_learns_a_batch_in_both_modes(architecture: str, mode: str, cache: Any) -> None:
    positive = np.flatnonzero(cache.table.positive)[:4]
    idx = np.concatenate([positive, np.flatnonzero(~cache.table.positive)[:4]])
    x = torch.from_numpy(cache.images[idx].astype(np.float32))
    masks = torch.from_numpy(cache.masks[idx].astype(np.float32))
    labels = torch.from_numpy(cache.table.positive[idx].astype(np.float32))
    keep = torch.ones(len(idx), dtype=torch.bool)
    model = _tiny(architecture)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    train = BaselinesTrain(iterations=6, batch=8, lr=3e-3, warmup=0)
    losses = [train_step(model, opt, x, masks, labels, keep, mode, train) for _ in range(6)]
    assert losses[-1]["loss"] < losses[0]["loss"]
    assert ("seg" in losses[0]) == (mode == "strong")


def _config(cfg_text: str, **train: Any) -> BaselinesConfig:
    cfg = tomllib.loads(cfg_text)
    cfg["train"].update(train)
    return BaselinesConfig.model_validate(cfg)


def test_a_stopped_unit_resumes_where_it_stopped(cache: Any, tmp_path: Path) -> None:
    """Two iterations in one go, and one then a resumed second, give the same weights."""
    unit = Unit(0, "mobilenet_v2", "strong")
    labels = cache.table.positive.astype(np.int8)
    train_pids = FOLDS[1]
    straight, _ = train_unit(_config(CONFIG), cache, unit, train_pids, labels, tmp_path / "a", "cpu")
    train_unit(_config(CONFIG, iterations=1), cache, unit, train_pids, labels, tmp_path / "b", "cpu")
    resumed, facts = train_unit(_config(CONFIG), cache, unit, train_pids, labels, tmp_path / "b", "cpu")
    assert [p["iteration"] for p in facts["curve"]] == [1, 2]
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)


# ------------------------------------------------------------------------------------------ tiny run
def _ensemble_record(folder: Path, cache_path: Path) -> None:
    """An ensemble's out-of-fold slices: informative scores (hemorrhage slices higher, with overlap)."""
    z = np.load(cache_path)
    rng = np.random.default_rng(0)
    slices, cases = [], []
    fold_of = {p: k for k, f in enumerate(FOLDS) for p in f}
    for pid in sorted(set(z["pids"].tolist())):
        rows = np.flatnonzero(z["pids"] == pid)
        for i, row in enumerate(rows.tolist()):
            label = int(z["positive"][row])
            truth = int(z["masks"][row].sum())
            slices.append(
                {
                    "case": pid,
                    "fold": fold_of[pid],
                    "slice": i,
                    "label": label,
                    "truth_voxels": truth,
                    "slice_prob": float(np.clip(0.35 + 0.4 * label + rng.normal(0, 0.2), 0, 1)),
                    "candidate_inter": truth // 2,
                    "candidate_voxels": truth,
                }
            )
        cases.append(
            {
                "case": pid,
                "fold": fold_of[pid],
                "label": int(z["positive"][rows].max()),
                "max_slice_probability": max(s["slice_prob"] for s in slices if s["case"] == pid),
            }
        )
    Records(cases=cases, slices=slices).write(folder)
    (folder / "folds.json").write_text(json.dumps({"seed": 1, "k": 2, "folds": FOLDS}))


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/*/fold_*.*")}


@pytest.fixture(scope="module")
def tiny_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """mobilenet_v2 on fold 0 alone, then everything (those skipped), then again (nothing trains)."""
    root = tmp_path_factory.mktemp("baselines")
    config = root / "tiny.toml"
    config.write_text(CONFIG)
    run_dir, out, ensemble, doc = root / "run", root / "records", root / "ensemble", root / "baselines.md"
    build_cache(data, 32, run_dir / "cache_32.npz")
    _ensemble_record(ensemble, run_dir / "cache_32.npz")
    folds = root / "folds.json"
    folds.write_text(json.dumps({"seed": 1, "k": 2, "folds": FOLDS}))
    marked = f"{baseline_report.BEGIN}\nold\n{baseline_report.END}"
    doc.write_text(f"# Baselines\n\nHand-written budget.\n\n{marked}\n\nEnd.\n")
    argv = [
        "baselines",
        "--data",
        str(data),
        "--config",
        str(config),
        "--run-dir",
        str(run_dir),
        "--out",
        str(out),
        "--folds-from",
        str(folds),
        "--ensemble",
        str(ensemble),
        "--doc",
        str(doc),
    ]
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.INFO)  # pytest's handlers make the CLI's basicConfig a no-op
    try:
        assert main([*argv, "--architectures", "mobilenet_v2", "--folds", "0"]) == 0
        first = _mtimes(out)
        assert main(argv) == 0
        second = _mtimes(out)
        assert main(argv) == 0
        third = _mtimes(out)
    finally:
        logger.setLevel(level)
    yield {
        "argv": argv,
        "out": out,
        "run_dir": run_dir,
        "doc": doc,
        "config": config,
        "ensemble": ensemble,
        "first": first,
        "second": second,
        "third": third,
        "data": data,
    }


def test_the_run_skips_finished_units(tiny_run: dict[str, Any]) -> None:
    first, second, third = tiny_run["first"], tiny_run["second"], tiny_run["third"]
    assert sorted(first) == [
        f"mobilenet_v2/{m}/fold_0.{e}" for m in ("strong", "weak") for e in ("csv", "json")
    ]
    assert {k: v for k, v in second.items() if k in first} == first  # the second run left them untouched
    expected = {
        f"{a}/{m}/fold_{k}.{e}"
        for a in ARCHITECTURES
        for m in ("weak", "strong")
        for k in (0, 1)
        for e in ("csv", "json")
    }
    assert set(second) == expected  # weak_csv is left out without --weak-csv
    assert third == second  # the third run trained nothing
    log = (tiny_run["run_dir"] / "baselines.log").read_text()
    assert "2 units requested, 0 already recorded" in log
    assert (
        "16 units requested, 2 already recorded" in log and "16 units requested, 16 already recorded" in log
    )
    assert not list(tiny_run["run_dir"].glob("**/last.pt"))  # a finished unit keeps no checkpoint


def test_the_records_hold_every_out_of_fold_slice_once(tiny_run: dict[str, Any]) -> None:
    out: Path = tiny_run["out"]
    z = np.load(tiny_run["run_dir"] / "cache_32.npz")
    for arch in ARCHITECTURES:
        for mode in ("weak", "strong"):
            rows = [r for k in (0, 1) for r in _read_csv(out / arch / mode / f"fold_{k}.csv")]
            assert sorted(r["case"] for r in rows) == sorted(z["pids"].tolist())
            assert all(r["case"] in FOLDS[r["fold"]] for r in rows)
            assert all(0.0 <= r["prob"] <= 1.0 for r in rows)
            assert all(0 <= r["inter_map"] <= min(r["voxels_map"], r["truth_voxels"]) for r in rows)
            facts = json.loads((out / arch / mode / "fold_0.json").read_text())
            assert facts["unit"] == {"fold": 0, "architecture": arch, "mode": mode}
            assert facts["train_patients"] == 4 and facts["positive_slices"] == 4
            assert [p["iteration"] for p in facts["curve"]] == [1, 2]
            assert ("seg" in facts["curve"][0]) == (mode == "strong")
            assert facts["settings"]["network"] == {"width": TINY[arch][0], "blocks": TINY[arch][1]}
    assert json.loads((out / "folds.json").read_text())["folds"] == FOLDS


def test_the_report_compares_each_model_with_the_ensemble(tiny_run: dict[str, Any]) -> None:
    out: Path = tiny_run["out"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["units_done"] == 16 and rep["units_expected"] == 2 * 4 * 2 and rep["folds"] == 2
    assert rep["same_folds_as_ensemble"] is True
    ens = rep["ensemble"]
    assert ens["patients"] == 8 and ens["patients_with_hemorrhage"] == 4
    assert list(rep["models"]) == [f"{a}/{m}" for a in ARCHITECTURES for m in ("weak", "strong")]
    for block in rep["models"].values():
        assert block["complete"] and block["folds"] == [0, 1] and block["patients"] == 8
        for level in ("slice", "case"):
            assert block[level]["auc"] is not None
            lo, hi = block[level]["auc_ci"]
            assert 0.0 <= lo <= hi <= 1.0
            versus = block["vs_ensemble"][level]
            assert versus["delong"] is not None and 0.0 <= versus["delong"]["p"] <= 1.0
            assert versus["delta_auc"] == pytest.approx(ens[level]["auc"] - block[level]["auc"], abs=2e-4)
        case = block["at_threshold"]["case"]
        assert case["sensitivity"]["n"] == 4 and case["specificity"]["n"] == 4
        assert block["dice"]["map"]["patients"] == 4  # the hemorrhage patients
    assert set(rep["strong_vs_weak"]) == {f"{a}/weak" for a in ARCHITECTURES}
    assert all(b["patients"] == 8 for b in rep["strong_vs_weak"].values())
    assert "--ensemble" in rep["command"] and rep["command"].startswith("ich-model baselines --data ")
    # the table replaced the generated block of the doc and kept the hand-written text
    doc = tiny_run["doc"].read_text()
    assert doc.startswith("# Baselines\n\nHand-written budget.") and doc.rstrip().endswith("End.")
    assert doc.count(baseline_report.BEGIN) == 1 and "\nold\n" not in doc
    assert f"Generated by `{rep['command']}`" in doc
    assert (
        "| Weighted ensemble |" in doc and doc.count("| InceptionResNetV2 |") == 3
    )  # weak, strong; strong vs weak
    assert "16 of 16 units recorded over 2 folds" in doc


def test_the_report_alone_needs_only_the_records(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    rep = json.loads((tiny_run["out"] / "report.json").read_text())
    doc = tmp_path / "new.md"
    argv = [
        "baselines",
        "--config",
        str(tiny_run["config"]),
        "--out",
        str(tiny_run["out"]),
        "--ensemble",
        str(tiny_run["ensemble"]),
        "--doc",
        str(doc),
        "--report-only",
    ]
    assert main(argv) == 0
    again = json.loads((tiny_run["out"] / "report.json").read_text())
    assert again["models"] == rep["models"] and again["ensemble"] == rep["ensemble"]
    assert doc.read_text().startswith("# Baselines: the paper's four classifiers")
    card = baselines_section(tiny_run["out"])
    assert "| Weighted ensemble |" in card and "| VGG19 |" in card
    assert "Not yet run" in baselines_section(tmp_path / "none")


def test_a_changed_config_is_refused_not_mixed_in(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    changed = tmp_path / "changed.toml"
    changed.write_text(CONFIG.replace("iterations = 2", "iterations = 3"))
    argv = list(tiny_run["argv"])
    argv[argv.index("--config") + 1] = str(changed)
    before = _mtimes(tiny_run["out"])
    assert main(argv) == 2
    assert _mtimes(tiny_run["out"]) == before


def test_the_weak_csv_mode_trains_on_the_csv_labels(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    """An RSNA-style long CSV naming only two hemorrhage slices of the training patients as positive."""
    from training.data.ct_ich import read_patient

    path = tmp_path / "stage_2_train.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ID", "Label"])
        for pid in PATIENTS:
            patient = read_patient(tiny_run["data"], pid)
            for number, label in zip(patient.slice_numbers, patient.slice_labels.tolist(), strict=True):
                keep = int(bool(label) and pid == "103")  # only 103's hemorrhage slices stay positive
                for subtype in ("any", "epidural"):
                    writer.writerow([f"{slice_id(pid, number)}_{subtype}", keep])
    argv = [
        *tiny_run["argv"],
        "--weak-csv",
        str(path),
        "--modes",
        "weak_csv",
        "--architectures",
        "vgg19",
        "--folds",
        "0",
    ]
    assert main(argv) == 0
    out: Path = tiny_run["out"]
    facts = json.loads((out / "vgg19" / "weak_csv" / "fold_0.json").read_text())
    assert facts["settings"]["labels"].startswith("stage_2_train.csv sha256:")
    assert facts["positive_slices"] == 2  # 103's two, not the four of CT-ICH's labels
    assert facts["negative_slices"] == 8
    rows = _read_csv(out / "vgg19" / "weak_csv" / "fold_0.csv")
    assert sorted({r["case"] for r in rows}) == FOLDS[0]
    # evaluated on CT-ICH's own labels
    assert sum(r["label"] for r in rows) == 4
    rep = json.loads((out / "report.json").read_text())
    assert "vgg19/weak_csv" in rep["models"] and not rep["models"]["vgg19/weak_csv"]["complete"]
    assert rep["units_done"] == 17 and rep["units_expected"] == 24
    assert rep["strong_vs_weak"]["vgg19/weak_csv"]["patients"] == 4
    # a CSV that names none of the slices is refused with the expected form of the IDs
    other = tmp_path / "other.csv"
    other.write_text("ID,Label\nID_abc_any,1\n")
    argv[argv.index("--weak-csv") + 1] = str(other)
    argv[argv.index("--folds") + 1] = "1"
    assert main(argv) == 2


def test_the_committed_configs_name_every_architecture_and_both_modes() -> None:
    for name in ("baselines.toml", "baselines-gpu.toml"):
        cfg = load_baselines_config(ROOT / "training" / "configs" / name)
        assert cfg.architectures == list(ARCHITECTURES) and cfg.modes[:2] == ["weak", "strong"]
        assert all(cfg.network[a].width == 1.0 for a in ARCHITECTURES)  # the published networks
        assert cfg.run.size % 32 == 0 and cfg.train.iterations > 0


def test_the_committed_records_match_their_config_so_none_is_refused() -> None:
    """``unit_settings`` of the typed config equals what each committed unit record was made with."""
    out = ROOT / "training" / "baselines" / "cpu"
    cfg = load_baselines_config(ROOT / "training" / "configs" / "baselines.toml")
    records = sorted(out.glob("*/*/fold_*.json"))
    assert records  # the committed comparison has units
    for path in records:
        made = json.loads(path.read_text())
        unit = Unit(**made["unit"])
        assert unit_settings(cfg, unit, made["settings"]["labels"]) == made["settings"], path
        assert is_done(unit, out, made["settings"])


def test_an_unknown_key_in_a_baselines_config_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(CONFIG.replace("seg_weight = 1.0", "seg_wieght = 1.0"))
    with pytest.raises(ConfigError, match=r"typo.toml: \[train\] seg_wieght: unknown key"):
        load_baselines_config(path)
