"""Widening the synthesis or analysis transform keeps what it computes and lets the new channels learn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import smooth_image
from mixcodec import codec
from mixcodec.errors import ConfigError
from mixcodec.models.context_model import ContextMixtureModel, ModelConfig
from mixcodec.models.registry import export, load_model
from mixcodec.models.widening import new_channel_energy, widen
from mixcodec.train import TrainConfig, load_matching


def trained_like(config: ModelConfig, seed: int = 0) -> ContextMixtureModel:
    """A model whose every weight is moved off its initialization (as training would),
    so that GDN's β and γ and all biases are non-trivial."""
    torch.manual_seed(seed)
    model = ContextMixtureModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.3 * torch.randn_like(p)).add_(0.05 * torch.randn_like(p))
    return model


def narrow_and_wide(
    config: ModelConfig, seed: int, rule: str = "zeros", **widths: int
) -> tuple[ContextMixtureModel, ContextMixtureModel]:
    """A trained-like model of ``config`` and the model with ``widths`` (``n_s``, ``n_a``)
    that ``load_matching`` embeds it in by ``rule``, every tensor accounted for."""
    narrow = trained_like(config, seed)
    wide = ContextMixtureModel(dataclasses.replace(config, **widths))
    assert load_matching(wide, narrow.state_dict(), rule) == []
    return narrow, wide


def close_for(rule: str, reference: torch.Tensor) -> dict[str, float]:
    """Tolerances of ``assert_close`` against ``reference``: "zeros" adds exact zeros to every
    sum; "copies" splits each sum's terms in two, which changes the rounding, and the
    trained-like models here have activations in the thousands, so its bound scales with them."""
    return dict(rtol=1e-5, atol=1e-5 * (1 if rule == "zeros" else float(reference.abs().max())))


def assert_new_channels_start(rule: str, energy: list[float]) -> None:
    """Right after widening, new channels are silent (``"zeros"``) or carry about their share
    of the energy (``"copies"``: 4 of 12 channels copy 4 of the 8 old ones)."""
    assert len(energy) == 7  # the seven stages of g_s or g_a that are 12 wide
    if rule == "zeros":
        assert energy == [0.0] * 7
    else:
        assert min(energy) > 0.05


@pytest.mark.parametrize("rule", ["zeros", "copies"])
@pytest.mark.parametrize("backbone", ["crm", "residual"])
def test_the_widened_synthesis_reconstructs_the_same_image(backbone, rule):
    config = ModelConfig(backbone=backbone, n=8, m=8, hidden=(16, 24), qualities=2)
    narrow, wide = narrow_and_wide(config, 0, rule, n_s=12)
    assert wide.g_s[-1][0].weight.shape[1] == 12
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        for q in (1, 2):
            y_hat = narrow.analyse(x, q).round()
            reference = narrow.synthesize(y_hat, q)
            torch.testing.assert_close(wide.synthesize(y_hat, q), reference, **close_for(rule, reference))
        # the rest of the model is copied as it is
        torch.testing.assert_close(wide(x, 2, noise=False)["y"], narrow(x, 2, noise=False)["y"])
    assert_new_channels_start(rule, new_channel_energy(wide.g_s, narrow.analyse(x, 2).round(), 8, 12))


def adam_steps(module: torch.nn.Module, loss, steps: int = 4) -> None:
    """``steps`` Adam steps (lr 1e-3) on ``loss()`` over the parameters of ``module``."""
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()


def train_briefly(transform: torch.nn.Module, loss) -> None:
    """Four Adam steps on ``loss()``, asserting that every entry of ``transform`` that was
    zero before them moves: widening leaves no new channel zero on both sides."""
    zeros = {name: p.detach() == 0 for name, p in transform.named_parameters()}
    assert sum(int(z.sum()) for z in zeros.values()) > 1000
    adam_steps(transform, loss)
    for name, p in transform.named_parameters():
        if zeros[name].any():
            assert (p.detach()[zeros[name]] != 0).any(), name


def test_new_channels_of_the_widened_synthesis_wake_up():
    """Every entry that widening sets to zero (new stream channels' writes, new internal
    channels' reads) moves within a few steps, and the new stream channels carry energy."""
    config = ModelConfig(n=8, m=8, hidden=(16, 24), qualities=1)
    _, wide = narrow_and_wide(config, 1, n_s=12)
    torch.manual_seed(2)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        y_hat = wide.analyse(x, 1).round()
    train_briefly(wide.g_s, lambda: (wide.synthesize(y_hat, 1) - x).square().mean())
    assert min(new_channel_energy(wide.g_s, y_hat, 8, 12)) > 0


@pytest.mark.parametrize("rule", ["zeros", "copies"])
@pytest.mark.parametrize("backbone", ["crm", "residual"])
def test_the_widened_analysis_gives_the_same_latent(backbone, rule):
    config = ModelConfig(backbone=backbone, n=8, m=8, hidden=(16, 24), qualities=2)
    narrow, wide = narrow_and_wide(config, 3, rule, n_a=12, n_s=12)  # both at once
    assert wide.g_a[0].skip.weight.shape[0] == 12 and wide.g_a[-2].weight.shape[1] == 12
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        for q in (1, 2):
            torch.testing.assert_close(wide.analyse(x, q), narrow.analyse(x, q), rtol=1e-5, atol=1e-5)
            out, ref = wide(x, q, noise=False), narrow(x, q, noise=False)
            torch.testing.assert_close(out["x_hat"], ref["x_hat"], **close_for(rule, ref["x_hat"]))
    assert_new_channels_start(rule, new_channel_energy(wide.g_a, x, 8, 12))


