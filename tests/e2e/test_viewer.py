"""The viewer in a real headless Chromium: upload, slices, curve, the outline on the screenshot, keys, docs.

The study is synthetic (``tests.support.dicom_study``): 12 slices of 30 HU brain with a blob of blood-like
voxels on slices 5-7 whose middle slice (index 6) is the brightest, so the fake engine's fused curve peaks
there and its mask is the blob. Screenshots go to ``test-artifacts/e2e/``.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from tests.e2e.conftest import Offline, open_offline_page
from tests.support.dicom_study import PATIENT_ID, PATIENT_NAME, study_zip

N, SIZE, PEAK = 12, 256, 6
ROWS, COLUMNS = slice(150, 200), slice(90, 170)  # below the caption, clear of the R marker


def _volume() -> np.ndarray:
    hu = np.full((N, SIZE, SIZE), 30.0, np.float32)
    hu[PEAK - 1][ROWS, COLUMNS] = 50.0
    hu[PEAK][ROWS, COLUMNS] = 58.0
    hu[PEAK + 1][ROWS, COLUMNS] = 50.0
    return hu


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    data, uids = study_zip(_volume())
    path = tmp_path_factory.mktemp("e2e-study") / "study.zip"
    path.write_bytes(data)
    return path, uids


@pytest.fixture(scope="module")
def uploaded(browser: Any, gateway: str, study: tuple[Path, list[str]], artifacts: Path) -> str:
    """The study uploaded through the page's own form; the job id the page opened."""
    with open_offline_page(browser, gateway, timeout_ms=30_000) as (page, offline):
        page.goto(f"{gateway}/")
        assert "not for clinical use" in page.inner_text("#banner").lower()
        page.set_input_files("#upload-file", str(study[0]))
        page.click("#upload-form button[type=submit]")
        page.wait_for_selector("#slice[data-index]")
        match = re.search(r"study=([0-9a-f-]{36})", page.url)
        assert match, page.url
        page.screenshot(path=str(artifacts / "viewer-after-upload.png"), full_page=True)
        assert offline.refused == [] and offline.errors == []
        return match.group(1)


def _shown(page: Any, index: int) -> None:
    page.wait_for_selector(f"#slice[data-index='{index}']")


def _mask_of_peak(gateway: str, job_id: str, uid: str) -> np.ndarray:
    """The peak slice's mask from the job's DICOM SEG, read with pydicom alone."""
    result = httpx.get(f"{gateway}/v1/studies/{job_id}").json()["result"]
    seg = pydicom.dcmread(io.BytesIO(base64.b64decode(result["seg"]["data_base64"])))
    frames = seg.pixel_array.reshape(-1, SIZE, SIZE)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        if source == uid:
            mask |= frame > 0
    return mask


def _picture(page: Any, path: Path) -> np.ndarray:
    """Screenshot of the slice element as RGB, at the image's own matrix (the element is 2x, pixelated)."""
    box = page.locator("#slice").bounding_box()
    assert box is not None and box["width"] == box["height"] == 2 * SIZE, box
    # Layout may put the element on a fractional offset; images are snapped to whole device pixels.
    clip = {"x": round(box["x"]), "y": round(box["y"]), "width": 2 * SIZE, "height": 2 * SIZE}
    page.screenshot(path=str(path), clip=clip)
    return np.asarray(Image.open(path).convert("RGB"))


def _red(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., c].astype(int) for c in range(3))
    return (r >= 230) & (g <= 30) & (b <= 30)


