"""BD-rate arithmetic and a tiny end-to-end evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import smooth_image
from mixcodec.eval import bd_rate, quality_at_rate, read_rows

RATES = [0.1, 0.25, 0.5, 0.8, 1.2]
PSNRS = [27.0, 29.5, 32.0, 34.0, 36.0]


def test_bd_rate_of_a_curve_against_itself_is_zero():
    assert bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)


def test_halving_every_rate_gives_minus_fifty_percent():
    assert bd_rate(RATES, PSNRS, [r / 2 for r in RATES], PSNRS) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate([r / 2 for r in RATES], PSNRS, RATES, PSNRS) == pytest.approx(100.0, abs=1e-6)


def test_bd_rate_is_nan_without_overlap():
    assert np.isnan(bd_rate(RATES, PSNRS, RATES, [p + 20 for p in PSNRS]))


def test_quality_at_rate_interpolates_linearly_and_never_extrapolates():
    points = [{"bpp": b, "psnr": p} for b, p in zip(RATES, PSNRS)]
    assert quality_at_rate(points, 1.0) == pytest.approx(35.0)  # halfway between 0.8/34 and 1.2/36
    assert quality_at_rate(points, 0.25) == pytest.approx(29.5)
    assert quality_at_rate(points, 1.2) == pytest.approx(36.0)
    assert np.isnan(quality_at_rate(points, 1.21))
    assert np.isnan(quality_at_rate(points, 0.09))
    assert np.isnan(quality_at_rate([], 1.0))


def test_eval_writes_csv_json_and_plot(tmp_path, installed_tiny):
    data = tmp_path / "images"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(170, 180, seed=i)).save(data / f"{i}.png")
    env = {**os.environ, "MIXCODEC_MODELS": str(installed_tiny.path.parent)}
    reference = tmp_path / "published.csv"
    reference.write_text(
        "codec,source,bpp,psnr_rgb_db,ms_ssim\n" + "".join(f"paper,x,{r},{p},\n" for r, p in zip(RATES, PSNRS))
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixcodec.cli",
            "eval",
            str(data),
            "--models",
            "tiny",
            "--codecs",
            "jpeg,webp",
            "--visual",
            "1.png",
            "--reference",
            str(reference),
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "out" / "rows.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * (1 + 11 + 11)
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(result["curves"]) == {"tiny", "jpeg", "webp"}
    assert result["bd_rate"]["jpeg"]["jpeg"]["psnr"] == pytest.approx(0.0, abs=1e-9)
    assert result["bd_rate"]["published:paper"]["published:paper"]["psnr"] == pytest.approx(0.0, abs=1e-9)
    assert set(result["bd_rate"]["tiny"]) == {"tiny", "jpeg", "webp", "published:paper"}
    assert "tiny vs paper:" in proc.stdout
    assert "PSNR (dB) at equal rate" in proc.stdout
    for name, points in result["curves"].items():
        assert result["psnr_at_bpp"][name]["1.0"] == pytest.approx(quality_at_rate(points, 1.0), nan_ok=True)
    assert np.isfinite(result["psnr_at_bpp"]["jpeg"]["1.0"])  # JPEG's 11 qualities span 1.0 bpp
    assert result["environment"]["torch"]
    for plot in ("rd.png", "visual-1.png"):
        assert (tmp_path / "out" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_external_tools_give_a_note(monkeypatch):
    from mixcodec import eval as ev

    monkeypatch.setattr(ev.shutil, "which", lambda name: None)
    assert "apt-get install libjxl-tools" in ev.missing_tools("jxl")
    assert ev.missing_tools("jpeg") is None


@pytest.mark.parametrize("name", ["jxl", "hevc"])
def test_external_codecs_round_trip_when_installed(name):
    from mixcodec import eval as ev

    if ev.missing_tools(name):
        pytest.skip(ev.missing_tools(name))
    codec_ = ev.classic_codecs()[name]()
    image = smooth_image(64, 96)
    low, high = (codec_.encode(image, q) for q in (codec_.qualities[0], codec_.qualities[-1]))
    assert len(low) < len(high)
    assert ev.psnr_rgb(image, codec_.decode(high)) > ev.psnr_rgb(image, codec_.decode(low))


def test_reuse_takes_earlier_rows_instead_of_coding_again(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(40, 50, seed=i)).save(data / f"{i}.png")

    def run(*extra):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        proc = subprocess.run(
            [sys.executable, "-m", "mixcodec.cli", "eval", str(data), "--models", "", "-o", str(out), *extra],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        return read_rows(out / "rows.csv"), out

    jpeg, first = run("--codecs", "jpeg", "--limit", "1")
    both, _ = run("--codecs", "jpeg,webp", "--reuse", str(first / "rows.csv"))
    assert len(jpeg) == 11 and len(both) == 2 * 2 * 11
    reused = [r for r in both if r.codec == "jpeg" and r.image == "0.png"]
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixcodec.cli",
            "eval",
            str(data),
            "--models",
            "",
            "--codecs",
            "jpeg",
            "--reuse",
            str(tmp_path / "other.csv"),
            "-o",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "not a rows file" in proc.stderr and "Traceback" not in proc.stderr
    same = [(r.quality, r.bytes, r.encode_s, r.decode_s) for r in reused]
    assert same == [(r.quality, r.bytes, r.encode_s, r.decode_s) for r in jpeg]  # same timings: taken from the file


def test_bd_rate_leaves_out_undefined_points():
    nan = float("nan")
    assert bd_rate(RATES + [2.0], PSNRS + [nan], RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(RATES, PSNRS, RATES, [nan] + PSNRS[1:]) == pytest.approx(0.0, abs=0.5)  # 4 points are enough
    assert np.isnan(bd_rate(RATES, PSNRS, RATES, [nan, nan] + PSNRS[2:]))


def test_a_codec_whose_tools_are_missing_keeps_its_reused_rows(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mixcodec import cli
    from mixcodec import eval as ev

    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(smooth_image(40, 50)).save(data / "0.png")

    def run(*extra):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        result = CliRunner().invoke(cli.main, ["eval", str(data), "--models", "", "-o", str(out), *extra])
        assert result.exit_code == 0, result.output
        return {r.codec for r in read_rows(out / "rows.csv")}, out, result.output

    codecs, first, _ = run("--codecs", "jpeg,webp")
    assert codecs == {"jpeg", "webp"}
    monkeypatch.setattr(
        ev, "missing_tools", lambda name: f"{name} skipped: tool not installed" if name == "jpeg" else None
    )
    codecs, _, output = run("--codecs", "jpeg,webp", "--reuse", str(first / "rows.csv"))
    assert codecs == {"jpeg", "webp"} and "its rows come from --reuse" in output
    codecs, _, output = run("--codecs", "jpeg,webp")
    assert codecs == {"webp"} and "jpeg skipped" in output
