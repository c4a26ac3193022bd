"""Photos as people have them: orientation applied, ICC profile, EXIF and XMP kept in
version-3 files, written into every output format, dropped by --strip, counted in sizes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import ExifTags, Image

from conftest import smooth_image
from mixcodec import bitstream, codec
from mixcodec import metadata as photo_metadata
from mixcodec.bitstream import FormatError, Metadata
from mixcodec.eval import psnr_rgb
from photos import displayed, icc_profile, phone_exif, phone_jpeg, stored_for, xmp_packet
from test_cli import mixcodec

P3 = icc_profile()


def run(*args, env_models=None):
    """The ``mixcodec`` command in this process (quicker than a subprocess; the bar test uses one)."""
    from mixcodec.cli import main

    env = {"MIXCODEC_MODELS": str(env_models)} if env_models is not None else {}
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def assert_one_line_error(result):
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixcodec: error:"), result.stderr


def photo(display: np.ndarray, orientation: int, **options) -> Image.Image:
    """A phone JPEG showing ``display``, opened by Pillow."""
    return Image.open(io.BytesIO(phone_jpeg(display, orientation, **options)))


def upright_reference(image: Image.Image, orientation: int, info) -> Image.Image:
    """What the codec gives for the pixels a viewer shows: the stored pixels turned here by numpy."""
    return codec.decompress(codec.compress(displayed(np.asarray(image), orientation), model=info), model=info)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_orientation_is_coded_the_way_a_viewer_shows_it(tiny_model, orientation):
    info = tiny_model()
    image = photo(smooth_image(40, 24, seed=orientation), orientation)
    data = codec.compress(image, model=info)
    decoded = codec.decompress(data, model=info)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(upright_reference(image, orientation, info)))
    assert (decoded.height, decoded.width) == (40, 24)  # the displayed size (stored as 24x40 for 5..8)
    assert decoded.getexif().get(ExifTags.Base.Orientation, 1) == 1
    assert decoded.getexif()[ExifTags.Base.Make] == "Phonemaker"  # the rest of the EXIF is kept


def test_xmp_orientation_is_applied_and_removed(tiny_model):
    info = tiny_model()
    stored = Image.fromarray(stored_for(smooth_image(40, 24), 6))
    stored.info["xmp"] = xmp_packet(orientation=6)
    decoded = codec.decompress(codec.compress(stored, model=info), model=info)
    assert (decoded.height, decoded.width) == (40, 24)
    assert b"tiff:Orientation" not in decoded.info["xmp"] and b"xmp:CreatorTool" in decoded.info["xmp"]


def test_icc_exif_and_xmp_round_trip_byte_for_byte(tiny_model):
    info = tiny_model()
    exif, xmp = phone_exif(orientation=1), xmp_packet()
    image = photo(smooth_image(30, 20), 1, exif=exif, xmp=xmp)
    decoded = codec.decompress(codec.compress(image, model=info), model=info)
    assert decoded.info["icc_profile"] == P3 == image.info["icc_profile"]
    assert decoded.info["exif"] == exif == image.info["exif"]  # no orientation to remove: untouched
    assert decoded.info["xmp"] == xmp


def test_profiles_of_other_colour_spaces(tiny_model):
    info = tiny_model()
    gray = Image.fromarray(smooth_image(20, 30)[:, :, 0])
    gray.info["icc_profile"] = icc_profile("Gray (test)", "GRAY")
    decoded = codec.decompress(codec.compress(gray, model=info), model=info)
    assert decoded.mode == "L" and decoded.info["icc_profile"] == gray.info["icc_profile"]
    cmyk = Image.new("CMYK", (20, 12), (10, 50, 90, 0))
    cmyk.info["icc_profile"] = icc_profile("CMYK (test)", "CMYK")
    data = codec.compress(
        cmyk, model=info
    )  # Pillow converts CMYK pixels to RGB without the profile: it no longer applies
    assert bitstream.parse(data)[0].metadata == Metadata() and data[4] == bitstream.PIXELS_ONLY_VERSION
    with pytest.raises(codec.InputError, match="colour space 'GRAY'"):
        codec.compress(
            np.zeros((8, 8, 3), np.uint8), model=info, metadata=Metadata(icc_profile=gray.info["icc_profile"])
        )


def test_images_without_metadata_are_coded_as_before(tiny_model):
    """No metadata: a version-2 file, the same for an array and a PIL image; with metadata,
    version 3 is that file plus the metadata section (same pixel streams, same pixels)."""
    info = tiny_model()
    array = smooth_image(30, 20)
    plain = codec.compress(array, model=info)
    assert plain[4] == 2 and codec.compress(Image.fromarray(array), model=info) == plain
    rich = codec.compress(array, model=info, metadata=Metadata(icc_profile=P3, xmp=xmp_packet()))
    section = bitstream.parse(rich)[0].metadata.size()
    assert rich[4] == 3 and len(rich) == len(plain) + section
    as_v2 = rich[:4] + b"\x02" + rich[5 : -4 - section]
    assert as_v2 + struct.pack(">I", zlib.crc32(as_v2)) == plain
    np.testing.assert_array_equal(
        np.asarray(codec.decompress(rich, model=info)), np.asarray(codec.decompress(plain, model=info))
    )
    assert codec.compress(photo(array, 1), model=info, metadata=Metadata())[4] == 2


def _resealed(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda section: b"\x00" + section[1:], "number of metadata chunks"),
        (lambda section: b"\x04" + section[1:], "number of metadata chunks"),
        (lambda section: section[:1] + b"ICCX" + section[5:], "unknown metadata chunk"),
        (lambda section: section[:5] + struct.pack(">I", bitstream.MAX_METADATA_BYTES + 1) + section[9:], "length"),
        (lambda section: section[:5] + struct.pack(">I", 0) + section[9:], "length"),
        (lambda section: section[:5] + struct.pack(">I", 10**6) + section[9:], "truncated"),
        (lambda section: section[:-10], "truncated"),
        (lambda section: section + b"\x00", "trailing"),
        (lambda section: section[:9] + b"\x00" * 40 + section[49:], "acsp"),
    ],
)
def test_damaged_metadata_fails_with_a_format_error(tiny_model, damage, reason):
    """Metadata is validated in parse even when the CRC matches (a writer's bug)."""
    info = tiny_model()
    data = codec.compress(
        np.zeros((16, 16, 3), np.uint8), model=info, metadata=Metadata(icc_profile=P3, exif=phone_exif()[6:])
    )
    size = bitstream.parse(data)[0].metadata.size()
    body, section = data[: -4 - size], data[-4 - size : -4]
    with pytest.raises(FormatError, match=reason):
        bitstream.parse(_resealed(body + damage(section)))


def test_chunks_out_of_order_or_repeated_are_refused(tiny_model):
    info = tiny_model()
    data = codec.compress(np.zeros((16, 16, 3), np.uint8), model=info)
    body = b"\x03" + data[5:-4]
    xmp = b"XMP " + struct.pack(">I", 3) + b"abc"
    exif = b"EXIF" + struct.pack(">I", 8) + b"II*\x00\x08\x00\x00\x00"
    for section in (b"\x02" + xmp + exif, b"\x02" + xmp + xmp):
        with pytest.raises(FormatError, match="out of order"):
            bitstream.parse(_resealed(data[:4] + body + section))
    assert bitstream.parse(_resealed(data[:4] + body + b"\x02" + exif + xmp))[0].metadata == Metadata(
        exif=exif[8:], xmp=b"abc"
    )


def test_metadata_over_the_bound_is_refused_with_a_hint(tiny_model):
    info = tiny_model()
    big = Metadata(xmp=b" " * (bitstream.MAX_METADATA_BYTES + 1))
    with pytest.raises(codec.InputError, match="--strip"):
        codec.compress(np.zeros((8, 8, 3), np.uint8), model=info, metadata=big)


def test_save_options_write_the_metadata_into_each_format():
    image = photo_metadata.attach(
        Image.fromarray(smooth_image(12, 10)), Metadata(icc_profile=P3, exif=phone_exif()[6:], xmp=xmp_packet())
    )
    for name in photo_metadata.CARRIERS:
        options, dropped = photo_metadata.save_options(image, name)
        buffer = io.BytesIO()
        image.save(buffer, format=name, **options)
        back = Image.open(buffer)
        assert not dropped and back.format == name
        assert back.info["icc_profile"] == P3, name
        assert back.getexif()[ExifTags.Base.Model] == "Phone 15 Pro", name
        assert b"xmp:CreatorTool" in back.info["xmp"], name
    assert photo_metadata.save_options(image, "BMP") == ({}, ["icc_profile", "exif", "xmp"])


@pytest.fixture()
def phone_photo(installed_tiny, tmp_path):
    """A phone JPEG (orientation 6, Display P3, EXIF, XMP) and its .mxc written by the CLI."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(phone_jpeg(smooth_image(40, 24, seed=3), 6, xmp=xmp_packet()))
    proc = run("compress", path, "--model", "tiny", env_models=installed_tiny.path.parent)
    assert proc.exit_code == 0, proc.stderr
    return path, tmp_path / "photo.mxc", installed_tiny.path.parent


@pytest.mark.parametrize("suffix, name", [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP"), (".tif", "TIFF")])
def test_decompress_writes_the_format_of_the_extension_with_the_metadata(phone_photo, tmp_path, suffix, name):
    _, mxc, models = phone_photo
    out = tmp_path / f"out{suffix}"
    proc = run("decompress", mxc, "-o", out, env_models=models)
    assert proc.exit_code == 0 and not proc.stderr, proc.stderr
    image = Image.open(out)
    assert image.format == name and image.size == (24, 40)
    assert image.info["icc_profile"] == P3
    assert (
        image.getexif()[ExifTags.Base.Make] == "Phonemaker" and image.getexif().get(ExifTags.Base.Orientation, 1) == 1
    )
    assert b"xmp:CreatorTool" in image.info["xmp"]


def test_lossless_outputs_hold_the_decoded_pixels(phone_photo, installed_tiny, tmp_path):
    _, mxc, models = phone_photo
    decoded = np.asarray(codec.decompress(mxc.read_bytes(), model=installed_tiny))
    for suffix in (".png", ".webp", ".tif"):
        assert run("decompress", mxc, "-o", tmp_path / f"px{suffix}", env_models=models).exit_code == 0
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"px{suffix}")), decoded)


def test_unknown_output_extensions_fail_cleanly_and_others_say_what_they_drop(phone_photo, tmp_path):
    _, mxc, models = phone_photo
    assert_one_line_error(run("decompress", mxc, "-o", tmp_path / "out.xyz", env_models=models))
    assert_one_line_error(run("decompress", mxc, "-o", tmp_path / "out.mxc", env_models=models))
    assert not (tmp_path / "out.xyz").exists()
    proc = run("decompress", mxc, "-o", tmp_path / "out.bmp", env_models=models)
    assert proc.exit_code == 0 and Image.open(tmp_path / "out.bmp").size == (24, 40)
    assert (
        proc.stderr.strip()
        == f"mixcodec: note: {mxc}: BMP files do not carry the ICC profile, EXIF, XMP; written without"
    )


def test_strip_drops_the_metadata_and_info_reports_it(phone_photo, tmp_path):
    jpeg, mxc, models = phone_photo
    stripped = tmp_path / "stripped.mxc"
    assert run("compress", jpeg, "--model", "tiny", "--strip", "-o", stripped, env_models=models).exit_code == 0
    metadata = bitstream.parse(mxc.read_bytes())[0].metadata
    assert mxc.stat().st_size == stripped.stat().st_size + metadata.size()
    assert bitstream.parse(stripped.read_bytes())[0].metadata == Metadata()
    info = run("info", mxc, env_models=models).stdout
    assert f"bytes:    {mxc.stat().st_size} " in info
    assert f"ICC profile {len(P3)} B (Display P3 (test))" in info and f"EXIF {len(metadata.exif)} B" in info
    assert f"; {metadata.size()} B in the file" in info
    assert "metadata: none" in run("info", stripped, env_models=models).stdout
    assert run("decompress", stripped, "-o", tmp_path / "s.png", env_models=models).exit_code == 0
    plain = Image.open(tmp_path / "s.png")
    assert plain.size == (24, 40) and "icc_profile" not in plain.info  # upright without the metadata


def test_rate_control_counts_the_metadata(phone_photo, tmp_path):
    jpeg, mxc, models = phone_photo
    limit = mxc.stat().st_size - 1  # the file of the only quality is one byte too big with its metadata
    proc = run("compress", jpeg, "--model", "tiny", "--max-bytes", limit, "-o", tmp_path / "fit.mxc", env_models=models)
    assert_one_line_error(proc)
    assert "of them metadata (--strip drops it)" in proc.stderr
    proc = run(
        "compress",
        jpeg,
        "--model",
        "tiny",
        "--max-bytes",
        limit,
        "--strip",
        "-o",
        tmp_path / "fit.mxc",
        env_models=models,
    )
    assert proc.exit_code == 0, proc.stderr


def test_allocation_sizes_include_the_metadata(installed_tiny, tmp_path):
    from mixcodec.allocate import encode_candidates

    (tmp_path / "photo.jpg").write_bytes(phone_jpeg(smooth_image(40, 24), 6))
    (kept,), (stripped,) = (
        encode_candidates([tmp_path / "photo.jpg"], [installed_tiny]),
        encode_candidates([tmp_path / "photo.jpg"], [installed_tiny], strip=True),
    )
    extra = bitstream.parse(kept[0].data)[0].metadata.size()
    assert extra > len(P3) and kept[0].size == stripped[0].size + extra == len(kept[0].data)
    assert kept[0].psnr == stripped[0].psnr


def test_inputs_of_other_formats(installed_tiny, tmp_path):
    models = installed_tiny.path.parent
    image = Image.fromarray(smooth_image(20, 30))
    for suffix, options in ((".webp", {"lossless": True}), (".tif", {}), (".bmp", {}), (".png", {"icc_profile": P3})):
        image.save(tmp_path / f"in{suffix}", **options)
        proc = run(
            "compress",
            tmp_path / f"in{suffix}",
            "--model",
            "tiny",
            "-o",
            tmp_path / f"in{suffix}.mxc",
            env_models=models,
        )
        assert proc.exit_code == 0, proc.stderr
    assert bitstream.parse((tmp_path / "in.png.mxc").read_bytes())[0].metadata.icc_profile == P3


def test_optional_opener_plugins_are_registered_when_installed(monkeypatch, tmp_path):
    import sys
    import types

    from mixcodec import cli

    calls = []
    monkeypatch.setitem(
        sys.modules, "pillow_heif", types.SimpleNamespace(register_heif_opener=lambda: calls.append("heif"))
    )
    Image.fromarray(smooth_image(8, 8)).save(tmp_path / "x.png")
    cli.open_image(tmp_path / "x.png")
    assert calls == ["heif"]


def test_bar_phone_jpeg_orientation_6_with_p3_through_cli_and_pillow(tmp_path):
    """The issue's bar, with the shipped default model: a JPEG with EXIF orientation 6 and a
    Display P3 profile decodes, through the CLI and through Image.open/save after
    ``import mixcodec``, to an image the same way up as the original, with the same ICC bytes."""
    import mixcodec as package  # registers .mxc with Pillow

    display = smooth_image(96, 64, seed=11)  # portrait as shown; stored landscape (64 x 96 rotated)
    source = tmp_path / "phone.jpg"
    source.write_bytes(phone_jpeg(display, 6))
    with Image.open(source) as original:
        assert original.size == (96, 64) and original.getexif()[ExifTags.Base.Orientation] == 6  # stored sideways
        profile = original.info["icc_profile"]
    assert profile == P3

    proc = mixcodec("compress", source, "-o", tmp_path / "cli.mxc")
    assert proc.returncode == 0, proc.stderr
    proc = mixcodec("decompress", tmp_path / "cli.mxc", "-o", tmp_path / "cli.png")
    assert proc.returncode == 0, proc.stderr

    with Image.open(source) as original:
        original.save(tmp_path / "pillow.mxc")
    with Image.open(tmp_path / "pillow.mxc") as reopened:
        reopened.save(tmp_path / "pillow.png")

    for name in ("cli.png", "pillow.png"):
        with Image.open(tmp_path / name) as decoded:
            assert decoded.info["icc_profile"] == profile, name
            assert decoded.getexif().get(ExifTags.Base.Orientation, 1) == 1, name
            pixels = np.asarray(decoded)
        assert pixels.shape == display.shape == (96, 64, 3), name
        upright = psnr_rgb(display, pixels)  # the noisy test image: ~23 dB; the JPEG itself is ~25.5 dB
        assert upright > 20, name
        assert upright > psnr_rgb(display[::-1, ::-1], pixels) + 10, name  # not upside down (~8 dB)
        assert upright > psnr_rgb(display[:, ::-1], pixels) + 10, name  # not mirrored (~8 dB)
    assert (tmp_path / "cli.mxc").read_bytes() == (tmp_path / "pillow.mxc").read_bytes()
    assert package.decompress((tmp_path / "cli.mxc").read_bytes()).info["icc_profile"] == profile
