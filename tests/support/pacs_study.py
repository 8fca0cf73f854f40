"""Synthetic CT studies as separate DICOM files, the way a PACS or a scanner sends them (no real patient).

A study of ``slices`` 64 x 64 slices at 30 HU, with a 72 HU blob on two slices: the fake engine
(``tests.support.fake_engine``) scores the blob 0.95, so the study is positive with a lesion, a SEG and a
key image; ``blob=False`` gives a negative study. The patient is the one ``tests.support.dicom_study``
uses, which tests look for in logs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from ich_devtools.dicom_writer import dataset_bytes, series_datasets
from tests.support.dicom_study import PATIENT_ID, PATIENT_NAME


@dataclass(frozen=True)
class PacsStudy:
    """The datasets of one study and their files."""

    datasets: list[Dataset]
    files: list[bytes]

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].FrameOfReferenceUID)


def pacs_study(
    *, slices: int = 6, blob: bool = True, transfer_syntax: str = ExplicitVRLittleEndian, size: int = 64
) -> PacsStudy:
    """A synthetic head CT study, one file per slice."""
    hu = np.full((slices, size, size), 30.0, np.float32)
    if blob:
        hu[slices // 2 - 1 : slices // 2 + 1, size // 3 : size // 2, size // 3 : size // 2] = 72.0
    datasets = series_datasets(
        hu,
        pixel_spacing_mm=(0.5, 0.5),
        slice_thickness_mm=5.0,
        series_number=2,
        transfer_syntax=transfer_syntax,
    )
    for ds in datasets:
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.AccessionNumber = "ACC-SYNTH-1"
    return PacsStudy(datasets, [dataset_bytes(ds) for ds in datasets])


def stow_body(files: list[bytes]) -> tuple[bytes, str]:
    """A STOW-RS body (``multipart/related; type="application/dicom"``) and its Content-Type."""
    boundary = uuid.uuid4().hex.encode()
    parts = [
        b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n" for data in files
    ]
    body = b"".join(parts) + b"--" + boundary + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary.decode()}'
