"""Small, valid CT series zipped in memory, for gateway tests (no real patient data).

The files come from ``ich_devtools.dicom_writer`` (unsigned storage with RescaleIntercept -1024, so a reader
that forgets the rescale is off by 1024 HU). On top of the writer's output this module sets what the gateway
tests rely on: a recognisable synthetic patient (``Test^Synthetic`` / ``SYNTH-0001``, which tests look for in
the logs to prove that no patient data reaches them) and, with ``shuffle``, files written in a random order
with InstanceNumber counting backwards, so only a reader that sorts along the slice normal gets the spatial
order back.
"""

from __future__ import annotations

import numpy as np

from ich_devtools.dicom_writer import dataset_bytes, series_datasets, zip_members

#: Synthetic patient written into every file; tests check that neither value ever reaches a log line.
PATIENT_NAME = "Test^Synthetic"
PATIENT_ID = "SYNTH-0001"


def blob_volume(n: int = 4, blob_slice: int | None = 2, background: float = 30.0) -> np.ndarray:
    """``n`` 64 x 64 slices of ``background`` HU (brain); a 16 x 16 patch of 70 HU blood on ``blob_slice``."""
    hu = np.full((n, 64, 64), background, np.float32)
    if blob_slice is not None:
        hu[blob_slice, 24:40, 24:40] = 70.0
    return hu


def study_zip(
    hu: np.ndarray,
    *,
    spacing: tuple[float, float] = (0.5, 0.5),
    thickness: float = 5.0,
    shuffle: bool = False,
    seed: int = 0,
) -> tuple[bytes, list[str]]:
    """Zip a ``[N, H, W]`` HU volume as a CT series; returns the bytes and the SOP UIDs in spatial order."""
    datasets = series_datasets(
        hu,
        pixel_spacing_mm=spacing,
        slice_thickness_mm=thickness,
        origin_mm=(-16.0, -16.0, 0.0),
        series_number=2,
    )
    n = len(datasets)
    for i, ds in enumerate(datasets):
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        if shuffle:
            ds.InstanceNumber = n - i
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    members = {
        f"study/series2/IM{position:04d}.dcm": dataset_bytes(datasets[i]) for position, i in enumerate(order)
    }
    return zip_members(members), uids
