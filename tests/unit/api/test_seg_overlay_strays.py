"""The SEG and the overlays show the reported lesions only, not the strays the post-processing discards.

The fake engine's maps have no stray pixels, so a SEG or overlay built from the raw fused map would pass
every other gateway test; here the engine adds, on a slice its SLICE_PROB calls clean (the weight model's
opening removed them), a bright focus in the fused map. The mask behind the volume, the SEG and the overlays
must all leave that slice out.
"""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from ich.ensemble import EnsembleOutput
from tests.support.dicom_study import study_zip
from tests.support.fake_engine import FakeEngine

ZIP = {"content-type": "application/zip"}
PAPER_RULE = Path(tempfile.mkdtemp(prefix="paper-rule-"))
LESION_SLICE = 2
STRAY_SLICE = 0


class StrayEngine(FakeEngine):
    """The fake engine, plus a 3 x 3 focus of 0.9 in the fused map of ``STRAY_SLICE`` only.

    SLICE_PROB and the member maps are left as they were (0.2375 on that slice): the opening removed it.
    """

    async def infer(self, images: np.ndarray) -> EnsembleOutput:
        output = await super().infer(images)
        output.fused[STRAY_SLICE, 0, 4:7, 4:7] = 0.9
        return output


def test_strays_outside_the_kept_slices_reach_neither_the_seg_nor_the_overlays() -> None:
    hu = np.full((4, 64, 64), 30.0, np.float32)
    hu[LESION_SLICE, 26:38, 26:38] = 70.0
    data, uids = study_zip(hu)
    with TestClient(create_app(Settings(model_repository=PAPER_RULE), engine=StrayEngine())) as client:
        body = client.post("/v1/cases?include=seg,overlays", content=data, headers=ZIP).json()
    with TestClient(create_app(Settings(model_repository=PAPER_RULE), engine=FakeEngine())) as client:
        clean = client.post("/v1/cases", content=data, headers=ZIP).json()
    assert body["slices"][STRAY_SLICE]["probability"] < 0.5  # the engine calls the stray slice clean
    assert body["slices"][STRAY_SLICE]["hemorrhage_volume_ml"] == 0.0
    assert body["hemorrhage_volume_ml"] == clean["hemorrhage_volume_ml"] > 0.0
    assert [overlay["index"] for overlay in body["overlays"]] == [LESION_SLICE]
    seg = pydicom.dcmread(io.BytesIO(base64.b64decode(body["seg"]["data_base64"])))
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for frame in seg.PerFrameFunctionalGroupsSequence
        for item in frame.DerivationImageSequence[0].SourceImageSequence
    }
    assert referenced == {uids[LESION_SLICE]}
    assert body["seg"]["frames"] == 1