def test_the_page_shows_the_studys_n_slices_and_n_curve_points(
    offline_page: tuple[Any, Offline], gateway: str, uploaded: str, artifacts: Path
) -> None:
    page, offline = offline_page
    page.goto(f"{gateway}/viewer?study={uploaded}")
    _shown(page, PEAK)  # opens at the most certain slice
    assert page.get_attribute("#slider", "max") == str(N - 1)
    assert page.inner_text("#slice-label") == f"slice {PEAK + 1} / {N}"
    assert page.locator("#facts [data-fact='slices']").inner_text() == str(N)
    points = page.locator("#curve circle.pt")
    assert points.count() == N
    assert page.locator("#curve polyline").count() == 6  # fused and the five base models
    assert page.locator("#curve .threshold").count() == 1 and page.locator("#curve .band").count() == 1
    assert page.locator("#slice-table tbody tr").count() == 6  # five models and the fused row
    # Every slice can be shown: walk them all, one Arrow Up at a time, each a different picture.
    page.keyboard.press("Home")
    _shown(page, 0)
    sources = {page.get_attribute("#slice", "src")}
    for i in range(1, N):
        page.keyboard.press("ArrowUp")
        _shown(page, i)
        assert page.inner_text("#slice-label") == f"slice {i + 1} / {N}"
        sources.add(page.get_attribute("#slice", "src"))
    assert len(sources) == N
    text = page.content()
    assert PATIENT_NAME not in text and PATIENT_ID not in text and "Synthetic" not in text
    assert "not for clinical use" in page.inner_text("#banner").lower()
    page.screenshot(path=str(artifacts / "viewer-last-slice.png"), full_page=True)
    assert offline.refused == [] and offline.errors == []


