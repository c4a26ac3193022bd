"""The Pillow plugin: ``import mixcodec`` registers .mxc; lazy open, save, damaged files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import ExifTags, Image, UnidentifiedImageError

import mixcodec
from conftest import smooth_image
from mixcodec import bitstream, codec, pillow_plugin
from mixcodec.bitstream import FormatError, Metadata
from mixcodec.errors import ModelNotFoundError as ModelNotFound
from photos import icc_profile, phone_exif, phone_jpeg, xmp_packet

P3 = icc_profile()


@pytest.fixture()
def mxc_file(installed_tiny, tmp_path):
    """A .mxc of a phone photo (orientation 6, Display P3, EXIF, XMP) written with the tiny model."""
    path = tmp_path / "photo.mxc"
    with Image.open(io.BytesIO(phone_jpeg(smooth_image(40, 24), 6, xmp=xmp_packet()))) as photo:
        path.write_bytes(codec.compress(photo, model=installed_tiny))
    return path


def test_import_registers_the_format():
    assert Image.registered_extensions()[".mxc"] == pillow_plugin.FORMAT
    assert pillow_plugin.FORMAT in Image.OPEN and pillow_plugin.FORMAT in Image.SAVE
    pillow_plugin.register()  # idempotent
    assert list(Image.ID).count(pillow_plugin.FORMAT) == 1


def test_open_reads_the_header_and_decodes_on_load(mxc_file, monkeypatch):
    calls = []
    real = codec.decompress
    monkeypatch.setattr(codec, "decompress", lambda data, model=None: calls.append(1) or real(data, model))
    with Image.open(mxc_file) as image:
        assert (image.format, image.size, image.mode) == ("MXC", (24, 40), "RGB")
        assert image.info["icc_profile"] == P3 and b"xmp:CreatorTool" in image.info["xmp"]
        assert image.getexif()[ExifTags.Base.Model] == "Phone 15 Pro"
        assert calls == []
        image.load()
        assert calls == [1]
        pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels, np.asarray(real(mxc_file.read_bytes())))


@pytest.mark.parametrize("size", [(30, 20), (8, 8)])
def test_grayscale_files_open_as_l(installed_tiny, tmp_path, size):
    """Also when the file is larger than its pixels (8x8 with a profile), which Pillow must
    not memory-map as raw pixels."""
    path = tmp_path / "gray.mxc"
    gray = Image.fromarray(smooth_image(*size)[:, :, 0])
    gray.info["icc_profile"] = icc_profile("Gray (test)", "GRAY")
    path.write_bytes(codec.compress(gray, model=installed_tiny))
    with Image.open(path) as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), np.asarray(codec.decompress(path.read_bytes())))


def test_save_compresses_like_the_api_with_the_metadata(installed_tiny, tmp_path):
    with Image.open(io.BytesIO(phone_jpeg(smooth_image(40, 24), 6, xmp=xmp_packet()))) as photo:
        photo.save(tmp_path / "saved.mxc", model="tiny", quality=1)
        buffer = io.BytesIO()
        photo.save(buffer, format="MXC", model="tiny")
        expected = codec.compress(photo, model="tiny", quality=1)
    assert (tmp_path / "saved.mxc").read_bytes() == buffer.getvalue() == expected
    header = bitstream.parse(expected)[0]
    assert (header.width, header.height) == (24, 40) and header.metadata.icc_profile == P3


def test_save_keywords_replace_or_drop_metadata(installed_tiny):
    image = Image.fromarray(smooth_image(16, 16))
    image.info.update(icc_profile=P3, exif=phone_exif(), xmp=xmp_packet())

    def saved(**options) -> Metadata:
        buffer = io.BytesIO()
        image.save(buffer, format="MXC", model="tiny", **options)
        return bitstream.parse(buffer.getvalue())[0].metadata

    assert saved() == Metadata(P3, phone_exif()[6:], xmp_packet())
    assert saved(exif=b"", xmp=None) == Metadata(icc_profile=P3)
    other = icc_profile(
        "Other RGB (test)", primaries=((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
    )
    turned = Image.Exif()
    turned.load(phone_exif(orientation=8))
    replaced = saved(icc_profile=other, exif=turned, xmp="<x/>")
    assert replaced.icc_profile == other and replaced.xmp == b"<x/>"
    stored = Image.Exif()
    stored.load(replaced.exif)
    assert (
        ExifTags.Base.Orientation not in stored and stored[ExifTags.Base.Make] == "Phonemaker"
    )  # the pixels are coded upright


def test_save_passes_compress_keywords_it_has(installed_tiny, monkeypatch):
    seen = {}
    real = codec.compress

    def with_effort(image, model="gllmm", quality=None, schedule="wavefront", metadata=None, effort=None):
        seen["effort"] = effort
        return real(image, model=model, quality=quality, schedule=schedule, metadata=metadata)

    image = Image.fromarray(smooth_image(16, 16))
    image.save(io.BytesIO(), format="MXC", model="tiny", effort=2)  # passed on if compress has effort=, ignored if not
    monkeypatch.setattr(codec, "compress", with_effort)
    image.save(io.BytesIO(), format="MXC", model="tiny", effort=2, optimize=True)  # optimize: not ours, ignored
    assert seen == {"effort": 2}


def test_damaged_files_raise_a_format_error_on_open(mxc_file, tmp_path):
    data = mxc_file.read_bytes()
    for damaged in (data[:-3], data[:20], data[:30] + bytes([data[30] ^ 1]) + data[31:], bitstream.MAGIC + bytes(50)):
        path = tmp_path / "bad.mxc"
        path.write_bytes(damaged)
        with pytest.raises(FormatError):
            Image.open(path)
    path.write_bytes(b"not an image at all")
    with pytest.raises(UnidentifiedImageError):
        Image.open(path)


def test_unknown_weights_fail_on_load(mxc_file, monkeypatch, tmp_path):
    monkeypatch.setenv("MIXCODEC_MODELS", str(tmp_path / "empty"))
    with Image.open(mxc_file) as image:
        assert image.size == (24, 40)
        with pytest.raises(ModelNotFound):
            image.load()


def test_the_package_api_and_the_plugin_agree(mxc_file):
    with Image.open(mxc_file) as image:
        np.testing.assert_array_equal(np.asarray(image), np.asarray(mixcodec.decompress(mxc_file.read_bytes())))