def test_new_channels_of_the_widened_analysis_wake_up():
    config = ModelConfig(n=8, m=8, hidden=(16, 24), qualities=1)
    _, wide = narrow_and_wide(config, 2, n_a=12)
    torch.manual_seed(5)
    x = torch.rand(4, 3, 64, 64)
    target = torch.randn_like(wide.analyse(x, 1))
    train_briefly(wide.g_a, lambda: (wide.analyse(x, 1) - target).square().mean())
    assert min(new_channel_energy(wide.g_a, x, 8, 12)) > 0


@pytest.mark.parametrize("transform", ["g_s", "g_a"])
def test_copies_start_as_their_sources_and_drift_apart(transform):
    """With the rule "copies" every new stream channel equals its source at first (so the
    output is unchanged) and differs from it after a few Adam steps: the split reads give
    the two different gradients."""
    config = ModelConfig(n=8, m=8, hidden=(16, 24), qualities=1)
    _, wide = narrow_and_wide(config, 4, "copies", **{f"n_{transform[-1]}": 12})
    torch.manual_seed(6)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        y_hat = wide.analyse(x, 1).round()
    module, source = getattr(wide, transform), torch.arange(4) * 8 // 4  # new channel 8 + i copies source[i]

    def largest_gap() -> float:
        """Of the first 12-wide stage's output: copy minus source, relative to the output."""
        out = x if transform == "g_a" else y_hat * wide.gains(torch.ones(1))[1]
        with torch.no_grad():
            for stage in module:
                out = stage(out)
                if out.shape[1] == 12:
                    return float((out[:, 8:] - out[:, source]).abs().max() / out.abs().max())
        raise AssertionError("no stage is 12 wide")

    assert largest_gap() == 0
    if transform == "g_a":
        target = torch.randn_like(y_hat)
        loss = lambda: (wide.analyse(x, 1) - target).square().mean()  # noqa: E731
    else:
        loss = lambda: (wide.synthesize(y_hat, 1) - x).square().mean()  # noqa: E731
    adam_steps(module, loss)
    assert largest_gap() > 1e-3


def test_an_unknown_widening_rule_is_refused():
    config = ModelConfig(n=8, m=8, hidden=(16, 24))
    wide = ContextMixtureModel(dataclasses.replace(config, n_a=12))
    with pytest.raises(ValueError, match="unknown widening rule"):
        widen(wide.g_a, ContextMixtureModel(config).state_dict(), "g_a.", rule="noise")
    with pytest.raises(ConfigError, match="widen_rule"):
        TrainConfig(widen_rule="noise")


@pytest.mark.parametrize("key, prefix", [("n_s", "g_s."), ("n_a", "g_a.")])
def test_widening_refuses_what_it_cannot_embed(key, prefix):
    config = ModelConfig(n=8, m=8, hidden=(16, 24))
    wide = ContextMixtureModel(dataclasses.replace(config, **{key: 12})).state_dict()
    narrow = ContextMixtureModel(config)
    with pytest.raises(ValueError, match="cannot narrow"):
        widen(getattr(narrow, prefix[:-1]), wide, prefix)


@pytest.mark.parametrize("key", ["n_s", "n_a"])
def test_the_config_json_of_models_without_wider_transforms_is_unchanged(key):
    config = ModelConfig(n=64, m=128, hidden=(320, 640), qualities=8)
    assert key not in config.to_json() and getattr(config, key) == 64
    wide = dataclasses.replace(config, **{key: 96})
    assert ModelConfig.from_json(wide.to_json()) == wide and f'"{key}": 96' in wide.to_json()


def test_a_model_with_wider_transforms_is_exported_and_codes_real_files(tmp_path):
    """The widths travel in the weight file, and the widened model's files carry the
    latents the narrow model's do and decode to the same image."""
    config = ModelConfig(n=8, m=8, hidden=(16, 24))
    narrow, wide = narrow_and_wide(config, 6, n_s=12, n_a=12)
    infos = {
        key: export(model.state_dict(), model.config, tmp_path / f"{key}.safetensors", name=key, lmbdas=[0.01])[0]
        for key, model in (("narrow", narrow), ("wide", wide))
    }
    assert load_model(infos["wide"]).config == wide.config
    image = smooth_image(64, 96, seed=7)
    files = {key: codec.compress(image, model=info) for key, info in infos.items()}
    latents = {key: codec.decode_latents(files[key], model=info)[2] for key, info in infos.items()}
    np.testing.assert_array_equal(latents["wide"].numpy(), latents["narrow"].numpy())
    decoded = {key: np.asarray(codec.decompress(files[key], model=info)) for key, info in infos.items()}
    assert decoded["wide"].shape == decoded["narrow"].shape == (64, 96, 3)
    # The same synthesis as the decoder's (the loaded fp16 weights, channels-last latents),
    # before clamping: this trained-like model's output reaches millions in units of the
    # 0-1 range, where the decoded pixels are mostly clamped and compare nothing, and its
    # convolutions choose kernels by channel count, so the two models' sums round differently.
    y_hat = latents["narrow"].float().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = {key: load_model(info).synthesize(y_hat, 1) for key, info in infos.items()}
    peak = float(out["narrow"].abs().max())
    torch.testing.assert_close(out["wide"], out["narrow"], rtol=1e-5, atol=1e-5 * peak)
