"""The transforms compute the same values at inference (sums written in place) as in training."""

from __future__ import annotations

import pytest
import torch

from mixcodec.models import transforms


def moved(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``module`` with every weight moved off its initialization (non-trivial GDN β and γ)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1 + 0.3 * torch.randn_like(p)).add_(0.05 * torch.randn_like(p))
    return module.eval()


@pytest.mark.parametrize("backbone", transforms.BACKBONES)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(
    "name, build, shape",
    [
        ("analysis", lambda b: transforms.analysis(b, 8, 12), (1, 3, 64, 48)),
        ("synthesis", lambda b: transforms.synthesis(b, 8, 12), (1, 12, 4, 3)),
    ],
)
def test_inference_gives_the_training_values_bit_for_bit_and_leaves_the_input(
    name, build, shape, backbone, memory_format
):
    module = moved(build(backbone)).to(memory_format=memory_format)
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    kept = x.clone()
    with torch.enable_grad():
        expected = module(x)
    assert expected.requires_grad  # the out-of-place path ran
    with torch.no_grad():
        got = module(x)
    assert torch.equal(got, expected.detach()), name
    assert torch.equal(x, kept)
