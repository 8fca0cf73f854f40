"""``ich-serve``: settings from the environment, command-line overrides, logging with request ids."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from api import main as entry
from api.errors import request_id_var
from api.settings import get_settings


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """uvicorn.run replaced by a recorder; logging and the settings cache restored afterwards."""
    calls: dict[str, Any] = {}

    def fake_run(app: str, **kwargs: Any) -> None:
        calls["app"] = app
        calls.update(kwargs)

    monkeypatch.setattr(entry.uvicorn, "run", fake_run)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    get_settings.cache_clear()
    yield calls
    get_settings.cache_clear()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_serves_the_app_factory_on_the_configured_port(
    captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICH_PORT", "9123")
    monkeypatch.setenv("ICH_LOG_LEVEL", "WARNING")
    entry.main([])
    assert captured["app"] == "api.app:create_app" and captured["factory"] is True
    assert (captured["host"], captured["port"], captured["workers"]) == ("0.0.0.0", 9123, 1)
    assert captured["log_level"] == "warning"
    assert logging.getLogger().level == logging.WARNING


def test_command_line_overrides_the_address(
    captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICH_PORT", "9123")
    entry.main(["--host", "127.0.0.1", "--port", "9999", "--workers", "2"])
    assert (captured["host"], captured["port"], captured["workers"]) == ("127.0.0.1", 9999, 2)


def test_log_lines_carry_the_request_id(captured: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    entry.main([])
    token = request_id_var.set("req-77")
    try:
        logging.getLogger("api.test").warning("hello")
    finally:
        request_id_var.reset(token)
    assert "[req-77] hello" in capsys.readouterr().err
