"""A job's results as DICOM objects, from one place: the SEG, the SR and the key image, with derived UIDs.

Every finished job gets them (``GET /v1/studies/{id}/seg``, ``/sr``, ``/key-images``; the DICOM node sends
them to the PACS): all in the source study, each in its own series, with series and instance UIDs derived
from the job id (``ich.dicom_uids``), so a second attempt or a second delivery replaces rather than adds.

- ``seg``: the kept-lesion mask (``ich.seg``); none when no voxel was kept.
- ``sr``: the TID 1500 report (``ich.sr``), always (a negative finding is a finding); it references the SEG.
- ``key-images``: the Secondary Capture of the most certain lesion slice (``ich.key_image``); none without a
  lesion.

An object the series' headers cannot carry (say, no Frame of Reference for the SEG) is left out with a note
for the result's warnings; the others are still built, and the analysis stands.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from ich.dicom_uids import derived_uid
from ich.key_image import build_key_image, key_image_lines
from ich.overlay import top_slice_indices
from ich.seg import build_segmentation
from ich.sr import ReportValues, build_measurement_report

__all__ = ["OUTPUT_KINDS", "DicomOutputs", "build_dicom_outputs", "encode"]

#: The kinds of DICOM output, as the routes (``/v1/studies/{id}/<kind>``) and the store name them.
OUTPUT_KINDS: tuple[str, ...] = ("seg", "sr", "key-images")


def encode(dataset: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class DicomOutputs:
    """The DICOM objects of one analysis; None where there is none, and why in ``notes`` when unexpected."""

    seg: Dataset | None
    sr: Dataset | None
    key_image: Dataset | None
    notes: tuple[str, ...] = ()

    def encoded(self) -> dict[str, bytes]:
        """Each object as a Part 10 file, by kind (``OUTPUT_KINDS``)."""
        objects = {"seg": self.seg, "sr": self.sr, "key-images": self.key_image}
        return {kind: encode(ds) for kind, ds in objects.items() if ds is not None}


def build_dicom_outputs(
    source_headers: Sequence[Dataset],
    hu: np.ndarray,
    mask: np.ndarray,
    slice_prob: np.ndarray,
    values: ReportValues,
    *,
    job_id: str,
    model_version: str,
) -> DicomOutputs:
    """Build a job's SEG, SR and key image.

    Args:
        source_headers: the analysed slices' headers, in volume order (``Study.source_headers``); empty when
            the series has no unique SOP Instance UIDs, and then nothing can be built.
        hu: ``[N, H, W]`` Hounsfield units of the volume.
        mask: ``[N, H, W]`` bool kept-lesion mask at the source matrix (``CaseFindings.source_mask``).
        slice_prob: ``[N]`` slice probabilities (``EnsembleOutput.slice_prob``).
        values: the case's figures as the JSON result states them.
        job_id: the job, from which every UID is derived.
        model_version: the weights' version.
    """
    if len(source_headers) != np.asarray(mask).shape[0]:
        return DicomOutputs(
            None, None, None, ("no DICOM results: the series lacks unique SOP Instance UIDs",)
        )
    headers = list(source_headers)
    notes: list[str] = []
    seg: Dataset | None = None
    try:
        seg = build_segmentation(
            headers,
            mask,
            model_version=model_version,
            series_description="ICH ensemble hemorrhage mask - NOT FOR CLINICAL USE",
            series_instance_uid=derived_uid(job_id, "seg/series"),
            sop_instance_uid=derived_uid(job_id, "seg/instance"),
        )
    except ValueError as exc:  # ich.seg names missing attributes, never their values
        notes.append(f"no DICOM SEG: {exc}")
    sr: Dataset | None = None
    try:
        sr = build_measurement_report(
            headers,
            values,
            model_version=model_version,
            series_instance_uid=derived_uid(job_id, "sr/series"),
            sop_instance_uid=derived_uid(job_id, "sr/instance"),
            tracking_uid=derived_uid(job_id, "sr/tracking"),
            segmentation=seg,
        )
    except ValueError as exc:
        notes.append(f"no DICOM SR: {exc}")
    key_image = _key_image(headers, hu, mask, slice_prob, values, job_id, model_version, notes)
    return DicomOutputs(seg, sr, key_image, tuple(notes))


def _key_image(
    headers: list[Dataset],
    hu: np.ndarray,
    mask: np.ndarray,
    slice_prob: np.ndarray,
    values: ReportValues,
    job_id: str,
    model_version: str,
    notes: list[str],
) -> Dataset | None:
    top = top_slice_indices(slice_prob, mask, k=1)
    if not top:
        return None
    i = top[0]
    volume = np.asarray(hu)
    lines = key_image_lines(
        i, volume.shape[0], float(slice_prob[i]), values.ich_probability, values.hemorrhage_volume_ml
    )
    try:
        return build_key_image(
            headers[i],
            volume[i],
            np.asarray(mask)[i],
            lines,
            series_instance_uid=derived_uid(job_id, "key-image/series"),
            sop_instance_uid=derived_uid(job_id, "key-image/instance"),
            model_version=model_version,
        )
    except ValueError as exc:
        notes.append(f"no DICOM key image: {exc}")
        return None
