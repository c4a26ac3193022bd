"""The training loop runs, logs, checkpoints, resumes and exports."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import smooth_image
from mixcodec import train as training
from mixcodec.errors import ConfigError
from mixcodec.eval import read_rows
from mixcodec.models.context_model import ContextMixtureModel, ModelConfig
from mixcodec.models.registry import load_model, read_infos
from mixcodec.train import TrainConfig, bf16_hint, load_preset, reanchor_levels, to_toml, train


def tiny_config(**changes) -> TrainConfig:
    return dataclasses.replace(
        TrainConfig(
            architecture="gllmm",
            n=8,
            hidden=[16, 24],
            lmbdas=[0.005, 0.02],
            crop=64,
            batch=2,
            steps=3,
            log_every=1,
            checkpoint_minutes=0.0,
            threads=1,
        ),
        **changes,
    )


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in resources.files("mixcodec.presets").iterdir() if p.name.endswith(".toml"))
)
def test_presets_load_and_round_trip_through_toml(tmp_path, name):
    cfg = load_preset(name)
    assert cfg.model_config().n == cfg.n
    (tmp_path / "p.toml").write_text(to_toml(cfg))
    assert load_preset(str(tmp_path / "p.toml")) == cfg


def test_backbone_and_family_override_the_architecture():
    config = tiny_config(architecture="gllmm", backbone="residual", family="gmm").model_config()
    assert (config.backbone, config.family) == ("residual", "gmm")
    assert tiny_config(architecture="cheng2020-gmm").model_config().backbone == "residual"
    with pytest.raises(ValueError, match="backbone"):
        tiny_config(backbone="unet")


def test_ms_ssim_with_small_crops_is_refused():
    with pytest.raises(ValueError, match="161"):
        tiny_config(metric="ms-ssim")


def test_train_resume_and_export(tmp_path):
    data = tmp_path / "data" / "nested"
    data.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(smooth_image(80, 90, seed=i)).save(data / f"{i}.png")
    cfg = tiny_config()
    train(cfg, tmp_path / "data", tmp_path / "run")
    ckpt = tmp_path / "run" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 3
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[0] == "step,time_s,lr,loss,bpp,psnr,bpp_q1,psnr_q1,bpp_q2,psnr_q2,aux"
    assert len(log) == 4 and all(float(line.split(",")[4]) > 0 for line in log[1:])  # bpp column
    train(dataclasses.replace(cfg, steps=5), tmp_path / "data", tmp_path / "run", resume=True)
    assert torch.load(ckpt, weights_only=True)["step"] == 5
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixcodec.cli",
            "export",
            str(ckpt),
            "-o",
            str(tmp_path / "w.safetensors"),
            "--name",
            "t",
            "--measure",
            str(data),
            "--rows",
            str(tmp_path / "rows.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    infos = read_infos(tmp_path / "w.safetensors")
    assert [(i.name, i.quality, i.config.hidden, i.lmbda) for i in infos] == [
        ("t", q + 1, (16, 24), lmbda) for q, lmbda in enumerate(cfg.lmbdas)
    ]
    rows = read_rows(tmp_path / "rows.csv")
    assert sorted((r.codec, r.quality) for r in rows) == [("t", 1.0), ("t", 1.0), ("t", 2.0), ("t", 2.0)]
    for info in infos:
        assert info.kodak["images"] == 2 and info.kodak["bpp"] > 0 and info.kodak["psnr"] > 0
        assert np.mean([r.bpp for r in rows if r.quality == info.quality]) == pytest.approx(info.kodak["bpp"])
    info = infos[0]
    model = load_model(info)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # a shipped weight file is a starting point for further training
    tuned = train(dataclasses.replace(cfg, steps=1), tmp_path / "data", tmp_path / "tuned", init=info.path)
    assert torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)["step"] == 1
    assert tuned.config == info.config


def test_workers_validation_on_real_files_and_tensorboard(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(80, 90, seed=i)).save(data / f"{i}.png")
    cmd = [
        sys.executable,
        "-m",
        "mixcodec.cli",
        "train",
        "--preset",
        str(tmp_path / "p.toml"),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--val",
        str(data),
        "--val-every",
        "2",
        "--workers",
        "2",
        "--tensorboard",
    ]
    (tmp_path / "p.toml").write_text(to_toml(tiny_config(steps=3, val_images=1)))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    val = (tmp_path / "run" / "val.csv").read_text().splitlines()
    assert val[0] == "step,quality,bpp,psnr,ms_ssim" and [line.split(",")[:2] for line in val[1:]] == [
        ["2", "1"],
        ["2", "2"],
        ["3", "1"],
        ["3", "2"],
    ]
    assert all(float(line.split(",")[2]) > 0 and float(line.split(",")[3]) > 0 for line in val[1:])
    assert "(real files)" in proc.stdout
    # the TensorBoard scalars are those of the CSV files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    board.Reload()
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    psnr_q2 = board.Scalars("val/psnr_q2")
    assert [e.step for e in psnr_q2] == [2, 3] and psnr_q2[-1].value == pytest.approx(
        float(val[-1].split(",")[3]), abs=1e-4
    )
    assert [e.step for e in board.Scalars("train/loss")] == [1, 2, 3]
    assert board.Scalars("train/loss")[-1].value == pytest.approx(float(log[-1].split(",")[3]), abs=1e-4)


def test_frozen_modules_are_shared_with_the_base_weight_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(smooth_image(80, 90)).save(data / "0.png")
    train(tiny_config(steps=1), data, tmp_path / "base")
    weights = tmp_path / "weights"
    weights.mkdir()

    def export(run, name, *extra):
        cmd = [
            sys.executable,
            "-m",
            "mixcodec.cli",
            "export",
            str(tmp_path / run / "last.pt"),
            "-o",
            str(weights / name),
            *extra,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    assert export("base", "base.safetensors").returncode == 0
    tuned = train(
        tiny_config(steps=2, lmbdas=[0.05, 0.1], freeze=["entropy_parameters"]),
        data,
        tmp_path / "tuned",
        init=weights / "base.safetensors",
    )
    base_model = load_model(read_infos(weights / "base.safetensors")[0])
    same = {
        name: torch.equal(p.half(), q.half()) for (name, p), q in zip(tuned.named_parameters(), base_model.parameters())
    }
    assert all(same[k] for k in same if k.startswith("entropy_parameters"))
    assert not all(same[k] for k in same if k.startswith("g_s"))
    elsewhere = tmp_path / "base.safetensors"
    elsewhere.write_bytes((weights / "base.safetensors").read_bytes())
    proc = export("tuned", "tuned.safetensors", "--base", str(elsewhere))
    assert proc.returncode == 2 and "folder" in proc.stderr
    proc = export("tuned", "tuned.safetensors", "--base", str(weights / "base.safetensors"))
    assert proc.returncode == 0, proc.stderr
    shared_bytes = sum(2 * p.numel() for name, p in tuned.named_parameters() if name.startswith("entropy_parameters"))
    assert (weights / "tuned.safetensors").stat().st_size < (
        weights / "base.safetensors"
    ).stat().st_size - shared_bytes + 2000
    loaded = load_model(read_infos(weights / "tuned.safetensors")[0])
    assert all(
        torch.equal(a, b.half().float()) for a, b in zip(loaded.state_dict().values(), tuned.state_dict().values())
    )
    # the base model may be retrained (its own tensors change): its variants stay valid
    (weights / "base.safetensors").write_bytes(export_base_changed(weights / "base.safetensors", "g_s"))
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            load_model(read_infos(weights / "tuned.safetensors")[0]).state_dict().values(), loaded.state_dict().values()
        )
    )
    (weights / "base.safetensors").write_bytes(export_base_changed(weights / "base.safetensors", "entropy_parameters"))
    with pytest.raises(ValueError, match="base.safetensors"):
        load_model(read_infos(weights / "tuned.safetensors")[0])


def export_base_changed(path: Path, prefix: str) -> bytes:
    """The bytes of weight file ``path`` with one tensor whose name starts with ``prefix`` changed."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        meta = handle.metadata()
    key = next(k for k in tensors if k.startswith(prefix))
    tensors[key] = tensors[key] + 1
    return save(tensors, meta)


