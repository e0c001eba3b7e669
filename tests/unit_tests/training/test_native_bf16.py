"""distill's bf16 default follows the CPU, and an AVX2 cap on oneDNN (the emulated AVX2
machine of BENCHMARKS.md) counts as no native bf16."""

from __future__ import annotations

import pytest

from langchain_divconq.training.distillation import cpu_has_native_bf16


@pytest.mark.parametrize("cap", ["AVX2", "avx512_core", "AVX512_CORE_VNNI"])
def test_a_onednn_cap_below_bf16_means_no_native_bf16(
    monkeypatch: pytest.MonkeyPatch, cap: str
) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert cpu_has_native_bf16() is False


def test_without_a_cap_the_cpu_flags_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    from pathlib import Path

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert cpu_has_native_bf16() is ("avx512_bf16" in flags or "amx_bf16" in flags)
