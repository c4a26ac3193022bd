"""One model, several qualities: the gain vectors, their files and their registry entries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import smooth_image
from mixcodec import codec
from mixcodec.bitstream import FormatError, pack, parse
from mixcodec.models.context_model import QualityGains
from mixcodec.models.registry import find_model, installed_models, read_infos


def test_integer_qualities_select_rows_and_fractions_interpolate_geometrically():
    gains = QualityGains(3, 2)
    gains.init_from_lmbdas([0.001, 0.004, 0.016])
    gain, inverse = gains(torch.tensor([1.0, 2.0, 3.0, 2.5, 9.0]))
    assert gain.shape == (5, 2, 1, 1)
    assert torch.allclose(gain[:3, 0, 0, 0], torch.tensor([0.5, 1.0, 2.0]))  # sqrt(λ / median λ)
    assert torch.allclose(gain[3], torch.full((2, 1, 1), math.sqrt(2.0)))  # halfway between 1 and 2 in the log domain
    assert torch.equal(gain[4], gain[2])  # clamped to the highest quality
    assert torch.allclose(gain * inverse, torch.ones_like(gain))  # initialized as inverses


def test_a_single_rate_model_has_one_quality(tiny_model):
    (info,) = read_infos(tiny_model().path)
    assert info.quality == 1 and info.config.qualities == 1


def test_higher_qualities_give_larger_files_and_each_decodes_exactly(tiny_ladder):
    array = smooth_image(96, 128, seed=7)
    sizes = []
    for info in (i for i in installed_models() if i.name == "ladder"):
        data = codec.compress(array, model=info)
        header, net, y = codec.decode_latents(data)
        assert header.quality == info.quality
        x = torch.from_numpy(array).permute(2, 0, 1)[None].contiguous().float() / 255
        assert torch.equal(y, codec.quantize_latents(net, codec._pad(x), info.quality)[0])
        assert np.asarray(codec.decompress(data)).shape == array.shape
        sizes.append(len(data))
    assert sizes[1] > sizes[0]


def test_fractional_qualities_lie_between_the_levels(tiny_ladder):
    array = smooth_image(96, 128, seed=8)
    sizes = [len(codec.compress(array, model="ladder", quality=q)) for q in (1, 1.5, 2)]
    assert sizes[0] < sizes[1] < sizes[2]
    info = find_model("ladder", 1.3)
    assert info.quality == round(1.3 * 256) / 256 and info.lmbda == pytest.approx(0.001 * 16**info.quality / 16)
    data = codec.compress(array, model=info)
    header, net, y = codec.decode_latents(data)
    assert header.quality == info.quality
    x = torch.from_numpy(array).permute(2, 0, 1)[None].contiguous().float() / 255
    assert torch.equal(y, codec.quantize_latents(net, codec._pad(x), info.quality)[0])
    np.testing.assert_array_equal(np.asarray(codec.decompress(data)), codec.reconstruct(net, y, info.quality, 96, 128))


def test_a_quality_the_model_does_not_have_is_refused(tiny_ladder):
    for quality in (0.5, 2.01):
        with pytest.raises(LookupError, match=f"no quality {quality:g}"):
            find_model("ladder", quality)
    info = find_model("ladder", 1)
    header, z, y = parse(codec.compress(smooth_image(32, 32), model=info))
    header.quality = 7
    with pytest.raises(FormatError, match="quality 7"):
        codec.decode_latents(pack(header, z, y), model=info)


def test_the_default_quality_is_the_lower_middle_one(tiny_ladder):
    assert find_model("ladder").quality == 1
