"""Subtype labels, shape features and base-model spreads added to a synthetic record (``training.records``).

Each hemorrhage case gets one subtype, by its position among the hemorrhage cases: one case ``subdural``
(too few to fit), one ``subarachnoid`` (too few), the others alternately ``epidural`` and
``intraparenchymal``; ``intraventricular`` never occurs. The case's true lesions are described as that kind
of bleed is (an epidural a convex lens against the bone outside the brain, an intraparenchymal a compact
blob deep inside it), with noise; false foci get shape features drawn at random. Labels follow the ground
truth: the case, the slices of its true lesion, and every lesion spanning them carry the subtype.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ich.lesion_shape import SHAPE_FEATURES
from ich.subtypes import SUBTYPES
from training.records import Records, subtype_label_column

RARE: tuple[str, ...] = ("subdural", "subarachnoid")


def subtype_of_cases(records: Records) -> dict[Any, str | None]:
    """Each case's subtype (``None`` for a normal case), as described in the module docstring."""
    out: dict[Any, str | None] = {}
    positives = [r["case"] for r in records.cases if int(r["label"]) == 1]
    for i, case in enumerate(positives):
        out[case] = RARE[i] if i < len(RARE) else ("epidural" if i % 2 == 0 else "intraparenchymal")
    return {r["case"]: out.get(r["case"]) for r in records.cases}


def _shape(kind: str | None, rng: np.random.Generator) -> dict[str, float]:
    """Shape features of a true lesion of ``kind`` (``None``: a false focus, anything)."""
    u = rng.uniform
    if kind in ("epidural", "subdural"):
        values = [u(0.5, 0.9), u(2.0, 3.5), u(1.5, 2.5), u(0.3, 0.6), u(0.8, 1.0), u(0.2, 0.6),
                  u(0.0, 1.0), u(0.9, 1.4), u(0.5, 1.2), u(0.0, 0.2)]  # fmt: skip
    elif kind in ("intraparenchymal", "subarachnoid"):
        values = [u(0.0, 0.1), u(0.0, 0.5), u(1.5, 2.5), u(0.5, 0.9), u(0.8, 1.0), u(0.0, 0.4),
                  u(6.0, 15.0), u(0.1, 0.6), u(0.0, 0.6), u(0.0, 0.2)]  # fmt: skip
    else:
        values = [u(0.0, 1.0), u(0.0, 3.0), u(0.5, 2.5), u(0.1, 1.0), u(0.3, 1.0), u(0.0, 0.9),
                  u(0.0, 10.0), u(0.0, 1.5), u(0.0, 1.5), u(0.0, 0.5)]  # fmt: skip
    return dict(zip(SHAPE_FEATURES, values, strict=True))


def with_subtypes(records: Records, seed: int = 7, spread: float = 0.05) -> Records:
    """A copy of ``records`` with the subtype columns, shape features and base-model spreads."""
    rng = np.random.default_rng(seed)
    out = copy.deepcopy(records)
    kinds = subtype_of_cases(out)
    true_slices: dict[Any, set[int]] = {}
    spans: dict[tuple[Any, int], list[int]] = {}
    for row in out.lesion_slices:
        spans.setdefault((row["case"], int(row["lesion"])), []).append(int(row["slice"]))
    for row in out.lesions:
        on = spans[(row["case"], int(row["lesion"]))]
        row.setdefault("first_slice", min(on))
        row.setdefault("last_slice", max(on))
        row.setdefault("volume_ml", float(np.expm1(row["log_volume_ml"])))
        true = int(row["is_hemorrhage"]) == 1
        row.update(_shape(kinds[row["case"]] if true else None, rng))
        row["model_spread"] = spread
        if true:
            true_slices.setdefault(row["case"], set()).update(
                range(row["first_slice"], row["last_slice"] + 1)
            )
    for row in out.slices:
        kind = kinds[row["case"]]
        on = int(row["slice"]) in true_slices.get(row["case"], set())
        row.update({subtype_label_column(s): int(on and s == kind) for s in SUBTYPES})
    for row in out.cases:
        row.update({subtype_label_column(s): int(s == kinds[row["case"]]) for s in SUBTYPES})
        row["slice_spread"] = spread
    for row in out.lesions:
        covered = set(range(int(row["first_slice"]), int(row["last_slice"]) + 1))
        on = bool(covered & true_slices.get(row["case"], set()))
        row.update({subtype_label_column(s): int(on and s == kinds[row["case"]]) for s in SUBTYPES})
    return out