DDP_SCRIPT = """
import dataclasses, hashlib, os, sys, torch
sys.path.insert(0, sys.argv[3])
from test_train import tiny_config
from mixcodec.train import train
from pathlib import Path
model = train(tiny_config(steps=3), Path(sys.argv[1]), Path(sys.argv[2]))
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
Path(sys.argv[2], "rank" + os.environ["RANK"]).write_text(digest)
"""


def test_ddp_on_two_cpu_processes_keeps_parameters_identical(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(80, 90, seed=i)).save(data / f"{i}.png")
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        str(script),
        str(data),
        str(tmp_path / "run"),
        str(Path(__file__).parent),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(2):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        # once in about 15 runs of the whole suite a rank died of SIGABRT without a message (torch 2.13
        # CPU, not reproducible alone); that is retried once, any other failure or a second abort is not
        if proc.returncode == 0 or "SIGABRT" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[:3000]
    digests = [(tmp_path / "run" / f"rank{r}").read_text() for r in range(2)]
    assert digests[0] == digests[1]
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 3


def test_learning_rate_warms_up_then_drops():
    from mixcodec.train import learning_rate

    cfg = tiny_config(lr=1e-4, lr_final=1e-5, warmup_steps=4, steps=100, lr_drop_at=0.9)
    assert [learning_rate(cfg, s) for s in range(5)] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4])
    assert learning_rate(cfg, 89) == 1e-4 and learning_rate(cfg, 90) == 1e-5


