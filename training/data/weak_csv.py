"""Reader for weak (slice-level) annotation in a CSV, RSNA style.

Accepted forms (header names are case-insensitive):

- long, RSNA's ``stage_2_train.csv``: ``ID,Label`` with ``ID = <SOPInstanceUID>_<subtype>`` and subtypes
  ``any, epidural, intraparenchymal, intraventricular, subarachnoid, subdural``;
- wide: ``SOPInstanceUID`` (or ``ID``) plus one 0/1 column per subtype and/or ``any``.

The result maps each SOP Instance UID to a :class:`SliceLabels`; slices are matched to a DICOM series by
their UID. Weak labels can train the classifier part (``subtype`` pre-training) or evaluate slice-level
figures; they give no masks.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

#: Subtype names in the order of ``training.data.ct_ich.SUBTYPES``.
SUBTYPE_KEYS: tuple[str, ...] = (
    "intraventricular",
    "intraparenchymal",
    "subarachnoid",
    "epidural",
    "subdural",
)


@dataclass(frozen=True)
class SliceLabels:
    """Slice-level labels: any hemorrhage, and the five subtypes (CT-ICH order)."""

    any: int
    subtypes: tuple[int, ...]


def read_weak_labels(path: Path) -> dict[str, SliceLabels]:
    """Read a slice-label CSV (long RSNA form or wide form) into {SOPInstanceUID: SliceLabels}.

    Raises:
        ValueError: unknown layout, a bad value, or an unknown subtype.
    """
    with Path(path).open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {f.lower().strip(): f for f in reader.fieldnames or []}
        rows = list(reader)
    raw: dict[str, dict[str, int]] = {}
    if set(fields) >= {"id", "label"} and len(fields) == 2:
        for line, row in enumerate(rows, start=2):
            ident = row[fields["id"]].strip()
            uid, sep, subtype = ident.rpartition("_")
            subtype = subtype.lower()
            if not sep or subtype not in (*SUBTYPE_KEYS, "any"):
                raise ValueError(f"line {line}: ID {ident!r} is not <SOPInstanceUID>_<subtype>")
            raw.setdefault(uid, {})[subtype] = _flag(row[fields["label"]], line)
    else:
        key = fields.get("sopinstanceuid") or fields.get("id")
        if key is None or not ({*SUBTYPE_KEYS, "any"} & set(fields)):
            raise ValueError(f"unknown slice-label CSV layout; columns: {sorted(fields)}")
        for line, row in enumerate(rows, start=2):
            uid = row[key].strip()
            raw[uid] = {k: _flag(row[fields[k]], line) for k in (*SUBTYPE_KEYS, "any") if k in fields}
    out = {}
    for uid, labels in raw.items():
        subs = tuple(labels.get(k, 0) for k in SUBTYPE_KEYS)
        out[uid] = SliceLabels(any=int(labels.get("any", int(any(subs))) or any(subs)), subtypes=subs)
    return out


def _flag(value: str, line: int) -> int:
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"line {line}: label {text!r} is not 0/1") from None
    if number not in (0.0, 1.0):
        raise ValueError(f"line {line}: label {text!r} is not 0/1")
    return int(number)
