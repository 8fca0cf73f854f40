"""Out of fold: the subtype model's own classification head, as the fold weights keep it.

Why: ``ich_unet_subtype``'s encoder is pre-trained as a five-subtype slice classifier and then fine-tuned
for segmentation; the head is dropped at export. Before exporting it (issue 21 item 1), this measures it
on each fold's held-out patients (runs/cv-default/fold_k/subtype, the pre-trained head over the
fine-tuned encoder): per subtype, slice AUC and case AUC (case = the highest slice probability) with patient
bootstrap intervals and the counts they rest on, beside the lesion-shape subtypes of the committed record
(training/cv/default/report.json). Nothing is chosen or fitted here.

    .venv/bin/python -m bench.subtype_head_oof --run-dir runs/cv-default
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from training.cv import OOF_FILE, run_cache
from training.data.ct_ich import SUBTYPES as CSV_SUBTYPES
from training.metrics import bootstrap_auc_ci, roc_auc
from training.networks import InceptionUNet, load_checkpoint

#: the report's subtype names, and the CSV column each is read from
NAMES = {
    "epidural": "Epidural",
    "subdural": "Subdural",
    "subarachnoid": "Subarachnoid",
    "intraparenchymal": "Intraparenchymal",
    "intraventricular": "Intraventricular",
}


@torch.no_grad()
def head_probabilities(fold: Path, images: np.ndarray, batch: int) -> np.ndarray:
    """[N, 5] sigmoid of the subtype model's head on ``images``, in the CSV's subtype order."""
    model = load_checkpoint(fold / "subtype" / "best.pt").eval()
    if not isinstance(model, InceptionUNet):
        raise TypeError(f"{fold / 'subtype'} does not hold a base model")
    out = [
        torch.sigmoid(model.classify(torch.from_numpy(images[i : i + batch].astype(np.float32))))
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out).numpy()


def _auc(y: np.ndarray, s: np.ndarray, groups: np.ndarray | None) -> dict[str, object]:
    ci = bootstrap_auc_ci(y, s, groups, n_boot=1000)
    return {
        "n": len(y),
        "n_positive": int(y.sum()),
        "auc": round(roc_auc(y, s), 4),
        "auc_ci": [round(ci.low, 4), round(ci.high, 4)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/cv-default"))
    parser.add_argument("--record", type=Path, default=Path("training/cv/default/report.json"))
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cache = run_cache(args.run_dir, args.size)
    rows, probs = [], []
    for fold in sorted(args.run_dir.glob("fold_*")):
        r = np.load(fold / OOF_FILE)["rows"]
        rows.append(r)
        probs.append(head_probabilities(fold, cache.images[r], args.batch))
    r, p = np.concatenate(rows), np.concatenate(probs)
    pids, labels = cache.table.pids[r], cache.table.subtypes[r] > 0
    cases = sorted(set(pids.tolist()))
    shape = json.loads(args.record.read_text())["subtypes"]
    result = {}
    for name, column in NAMES.items():
        j = CSV_SUBTYPES.index(column)
        case_y = np.array([labels[pids == c, j].any() for c in cases], dtype=int)
        case_s = np.array([p[pids == c, j].max() for c in cases])
        result[name] = {
            "head_slice": _auc(labels[:, j].astype(int), p[:, j], pids),
            "head_case": _auc(case_y, case_s, None),
            "shape_case": shape[name].get("case"),
            "shape_slice": shape[name].get("slice"),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
