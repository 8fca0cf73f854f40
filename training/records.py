"""Per-case prediction records: what cross-validation and evaluation keep of each case, as small CSV tables.

A record holds everything the figures need and no image: per slice its label, the ensemble's and each base
model's slice probability and Dice counts; per lesion candidate (``ich.scoring``) its features and how many
of its voxels are hemorrhage in the ground truth; per lesion and slice its voxels and true voxels, so that
the Dice of any choice of kept lesions can be recounted without the maps. The out-of-fold records of
``ich-model cv`` are committed (``training/cv/<run>/``): the model card and the case model are made from them.

Tables (one row per ...): ``cases.csv`` (case), ``slices.csv`` (slice), ``lesions.csv`` (lesion candidate),
``lesion_slices.csv`` (lesion x slice it touches). With the data's subtype labels, cases, slices and lesions
carry ``label_<subtype>`` (a lesion: any slice it spans carries it); lesions carry their shape features
(``ich.lesion_shape``) and the base models' spread on them, cases the spread on their top slice, so that
the subtype model and the uncertainty score are fitted and measured from the records alone.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ich import spec
from ich.scoring import (
    FEATURES,
    Lesion,
    candidate_mask,
    find_lesions,
    lesion_features,
    opened_map,
    slice_spread,
)
from ich.subtypes import SUBTYPES

TABLES: tuple[str, ...] = ("cases", "slices", "lesions", "lesion_slices")


@dataclass
class Records:
    """Rows of the four tables, each a dict of column -> value."""

    cases: list[dict[str, Any]] = field(default_factory=list)
    slices: list[dict[str, Any]] = field(default_factory=list)
    lesions: list[dict[str, Any]] = field(default_factory=list)
    lesion_slices: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: Records) -> None:
        for name in TABLES:
            getattr(self, name).extend(getattr(other, name))

    def of_fold(self, fold: int) -> Records:
        """The rows of one cross-validation fold (a table without a fold column goes by its cases)."""
        cases = {r["case"] for r in self.cases if r["fold"] == fold}
        return Records(**{name: [r for r in getattr(self, name) if r["case"] in cases] for name in TABLES})

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in TABLES:
            _write_csv(folder / f"{name}.csv", getattr(self, name))

    @classmethod
    def read(cls, folder: Path) -> Records:
        return cls(**{name: _read_csv(folder / f"{name}.csv") for name in TABLES})


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns = list(rows[0]) if rows else []
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    tmp.replace(path)


def _cell(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


#: Columns read back as text: a case id is a name ("049", "1e5"), not a number.
_TEXT_COLUMNS: frozenset[str] = frozenset({"case"})


def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file() or path.stat().st_size == 0:
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v if k in _TEXT_COLUMNS else _parse(v) for k, v in row.items()} for row in rows]


def _parse(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def opened_slice_max(maps: np.ndarray, opening: int) -> np.ndarray:
    """``[N, S, S]`` maps -> ``[N]`` slice probability after the weight model's grey opening (as exported)."""
    arr = opened_map(maps, opening)
    return arr.reshape(len(arr), -1).max(axis=1)


def _dice_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(pred)
    return (pred & truth).reshape(n, -1).sum(axis=1), pred.reshape(n, -1).sum(axis=1)


@dataclass(frozen=True)
class CasePrediction:
    """One case's model outputs and truth on the model grid."""

    case_id: str
    fold: int
    fused: np.ndarray  # [N, S, S]
    probs: np.ndarray  # [N, 5, S, S]
    slice_prob: np.ndarray  # [N]
    images: np.ndarray  # [N, 4, S, S]
    truth: np.ndarray  # [N, S, S] bool
    slice_labels: np.ndarray  # [N] 0/1
    pixel_mm: tuple[float, float]  # model grid
    voxel_ml: float  # model grid
    opening: int  # the weight model's opening, for each base model's slice probability
    #: [N, 5] each base model's slice probability when the caller has it from the exported graph.
    model_slice_prob: np.ndarray | None = None
    #: [N, 5] 0/1 subtype labels of each slice in ``ich.subtypes.SUBTYPES`` order, when the data has them.
    slice_subtypes: np.ndarray | None = None


def case_records(p: CasePrediction) -> Records:
    """The four tables' rows of one case (lesions from :mod:`ich.scoring`)."""
    fused = np.asarray(p.fused, dtype=np.float32)
    labels, count = find_lesions(candidate_mask(fused))
    lesions = lesion_features(labels, count, fused, p.probs, p.images, p.pixel_mm, p.voxel_ml, p.opening)
    out = Records()
    out.cases.append(_case_row(p))
    out.slices.extend(_slice_rows(p))
    for lesion in lesions:
        out.lesions.append(_lesion_row(p, lesion, labels))
        out.lesion_slices.extend(_lesion_slice_rows(p, lesion, labels))
    return out


