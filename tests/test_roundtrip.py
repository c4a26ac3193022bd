"""Real bytes in, exact latents out: every architecture and entropy family, many sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import smooth_image
from mixcodec import codec
from mixcodec.entropy import coding
from mixcodec.entropy.distributions import ENTROPY_FAMILIES, LATENT_MAX, LATENT_MIN
from mixcodec.losses import bits_per_image
from mixcodec.models.registry import load_model


def encoder_latents(info, array):
    net = load_model(info)
    x = torch.from_numpy(array).permute(2, 0, 1)[None].contiguous().float() / 255
    return codec.quantize_latents(net, codec._pad(x), info.quality)


@pytest.mark.parametrize("backbone", ["residual", "crm"])
@pytest.mark.parametrize("family", sorted(ENTROPY_FAMILIES))
def test_every_architecture_and_family_round_trips(tiny_model, backbone, family):
    info = tiny_model(backbone, family)
    array = smooth_image(65, 130, seed=1)
    data = codec.compress(array, model=info)
    header, net, y_decoded = codec.decode_latents(data, model=info)
    y_encoded, _ = encoder_latents(info, array)
    assert torch.equal(y_decoded, y_encoded)
    image = codec.decompress(data, model=info)
    assert image.size == (130, 65)
    np.testing.assert_array_equal(np.asarray(image), codec.reconstruct(net, y_encoded, info.quality, 65, 130))


@pytest.mark.parametrize("m", [4, 12])
def test_latent_channels_other_than_n_round_trip(tiny_model, m):
    info = tiny_model(m=m)
    array = smooth_image(70, 90, seed=6)
    data = codec.compress(array, model=info)
    header, net, y_decoded = codec.decode_latents(data, model=info)
    y_encoded, _ = encoder_latents(info, array)
    assert header.channels == m and y_encoded.shape[1] == m
    assert torch.equal(y_decoded, y_encoded)
    np.testing.assert_array_equal(
        np.asarray(codec.decompress(data, model=info)), codec.reconstruct(net, y_encoded, info.quality, 70, 90)
    )


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (64, 64), (65, 130), (200, 97)])
def test_sizes_round_trip_and_crop_exactly(tiny_model, size):
    info = tiny_model()
    array = smooth_image(*size, seed=2)
    data = codec.compress(array, model=info)
    _, _, y_decoded = codec.decode_latents(data, model=info)
    assert torch.equal(y_decoded, encoder_latents(info, array)[0])
    assert np.asarray(codec.decompress(data, model=info)).shape == (*size, 3)


def test_raster_schedule_decodes_the_same_latents(tiny_model):
    info = tiny_model()
    array = smooth_image(64, 128, seed=3)
    wave = codec.compress(array, model=info)
    raster = codec.compress(array, model=info, schedule="raster")
    assert torch.equal(codec.decode_latents(wave, model=info)[2], codec.decode_latents(raster, model=info)[2])
    assert abs(len(wave) - len(raster)) <= 8


def test_file_size_matches_the_model_estimate(tiny_model):
    info = tiny_model()
    array = smooth_image(256, 384, seed=4)
    data = codec.compress(array, model=info)
    net = load_model(info)
    x = torch.from_numpy(array).permute(2, 0, 1)[None].contiguous().float() / 255
    with torch.no_grad():
        estimate_bytes = bits_per_image(net(x, info.quality, noise=False)).item() / 8
    _, z_stream, y_stream = codec.bitstream.parse(data)
    header_bytes = len(data) - len(z_stream) - len(y_stream)
    assert len(data) <= 1.02 * estimate_bytes + header_bytes + 8  # + 2 half-filled 32-bit words
    assert len(data) >= 0.98 * estimate_bytes


def test_zero_channels_are_flagged_and_skipped(tiny_model):
    info = tiny_model()
    array = np.full((64, 64, 3), 128, dtype=np.uint8)
    data = codec.compress(array, model=info)
    header, _, y = codec.decode_latents(data, model=info)
    zero = [c for c in range(header.channels) if c not in set(header.active.tolist())]
    assert torch.equal(y[0, zero], torch.zeros_like(y[0, zero]))
    assert torch.equal(y, encoder_latents(info, array)[0])


def test_escape_codes_values_far_outside_the_window():
    rng = np.random.default_rng(0)
    values = np.array([LATENT_MIN, LATENT_MAX, 0, 3, -200, 17], dtype=np.int64)
    pmf = rng.random((6, 9))
    offsets = np.array([-4, -4, -4, 200, -4, -4])
    encoder = coding.new_encoder()
    coding.encode_symbols(encoder, values, pmf, offsets)
    decoded = coding.decode_symbols(coding.new_decoder(coding.finish(encoder)), pmf, offsets)
    np.testing.assert_array_equal(decoded, values)


def test_values_outside_the_latent_range_are_refused():
    with pytest.raises(ValueError):
        coding.encode_symbols(coding.new_encoder(), np.array([LATENT_MAX + 1]), np.ones((1, 3)), np.array([0]))


def test_input_conversion_rules():
    gray16 = Image.fromarray((np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500))
    array, mode = codec.to_rgb_array(gray16)
    assert mode == "L" and array.shape == (12, 10, 3)
    assert array[0, 1, 0] == round(500 / 257) and (array[..., 0] == array[..., 2]).all()
    opaque = Image.new("RGBA", (5, 4), (1, 2, 3, 255))
    array, mode = codec.to_rgb_array(opaque)
    assert mode == "RGB" and array[0, 0].tolist() == [1, 2, 3]
    with pytest.raises(codec.InputError):
        codec.to_rgb_array(Image.new("RGBA", (5, 4), (1, 2, 3, 10)))
    with pytest.raises(codec.InputError):
        codec.to_rgb_array(np.zeros((4, 4), dtype=np.uint8))


def test_api_accepts_pil_images_and_returns_pil_images(tiny_model):
    info = tiny_model()
    image = Image.fromarray(smooth_image(40, 50))
    decoded = codec.decompress(codec.compress(image, model=info), model=info)
    assert isinstance(decoded, Image.Image) and decoded.mode == "RGB" and decoded.size == (50, 40)
