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

That rule (``"zeros"``) leaves the new channels to grow from nothing, and in training they
barely do (docs/training.md: 0.02 % of a stage's energy after 870 steps at lr 1e-4).  The
rule ``"copies"`` (Net2Net's wider layers, Chen, Goodfellow and Shlens, ICLR 2016) starts
them awake: new channel ``k`` is a copy of old channel ``sources[k]`` (one mapping for each pair of
widths, so the same for every stream channel of the transform), written with that
channel's weights and bias (``β`` and ``γ`` row of GDN/IGDN too, with ``γ[·, new] = 0`` so
that no normalization counts a copy twice), and the weights that read a channel and its
copies split what the old weight read: ``W/c + δ`` and ``W/c − δ`` for ``c`` copies in all,
with a random ``δ`` that sums to zero over them, so that the copies get different gradients
and drift apart while the sum, and so the output, stays what it was.
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


#: The ways :func:`widen` fills the new channels (the module docstring).
WIDENING_RULES = ("zeros", "copies")


def widen(
    transform: nn.Sequential, narrow: dict[str, Tensor], prefix: str, rule: str = "zeros", spread: float = 0.5
) -> dict[str, Tensor]:
    """The state of the (wider, freshly initialized) ``transform`` with ``narrow`` embedded.

    Args:
        transform: the wide transform (``g_s`` or ``g_a``); its current values are the fresh
            initialization that the new entries keep where the rule does not set them.
        narrow: a state dict holding the narrower transform under ``prefix`` (``"g_s."``,
            ``"g_a."``; other keys are ignored).
        rule: ``"zeros"`` or ``"copies"`` (the module docstring).
        spread: for ``"copies"``, the size of ``δ`` relative to ``W/c`` (its standard
            deviation over a tensor); ``δ`` is drawn from the global torch generator.
    Returns:
        ``{prefix + name: tensor}`` for every tensor of ``transform``.
    Raises:
        ValueError: an unknown rule, a tensor of ``narrow`` larger than its counterpart in
            ``transform``, or a module of ``transform`` of a kind this function cannot widen.
    """
    if rule not in WIDENING_RULES:
        raise ValueError(f"unknown widening rule {rule!r}; choose one of {', '.join(WIDENING_RULES)}")
    roles = _internal_roles(transform)
    fresh = transform.state_dict()
    stream = _stream_widths(transform, narrow, prefix) if rule == "copies" else (0, 0)
    widened = {}
    for name, module in transform.named_modules():
        if isinstance(module, nn.Conv2d):
            kinds = roles.get(name, ())
            weight, bias = fresh[f"{name}.weight"].clone(), fresh[f"{name}.bias"].clone()
            old_weight, old_bias = narrow[f"{prefix}{name}.weight"], narrow[f"{prefix}{name}.bias"]
            rows, cols = old_weight.shape[:2]
            if rows > weight.shape[0] or cols > weight.shape[1]:
                raise ValueError(f"{prefix}{name}: cannot narrow {tuple(old_weight.shape)} to {tuple(weight.shape)}")
            if rule == "copies":
                old_weight = _split_reads(old_weight, weight.shape[1], spread)
                widened[f"{name}.weight"] = _copy_writes(old_weight, weight.shape[0], stream)
                widened[f"{name}.bias"] = _copy_writes(old_bias, bias.shape[0], stream)
                continue
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
            if rule == "copies":  # a copy's row is its source's over the old columns, 0 over the new
                sources, zero = _sources(old, beta.shape[0]), fresh[f"{name}.gamma"][0, 1]  # fresh off-diagonal: γ = 0
                beta[old:], gamma[old:, :old], gamma[old:, old:] = beta[sources], gamma[sources, :old], zero
            widened[f"{name}.beta"], widened[f"{name}.gamma"] = beta, gamma
        elif any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"{prefix}{name}: cannot widen a {type(module).__name__}")
    missing = set(fresh) - set(widened)
    if missing:
        raise ValueError(f"{prefix}: tensors not widened: {', '.join(sorted(missing))}")
    return {prefix + name: value.to(fresh[name].dtype) for name, value in widened.items()}


def _stream_widths(transform: nn.Module, narrow: dict[str, Tensor], prefix: str) -> tuple[int, int]:
    """``(narrow, wide)`` width of the stream channels: the width of the transform's GDN/IGDN."""
    pairs = {
        (narrow[f"{prefix}{name}.beta"].shape[0], module.beta.shape[0])
        for name, module in transform.named_modules()
        if isinstance(module, GDN)
    }
    if len(pairs) != 1:
        raise ValueError(f"{prefix}: widening by copies needs GDN/IGDN of one width, found {sorted(pairs)}")
    return pairs.pop()


def _sources(narrow: int, wide: int) -> Tensor:
    """The old channel each of the ``wide - narrow`` new channels copies, spread evenly."""
    return torch.arange(wide - narrow) * narrow // (wide - narrow)


def _split_reads(weight: Tensor, cols: int, spread: float) -> Tensor:
    """``weight`` ``(rows, narrow, k, k)`` reading also the copies, ``(rows, cols, k, k)``:
    each old column shared with its copies as ``W/c ± δ`` (unchanged when ``cols`` is its own
    column count: an input that widening leaves as it is)."""
    narrow = weight.shape[1]
    if narrow == cols:
        return weight
    sources = _sources(narrow, cols)
    share = 1 + torch.bincount(sources, minlength=narrow).to(weight.dtype)
    weight = weight / share[None, :, None, None]
    copies = weight[:, sources]
    delta = spread * copies.std() * torch.randn(copies.shape, dtype=weight.dtype)
    return torch.cat([weight.index_add(1, sources, -delta), copies + delta], dim=1)


def _copy_writes(tensor: Tensor, rows: int, stream: tuple[int, int]) -> Tensor:
    """``tensor`` (weight or bias, old rows first) with the rows of the copies appended,
    ``rows`` in all (unchanged when that is its own row count: an output that widening leaves
    as it is).  A sub-pixel convolution that writes ``g`` rows per stream channel (``g·narrow``
    rows before, ``g·wide`` after) copies rows ``g·s .. g·s + g - 1`` of source ``s``."""
    old = tensor.shape[0]
    if old == rows:
        return tensor
    narrow, wide = stream
    group = old // narrow if old % narrow == 0 and rows * narrow == old * wide else 1
    sources = _sources(old // group, rows // group)
    index = (sources[:, None] * group + torch.arange(group)).reshape(-1)
    return torch.cat([tensor, tensor[index]])


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
