"""The five training selections of the weighted ensemble and the patient-wise split.

Each base model sees its own positives, balanced at training time with as many normal slices (drawn from
every training patient's normal slices):
- ``all``: every slice with hemorrhage;
- ``subtype``: every slice with hemorrhage (its encoder is first trained as a 5-label subtype classifier);
- ``sdh`` / ``sah``: slices labelled subdural / subarachnoid;
- ``small``: slices of patients whose total lesion volume is 5 mL or less.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.ct_ich import SUBTYPES

SELECTIONS: tuple[str, ...] = ("all", "subtype", "sdh", "sah", "small")
SMALL_LESION_ML: float = 5.0


@dataclass(frozen=True)
class SliceTable:
    """Per-slice metadata for the whole data set (index i = row i of the image cache)."""

    pids: np.ndarray  # [M] str, patient id of each slice
    subtypes: np.ndarray  # [M, 5] int, SUBTYPES order
    positive: np.ndarray  # [M] bool, slice has hemorrhage (labels or mask)
    mask_pixels: np.ndarray  # [M] int, mask pixels at model size
    patient_volume_ml: dict[str, float]


def selection_indices(
    table: SliceTable, name: str, train_pids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(positive indices, negative indices) of one selection, restricted to training patients.

    Positives must have a non-empty mask at model size (segmentation needs a target); negatives are all
    normal slices of training patients.
    """
    in_train = np.isin(table.pids, np.asarray(list(train_pids)))
    has_mask = table.mask_pixels > 0
    negatives = np.flatnonzero(in_train & ~table.positive)
    base = in_train & has_mask
    if name in ("all", "subtype"):
        pos = base
    elif name == "sdh":
        pos = base & (table.subtypes[:, SUBTYPES.index("Subdural")] > 0)
    elif name == "sah":
        pos = base & (table.subtypes[:, SUBTYPES.index("Subarachnoid")] > 0)
    elif name == "small":
        small = {p for p, v in table.patient_volume_ml.items() if 0 < v <= SMALL_LESION_ML}
        pos = base & np.isin(table.pids, np.asarray(sorted(small) or [""]))
    else:
        raise ValueError(f"unknown selection {name!r}; expected one of {SELECTIONS}")
    positives = np.flatnonzero(pos)
    if positives.size == 0:
        raise ValueError(f"selection {name!r} has no positive training slices")
    return positives, negatives


def patient_split(table: SliceTable, n_val: int, seed: int) -> dict[str, list[str]]:
    """Seeded patient-wise split; validation gets hemorrhage patients of several subtypes.

    Rare subtypes (subdural, subarachnoid, intraventricular, epidural) each get one validation patient when at
    least two patients have it, so that the rest stays for training; then hemorrhage and normal patients are
    added in their overall proportion until ``n_val`` patients are reached, preferring hemorrhage patients
    without a rare subtype (so that at most one patient of each rare subtype is held out).
    """
    rng = np.random.default_rng(seed)
    pids = sorted(set(table.pids.tolist()))
    per_patient_sub = {p: table.subtypes[table.pids == p].max(axis=0) for p in pids}
    positive = sorted(p for p in pids if table.positive[table.pids == p].any())
    negative = sorted(set(pids) - set(positive))
    val: list[str] = []
    for name in ("Subdural", "Subarachnoid", "Intraventricular", "Epidural"):
        k = SUBTYPES.index(name)
        having = [p for p in positive if per_patient_sub[p][k] > 0]
        if len(having) >= 2 and not any(p in val for p in having):
            # prefer patients with the fewest subtypes, so one pick does not hold out several rare ones
            fewest = min(int(per_patient_sub[p].sum()) for p in having)
            val.append(str(rng.choice([p for p in having if int(per_patient_sub[p].sum()) == fewest])))
    n_pos = round(n_val * len(positive) / len(pids))
    rare = [SUBTYPES.index(n) for n in ("Subdural", "Subarachnoid", "Intraventricular")]
    rest_pos = [p for p in positive if p not in val]
    rng.shuffle(rest_pos)
    # Fill with patients that carry no rare subtype first, so rare subtypes stay mostly in training.
    rest_pos.sort(key=lambda p: bool(per_patient_sub[p][rare].any()))
    val += rest_pos[: max(0, n_pos - len(val))]
    rest_neg = list(negative)
    rng.shuffle(rest_neg)
    val += rest_neg[: max(0, n_val - len(val))]
    val = sorted(val)
    return {"seed": seed, "val": val, "train": sorted(set(pids) - set(val))}  # type: ignore[dict-item]


def load_or_make_split(path: Path | None, table: SliceTable, n_val: int, seed: int) -> dict[str, list[str]]:
    """Use the split file when it exists and matches the data; else make one (and write it if absent)."""
    pids = set(table.pids.tolist())
    if path is not None and path.exists():
        split = json.loads(path.read_text())
        if set(split["val"]) <= pids and set(split["train"]) <= pids:
            return {"val": list(split["val"]), "train": sorted(pids - set(split["val"]))}
    split = patient_split(table, n_val, seed)
    if path is not None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(split, indent=1) + "\n")
    return split

