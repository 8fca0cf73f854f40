"""``GET /v1/models``: which ensemble, version and engine answer the cases."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.auth import require_api_key
from api.decision import decision_for
from api.deps import EngineDep, SettingsDep
from api.engines import EngineUnavailableError
from api.errors import service_unavailable
from api.schemas import ERROR_RESPONSES, ModelsResponse

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


@router.get(
    "/models",
    response_model=ModelsResponse,
    responses={k: v for k, v in ERROR_RESPONSES.items() if k in (401, 503)},
)
async def list_models(engine: EngineDep, settings: SettingsDep) -> ModelsResponse:
    """The engine, model version, input size, threshold and the ensemble's member models."""
    try:
        models = await engine.models()
    except EngineUnavailableError as exc:
        raise service_unavailable(
            "engine_unavailable", "the inference engine is unavailable; retry later", settings.retry_after_s
        ) from exc
    decision = decision_for(settings)
    return ModelsResponse(
        engine=engine.name,
        model_version=engine.model_version,
        input_size=engine.input_size,
        threshold=decision.threshold,
        indeterminate_band=decision.band,
        models=models,
    )
