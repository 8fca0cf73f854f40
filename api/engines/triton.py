"""The Triton engine: ``ich_ensemble`` called on a Triton server over gRPC (asyncio, binary tensors).

A series longer than the ensemble's ``max_batch_size`` is sent as several requests at once; Triton's dynamic
batcher merges them (and those of other studies) on the GPU. The engine asks ``ich_ensemble_compact`` for
the small outputs first (FUSED, SLICE_PROB, WEIGHTS and the members' slice maxima ``PROB_MAX``: about
100 kB a slice instead of 600 kB) and then ``ich_ensemble`` for the five full maps of only the slices the
scoring reads (``ich.member_maps``: the candidate lesions and the top slice), which a normal study mostly
lacks; that second call infers those slices again, which costs a GPU far less than moving every map.
``full_maps=True``, or a server without the compact ensemble, asks ``ich_ensemble`` for everything.
Every call has a deadline, and any transport failure or timeout becomes ``EngineUnavailableError`` so the
gateway answers 503 with Retry-After instead of hanging or failing with a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, InferInput, InferRequestedOutput, KeepAliveOptions
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from api.engines.base import Engine, EngineUnavailableError, describe_model
from api.schemas import ModelInfo
from ich import repository, spec
from ich.ensemble import EnsembleOutput, check_images, output_from_tensors
from ich.member_maps import slices_needing_maps

__all__ = ["TritonEngine"]

logger = logging.getLogger(__name__)

#: The members' full maps, fetched only for the slices whose pixels the scoring reads.
MAP_NAMES: tuple[str, ...] = tuple(spec.WEIGHTING_INPUTS[key] for key in spec.MODEL_KEYS)
#: What every slice needs: the fused map (the mask), the slice probability, the weights, the maxima; all
#: the outputs of ``ich_ensemble_compact`` (Triton answers an ensemble's full set of outputs only).
SMALL_OUTPUT_NAMES: tuple[str, ...] = (spec.FUSED, spec.SLICE_PROB, spec.WEIGHTS, spec.PROB_MAX)
#: The outputs of ``ich_ensemble`` (``PROB_MAX`` added when the served config has it).
OUTPUT_NAMES: tuple[str, ...] = (spec.FUSED, spec.SLICE_PROB, spec.WEIGHTS, *MAP_NAMES)
#: Readiness probes must answer fast even when inference deadlines are long.
PROBE_TIMEOUT_S = 2.0
#: The gRPC channel's options: tritonclient's own defaults (message size, keepalive) plus a short reconnect
#: backoff. gRPC's default backoff grows from 1 s by 1.6x up to 120 s, so after an outage of a minute the
#: channel would next try Triton only seconds after it is back (503s meanwhile); 100 ms growing to 500 ms
#: costs a refused loopback or cluster connection a few attempts a second and brings the first 200 within
#: half a second of Triton's readiness. A connection attempt still gets a full second.
CHANNEL_ARGS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", KeepAliveOptions().keepalive_time_ms),
    ("grpc.keepalive_timeout_ms", KeepAliveOptions().keepalive_timeout_ms),
    ("grpc.keepalive_permit_without_calls", int(KeepAliveOptions().keepalive_permit_without_calls)),
    ("grpc.http2.max_pings_without_data", KeepAliveOptions().http2_max_pings_without_data),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 1000),
)


def _reason(exc: InferenceServerException) -> str:
    status = str(exc.status() or "")
    if "DEADLINE_EXCEEDED" in status:
        return "timeout"
    if "UNAVAILABLE" in status or "CANCELLED" in status:
        return "unavailable"
    return "error"


@contextlib.contextmanager
def _unavailable_on_failure(url: str, *, warn: bool = False) -> Iterator[None]:
    """Triton's answers of failure and the channel's errors as ``EngineUnavailableError`` with a reason.

    ``warn`` logs Triton's own failures (an inference the server refused or timed out).
    """
    try:
        yield
    except InferenceServerException as exc:
        reason = _reason(exc)
        if warn:
            logger.warning("triton inference failed (%s): %s", reason, exc.message())
        raise EngineUnavailableError(f"Triton at {url}: {exc.message()}", reason=reason) from exc
    except (grpc.RpcError, OSError, TimeoutError) as exc:
        raise EngineUnavailableError(f"Triton at {url}: {exc}", reason="unavailable") from exc


class TritonEngine(Engine):
    """Calls ``ich_ensemble`` on ``url`` (``host:port`` of Triton's gRPC endpoint).

    Args:
        url: Triton gRPC address, e.g. ``127.0.0.1:8001``.
        timeout_s: deadline of one inference request (each batch of a series).
        input_size: S the ensemble expects; checked against the server's ensemble config on ``ready()``.
        max_batch_size: slices per request; lowered to the server's value when that is smaller.
        model_version: reported as ``model_version`` (the repository VERSION the server was built from).
        full_maps: fetch the five maps of every slice (benchmarks, callers that show every map).
    """

    name = "triton"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        input_size: int = spec.DEFAULT_INPUT_SIZE,
        max_batch_size: int = repository.DEFAULT_MAX_BATCH_SIZE,
        model_version: str = "unversioned",
        full_maps: bool = False,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.url = url
        self.timeout_s = timeout_s
        self.input_size = input_size
        self.max_batch_size = max_batch_size
        self.model_version = model_version
        self.full_maps = full_maps
        #: ``ich_ensemble``'s outputs and whether the compact ensemble is served (None: not asked yet).
        self._full_outputs: tuple[str, ...] = OUTPUT_NAMES
        self._compact: bool | None = None
        self._client: triton_aio.InferenceServerClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # A gRPC aio channel belongs to the event loop it was first used on, so the client is made lazily inside
    # the running loop (and again if a test or the server runs on a new loop).
    def _get_client(self) -> triton_aio.InferenceServerClient:
        if self._closed:
            raise EngineUnavailableError("engine is closed", reason="unavailable")
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = triton_aio.InferenceServerClient(url=self.url, channel_args=list(CHANNEL_ARGS))
            self._client_loop = loop
        return self._client

    async def infer(self, images: np.ndarray) -> EnsembleOutput:
        """Send ``images`` in batches of at most ``max_batch_size``, concurrently; join outputs in order."""
        images = check_images(images, self.input_size)
        client = self._get_client()
        if self.full_maps or not await self._serves_compact(client):
            return output_from_tensors(await self._infer_all(client, images, spec.ENSEMBLE_MODEL))
        tensors = await self._infer_all(client, images, spec.COMPACT_ENSEMBLE_MODEL)
        needed = slices_needing_maps(tensors[spec.FUSED], tensors[spec.SLICE_PROB])
        n, size = images.shape[0], self.input_size
        for name in MAP_NAMES:
            tensors[name] = np.zeros((n, 1, size, size), dtype=np.float32)
        if needed.size:
            maps = await self._infer_all(client, images[needed], spec.ENSEMBLE_MODEL, count=False)
            for name in MAP_NAMES:
                tensors[name][needed] = maps[name]
        return output_from_tensors(tensors, map_slices=needed)

    def _outputs_of(self, model: str) -> tuple[str, ...]:
        return SMALL_OUTPUT_NAMES if model == spec.COMPACT_ENSEMBLE_MODEL else self._full_outputs

    async def _infer_all(
        self,
        client: triton_aio.InferenceServerClient,
        images: np.ndarray,
        model: str,
        *,
        count: bool = True,
    ) -> dict[str, np.ndarray]:
        batches = [
            images[start : start + self.max_batch_size]
            for start in range(0, images.shape[0], self.max_batch_size)
        ]
        results = await asyncio.gather(*(self._infer_batch(client, batch, model, count) for batch in batches))
        return {
            name: np.concatenate([r[name] for r in results]) if len(results) > 1 else results[0][name]
            for name in self._outputs_of(model)
        }

    async def _serves_compact(self, client: triton_aio.InferenceServerClient) -> bool:
        if self._compact is None:
            with _unavailable_on_failure(self.url):
                await self._learn_models(client)
        return bool(self._compact)

    async def _learn_models(
        self, client: triton_aio.InferenceServerClient, config: mc.ModelConfig | None = None
    ) -> None:
        """What the server serves: ``ich_ensemble``'s outputs, and whether the compact ensemble is ready."""
        config = config or await self._ensemble_config(client)
        served = {t.name for t in config.output}
        self._full_outputs = tuple(n for n in (*OUTPUT_NAMES, spec.PROB_MAX) if n in served)
        try:
            self._compact = bool(
                await client.is_model_ready(spec.COMPACT_ENSEMBLE_MODEL, client_timeout=PROBE_TIMEOUT_S)
            )
        except InferenceServerException:
            self._compact = False

    async def _infer_batch(
        self,
        client: triton_aio.InferenceServerClient,
        batch: np.ndarray,
        model: str = spec.ENSEMBLE_MODEL,
        count: bool = True,
    ) -> dict[str, np.ndarray]:
        names = self._outputs_of(model)
        image = InferInput(spec.IMAGE, list(batch.shape), "FP32")
        image.set_data_from_numpy(batch)  # binary tensor data (the gRPC raw_input_contents)
        outputs = [InferRequestedOutput(name) for name in names]
        with _unavailable_on_failure(self.url, warn=True):
            response = await client.infer(model, [image], outputs=outputs, client_timeout=self.timeout_s)
        tensors: dict[str, np.ndarray] = {}
        for name in names:
            value = response.as_numpy(name)
            if value is None:
                raise EngineUnavailableError(f"Triton response lacks {name}", reason="error")
            tensors[name] = value
        if count:
            self.slices_inferred += int(batch.shape[0])  # on the event loop: no lock needed
        return tensors

    async def warm_up(self) -> None:
        """One blank batch through the ensemble when the server is ready now (opens the channel too).

        The server warms its own models (``model_warmup`` in the GPU repository's configs); this pays the
        gateway's side: the gRPC connection and the first request's setup. Not counted as inferred slices.
        """
        if not await self.ready():
            return
        blank = np.zeros((1, spec.IN_CHANNELS, self.input_size, self.input_size), dtype=np.float32)
        model = spec.COMPACT_ENSEMBLE_MODEL if self._compact and not self.full_maps else spec.ENSEMBLE_MODEL
        try:
            await self._infer_batch(self._get_client(), blank, model, count=False)
        except EngineUnavailableError as exc:
            logger.warning("triton warm-up failed: %s", exc)

    async def _ensemble_config(self, client: triton_aio.InferenceServerClient) -> mc.ModelConfig:
        response = await client.get_model_config(spec.ENSEMBLE_MODEL, client_timeout=PROBE_TIMEOUT_S)
        config: mc.ModelConfig = response.config
        return config

    async def ready(self) -> bool:
        """Server ready, ensemble ready, and its input size the one the gateway preprocesses to."""
        try:
            client = self._get_client()
            if not await client.is_server_ready(client_timeout=PROBE_TIMEOUT_S):
                return False
            if not await client.is_model_ready(spec.ENSEMBLE_MODEL, client_timeout=PROBE_TIMEOUT_S):
                return False
            config = await self._ensemble_config(client)
        except (InferenceServerException, EngineUnavailableError, grpc.RpcError, OSError, TimeoutError):
            return False
        try:
            served_size = repository.input_size_of(config)
        except repository.RepositoryError as exc:
            logger.error("Triton serves an unexpected ensemble: %s", exc)
            return False
        if served_size != self.input_size:
            logger.error("Triton's ensemble takes %d px, the gateway %d px", served_size, self.input_size)
            return False
        if 0 < config.max_batch_size < self.max_batch_size:
            self.max_batch_size = int(config.max_batch_size)
        try:
            await self._learn_models(client, config)
        except (InferenceServerException, grpc.RpcError, OSError, TimeoutError):
            return False
        return True

    async def models(self) -> list[ModelInfo]:
        """The ensemble and its step models as the server reports them.

        Raises:
            EngineUnavailableError: the server cannot be reached.
        """
        with _unavailable_on_failure(self.url):
            client = self._get_client()
            ensemble = await self._ensemble_config(client)
            names = [spec.ENSEMBLE_MODEL, *repository.ensemble_step_models(ensemble)]
            index = await client.get_model_repository_index(client_timeout=PROBE_TIMEOUT_S)
            ready = {(m.name, m.version) for m in index.models if m.state == "READY"}
            entries = [
                describe_model(ensemble, _versions(index, ensemble.name), ready=_ready(ready, ensemble.name))
            ]
            for name in names[1:]:
                response = await client.get_model_config(name, client_timeout=PROBE_TIMEOUT_S)
                entries.append(
                    describe_model(response.config, _versions(index, name), ready=_ready(ready, name))
                )
        return entries

    async def close(self) -> None:
        """Close the gRPC channel."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except RuntimeError:  # the channel's loop is already gone (process shutdown)
                logger.debug("triton client closed after its event loop", exc_info=True)


def _versions(index: Any, name: str) -> list[str]:
    return sorted({m.version for m in index.models if m.name == name and m.version}, key=_version_key)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)


def _ready(ready: set[tuple[str, str]], name: str) -> bool:
    return any(model_name == name for model_name, _ in ready)
