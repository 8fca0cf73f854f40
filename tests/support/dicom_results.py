"""Reading the service's DICOM results back in tests: an SR's numbers and texts, a SEG's references.

Walks the SR content tree with pydicom only (no highdicom), so a test does not read the report with the
library that wrote it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pydicom


def content_items(ds: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    """Every content item of an SR, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def sr_numbers(ds: pydicom.Dataset) -> dict[str, float]:
    """The SR's NUM items: concept name meaning -> value."""
    out: dict[str, float] = {}
    for item in content_items(ds):
        if item.get("ValueType") == "NUM":
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            out[str(name)] = float(item.MeasuredValueSequence[0].NumericValue)
    return out


def sr_texts(ds: pydicom.Dataset) -> list[str]:
    """The SR's TEXT values."""
    return [str(item.TextValue) for item in content_items(ds) if item.get("ValueType") == "TEXT"]


def sr_codes(ds: pydicom.Dataset) -> dict[str, str]:
    """The SR's CODE items: concept name meaning -> value meaning."""
    return {
        str(item.ConceptNameCodeSequence[0].CodeMeaning): str(item.ConceptCodeSequence[0].CodeMeaning)
        for item in content_items(ds)
        if item.get("ValueType") == "CODE"
    }
