"""Out of fold: would a slice classifier beside the ensemble rank the cases better?

Why: the baselines' classifiers reach about the ensemble's case AUC with other errors, so a case score
combining both might beat either. This reads the committed records only (the ensemble's calibrated case
probabilities, training/cv/default/report.json, and each classifier unit's out-of-fold slice
probabilities, training/baselines/cpu/), fits a logistic regression of the two logits on the other folds'
cases for each fold, and prints the out-of-fold case AUC of the combination beside each part alone and
their correlation. Nothing is shipped from it.

    .venv/bin/python -m bench.stack_classifier_oof
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from scipy.special import logit
from sklearn.linear_model import LogisticRegression

from training.metrics import roc_auc


def classifier_case_scores(unit: Path) -> dict[str, float]:
    """Each case's highest slice probability over a unit's fold records (the paper's case rule)."""
    best: dict[str, float] = {}
    for path in sorted(unit.glob("fold_*.csv")):
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                best[row["case"]] = max(best.get(row["case"], 0.0), float(row["prob"]))
    return best


def stacked_oof(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each fold's cases scored by a logistic regression fitted on the other folds' cases."""
    out = np.zeros(len(y))
    for k in np.unique(folds):
        held = folds == k
        out[held] = LogisticRegression().fit(x[~held], y[~held]).predict_proba(x[held])[:, 1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", type=Path, default=Path("training/cv/default/report.json"))
    parser.add_argument("--baselines", type=Path, default=Path("training/baselines/cpu"))
    args = parser.parse_args()
    cases = sorted(json.loads(args.record.read_text())["cases"], key=lambda c: c["case"])
    y = np.array([c["label"] for c in cases])
    folds = np.array([c["fold"] for c in cases])
    ensemble = logit(np.clip([c["probability"] for c in cases], 1e-6, 1 - 1e-6))
    result: dict[str, object] = {"ensemble": round(roc_auc(y, ensemble), 3)}
    for unit in sorted(p for p in args.baselines.glob("*/*") if p.is_dir()):
        scores = classifier_case_scores(unit)
        other = logit(np.clip([scores[c["case"]] for c in cases], 1e-6, 1 - 1e-6))
        result[f"{unit.parent.name}/{unit.name}"] = {
            "alone": round(roc_auc(y, other), 3),
            "stacked": round(roc_auc(y, stacked_oof(np.c_[ensemble, other], y, folds)), 3),
            "correlation": round(float(np.corrcoef(ensemble, other)[0, 1]), 2),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
