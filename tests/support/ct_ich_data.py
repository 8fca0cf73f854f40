"""Synthetic CT-ICH folders made from the committed fixture's two patients (049, 081), for tests that need
more patients, normal ones among them.

A copy of a hemorrhage patient keeps its masks; a "normal" copy loses its ``*_HGE_Seg.jpg`` masks. The CSV
is written from the masks: a slice with a mask carries the given subtypes, any other ``No_Hemorrhage = 1``.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from training.data.ct_ich import SUBTYPES

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ct_ich"
CSV_COLUMNS = ("PatientNumber", "SliceNumber", *SUBTYPES, "No_Hemorrhage", "Fracture_Yes_No")


def synthetic_ct_ich(
    dest: Path,
    patients: Mapping[str, tuple[str, bool]],
    subtypes: Sequence[str] = ("Subdural", "Subarachnoid"),
) -> Path:
    """Write ``dest`` (``Patients_CT/`` and ``hemorrhage_diagnosis.csv``) and return it.

    Args:
        patients: new patient id -> (fixture patient it copies, whether it keeps its hemorrhage).
        subtypes: the subtype columns set on slices with a mask.
    """
    rows = []
    for pid, (source, hemorrhage) in patients.items():
        pdir = dest / "Patients_CT" / pid
        shutil.copytree(FIXTURE / "Patients_CT" / source, pdir)
        if source == "081" and pid != "081":
            # 081's bone images run one ahead and only "081" is corrected; its extra bone image would name a
            # slice without a brain image under another number
            (pdir / "bone" / "15.jpg").unlink()
        if not hemorrhage:
            for mask in (pdir / "brain").glob("*_HGE_Seg.jpg"):
                mask.unlink()
        numbers = sorted(int(p.stem) for p in (pdir / "brain").glob("*.jpg") if p.stem.isdigit())
        for n in numbers:
            bleed = (pdir / "brain" / f"{n}_HGE_Seg.jpg").exists()
            row = {"PatientNumber": int(pid), "SliceNumber": n, "No_Hemorrhage": int(not bleed)}
            row["Fracture_Yes_No"] = 0
            row.update({s: int(bleed and s in subtypes) for s in SUBTYPES})
            rows.append(row)
    with (dest / "hemorrhage_diagnosis.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return dest
