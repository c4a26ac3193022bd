"""One error contract: every error a user can cause is a ``MixcodecError``, which the CLI
prints as one line with exit code 2."""

from __future__ import annotations

import pytest
from PIL import Image

import mixcodec as package
from conftest import smooth_image
from mixcodec import ConfigError, FormatError, InputError, MixcodecError, ModelNotFound, ModelNotFoundError, codec
from mixcodec.train import load_preset
from test_cli import assert_one_line_error, mixcodec


def test_the_hierarchy_is_exported_and_keeps_the_old_bases():
    for error in (FormatError, InputError, ModelNotFoundError, ConfigError):
        assert issubclass(error, MixcodecError) and error.__name__ in package.__all__
    assert ModelNotFound is ModelNotFoundError and issubclass(ModelNotFoundError, LookupError)
    assert all(issubclass(e, ValueError) for e in (FormatError, InputError, ConfigError))


def test_library_errors_are_mixcodec_errors(tiny_model):
    with pytest.raises(FormatError):
        codec.decompress(b"not a file")
    with pytest.raises(InputError):
        codec.compress(Image.new("RGBA", (4, 4), (0, 0, 0, 10)), model=tiny_model())
    with pytest.raises(InputError, match="schedule"):
        codec.compress(smooth_image(8, 8), model=tiny_model(), schedule="spiral")
    with pytest.raises(ModelNotFoundError):
        codec.compress(smooth_image(8, 8), model="no-such-model")
    with pytest.raises(ConfigError, match="no preset named 'no-such'"):
        load_preset("no-such")


def test_unknown_preset_and_misspelt_key_are_one_line(tmp_path):
    assert_one_line_error(mixcodec("train", "--preset", "no-such", "--data", tmp_path, "--out", tmp_path / "run"))
    (tmp_path / "p.toml").write_text('architecture = "gllmm"\nlmbda = [0.01]\n')
    proc = mixcodec("train", "--preset", tmp_path / "p.toml", "--data", tmp_path, "--out", tmp_path / "run")
    assert_one_line_error(proc)
    assert "unknown key 'lmbda' (did you mean 'lmbdas'?)" in proc.stderr
    (tmp_path / "q.toml").write_text("steps = 'many'\n")
    assert_one_line_error(
        mixcodec("train", "--preset", tmp_path / "q.toml", "--data", tmp_path, "--out", tmp_path / "run")
    )
    (tmp_path / "r.toml").write_text("steps = \n")
    assert_one_line_error(
        mixcodec("train", "--preset", tmp_path / "r.toml", "--data", tmp_path, "--out", tmp_path / "run")
    )


def test_bad_weight_files_and_unwritable_outputs_are_one_line(installed_tiny, tmp_path):
    Image.fromarray(smooth_image(20, 20)).save(tmp_path / "a.png")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert_one_line_error(mixcodec("compress", tmp_path / "a.png", "--model", tmp_path / "bad.safetensors"))
    assert_one_line_error(mixcodec("compress", tmp_path / "a.png", "--model", tmp_path / "missing.safetensors"))
    proc = mixcodec(
        "compress",
        tmp_path / "a.png",
        "-o",
        tmp_path / "no" / "such" / "dir" / "a.mxc",
        "--model",
        "tiny",
        env_models=installed_tiny.path.parent,
    )
    assert_one_line_error(proc)
    assert "cannot write" in proc.stderr