def subtypes_from_ct_ich(subtypes: np.ndarray, slice_labels: np.ndarray) -> np.ndarray | None:
    """``[N, 5]`` subtype labels in ``training.data.ct_ich.SUBTYPES`` order, in ``ich.subtypes.SUBTYPES``'.

    ``None`` (unknown) when a case with hemorrhage carries no subtype label at all: readers without subtype
    labels (DICOM studies with masks) give zeros, which would otherwise read as "none of the five".
    """
    from training.data.ct_ich import SUBTYPES as CT_ICH_SUBTYPES

    arr = np.asarray(subtypes)
    if np.asarray(slice_labels).max(initial=0) > 0 and not arr.any():
        return None
    return arr[:, [CT_ICH_SUBTYPES.index(s.capitalize()) for s in SUBTYPES]]


def subtype_label_column(subtype: str) -> str:
    """The column holding a row's 0/1 label of ``subtype`` (cases, slices and lesions alike)."""
    return f"label_{subtype}"


def _subtype_labels(p: CasePrediction, first: int, last: int) -> dict[str, int]:
    """``label_<subtype>`` of slices ``first..last``: 1 when any of them carries it; none without labels."""
    if p.slice_subtypes is None:
        return {}
    spanned = np.asarray(p.slice_subtypes)[first : last + 1]
    return {subtype_label_column(s): int(spanned[:, j].max() > 0) for j, s in enumerate(SUBTYPES)}


def _case_row(p: CasePrediction) -> dict[str, Any]:
    return {
        "case": p.case_id,
        "fold": p.fold,
        "label": int(np.asarray(p.slice_labels).max()),
        "slices": len(p.slice_prob),
        "max_slice_probability": float(np.max(p.slice_prob)),
        "truth_voxels": int(p.truth.sum()),
        "voxel_ml": p.voxel_ml,
        "slice_spread": slice_spread(p.probs, p.slice_prob),
        **_subtype_labels(p, 0, len(p.slice_prob) - 1),
    }


def _slice_rows(p: CasePrediction) -> list[dict[str, Any]]:
    truth = np.asarray(p.truth, dtype=bool)
    ens_inter, ens_pred = _dice_counts(candidate_mask(p.fused), truth)
    per_model = {}
    for j, key in enumerate(spec.MODEL_KEYS):
        maps = np.asarray(p.probs[:, j], dtype=np.float32)
        inter, pred = _dice_counts(maps > spec.MASK_THRESHOLD, truth)
        alone = opened_slice_max(maps, p.opening) if p.model_slice_prob is None else p.model_slice_prob[:, j]
        per_model[key] = (alone, inter, pred)
    rows = []
    for i in range(len(p.slice_prob)):
        row: dict[str, Any] = {
            "case": p.case_id,
            "fold": p.fold,
            "slice": i,
            "label": int(p.slice_labels[i]),
            "truth_voxels": int(truth[i].sum()),
            "slice_prob": float(p.slice_prob[i]),
            "candidate_inter": int(ens_inter[i]),
            "candidate_voxels": int(ens_pred[i]),
            **_subtype_labels(p, i, i),
        }
        for key, (sp, inter, pred) in per_model.items():
            row.update(
                {f"prob_{key}": float(sp[i]), f"inter_{key}": int(inter[i]), f"voxels_{key}": int(pred[i])}
            )
        rows.append(row)
    return rows


def _lesion_row(p: CasePrediction, lesion: Lesion, labels: np.ndarray) -> dict[str, Any]:
    overlap = int(np.count_nonzero((labels == lesion.label) & p.truth))
    features = dict(zip(FEATURES, lesion.feature_vector().tolist(), strict=True))
    return {
        "case": p.case_id,
        "fold": p.fold,
        "lesion": lesion.label,
        "voxels": lesion.voxels,
        "volume_ml": lesion.volume_ml,
        "first_slice": lesion.first_slice,
        "last_slice": lesion.last_slice,
        "truth_overlap": overlap,
        "is_hemorrhage": int(overlap > 0),
        "opened_peak": lesion.opened_peak,
        **features,
        "model_spread": lesion.model_spread,
        **dict(lesion.shape),
        **_subtype_labels(p, lesion.first_slice, lesion.last_slice),
    }


def _lesion_slice_rows(p: CasePrediction, lesion: Lesion, labels: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for z in range(lesion.first_slice, lesion.last_slice + 1):
        mine = labels[z] == lesion.label
        rows.append(
            {
                "case": p.case_id,
                "lesion": lesion.label,
                "slice": z,
                "voxels": int(mine.sum()),
                "inter": int((mine & p.truth[z]).sum()),
            }
        )
    return rows


def group(rows: Iterable[Mapping[str, Any]], key: str = "case") -> dict[Any, list[Mapping[str, Any]]]:
    """Rows grouped by ``key``, in first-seen order."""
    out: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(row[key], []).append(row)
    return out
