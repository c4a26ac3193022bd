"""Shared fixtures: tiny randomly initialized models exported to real weight files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixcodec.models.context_model import ContextMixtureModel, ModelConfig
from mixcodec.models.registry import ModelInfo, export


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model(backbone, family, m) -> ModelInfo`` of a small (N=8, M=m or 8) random model."""
    cache: dict[tuple[str, str, int | None], ModelInfo] = {}
    folder = tmp_path_factory.mktemp("weights")

    def make(backbone: str = "crm", family: str = "gllmm", m: int | None = None) -> ModelInfo:
        key = (backbone, family, m)
        if key not in cache:
            torch.manual_seed(len(cache))
            config = ModelConfig(backbone=backbone, family=family, n=8, m=m, hidden=(24, 32))
            model = ContextMixtureModel(config)
            path = (
                folder / f"{backbone}-{family}-m{config.m}" / "tiny.safetensors"
            )  # a folder each: $MIXCODEC_MODELS sees one "tiny"
            path.parent.mkdir()
            (cache[key],) = export(model.state_dict(), config, path, name="tiny", lmbdas=[0.01])
        return cache[key]

    return make


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic HxWx3 uint8 test image: gradients plus noise and an edge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width, 1), yy * 255 / max(height, 1), (xx + yy) % 64 * 4], axis=2)
    base[: height // 2, : width // 3] = 200
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture()
def installed_tiny(tiny_model, monkeypatch):
    """The tiny GLLMM model made visible to the registry through ``$MIXCODEC_MODELS``."""
    info = tiny_model()
    monkeypatch.setenv("MIXCODEC_MODELS", str(info.path.parent))
    return info


@pytest.fixture()
def tiny_ladder(tmp_path_factory, monkeypatch):
    """A tiny variable-rate model named ``ladder`` (qualities 1 and 2, gains a factor 4 apart)
    visible through ``$MIXCODEC_MODELS``."""
    folder = tmp_path_factory.mktemp("ladder")
    torch.manual_seed(10)
    config = ModelConfig(backbone="crm", family="gllmm", n=8, hidden=(24, 32), qualities=2)
    model = ContextMixtureModel(config)
    model.gains.init_from_lmbdas([0.001, 0.016])
    export(model.state_dict(), config, folder / "ladder.safetensors", name="ladder", lmbdas=[0.001, 0.016])
    monkeypatch.setenv("MIXCODEC_MODELS", str(folder))
    return folder
