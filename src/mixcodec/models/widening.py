"""Function-preserving widening of a transform: the synthesis ``g_s`` (``ModelConfig.n_s``)
or the analysis ``g_a`` (``ModelConfig.n_a``).

A trained transform of width ``n`` is embedded in a fresh one of width ``n' > n``: old
channels keep indices ``0 .. n-1`` everywhere (for a sub-pixel convolution, whose output
channel ``c`` is made of rows ``4c .. 4c+3``, that is rows ``0 .. 4n-1``), and every
tensor's old block is copied.  The new entries follow one rule per kind of channel:

* **stream** channels, the ones that run through a whole stage (the residual and
  attention shortcuts, the outputs of GDN/IGDN and of the strided or sub-pixel skips): a new one
  is written with zero weights and bias, so it is exactly 0 in the widened model, and
  read with fresh (full-size) weights.  The writes get a gradient at once through the
  reads; the reads start learning as soon as the channel is non-zero.  One mapping
  (the prefix) serves the whole stage, so every shortcut adds old to old and new to new.
* **internal** channels, inside a residual block or an attention unit: a new one is
  written with fresh weights (a zero write would stay at the kink of the ReLU, where
  it gets no gradient) and read with zero weights, so it does not reach the output
  until the reads learn.

The input (image or latent) and output (latent or image) widths stay as they are.
No new channel is zero on both sides, and the widened transform computes what the narrow
one did (up to the order of floating-point sums).  GDN/IGDN keep their fresh ``β`` and
``γ`` for the new rows and columns: the fresh off-diagonal ``γ`` is exactly 0, so
``γ[old, new] = 0`` and new channels do not change the normalization of old ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import GDN, AttentionUnit, ResidualBlock, ResidualBlockUpsample, ResidualBlockWithStride

#: The convolutions of each block whose new output channels ("out") or new input channels
#: ("in") are internal to the block; every other channel of a transform is a stream channel.
INTERNAL_CHANNELS: dict[type, dict[str, tuple[str, ...]]] = {
    ResidualBlock: {"body.0": ("out",), "body.2": ("in",)},
    ResidualBlockWithStride: {"body.0": ("out",), "body.2": ("in",)},
    ResidualBlockUpsample: {"body.0.0": ("out",), "body.2": ("in",)},
    AttentionUnit: {"body.0": ("out",), "body.2": ("out", "in"), "body.4": ("in",)},
}


def _internal_roles(transform: nn.Module) -> dict[str, tuple[str, ...]]:
    roles = {}
    for name, module in transform.named_modules():
        for child, kinds in INTERNAL_CHANNELS.get(type(module), {}).items():
            roles[f"{name}.{child}" if name else child] = kinds
    return roles


def widen(transform: nn.Sequential, narrow: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The state of the (wider, freshly initialized) ``transform`` with ``narrow`` embedded.

    Args:
        transform: the wide transform (``g_s`` or ``g_a``); its current values are the fresh
            initialization that the new entries keep where the rules above do not set them to zero.
        narrow: a state dict holding the narrower transform under ``prefix`` (``"g_s."``,
            ``"g_a."``; other keys are ignored).
    Returns:
        ``{prefix + name: tensor}`` for every tensor of ``transform``.
    Raises:
        ValueError: a tensor of ``narrow`` is larger than its counterpart in ``transform``, or
            a module of ``transform`` is of a kind this function cannot widen.
    """
    roles = _internal_roles(transform)
    fresh = transform.state_dict()
    widened = {}
    for name, module in transform.named_modules():
        if isinstance(module, nn.Conv2d):
            kinds = roles.get(name, ())
            weight, bias = fresh[f"{name}.weight"].clone(), fresh[f"{name}.bias"].clone()
            old_weight, old_bias = narrow[f"{prefix}{name}.weight"], narrow[f"{prefix}{name}.bias"]
            rows, cols = old_weight.shape[:2]
            if rows > weight.shape[0] or cols > weight.shape[1]:
                raise ValueError(f"{prefix}{name}: cannot narrow {tuple(old_weight.shape)} to {tuple(weight.shape)}")
            if "out" not in kinds:  # new stream channels are written with zeros
                weight[rows:], bias[rows:] = 0, 0
            if "in" in kinds:  # new internal channels are read with zeros
                weight[:rows, cols:] = 0
            weight[:rows, :cols], bias[:rows] = old_weight, old_bias
            widened[f"{name}.weight"], widened[f"{name}.bias"] = weight, bias
        elif isinstance(module, GDN):
            beta, gamma = fresh[f"{name}.beta"].clone(), fresh[f"{name}.gamma"].clone()
            old = narrow[f"{prefix}{name}.beta"].shape[0]
            beta[:old], gamma[:old, :old] = narrow[f"{prefix}{name}.beta"], narrow[f"{prefix}{name}.gamma"]
            widened[f"{name}.beta"], widened[f"{name}.gamma"] = beta, gamma
        elif any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"{prefix}{name}: cannot widen a {type(module).__name__}")
    missing = set(fresh) - set(widened)
    if missing:
        raise ValueError(f"{prefix}: tensors not widened: {', '.join(sorted(missing))}")
    return {prefix + name: value.to(fresh[name].dtype) for name, value in widened.items()}


@torch.no_grad()
def new_channel_energy(transform: nn.Sequential, x: Tensor, narrow: int, wide: int) -> list[float]:
    """Fraction of the energy (sum of squares) in channels ``narrow .. wide-1`` of the output
    of every top-level stage of ``transform`` that is ``wide`` channels wide (the stages that
    output the latent or the image are left out): 0 right after widening, and it rises as the
    new channels wake up.

    Args:
        x: the transform's input: for ``g_s`` the latent ``(B, m, h, w)`` (quantized, times
            the inverse gain), for ``g_a`` the image ``(B, 3, H, W)`` in [0, 1].
        narrow, wide: the widths before and after widening (``n`` and ``n_s`` or ``n_a``).
    """
    fractions = []
    for stage in transform:
        x = stage(x)
        if x.dim() == 4 and x.shape[1] == wide:
            energy = x.double().square().sum(dim=(0, 2, 3))
            fractions.append(float(energy[narrow:].sum() / energy.sum().clamp_min(1e-30)))
    return fractions