def test_clicking_the_curve_peak_shows_that_slice_with_the_outline_on_the_mask(
    offline_page: tuple[Any, Offline],
    gateway: str,
    uploaded: str,
    study: tuple[Path, list[str]],
    artifacts: Path,
) -> None:
    page, offline = offline_page
    page.goto(f"{gateway}/viewer?study={uploaded}")
    _shown(page, PEAK)
    page.keyboard.press("Home")
    _shown(page, 0)
    assert not _red(_picture(page, artifacts / "slice-first.png")).any()  # no lesion, no outline

    points = page.locator("#curve circle.pt")
    probabilities = [float(points.nth(i).get_attribute("data-probability")) for i in range(N)]
    peak = int(np.argmax(probabilities))
    assert peak == PEAK and probabilities[PEAK] > max(probabilities[:PEAK] + probabilities[PEAK + 1 :])
    points.nth(peak).click()
    _shown(page, PEAK)
    assert page.inner_text("#slice-label") == f"slice {PEAK + 1} / {N}"
    page.screenshot(path=str(artifacts / "viewer-peak.png"), full_page=True)

    shot = _picture(page, artifacts / "slice-peak.png")
    red = _red(shot)
    mask = _mask_of_peak(gateway, uploaded, study[1][PEAK])
    assert mask.sum() > 500
    # Each screen pixel shows image pixel (y // 2, x // 2): red lies on the mask, and along its edge.
    ys, xs = np.nonzero(red)
    assert ys.size > 400
    near_mask = ndimage.binary_dilation(mask, iterations=1)
    assert near_mask[ys // 2, xs // 2].all()
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    red_in_image = np.zeros_like(mask)
    red_in_image[ys // 2, xs // 2] = True
    assert red_in_image[edge].mean() > 0.9
    assert not red_in_image[mask & ~ndimage.binary_dilation(edge, iterations=2)].any()  # inside: tint only

    page.uncheck("#outline")
    page.wait_for_selector("#slice[data-outline='false']")
    assert not _red(_picture(page, artifacts / "slice-peak-no-outline.png")).any()
    page.select_option("#window", "bone")
    page.wait_for_selector("#slice[data-window='bone']")
    _picture(page, artifacts / "slice-peak-bone.png")
    assert offline.refused == [] and offline.errors == []


def test_arrow_keys_and_the_wheel_move_one_slice(
    offline_page: tuple[Any, Offline], gateway: str, uploaded: str
) -> None:
    page, offline = offline_page
    page.goto(f"{gateway}/viewer?study={uploaded}")
    _shown(page, PEAK)
    for key, expected in [
        ("ArrowUp", PEAK + 1),
        ("ArrowDown", PEAK),
        ("ArrowLeft", PEAK - 1),
        ("ArrowRight", PEAK),
        ("ArrowDown", PEAK - 1),
    ]:
        page.keyboard.press(key)
        _shown(page, expected)
        assert page.input_value("#slider") == str(expected)
    page.keyboard.press("End")
    _shown(page, N - 1)
    page.keyboard.press("ArrowUp")  # past the last slice: stays
    page.wait_for_timeout(200)
    assert page.get_attribute("#slice", "data-index") == str(N - 1)
    page.hover("#viewport")
    page.mouse.wheel(0, -100)
    _shown(page, N - 2)
    assert offline.errors == []


def test_docs_and_redoc_list_the_operations_offline(
    offline_page: tuple[Any, Offline], gateway: str, artifacts: Path
) -> None:
    page, offline = offline_page
    spec = httpx.get(f"{gateway}/openapi.json").json()
    operations = [(m.upper(), p) for p, item in spec["paths"].items() for m in item]
    assert len(operations) >= 8
    page.goto(f"{gateway}/docs")
    page.wait_for_selector(".opblock")
    assert page.locator(".opblock").count() == len(operations)
    listed = page.locator(".opblock-summary-path").all_inner_texts()
    for _, path in operations:
        assert any(path in text.replace("\u200b", "") for text in listed), path
    page.screenshot(path=str(artifacts / "docs.png"))
    page.goto(f"{gateway}/redoc")
    page.wait_for_selector("[data-section-id*='operation/']", state="attached")
    sections = page.eval_on_selector_all(
        "[data-section-id*='operation/']", "els => els.map(e => e.dataset.sectionId)"
    )
    ids = [item[m]["operationId"] for p, item in spec["paths"].items() for m in item]
    for operation_id in ids:
        assert any(s.endswith(f"operation/{operation_id}") for s in sections), operation_id
    assert page.get_by_text("Queue a head CT study for analysis").count() >= 1
    page.screenshot(path=str(artifacts / "redoc.png"))
    assert offline.refused == []


def test_the_uncertainty_and_the_subtypes_are_shown_not_measured_ones_as_such(
    offline_page: tuple[Any, Offline], gateway: str, uploaded: str, artifacts: Path
) -> None:
    page, offline = offline_page
    # the gateway's repository has no case model: no subtypes, and the uncertainty of the fake maps
    page.goto(f"{gateway}/viewer?study={uploaded}")
    _shown(page, PEAK)
    job = httpx.get(f"{gateway}/v1/studies/{uploaded}").json()
    assert job["result"]["subtypes"] is None
    shown = page.locator("#facts [data-fact='uncertainty']").inner_text()
    assert shown.startswith(f"{job['result']['uncertainty']:.3f}")
    assert page.inner_text("#subtype-note") == "This model gives no subtypes."
    assert page.locator("#subtype-table").is_hidden()
    # the same job as a model with subtypes would give it: epidural measured, the others not
    names = ("epidural", "subdural", "subarachnoid", "intraparenchymal", "intraventricular")
    job["result"]["subtypes"] = {name: (0.42 if name == "epidural" else None) for name in names}
    for i, s in enumerate(job["result"]["slices"]):
        s["subtypes"] = {name: (0.01 * i if name == "epidural" else None) for name in names}
    page.route(f"**/v1/studies/{uploaded}", lambda route: route.fulfill(json=job))
    page.goto(f"{gateway}/viewer?study={uploaded}")
    _shown(page, PEAK)
    assert page.locator("#subtype-note").is_hidden()
    cells = [page.locator(f"#subtype-table tr[data-subtype='{n}'] td").all_inner_texts() for n in names]
    assert cells[0] == ["epidural", "42.0 %", f"{100 * 0.01 * PEAK:.1f} %"]
    assert all(row[1:] == ["not measured", "not measured"] for row in cells[1:])
    page.keyboard.press("Home")
    _shown(page, 0)
    assert page.locator("#subtype-table tr[data-subtype='epidural'] td").all_inner_texts()[2] == "0.0 %"
    page.screenshot(path=str(artifacts / "viewer-subtypes.png"), full_page=True)
    assert offline.refused == [] and offline.errors == []
