"""The gateway against its own OpenAPI document, as schemathesis drives it: every route, no 5xx, every
response (status, content type, body) as the document says.

A real ``ich-serve`` (uvicorn, the embedded engine on the tiny repository, SQLite job store) on loopback;
schemathesis generates requests from ``/openapi.json`` (valid and invalid ones), a bounded number per route
so that the whole run takes seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import serve

pytestmark = pytest.mark.slow

#: STOW-RS bodies (``multipart/related``, one DICOM file per part): schemathesis has no serializer for the
#: media type, so it sends raw bytes, which the gateway must refuse as documented.
schemathesis.openapi.media_type("multipart/related", st.binary(max_size=512))

#: Examples per route: enough to hit each route's error paths, few enough for two shared cores.
EXAMPLES_PER_ROUTE = 15
CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)


@pytest.fixture(scope="module")
def api_schema(
    tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[schemathesis.BaseSchema]:
    """The running gateway's OpenAPI document, loaded by schemathesis (requests go to that gateway)."""
    folder = tmp_path_factory.mktemp("openapi-fuzz")
    settings_ = {
        "ICH_MODEL_REPOSITORY": str(tiny_repository),
        "ICH_INTRA_OP_THREADS": "1",
        "ICH_THREADS": "2",
        "ICH_MAX_UPLOAD_BYTES": str(1024 * 1024),
        "ICH_DATA_DIR": str(folder / "data"),
        "ICH_JOB_WORKERS": "0",  # the fuzzer's studies are never analysed: requests only
    }
    with serve(folder / "gateway.log", **settings_) as base:
        yield schemathesis.openapi.from_url(f"{base}/openapi.json")


def _operations(api: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    return [result.ok() for result in api.get_all_operations()]


def test_every_route_answers_as_its_schema_says(api_schema: schemathesis.BaseSchema) -> None:
    # One property-based run per operation. (schemathesis' pytest plugin, ``from_fixture``, does not run
    # under this pytest, so the operations are walked here; each failure still names its operation.)
    operations = _operations(api_schema)
    assert {op.path for op in operations} >= {"/v1/cases", "/v1/studies", "/v1/studies/{study_id}", "/readyz"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_ROUTE,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=30)

        try:
            check()
        except Exception as exc:
            raise AssertionError(f"{operation.label}: {exc}") from exc