@pytest.mark.parametrize(
    ("bf16", "fast", "hint"),
    [(False, False, None), (True, True, None), (False, True, "bf16 = true"), (True, False, "float32 is faster")],
)
def test_bf16_hint_says_when_the_preset_does_not_suit_the_cpu(monkeypatch, bf16, fast, hint):
    monkeypatch.setattr(training, "bf16_is_fast", lambda: fast)
    message = bf16_hint(tiny_config(bf16=bf16), "cpu")
    assert message is None if hint is None else hint in message
    assert bf16_hint(tiny_config(bf16=bf16), "cuda") is None


def test_training_prints_the_bf16_hint_once_on_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training, "bf16_is_fast", lambda: True)
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(smooth_image(80, 90)).save(data / "0.png")
    train(tiny_config(steps=1, bf16=False), data, tmp_path / "run", device="cpu")
    assert [line for line in capsys.readouterr().err.splitlines() if "bf16" in line] == [
        bf16_hint(tiny_config(), "cpu")
    ]


def test_init_from_a_model_of_another_shape_keeps_what_fits(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(smooth_image(80, 90)).save(data / "0.png")
    base = train(tiny_config(steps=1, lmbdas=[0.01]), data, tmp_path / "base")  # one quality
    wider = train(
        tiny_config(steps=1, hidden=[20, 24], lr=0.0), data, tmp_path / "wide", init=tmp_path / "base" / "last.pt"
    )
    note = capsys.readouterr().out.splitlines()[-1]
    assert "left at their initialization" in note and "entropy_parameters.0.weight" in note and "gains.log_gain" in note
    assert "g_s" not in note
    assert torch.equal(wider.g_s[0].trunk[0].body[0].weight, base.g_s[0].trunk[0].body[0].weight)
    assert wider.gains.log_gain.shape == (2, 8)


def test_init_from_fewer_latent_channels_embeds_the_smaller_model(monkeypatch):
    from mixcodec import train as training
    from mixcodec.models.context_model import ContextMixtureModel, ModelConfig

    torch.manual_seed(0)
    small = ContextMixtureModel(ModelConfig(n=8, m=4, hidden=(16, 24), qualities=2))
    wide = ContextMixtureModel(ModelConfig(n=8, m=12, hidden=(16, 24), qualities=2))
    assert training.load_matching(wide, small.state_dict()) == []
    groups = small.spec.params_per_channel
    last = wide.entropy_parameters[-1].bias.view(groups, 12)[:, :4]
    assert torch.equal(last, small.entropy_parameters[-1].bias.view(groups, 4))
    x = torch.rand(1, 3, 64, 128)
    close = wide(x, 2, noise=False)
    assert not torch.equal(close["x_hat"], small(x, 2, noise=False)["x_hat"])  # new weights start small, not zero
    y = wide.analyse(x, 2)
    assert y[:, 4:].abs().mean() > 0.1 * y[:, :4].abs().mean()  # new latent channels are not born dead
    # with no fresh entries at all, the widened model computes exactly what the small one did
    monkeypatch.setattr(training, "WIDENED_INIT_SCALE", 0.0)
    training.load_matching(wide, small.state_dict())
    for q in (1, 2):
        a, b = small(x, q, noise=False), wide(x, q, noise=False)
        torch.testing.assert_close(b["x_hat"], a["x_hat"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b["y"][:, :4], a["y"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b["z"], a["z"], rtol=1e-5, atol=1e-6)


class _DetachedInput(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.detach())


def test_new_channels_get_no_rate_gradient_at_first_then_a_rising_one():
    from mixcodec.models.context_model import ContextMixtureModel, ModelConfig
    from mixcodec.train import new_channel_rate_gradient

    cfg = tiny_config(new_channels_from=3, new_channel_warmup=4)
    assert new_channel_rate_gradient(cfg, 6, 1, torch.device("cpu")).tolist() == [1, 1, 1, 0.25, 0.25, 0.25]
    assert new_channel_rate_gradient(cfg, 6, 4, torch.device("cpu")) is None
    assert new_channel_rate_gradient(tiny_config(), 6, 0, torch.device("cpu")) is None
    torch.manual_seed(0)
    model = ContextMixtureModel(ModelConfig(n=8, m=6, hidden=(16, 24)))
    x = torch.rand(1, 3, 64, 64)
    y = (model.analyse(x) * 4).detach().requires_grad_()
    model.analyse = lambda x, quality=None: y  # y is a leaf, and reaches the rate only directly
    model.h_a = _DetachedInput(model.h_a)
    factors = new_channel_rate_gradient(cfg, 6, 0, torch.device("cpu"))
    outputs = {}
    for name, rate_gradient in (("plain", None), ("scaled", factors)):
        torch.manual_seed(1)
        outputs[name] = model(x, rate_gradient=rate_gradient)
    assert torch.equal(outputs["plain"]["y"], outputs["scaled"]["y"]) and torch.equal(
        outputs["plain"]["x_hat"], outputs["scaled"]["x_hat"]
    )
    (-outputs["scaled"]["y"].log()).sum().backward(retain_graph=True)
    assert y.grad[:, 3:].abs().sum() == 0 and y.grad[:, :3].abs().sum() > 0
    y.grad = None
    outputs["scaled"]["x_hat"].square().sum().backward()
    assert y.grad[:, 3:].abs().sum() > 0  # the distortion's gradient is untouched


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    import signal
    import time

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(smooth_image(80, 90)).save(data / "0.png")
    (tmp_path / "p.toml").write_text(to_toml(tiny_config(steps=100000, checkpoint_minutes=60.0)))
    cmd = [
        sys.executable,
        "-m",
        "mixcodec.cli",
        "train",
        "--preset",
        str(tmp_path / "p.toml"),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "log.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    steps = int(log.read_text().splitlines()[-1].split(",")[0])
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] >= steps >= 2


def test_loss_weights_each_image_with_its_lambda_and_weight():
    from mixcodec.losses import rate_distortion_loss

    torch.manual_seed(0)
    target = torch.rand(3, 3, 16, 16)
    output = {
        "x_hat": target + 0.1 * torch.randn_like(target),
        "y": torch.rand(3, 4, 1, 1) * 0.9 + 0.05,
        "z": torch.full((3, 4, 1, 1), 0.5),
    }
    lmbdas, weights = torch.tensor([0.001, 0.01, 0.1]), torch.tensor([2.0, 1.0, 0.5])
    each = [
        rate_distortion_loss({k: v[i : i + 1] for k, v in output.items()}, target[i : i + 1], lmbdas[i], "mse")[
            "loss"
        ].item()
        for i in range(3)
    ]
    got = rate_distortion_loss(output, target, lmbdas, "mse", weights)
    assert got["loss"].item() == pytest.approx(sum(w * loss for w, loss in zip(weights.tolist(), each)) / 3, rel=1e-6)
    assert got["bpp"].shape == (3,) and got["bpp"][0].item() == pytest.approx(
        -torch.log2(output["y"][0]).sum().item() / 256 + 4 / 256
    )


def test_level_weights_are_the_median_lambda_ratio_to_the_balance_power():
    from mixcodec.train import _Levels

    ladder = [1.0, 4.0, 16.0]
    weights = {
        (balance, power): _Levels.of(tiny_config(lmbdas=ladder, balance_levels=balance, balance_power=power), 0).weights
        for balance, power in [(True, 0.5), (True, 0.25), (True, 0.0), (False, 0.25)]
    }
    assert weights[True, 0.5].tolist() == pytest.approx([2.0, 1.0, 0.5])
    assert weights[True, 0.25].tolist() == pytest.approx([2**0.5, 1.0, 2**-0.5])
    assert weights[True, 0.0].tolist() == weights[False, 0.25].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="balance_power"):
        tiny_config(balance_power=1.5)


def test_decoder_fine_tuning_leaves_what_files_code_unchanged(tmp_path):
    """The freeze list of the decoder fine-tuning preset: only the synthesis and its gains learn."""
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(smooth_image(80, 90)).save(data / "0.png")
    preset = load_preset("cpu-gllmm-n64-s96-decoder")
    base = train(tiny_config(steps=1), data, tmp_path / "base")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = train(
        tiny_config(steps=3, freeze=preset.freeze, lr=1e-3),
        data,
        tmp_path / "tuned",
        init=tmp_path / "base" / "last.pt",
    )
    changed = {k for k, v in tuned.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("g_s.", "gains.log_inverse_gain", "prior.quantiles")) for k in changed)
    assert any(k.startswith("g_s.") for k in changed) and "gains.log_inverse_gain" in changed


def test_reanchored_levels_code_as_the_old_model_at_the_new_qualities_and_train_on(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(80, 90, seed=i)).save(data / f"{i}.png")
    cfg = tiny_config(lmbdas=[0.004, 0.01, 0.04])
    train(cfg, data, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    with torch.no_grad():  # distinct rows, so that an interpolation cannot pass by chance
        for key in ("gains.log_gain", "gains.log_inverse_gain"):
            state["model"][key] += torch.arange(3.0)[:, None] * (1 if "inverse" not in key else -1)
    at = [1.5, 2.25, 3.0]
    moved = reanchor_levels(state, at)

    def gains(weights, qualities):
        model = ContextMixtureModel(ModelConfig.from_json(state["config"]))
        model.load_state_dict(weights)
        return model.gains(torch.tensor(qualities))

    for new, old in zip(gains(moved["model"], [1.0, 2.0, 3.0]), gains(state["model"], at)):
        assert torch.allclose(new, old, rtol=1e-6, atol=0)
    assert moved["train_config"]["lmbdas"] == pytest.approx(
        [0.004**0.5 * 0.01**0.5, 0.01**0.75 * 0.04**0.25, 0.04], rel=1e-3
    )
    assert all(torch.equal(v, state["model"][k]) for k, v in moved["model"].items() if not k.startswith("gains."))
    assert moved["step"] == state["step"] and moved["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    moments = [m["exp_avg"] for m in moved["optimizer"]["state"].values() if m["exp_avg"].shape == (3, 8)]
    before = [m["exp_avg"] for m in state["optimizer"]["state"].values() if m["exp_avg"].shape == (3, 8)]
    assert len(moments) == 2 and all(torch.allclose(a[0], (b[0] + b[1]) / 2) for a, b in zip(moments, before))
    for bad in ([1.0, 2.0], [2.0, 1.5, 3.0], [0.5, 2.0, 3.0], [1.0, 2.0, 3.5]):
        with pytest.raises(ConfigError):
            reanchor_levels(state, bad)
    # the CLI writes it, refuses to overwrite, and the run trains on from it with the new ladder
    torch.save(state, tmp_path / "run" / "last.pt")
    cli = [sys.executable, "-m", "mixcodec.cli", "reanchor", str(tmp_path / "run" / "last.pt"), "--at"]
    out = tmp_path / "moved" / "last.pt"
    out.parent.mkdir()
    proc = subprocess.run([*cli, "1.5,2.25,3", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "--lmbdas 0.006325,0.01414,0.04" in proc.stdout, proc.stderr
    for args in (["1.5,2.25,3", "-o", str(out)], ["1,x,3", "-o", str(tmp_path / "x.pt")]):
        proc = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    lmbdas = torch.load(out, weights_only=True)["train_config"]["lmbdas"]
    train(dataclasses.replace(cfg, lmbdas=lmbdas, steps=4), data, out.parent, resume=True)
    assert torch.load(out, weights_only=True)["step"] == 4
