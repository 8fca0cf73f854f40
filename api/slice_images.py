"""The viewer's slice pictures: a finished job's stored study decoded once, each PNG rendered once.

``GET /v1/studies/{id}/slices/{index}.png`` needs the HU slice (from the upload the job store keeps), the mask
(read back from the SEG kept with the result) and the slice's caption. Decoding a study costs many times
what drawing one slice does, and scrolling asks for a slice every few tens of milliseconds, so both are
cached in this process:

- decoded studies (HU as int16, the mask as bool) up to :data:`STUDY_CACHE_BYTES`, the newest always kept;
- rendered PNGs up to :data:`PNG_CACHE_BYTES`, least recently used out first.

Both are keyed by the job id and its upload's digest. The route asks the store for the job before it looks
here, so a deleted or purged study is never drawn from memory; its entries are dropped then too.
"""

from __future__ import annotations

import asyncio
import base64
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from api.pipeline import run_blocking
from api.settings import Settings
from ich.burn_in import left_edge_marker, slice_lines
from ich.intake import IntakeLimits, read_study
from ich.jobs import Job, JobStore
from ich.slice_render import image_orientation, mask_from_seg, render_slice

#: Decoded studies kept (about 30 MiB for a 30-slice 512 x 512 study).
STUDY_CACHE_BYTES = 256 * 2**20
#: Rendered PNGs kept (about 150 KiB each at 512 x 512).
PNG_CACHE_BYTES = 64 * 2**20

#: What the slice route says about the mask (header ``X-ICH-Mask``).
MASK_OUTLINED = "outlined"
MASK_OFF = "off"
MASK_UNAVAILABLE = "unavailable"


class SliceImageError(Exception):
    """The stored study cannot be drawn (its upload is gone, or it no longer matches its result)."""


@dataclass(frozen=True)
class DecodedStudy:
    """What drawing a job's slices needs, in the result's slice order."""

    hu: np.ndarray  # [N, H, W] int16
    mask: np.ndarray | None  # [N, H, W] bool; None when the job kept no SEG and found lesion voxels
    probabilities: tuple[float, ...]
    marker: str

    @property
    def nbytes(self) -> int:
        return int(self.hu.nbytes + (0 if self.mask is None else self.mask.nbytes))


def _mask_of(result: dict[str, Any], uids: list[str], shape: tuple[int, int, int]) -> np.ndarray | None:
    """The kept-lesion mask: from the stored SEG; empty when no voxel was kept; None when unknown.

    A job asked without ``seg`` keeps no mask, and a series whose headers cannot carry a SEG has none either;
    without lesion voxels (volume 0) the mask is known to be empty all the same.
    """
    seg = result.get("seg")
    if seg:
        return mask_from_seg(base64.b64decode(seg["data_base64"]), uids, shape)
    if float(result.get("hemorrhage_volume_ml") or 0.0) == 0.0:
        return np.zeros(shape, dtype=bool)
    return None


def decode_job_study(data: bytes, result: dict[str, Any], settings: Settings) -> DecodedStudy:
    """Decode the stored upload of a finished job and check it against its result (blocking).

    Raises:
        SliceImageError: the upload no longer gives the series its result describes.
    """
    limits = IntakeLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_uncompressed_bytes=settings.max_uncompressed_bytes,
        max_members=settings.max_members,
        max_slices=settings.max_slices,
    )
    study = read_study(data, limits=limits)
    volume = study.volume
    slices = result.get("slices") or []
    uids = [str(s["sop_instance_uid"]) for s in slices]
    if list(volume.sop_instance_uids) != uids:
        raise SliceImageError("the stored study no longer matches its result")
    hu = np.clip(np.rint(np.asarray(volume.hu)), -32768, 32767).astype(np.int16)
    try:
        mask = _mask_of(result, uids, (hu.shape[0], hu.shape[1], hu.shape[2]))
    except ValueError as exc:
        raise SliceImageError(str(exc)) from exc
    probabilities = tuple(float(s["probability"]) for s in slices)
    return DecodedStudy(hu, mask, probabilities, left_edge_marker(image_orientation(study)))


