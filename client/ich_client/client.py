"""``ICHClient`` and ``AsyncICHClient``: the SDK's entry points.

Both share one base (configuration, request building, response decoding, error mapping, retry decision)
and differ only in how they wait and do I/O, so that the sync and async clients cannot behave differently.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from ich_client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ICHError,
    JobTimeoutError,
    error_from_response,
)
from ich_client.models import JOB_STATUSES, CaseResult, Health, Job, JobPage, ModelsInfo
from ich_client.retry import (
    DEFAULT_MAX_RETRIES,
    RETRY_STATUSES,
    RetryPolicy,
    is_retryable_exception,
    parse_retry_after,
)
from ich_client.study import DEFAULT_SPOOL_BYTES, PackedStudy, StudyInput, pack_study
from ich_client.version import __version__

logger = logging.getLogger(__name__)

#: Used when neither ``base_url`` nor ``ICH_URL`` is given: the gateway's default port on this machine.
DEFAULT_BASE_URL = "http://localhost:8080"
#: Analysing a large study on a CPU-only service can take minutes; connecting should not.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)

ProgressCallback = Callable[[int, int], None]
#: Called by ``wait`` with the job each time its status or attempt count changes.
JobCallback = Callable[[Job], None]
#: Seconds between two polls of ``wait``.
DEFAULT_POLL_INTERVAL = 1.0
_M = TypeVar("_M", bound=BaseModel)


class _BaseClient:
    """Configuration and the I/O-free half of every call."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        retry_policy: RetryPolicy | None,
        headers: Mapping[str, str] | None,
    ) -> None:
        url = base_url or os.environ.get("ICH_URL") or DEFAULT_BASE_URL
        if "://" not in url:
            raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
        self.base_url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else (os.environ.get("ICH_API_KEY") or None)
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        if retry_policy is None:
            retry_policy = RetryPolicy(max_retries=max_retries)
        self.retry_policy = retry_policy
        self.max_retries = retry_policy.max_retries
        self._headers = {
            "User-Agent": f"ich-client/{__version__}",
            "Accept": "application/json",
            **(dict(headers) if headers else {}),
        }
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"

    @staticmethod
    def _upload_headers(packed: PackedStudy) -> dict[str, str]:
        # An explicit Content-Length makes httpx send the streamed body without chunked encoding, so the
        # service can refuse an oversized study (413) from the header alone.
        return {"Content-Type": "application/zip", "Content-Length": str(packed.size)}

    @staticmethod
    def _cases_path(include_overlays: bool, include_seg: bool) -> str:
        include = [name for name, wanted in (("overlays", include_overlays), ("seg", include_seg)) if wanted]
        return f"/v1/cases?include={','.join(include)}" if include else "/v1/cases"

    @staticmethod
    def _studies_path(include_overlays: bool, include_seg: bool) -> str:
        include = [name for name, wanted in (("overlays", include_overlays), ("seg", include_seg)) if wanted]
        return f"/v1/studies?include={','.join(include)}" if include else "/v1/studies"

    @staticmethod
    def _submit_headers(packed: PackedStudy, idempotency_key: str | None) -> dict[str, str]:
        # A fresh key per submit unless the caller has one: the client's own retries (429, 503, a dropped
        # connection) then never queue the study twice.
        key = idempotency_key or str(uuid.uuid4())
        return {**_BaseClient._upload_headers(packed), "Idempotency-Key": key}

    @staticmethod
    def _job_path(job: Job | str) -> str:
        job_id = job if isinstance(job, str) else job.id
        return f"/v1/studies/{urllib.parse.quote(job_id, safe='')}"

    @staticmethod
    def _list_params(status: str | None, limit: int, cursor: str | None) -> dict[str, str]:
        if status is not None and status not in JOB_STATUSES:
            raise ValueError(f"status must be one of {', '.join(JOB_STATUSES)}, got {status!r}")
        params = {"limit": str(limit)}
        if status is not None:
            params["status"] = status
        if cursor is not None:
            params["cursor"] = cursor
        return params

    @staticmethod
    def _check_wait(timeout: float | None, poll_interval: float) -> float | None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def _changed(job: Job, last: Job | None) -> bool:
        return last is None or (job.status, job.attempts) != (last.status, last.attempts)

    @staticmethod
    def _timed_out(job: Job, deadline: float | None, poll_interval: float) -> JobTimeoutError | None:
        if deadline is None or time.monotonic() + poll_interval <= deadline:
            return None
        return JobTimeoutError(f"job {job.id} still {job.status} when the wait timed out", job)

    def _retry_delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retrying, or None when this outcome must not be retried."""
        if attempt >= self.max_retries:
            return None
        retry_after = None
        if response is not None:
            if response.status_code not in RETRY_STATUSES:
                return None
            retry_after = parse_retry_after(response.headers.get("retry-after"))
        return self.retry_policy.delay(attempt + 1, retry_after)

    def _transport_error(self, exc: httpx.TransportError, method: str, path: str) -> APIConnectionError:
        target = f"{method} {self.base_url}{path}"
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"{target} timed out ({type(exc).__name__})", request=_request_of(exc))
        return APIConnectionError(f"{target} failed: {exc or type(exc).__name__}", request=_request_of(exc))

    @staticmethod
    def _log_retry(method: str, path: str, reason: str, delay: float, attempt: int, total: int) -> None:
        logger.info("%s %s: %s; retry %d of %d in %.2f s", method, path, reason, attempt, total, delay)

    @staticmethod
    def _decode(response: httpx.Response, model: type[_M], **extra: Any) -> _M:
        try:
            payload = response.json() if response.content else {}
        except ValueError as exc:
            raise ICHError(f"{response.request.url.path}: the body is not JSON") from exc
        if not isinstance(payload, dict):
            raise ICHError(
                f"{response.request.url.path}: expected a JSON object, got {type(payload).__name__}"
            )
        try:
            return model.model_validate({**payload, **extra})
        except ValidationError as exc:
            raise ICHError(
                f"{response.request.url.path}: the response does not match {model.__name__} "
                f"(client {__version__} too old or too new for this service?): {exc}"
            ) from exc


def _request_of(exc: httpx.TransportError) -> httpx.Request | None:
    try:
        return exc.request
    except RuntimeError:  # httpx raises when the error was created without a request
        return None


class ICHClient(_BaseClient):
    """Synchronous client of the ICH detection service.

    Example:
        >>> with ICHClient("http://localhost:8080") as client:    # doctest: +SKIP
        ...     result = client.analyze("study.zip")
        ...     print(result.ich_probability, result.ich_detected)

    Args:
        base_url: the gateway's URL; default ``ICH_URL``, else ``http://localhost:8080``.
        api_key: sent as ``Authorization: Bearer <key>``; default ``ICH_API_KEY``.
        timeout: seconds, or an ``httpx.Timeout``; default 300 s to read, 10 s to connect.
        max_retries: retries after the first attempt on connection errors, 429 and 503.
        retry_policy: full control over the backoff (overrides ``max_retries``).
        headers: extra headers sent with every request.
        transport: an ``httpx`` transport (tests use ``httpx.MockTransport``; also for custom TLS).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        retry_policy: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, retry_policy, headers)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=self.timeout, transport=transport
        )
        self._sleep: Callable[[float], None] = time.sleep

    def analyze(
        self,
        study: StudyInput,
        *,
        include_overlays: bool = False,
        include_seg: bool = False,
        progress: ProgressCallback | None = None,
        spool_bytes: int = DEFAULT_SPOOL_BYTES,
    ) -> CaseResult:
        """Upload one study and return the service's findings.

        Args:
            study: a zip path, a folder of DICOM files, a list of files, zip bytes or a binary file object
                (see ``ich_client.study.pack_study``).
            include_overlays: also ask for PNG previews of the slices with the most certain lesion
                (``result.overlays``; ``Overlay.image_bytes()`` decodes one).
            include_seg: also ask for the lesion mask as a DICOM SEG (``result.seg``, None when there is
                no lesion; ``SegObject.dicom_bytes()`` decodes it).
            progress: called as ``progress(bytes_sent, total_bytes)`` while uploading (again from 0 on a
                retry).
            spool_bytes: a folder's zip larger than this is built in a temporary file, not in memory.

        Raises:
            APIStatusError: a subclass per status (``UnprocessableStudyError`` for 422...).
            APIConnectionError / APITimeoutError: no answer from the service.
            FileNotFoundError / ValueError: the study could not be read locally.
        """
        with pack_study(study, spool_bytes=spool_bytes) as packed:
            return self.analyze_packed(
                packed, include_overlays=include_overlays, include_seg=include_seg, progress=progress
            )

    def analyze_packed(
        self,
        packed: PackedStudy,
        *,
        include_overlays: bool = False,
        include_seg: bool = False,
        progress: ProgressCallback | None = None,
    ) -> CaseResult:
        """Upload an already packed study (lets a caller show zipping and uploading separately)."""
        response = self._request(
            "POST",
            self._cases_path(include_overlays, include_seg),
            body=lambda: packed.chunks(progress=progress),
            headers=self._upload_headers(packed),
        )
        return self._decode(response, CaseResult)

    def submit(
        self,
        study: StudyInput,
        *,
        include_overlays: bool = False,
        include_seg: bool = False,
        idempotency_key: str | None = None,
        progress: ProgressCallback | None = None,
        spool_bytes: int = DEFAULT_SPOOL_BYTES,
    ) -> Job:
        """Queue one study (``POST /v1/studies``) and return its job at once; ``wait`` for the result.

        The service stores the study durably before it answers, analyses it when a worker is free and keeps
        the result for its retention period. ``idempotency_key`` (default: a fresh UUID per call) makes a
        repeated submit of the same upload return the same job.

        Raises:
            APIStatusError: ``RateLimitError`` (429, queue full; retried first), ``ConflictError`` (409: the
                key was used for another upload), and the upload errors of ``analyze``.
        """
        with pack_study(study, spool_bytes=spool_bytes) as packed:
            return self.submit_packed(
                packed,
                include_overlays=include_overlays,
                include_seg=include_seg,
                idempotency_key=idempotency_key,
                progress=progress,
            )

    def submit_packed(
        self,
        packed: PackedStudy,
        *,
        include_overlays: bool = False,
        include_seg: bool = False,
        idempotency_key: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> Job:
        """Queue an already packed study."""
        response = self._request(
            "POST",
            self._studies_path(include_overlays, include_seg),
            body=lambda: packed.chunks(progress=progress),
            headers=self._submit_headers(packed, idempotency_key),
        )
        return self._decode(response, Job)

    def get_job(self, job_id: str) -> Job:
        """``GET /v1/studies/{id}``: the job's state, error and (once done) result.

        Raises:
            NotFoundError: unknown, deleted, or past the service's retention.
        """
        return self._decode(self._request("GET", self._job_path(job_id)), Job)

    def list_jobs(self, *, status: str | None = None, limit: int = 50, cursor: str | None = None) -> JobPage:
        """``GET /v1/studies``: one page of jobs, newest first, without results."""
        params = self._list_params(status, limit, cursor)
        return self._decode(self._request("GET", "/v1/studies", params=params), JobPage)

    def delete_job(self, job: Job | str) -> None:
        """``DELETE /v1/studies/{id}``: remove the study and its result from the service now."""
        self._request("DELETE", self._job_path(job))

    def wait(
        self,
        job: Job | str,
        *,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_update: JobCallback | None = None,
    ) -> Job:
        """Poll until the job is ``done`` or ``failed`` and return it (``result`` or ``error`` filled in).

        Args:
            job: a ``Job`` from ``submit`` or a job id.
            timeout: seconds to wait at most (None: as long as it takes).
            poll_interval: seconds between polls.
            on_update: called with the job whenever its status or attempt count changes (progress).

        Raises:
            JobTimeoutError: still not finished after ``timeout``; ``.job`` is its last state.
            NotFoundError: the job is gone (deleted, or past retention).
        """
        deadline = self._check_wait(timeout, poll_interval)
        last: Job | None = None
        while True:
            current = self.get_job(job if isinstance(job, str) else job.id)
            if on_update is not None and self._changed(current, last):
                on_update(current)
            last = current
            if current.finished:
                return current
            timed_out = self._timed_out(current, deadline, poll_interval)
            if timed_out is not None:
                raise timed_out
            self._sleep(poll_interval)

    def health(self) -> Health:
        """``GET /healthz``: is the gateway process alive."""
        return self._decode(self._request("GET", "/healthz"), Health, ok=True)

    def ready(self) -> Health:
        """``GET /readyz``: can it analyse now. ``ok`` is False on 503 (not ready), without retrying."""
        response = self._request("GET", "/readyz", retry=False, accept={503})
        return self._decode(response, Health, ok=response.is_success)

    def models(self) -> ModelsInfo:
        """``GET /v1/models``: the model version, engine and models being served."""
        return self._decode(self._request("GET", "/v1/models"), ModelsInfo)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Callable[[], Iterator[bytes]] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        retry: bool = True,
        accept: set[int] | frozenset[int] = frozenset(),
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method, path, content=body() if body else None, headers=headers, params=params
                )
            except httpx.TransportError as exc:
                delay = self._retry_delay(attempt, None) if retry and is_retryable_exception(exc) else None
                if delay is None:
                    raise self._transport_error(exc, method, path) from exc
                attempt += 1
                self._log_retry(method, path, type(exc).__name__, delay, attempt, self.max_retries)
                self._sleep(delay)
                continue
            if response.is_success or response.status_code in accept:
                return response
            delay = self._retry_delay(attempt, response) if retry else None
            if delay is None:
                raise error_from_response(response, parse_retry_after(response.headers.get("retry-after")))
            attempt += 1
            self._log_retry(method, path, f"HTTP {response.status_code}", delay, attempt, self.max_retries)
            self._sleep(delay)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ICHClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncICHClient(_BaseClient):
    """Asynchronous client; same arguments, methods and errors as ``ICHClient``, awaited.

    Example:
        >>> async with AsyncICHClient() as client:                 # doctest: +SKIP
        ...     results = await asyncio.gather(*(client.analyze(p) for p in paths))
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        retry_policy: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, retry_policy, headers)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=self.timeout, transport=transport
        )
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def analyze(
        self,
        study: StudyInput,
        *,
        include_overlays: bool = False,
        include_seg: bool = False,
        progress: ProgressCallback | None = None,
        spool_bytes: int = DEFAULT_SPOOL_BYTES,
    ) -> CaseResult:
        """Upload one study; see ``ICHClient.analyze``. Zipping a folder runs in a worker thread."""
        packed = await asyncio.to_thread(pack_study, study, spool_bytes=spool_bytes)
        try:
            return await self.analyze_packed(
                packed, include_overlays=include_overlays, include_seg=include_seg, progress=progress
            )
        finally:
            packed.close()

    async def analyze_packed(
        self,
        packed: PackedStudy,
        *,
        include_overlays: bool = False,
        include_seg: bool = False,
        progress: ProgressCallback | None = None,
    ) -> CaseResult:
        """Upload an already packed study."""

        async def body() -> AsyncIterator[bytes]:
            # Chunks come from memory or a local temporary file: short reads that need no thread.
            for chunk in packed.chunks(progress=progress):
                yield chunk

        response = await self._request(
            "POST",
            self._cases_path(include_overlays, include_seg),
            body=body,
            headers=self._upload_headers(packed),
        )
        return self._decode(response, CaseResult)

    async def submit(
        self,
        study: StudyInput,
        *,
        include_overlays: bool = False,
        include_seg: bool = False,
        idempotency_key: str | None = None,
        progress: ProgressCallback | None = None,
        spool_bytes: int = DEFAULT_SPOOL_BYTES,
    ) -> Job:
        """Queue one study; see ``ICHClient.submit``."""
        packed = await asyncio.to_thread(pack_study, study, spool_bytes=spool_bytes)
        try:
            return await self.submit_packed(
                packed,
                include_overlays=include_overlays,
                include_seg=include_seg,
                idempotency_key=idempotency_key,
                progress=progress,
            )
        finally:
            packed.close()

    async def submit_packed(
        self,
        packed: PackedStudy,
        *,
        include_overlays: bool = False,
        include_seg: bool = False,
        idempotency_key: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> Job:
        """Queue an already packed study."""

        async def body() -> AsyncIterator[bytes]:
            for chunk in packed.chunks(progress=progress):
                yield chunk

        response = await self._request(
            "POST",
            self._studies_path(include_overlays, include_seg),
            body=body,
            headers=self._submit_headers(packed, idempotency_key),
        )
        return self._decode(response, Job)

    async def get_job(self, job_id: str) -> Job:
        """``GET /v1/studies/{id}``; see ``ICHClient.get_job``."""
        return self._decode(await self._request("GET", self._job_path(job_id)), Job)

    async def list_jobs(
        self, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> JobPage:
        """``GET /v1/studies``; see ``ICHClient.list_jobs``."""
        params = self._list_params(status, limit, cursor)
        return self._decode(await self._request("GET", "/v1/studies", params=params), JobPage)

    async def delete_job(self, job: Job | str) -> None:
        """``DELETE /v1/studies/{id}``."""
        await self._request("DELETE", self._job_path(job))

    async def wait(
        self,
        job: Job | str,
        *,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_update: JobCallback | None = None,
    ) -> Job:
        """Poll until the job is finished; see ``ICHClient.wait``."""
        deadline = self._check_wait(timeout, poll_interval)
        last: Job | None = None
        while True:
            current = await self.get_job(job if isinstance(job, str) else job.id)
            if on_update is not None and self._changed(current, last):
                on_update(current)
            last = current
            if current.finished:
                return current
            timed_out = self._timed_out(current, deadline, poll_interval)
            if timed_out is not None:
                raise timed_out
            await self._sleep(poll_interval)

    async def health(self) -> Health:
        """``GET /healthz``: is the gateway process alive."""
        return self._decode(await self._request("GET", "/healthz"), Health, ok=True)

    async def ready(self) -> Health:
        """``GET /readyz``; ``ok`` is False on 503, without retrying."""
        response = await self._request("GET", "/readyz", retry=False, accept={503})
        return self._decode(response, Health, ok=response.is_success)

    async def models(self) -> ModelsInfo:
        """``GET /v1/models``."""
        return self._decode(await self._request("GET", "/v1/models"), ModelsInfo)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Callable[[], AsyncIterator[bytes]] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        retry: bool = True,
        accept: set[int] | frozenset[int] = frozenset(),
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method, path, content=body() if body else None, headers=headers, params=params
                )
            except httpx.TransportError as exc:
                delay = self._retry_delay(attempt, None) if retry and is_retryable_exception(exc) else None
                if delay is None:
                    raise self._transport_error(exc, method, path) from exc
                attempt += 1
                self._log_retry(method, path, type(exc).__name__, delay, attempt, self.max_retries)
                await self._sleep(delay)
                continue
            if response.is_success or response.status_code in accept:
                return response
            delay = self._retry_delay(attempt, response) if retry else None
            if delay is None:
                raise error_from_response(response, parse_retry_after(response.headers.get("retry-after")))
            attempt += 1
            self._log_retry(method, path, f"HTTP {response.status_code}", delay, attempt, self.max_retries)
            await self._sleep(delay)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncICHClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["DEFAULT_BASE_URL", "DEFAULT_TIMEOUT", "APIStatusError", "AsyncICHClient", "ICHClient"]
