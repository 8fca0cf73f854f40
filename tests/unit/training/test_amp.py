"""The warning a bf16 run gives on a CPU that emulates bf16."""

from __future__ import annotations

import logging

import pytest
import torch

from training import amp


@pytest.mark.parametrize(
    ("asked", "device", "native", "warned"),
    [
        ("bf16", "cpu", False, True),
        ("bf16", "cpu", True, False),
        ("none", "cpu", False, False),
        ("bf16", "cuda:0", False, False),
    ],
)
def test_only_bf16_on_an_emulating_cpu_warns(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    asked: str,
    device: str,
    native: bool,
    warned: bool,
) -> None:
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger=amp.__name__):
        assert amp.warn_if_bf16_emulated(asked, device) is warned
    assert any('amp = "none"' in r.getMessage() for r in caplog.records) is warned


def test_a_cpu_without_avx512_has_no_native_bf16() -> None:
    # AVX512-BF16 and AMX both come with AVX-512, so a CPU torch dispatches as AVX2 or lower cannot have it.
    native = amp.cpu_has_native_bf16()
    assert isinstance(native, bool)
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):
        assert native is False