def _upload(store: JobStore, job_id: str) -> bytes | None:
    with store.engine.connect() as connection:
        return store.payloads.get(connection, job_id)


class _Budget(OrderedDict[Any, Any]):
    """An LRU mapping that evicts the oldest entries past ``budget`` bytes (the newest always stays)."""

    def __init__(self, budget: int, size: Callable[[Any], int]) -> None:
        super().__init__()
        self.budget = budget
        self.size = size
        self.used = 0

    def get_fresh(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        if key in self:
            self.used -= self.size(self.pop(key))
        self[key] = value
        self.used += self.size(value)
        while self.used > self.budget and len(self) > 1:
            _, old = self.popitem(last=False)
            self.used -= self.size(old)

    def drop(self, match: Callable[[Any], bool]) -> None:
        for key in [k for k in self if match(k)]:
            self.used -= self.size(self.pop(key))


class SliceImages:
    """The per-process caches of decoded studies and slice PNGs (kept on ``app.state.slice_images``)."""

    def __init__(self, *, study_bytes: int = STUDY_CACHE_BYTES, png_bytes: int = PNG_CACHE_BYTES) -> None:
        self._studies = _Budget(study_bytes, lambda s: s.nbytes)
        self._pngs = _Budget(png_bytes, lambda p: len(p[0]))
        self._loading: dict[tuple[str, str], asyncio.Lock] = {}
        self.decodes = 0  # studies decoded so far (tests read it)

    def forget(self, job_id: str) -> None:
        """Drop everything cached for a job (deleted, purged)."""
        self._studies.drop(lambda k: k[0] == job_id)
        self._pngs.drop(lambda k: k[0] == job_id)

    async def study(
        self, job: Job, store: JobStore, executor: ThreadPoolExecutor, settings: Settings
    ) -> DecodedStudy:
        """The job's decoded study, decoding it once however many requests ask at the same time."""
        key = (job.id, job.payload_sha256)
        cached: DecodedStudy | None = self._studies.get_fresh(key)
        if cached is not None:
            return cached
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._studies.get_fresh(key)
            if cached is None:
                data = await asyncio.to_thread(_upload, store, job.id)
                if data is None:
                    raise SliceImageError("the stored study is gone")
                assert job.result is not None
                cached = await run_blocking(executor, decode_job_study, data, job.result, settings)
                self.decodes += 1
                self._studies.put(key, cached)
        self._loading.pop(key, None)
        return cached

    async def png(
        self,
        job: Job,
        store: JobStore,
        executor: ThreadPoolExecutor,
        settings: Settings,
        *,
        index: int,
        window: str,
        outline: bool,
    ) -> tuple[bytes, str, int]:
        """One slice's PNG, what was done with the mask, and the number of slices.

        Raises:
            SliceImageError: as :meth:`study`.
            IndexError: ``index`` outside the study.
        """
        key = (job.id, job.payload_sha256, index, window, outline)
        hit: tuple[bytes, str, int] | None = self._pngs.get_fresh(key)
        if hit is not None:
            return hit
        study = await self.study(job, store, executor, settings)
        count = study.hu.shape[0]
        if not 0 <= index < count:
            raise IndexError(index)
        if not outline:
            state, mask = MASK_OFF, None
        elif study.mask is None:
            state, mask = MASK_UNAVAILABLE, None
        else:
            state, mask = MASK_OUTLINED, study.mask[index]
        lines = slice_lines(index, count, study.probabilities[index])
        png = await run_blocking(
            executor,
            lambda: render_slice(
                study.hu[index], mask, window=window, lines=lines, right_marker=study.marker
            ),
        )
        entry = (png, state, count)
        self._pngs.put(key, entry)
        return entry
