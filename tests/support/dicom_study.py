"""Small, valid CT series zipped in memory, for gateway tests (no real patient data).

Stored values are unsigned with RescaleIntercept -1024, so a reader that forgets the rescale is off by
1024 HU. ``shuffle`` writes the files in a random order with InstanceNumber counting backwards, so only a
reader that sorts along the slice normal gets the spatial order back.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_slice(
    hu: np.ndarray,
    *,
    z_mm: float,
    instance_number: int,
    series_uid: str,
    study_uid: str,
    frame_uid: str,
    spacing: tuple[float, float],
    thickness: float,
) -> Dataset:
    """One CT Image Storage dataset holding ``hu`` (rows x columns) at height ``z_mm``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = "CT"
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYNTH-0001"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesNumber = 2
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [-16.0, -16.0, float(z_mm)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = float(thickness)
    ds.Rows, ds.Columns = (int(v) for v in hu.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = np.clip(np.round(hu + 1024), 0, 65535).astype("<u2").tobytes()
    return ds


def study_zip(
    hu: np.ndarray,
    *,
    spacing: tuple[float, float] = (0.5, 0.5),
    thickness: float = 5.0,
    shuffle: bool = False,
    seed: int = 0,
) -> tuple[bytes, list[str]]:
    """Zip a ``[N, H, W]`` HU volume as a CT series; returns the bytes and the SOP UIDs in spatial order."""
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    n = hu.shape[0]
    datasets = [
        ct_slice(
            hu[i],
            z_mm=i * thickness,
            instance_number=(n - i) if shuffle else i + 1,
            series_uid=series_uid,
            study_uid=study_uid,
            frame_uid=frame_uid,
            spacing=spacing,
            thickness=thickness,
        )
        for i in range(n)
    ]
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for position, i in enumerate(order):
            out = io.BytesIO()
            datasets[i].save_as(out, enforce_file_format=True)
            archive.writestr(f"study/series2/IM{position:04d}.dcm", out.getvalue())
    return buffer.getvalue(), uids
