"""Make the example study: one CT-ICH patient as a zipped CT DICOM series.

    python examples/make_example_study.py --data PATH/TO/ct-ich --patient 097 --out examples/ct_ich_study.zip

The patient's slices are read with the training reader (``training.data.ct_ich``: HU recovered from the brain
and bone JPEG windows, integer HU, pixel spacing estimated from the skull), resampled from 650 x 650 to 512 x
512 (the usual CT matrix; bilinear, rounded back to integer HU) with the pixel spacing scaled to match, and
written with ``ich_devtools.dicom_writer`` as CT Image Storage files (uncompressed, unsigned 16-bit with
RescaleIntercept -1024, 5 mm slices), zipped. UIDs derive from the patient number, so the same data gives the
same files. The patient is "ANONYMOUS": CT-ICH holds no names and none is ever written.

The result derives from CT-ICH (Hssayeni et al., Data 2020; PhysioNet, CC BY 4.0): see examples/NOTICE.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy import ndimage

from ich_devtools.dicom_writer import dataset_bytes, series_datasets, zip_members

logger = logging.getLogger("make_example_study")

ATTRIBUTION = (
    "Derived from CT-ICH v1.0.0 (Hssayeni et al., Data 2020, 5(1):14; PhysioNet), CC BY 4.0: "
    "HU recovered from windowed JPEGs, resampled to 512x512"
)


def resample(hu: np.ndarray, size: int) -> np.ndarray:
    """[N, H, W] HU -> [N, size, size] integer HU (bilinear; pixel edges aligned, as ``grid_mode`` does)."""
    _, h, w = hu.shape
    out = ndimage.zoom(
        hu.astype(np.float32), (1.0, size / h, size / w), order=1, mode="nearest", grid_mode=True
    )
    return np.rint(out[:, :size, :size]).astype(np.float32)


def build(data_root: Path, patient_id: str, size: int) -> tuple[bytes, dict[str, float]]:
    """The zipped series and a few facts about it (slices, spacing, slices with hemorrhage)."""
    from training.data import ct_ich

    labels = ct_ich.read_labels(data_root / "hemorrhage_diagnosis.csv")
    patient = ct_ich.read_patient(data_root, patient_id, labels.get(patient_id))
    n, h, w = patient.hu.shape
    hu = resample(patient.hu, size)
    spacing = (patient.pixel_spacing_mm * h / size, patient.pixel_spacing_mm * w / size)
    datasets = series_datasets(
        hu,
        pixel_spacing_mm=spacing,
        slice_thickness_mm=patient.slice_thickness_mm,
        series_description="Head CT (CT-ICH example, derived)",
        image_type=("DERIVED", "SECONDARY", "AXIAL"),
        uid_seed=f"ich-ensemble example study CT-ICH {patient_id}",
        acquired=datetime(2018, 1, 1, 12, 0, 0, tzinfo=UTC),
        series_number=2,
    )
    for ds in datasets:
        ds.StudyDescription = "Example head CT for ich-ensemble (not for clinical use)"
        ds.ImageComments = ATTRIBUTION
        ds.DerivationDescription = ATTRIBUTION
    archive = zip_members(
        {f"ct_ich_{patient_id}/CT{i + 1:04d}.dcm": dataset_bytes(ds) for i, ds in enumerate(datasets)}
    )
    facts = {
        "slices": float(n),
        "slices_with_hemorrhage": float(int(patient.masks.reshape(n, -1).any(axis=1).sum())),
        "pixel_spacing_mm": float(spacing[0]),
        "lesion_volume_ml": float(patient.lesion_volume_ml),
    }
    return archive, facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a CT-ICH folder (Patients_CT/, CSVs)")
    parser.add_argument("--patient", default="097", help="patient number, e.g. 097")
    parser.add_argument("--out", type=Path, default=Path("examples/ct_ich_study.zip"))
    parser.add_argument("--size", type=int, default=512, help="matrix of the written slices")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    archive, facts = build(args.data, args.patient, args.size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(archive)
    logger.info("wrote %s (%d bytes): %s", args.out, len(archive), facts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
