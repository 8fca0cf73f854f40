"""The comparison of ``ich-model baselines``: each classifier, weak against strong, and the ensemble.

Read from records alone (the units' CSVs under ``<out>/`` and the ensemble's out-of-fold ``slices.csv`` of
``ich-model cv-report``), with the figures of :mod:`training.oof_report`, so that they are computed the way
the ensemble's are: slice AUC with a patient-bootstrap interval, case AUC (case = highest slice probability,
the paper's) with a bootstrap interval, sensitivity and specificity at the paper's threshold of 0.5 with
exact intervals, DeLong's paired test against the ensemble on the very same out-of-fold slices and patients,
and the saliency maps' Dice against the masks (per patient, on slices with hemorrhage).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training import metrics
from training.baselines.networks import ARCHITECTURES
from training.config import BaselinesConfig
from training.oof_report import _auc, _case_max, _delong, _dice, _num, _proportion
from training.records import _read_csv

logger = logging.getLogger(__name__)

THRESHOLD = 0.5
BEGIN, END = "<!-- baselines:begin -->", "<!-- baselines:end -->"
TITLES = {
    "densenet121": "DenseNet121",
    "inception_resnet_v2": "InceptionResNetV2",
    "mobilenet_v2": "MobileNetV2",
    "vgg19": "VGG19",
}
MODE_TITLES = {
    "weak": "weak (slice labels)",
    "strong": "strong (+ saliency Dice)",
    "weak_csv": "weak (CSV labels)",
}

Key = tuple[str, int]  # (case, slice index within the case)


class _Slices:
    """Slice rows as arrays, in a fixed (case, slice) order."""

    def __init__(
        self, keys: Sequence[Key], labels: np.ndarray, probs: np.ndarray, counts: dict[str, np.ndarray]
    ):
        self.keys = list(keys)
        self.cases = np.array([k[0] for k in self.keys])
        self.labels = labels
        self.probs = probs
        self.counts = counts  # name -> [N, 3] intersection, predicted, true voxels

    def ids(self) -> list[str]:
        return sorted(set(self.cases.tolist()))

    def case_labels(self, ids: list[str]) -> np.ndarray:
        return _case_max(self.cases, self.labels.astype(float), ids).astype(int)

    def case_scores(self, ids: list[str]) -> np.ndarray:
        return _case_max(self.cases, self.probs, ids)


def _baseline_slices(rows: list[dict[str, Any]]) -> _Slices:
    rows = sorted(rows, key=lambda r: (str(r["case"]), int(r["slice"])))
    truth = np.array([int(r["truth_voxels"]) for r in rows])
    counts = {
        name: np.stack(
            [
                np.array([int(r[f"inter_{name}"]) for r in rows]),
                np.array([int(r[f"voxels_{name}"]) for r in rows]),
                truth,
            ],
            axis=1,
        )
        for name in ("map", "cam")
    }
    return _Slices(
        [(str(r["case"]), int(r["slice"])) for r in rows],
        np.array([int(r["label"]) for r in rows]),
        np.array([float(r["prob"]) for r in rows]),
        counts,
    )


def _ensemble_slices(folder: Path) -> dict[Key, dict[str, Any]]:
    rows = _read_csv(folder / "slices.csv")
    if not rows:
        raise ValueError(
            f"{folder}: no slices.csv (the ensemble's out-of-fold records of ich-model cv-report)"
        )
    return {(str(r["case"]), int(r["slice"])): r for r in rows}


def _joined(ensemble: Mapping[Key, Mapping[str, Any]], keys: Sequence[Key], labels: np.ndarray) -> _Slices:
    """The ensemble on ``keys``; the labels must agree (else the records are of other data)."""
    missing = [k for k in keys if k not in ensemble]
    if missing:
        raise ValueError(
            f"the ensemble's records lack {len(missing)} of the baselines' slices (first: {missing[0]})"
        )
    rows = [ensemble[k] for k in keys]
    theirs = np.array([int(r["label"]) for r in rows])
    if not np.array_equal(theirs, labels):
        raise ValueError(
            "the ensemble's slice labels differ from the baselines': the records are of other data"
        )
    truth = np.array([int(r["truth_voxels"]) for r in rows])
    counts = {
        "candidates": np.stack(
            [
                np.array([int(r["candidate_inter"]) for r in rows]),
                np.array([int(r["candidate_voxels"]) for r in rows]),
                truth,
            ],
            axis=1,
        )
    }
    return _Slices(keys, labels, np.array([float(r["slice_prob"]) for r in rows]), counts)


def _at_threshold(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    called = scores >= THRESHOLD
    y = labels == 1
    return {
        "sensitivity": _proportion(int((called & y).sum()), int(y.sum())),
        "specificity": _proportion(int((~called & ~y).sum()), int((~y).sum())),
    }


def _dice_block(s: _Slices) -> dict[str, Any]:
    out = {}
    for name, counts in s.counts.items():
        d = _dice(counts, s.cases)
        out[name] = {"per_patient": d["per_patient"], "micro": d["micro"], "patients": d["patients"]}
    return out


def figures(s: _Slices) -> dict[str, Any]:
    """AUCs with intervals, the operating point at 0.5 and the Dice of one set of slice predictions."""
    ids = s.ids()
    case_y = s.case_labels(ids)
    case_p = s.case_scores(ids)
    return {
        "patients": len(ids),
        "patients_with_hemorrhage": int(case_y.sum()),
        "slices": len(s.keys),
        "slice": _auc(s.labels, s.probs, s.cases),
        "case": _auc(case_y, case_p, None),
        "at_threshold": {"case": _at_threshold(case_y, case_p), "slice": _at_threshold(s.labels, s.probs)},
        "dice": _dice_block(s),
    }


def _delta(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> float | None:
    """AUC(a) - AUC(b); ``None`` with one class only."""
    if not 0 < labels.sum() < labels.size:
        return None
    return _num(metrics.roc_auc(labels, a) - metrics.roc_auc(labels, b))


def paired(a: _Slices, b: _Slices) -> dict[str, Any]:
    """``a`` against ``b`` on the same slices (``b`` reordered to ``a``'s keys): AUC differences, DeLong."""
    ids = a.ids()
    case_y = a.case_labels(ids)
    pa, pb = a.case_scores(ids), b.case_scores(ids)
    return {
        "case": {"delta_auc": _delta(case_y, pa, pb), "delong": _delong(case_y, pa, pb)},
        "slice": {
            "delta_auc": _delta(a.labels, a.probs, b.probs),
            "delong": _delong(a.labels, a.probs, b.probs),
        },
    }


def _restrict(s: _Slices, keys: Sequence[Key]) -> _Slices:
    where = {k: i for i, k in enumerate(s.keys)}
    idx = np.array([where[k] for k in keys], dtype=int)
    return _Slices(keys, s.labels[idx], s.probs[idx], {n: c[idx] for n, c in s.counts.items()})


def _units(out: Path) -> dict[tuple[str, str], dict[int, list[dict[str, Any]]]]:
    """Every recorded unit: (architecture, mode) -> fold -> rows (a unit counts once its JSON is written)."""
    found: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = {}
    for done in sorted(out.glob("*/*/fold_*.json")):
        arch, mode, fold = done.parent.parent.name, done.parent.name, int(done.stem.split("_")[1])
        found.setdefault((arch, mode), {})[fold] = _read_csv(done.with_suffix(".csv"))
    return found


def build_report(out: Path, ensemble_dir: Path, cfg: BaselinesConfig | None = None) -> dict[str, Any]:
    """The comparison from ``out``'s unit records and the ensemble's out-of-fold records."""
    k = len(json.loads((out / "folds.json").read_text())["folds"])
    units = _units(out)
    ensemble = _ensemble_slices(ensemble_dir)
    blocks: dict[str, dict[str, Any]] = {}
    slices: dict[tuple[str, str], _Slices] = {}
    for (arch, mode), by_fold in sorted(units.items(), key=lambda kv: _order(kv[0])):
        s = _baseline_slices([r for f in sorted(by_fold) for r in by_fold[f]])
        slices[(arch, mode)] = s
        ens = _joined(ensemble, s.keys, s.labels)
        block = {"architecture": arch, "mode": mode, "folds": sorted(by_fold), "complete": len(by_fold) == k}
        block.update(figures(s))
        block["vs_ensemble"] = paired(ens, s)  # z > 0 and delta > 0: the ensemble higher
        blocks[f"{arch}/{mode}"] = block
    covered = sorted({key for s in slices.values() for key in s.keys}) or sorted(ensemble)
    labels = np.array([int(ensemble[key]["label"]) for key in covered])
    ens_all = _joined(ensemble, covered, labels)
    strong_vs_weak: dict[str, dict[str, Any]] = {}
    for (arch, mode), s in slices.items():
        strong = slices.get((arch, "strong"))
        if mode == "strong" or strong is None:
            continue
        common = sorted(set(strong.keys) & set(s.keys))
        if common:
            block = paired(_restrict(strong, common), _restrict(s, common))  # z > 0: strong higher
            block["patients"] = len({c for c, _ in common})
            strong_vs_weak[f"{arch}/{mode}"] = block
    # weak_csv counts once it has run: it needs a CSV, which a run may not have
    ran = {mode for _, mode in units}
    modes = [m for m in (cfg.modes if cfg else ("weak", "strong")) if m != "weak_csv" or m in ran]
    expected = k * len(cfg.architectures if cfg else ARCHITECTURES) * len(modes)
    return {
        "folds": k,
        "units_done": sum(len(v) for v in units.values()),
        "units_expected": expected,
        "threshold": THRESHOLD,
        "same_folds_as_ensemble": _same_folds(out, ensemble_dir),
        "ensemble": {
            "source": ensemble_dir.as_posix(),
            **figures(ens_all),
            "shipped": _shipped(ensemble_dir),
        },
        "models": blocks,
        "strong_vs_weak": strong_vs_weak,
    }


def _order(key: tuple[str, str]) -> tuple[int, int]:
    arch, mode = key
    return (
        ARCHITECTURES.index(arch) if arch in ARCHITECTURES else 99,
        list(MODE_TITLES).index(mode) if mode in MODE_TITLES else 99,
    )


def _same_folds(out: Path, ensemble_dir: Path) -> bool | None:
    theirs = ensemble_dir / "folds.json"
    if not theirs.is_file():
        return None
    return bool(
        json.loads(theirs.read_text())["folds"] == json.loads((out / "folds.json").read_text())["folds"]
    )


def _shipped(ensemble_dir: Path) -> dict[str, Any] | None:
    """The ensemble's own decision (case model, threshold chosen inside the training folds), if reported."""
    path = ensemble_dir / "report.json"
    if not path.is_file():
        return None
    rep = json.loads(path.read_text())
    op = rep.get("operating_point", {})
    return {
        "case_auc": rep.get("case", {}).get("ich_probability", {}).get("auc"),
        "sensitivity": op.get("sensitivity", {}).get("value"),
        "specificity": op.get("specificity", {}).get("value"),
    }


# -------------------------------------------------------------------------------------------- Markdown
def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _auc_cell(block: Mapping[str, Any]) -> str:
    if block["auc"] is None:
        return "–"
    lo, hi = block["auc_ci"]
    return f"{_f(block['auc'])} [{_f(lo)}, {_f(hi)}]"


def _p(test: Mapping[str, Any] | None) -> str:
    if test is None or test["p"] is None:
        return "–"
    return "<0.0001" if test["p"] < 1e-4 else f"{test['p']:.4f}"


def _versus(block: Mapping[str, Any]) -> str:
    return f"{_f(block['delta_auc'])}, p {_p(block['delong'])}"


def _row(name: str, annotation: str, b: Mapping[str, Any], dice: str, vs: str) -> str:
    op = b["at_threshold"]["case"]
    sens_spec = f"{_f(op['sensitivity']['value'], 2)} / {_f(op['specificity']['value'], 2)}"
    aucs = f"{_auc_cell(b['slice'])} | {_auc_cell(b['case'])}"
    return f"| {name} | {annotation} | {aucs} | {sens_spec} | {dice} | {vs} |"


def markdown_tables(report: Mapping[str, Any]) -> str:
    """The comparison table, the weak-against-strong table and how to read them."""
    ens = report["ensemble"]
    lines = [
        "| Model | Annotation | Slice AUC [95% CI] | Case AUC [95% CI] | Case sens. / spec. at 0.5 "
        "| Saliency Dice (map / CAM) | Ensemble − model: case ΔAUC, DeLong p; slice ΔAUC, p |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        _row("Weighted ensemble", "strong (masks)", ens, _f(ens["dice"]["candidates"]["per_patient"]), "–"),
    ]
    for b in report["models"].values():
        dice = f"{_f(b['dice']['map']['per_patient'])} / {_f(b['dice']['cam']['per_patient'])}"
        vs = f"{_versus(b['vs_ensemble']['case'])}; {_versus(b['vs_ensemble']['slice'])}"
        name = TITLES.get(b["architecture"], b["architecture"])
        if not b["complete"]:
            name += f" (folds {','.join(str(f) for f in b['folds'])} of {report['folds']})"
        lines.append(_row(name, MODE_TITLES.get(b["mode"], b["mode"]), b, dice, vs))
    lines += [
        "",
        "| Architecture | Compared | Patients | Case ΔAUC (strong − weak), DeLong p | Slice ΔAUC, p "
        "| Saliency Dice, map: weak → strong |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, block in report["strong_vs_weak"].items():
        arch, mode = key.split("/")
        weak, strong = report["models"][key], report["models"][f"{arch}/strong"]
        dice = f"{_f(weak['dice']['map']['per_patient'])} → {_f(strong['dice']['map']['per_patient'])}"
        lines.append(
            f"| {TITLES.get(arch, arch)} | strong vs {MODE_TITLES.get(mode, mode)} | {block['patients']} "
            f"| {_versus(block['case'])} | {_versus(block['slice'])} | {dice} |"
        )
    shipped = ens.get("shipped")
    lines += [
        "",
        f"{report['units_done']} of {report['units_expected']} units recorded over {report['folds']} folds; "
        f"{ens['patients']} out-of-fold patients ({ens['patients_with_hemorrhage']} with hemorrhage), "
        f"{ens['slices']} slices. Case = highest slice probability; sensitivity and specificity at 0.5 (the "
        "paper's threshold; nothing chosen on patients). DeLong on cases is the paper's test; on slices it "
        "treats slices as independent (indicative only). Saliency Dice: per patient, on slices with "
        "hemorrhage, each on its model's own input grid; *map* = sigmoid of the upsampled CAM above 0.5 "
        "(what strong mode trains), *CAM* = the CAM divided by its slice maximum above 0.5; the ensemble's "
        "is its lesion candidates'.",
    ]
    if shipped:
        lines.append(
            f"The ensemble as shipped (case model, threshold chosen inside the training folds): case AUC "
            f"{_f(shipped['case_auc'])}, sensitivity {_f(shipped['sensitivity'], 2)}, specificity "
            f"{_f(shipped['specificity'], 2)}."
        )
    if report.get("same_folds_as_ensemble") is False:
        lines.append(
            "**The ensemble's records were made on other folds**: same patients, other training sets."
        )
    return "\n".join(lines)


def write_doc(doc: Path, report: Mapping[str, Any]) -> None:
    """Put the generated tables, with the command that made them, between the markers of ``doc``."""
    block = "\n".join(
        [
            BEGIN,
            f"Generated by `{report.get('command', 'ich-model baselines')}`; do not edit by hand.",
            "",
            markdown_tables(report),
            END,
        ]
    )
    text = (
        doc.read_text(encoding="utf-8") if doc.is_file() else "# Baselines: the paper's four classifiers\n\n"
    )
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")
