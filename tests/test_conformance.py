"""Conformance bitstreams (``tests/conformance/``): every file decodes to the pixels and
latents recorded in its manifest, and re-encoding its image gives its bytes again.

A change that alters what any existing file decodes to fails here.  The files, the
manifest and how to add entries: ``tests/conformance/make.py``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from mixcodec.entropy.distributions import ENTROPY_FAMILIES
from mixcodec.models.registry import DEFAULT_MODEL, model_folders, read_infos
from mixcodec.models.transforms import BACKBONES


def _load_make():
    path = Path(__file__).parent / "conformance" / "make.py"
    spec = importlib.util.spec_from_file_location("conformance_make", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


conformance = _load_make()
ENTRIES = conformance.read_manifest()["entries"]


@pytest.fixture(autouse=True)
def conformance_models(monkeypatch):
    monkeypatch.setenv("MIXCODEC_MODELS", os.pathsep.join(map(str, conformance.MODEL_FOLDERS)))


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_file_decodes_and_reencodes_as_recorded(entry):
    assert conformance.check_entry(entry) == []


def test_the_files_cover_every_shipped_model_family_and_release():
    listed = {e["file"] for e in ENTRIES}
    assert listed == {f"files/{p.name}" for p in (conformance.HERE / "files").glob("*.mxc")}  # no stray or missing file
    for path in model_folders()[0].glob("*.safetensors"):  # each model inside the package, at two qualities or more
        info = read_infos(path)[0]
        assert len({e["quality"] for e in ENTRIES if e["model"] == f"{info.name}@{info.version}"}) >= 2, info.label
    tiny = {e["model"] for e in ENTRIES if e["model"].startswith("models/")}
    assert tiny == {f"models/tiny-{b}-{f}.safetensors" for b in BACKBONES for f in ENTROPY_FAMILIES}
    images = {e["image"] for e in ENTRIES}
    assert {"images/gray-21x30.png", "images/rgb-37x53.png", "images/rgb-1x1.png"} <= images
    releases = {e["encoder"] for e in ENTRIES if e["model"] == DEFAULT_MODEL}
    assert {"498dbfe", "c07a4a4"} <= releases  # files written by the two releases before 0.2.0


def _entry_on_another_machine(ident: str) -> dict:
    """An entry whose recorded pixels hash is not what this machine decodes: as on a CPU whose
    float32 synthesis lands on the other side of a rounding boundary somewhere."""
    entry = next(e for e in ENTRIES if e["id"] == ident)
    return {**entry, "pixels_sha256": "0" * 64}


def _decode_pixels_shifted(monkeypatch, pick) -> None:
    """Make the float32 decode differ by one level from the float64 reference at one value
    chosen by ``pick(values) -> boolean mask``."""
    from mixcodec import codec

    real = codec.decode_pixels

    def shifted(data, *args, **kwargs):
        header, pixels = real(data, *args, **kwargs)
        values = conformance.reference_values(data)
        index = np.argwhere(pick(values) & (values > 1) & (values < 254))[0]
        pixels = pixels.copy()
        pixels[tuple(index)] = np.round(values[tuple(index)]) + (
            -1 if values[tuple(index)] % 1 >= 0.5 else 1
        )  # across the boundary
        return header, pixels

    monkeypatch.setattr(codec, "decode_pixels", shifted)


def test_pixels_of_another_machine_conform_when_they_round_the_float64_reference():
    entry = _entry_on_another_machine("tiny-crm-gllmm-rgb-37x53-q1.5")
    assert conformance.check_entry(entry) == []
    tampered = {**entry, "reference_sha256": "0" * 64}
    assert conformance.check_entry(tampered) == [
        f"{entry['id']}: decodes to other pixels, and its float64 reference changed too"
    ]


def test_pixels_of_another_machine_may_differ_by_one_level_only_at_a_rounding_boundary(monkeypatch):
    entry = _entry_on_another_machine("tiny-crm-gllmm-rgb-37x53-q1.5")
    _decode_pixels_shifted(monkeypatch, lambda v: np.abs(v - np.floor(v) - 0.5) < conformance.ROUNDING_MARGIN)
    assert conformance.check_entry(entry) == []
    _decode_pixels_shifted(monkeypatch, lambda v: np.abs(v - np.floor(v) - 0.5) > 0.3)
    assert conformance.check_entry(entry) == [
        f"{entry['id']}: decodes to other pixels than its float64 reference, away from rounding boundaries"
    ]
