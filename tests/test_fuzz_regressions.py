"""Inputs that once crashed or hung the decoder (found by ``benchmarks/fuzz_decoder.py``,
kept in ``tests/fuzz_regressions/``), and a short fuzz run: every input decodes or raises
a :class:`~mixcodec.errors.MixcodecError`."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

ROOT = Path(__file__).resolve().parents[1]
KEPT = sorted((ROOT / "tests" / "fuzz_regressions").glob("*.mxc"))
#: A safety net against hangs, far above any decode of these small inputs (not a speed test).
TEST_HANG_SECONDS = 300.0


def _load_fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_decoder", ROOT / "benchmarks" / "fuzz_decoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzzer = _load_fuzzer()


@pytest.fixture(autouse=True)
def conformance_models(monkeypatch):
    monkeypatch.setenv("MIXCODEC_MODELS", os.pathsep.join(map(str, fuzzer.conformance.MODEL_FOLDERS)))


@pytest.mark.parametrize("path", KEPT, ids=[p.stem for p in KEPT])
def test_kept_input_is_refused_cleanly(path):
    assert fuzzer.check_input(path.read_bytes(), max_pixels=fuzzer.MAX_PIXELS, hang_seconds=TEST_HANG_SECONDS) is None


@settings(max_examples=40, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(fuzzer.mutated(fuzzer.seeds()))
def test_mutated_conformance_files_decode_or_fail_cleanly(data):
    assert fuzzer.check_input(data, max_pixels=fuzzer.MAX_PIXELS, hang_seconds=TEST_HANG_SECONDS) is None
