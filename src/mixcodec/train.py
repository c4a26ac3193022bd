"""Training loop: random crops of a folder of images, main + aux optimizers, checkpoints.

Run ``mixcodec train --preset cpu-gllmm-n64 --out runs/gllmm`` (see ``presets/``
for every hyperparameter).  A preset names a ladder of λ values: the model gets
one quality level per λ (:class:`~.models.context_model.QualityGains`) and every
crop of a batch is trained at a quality drawn uniformly, with that quality's λ.
Checkpoints (``last.pt``) hold model, optimizers, step and config, and are written
atomically every ``checkpoint_minutes`` and when the run stops; ``--resume``
continues from one.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import io
import json
import math
import os
import signal
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from tqdm import tqdm

from .data import CropDataset, list_images
from .entropy.distributions import ENTROPY_FAMILIES
from .errors import ConfigError, InputError
from .losses import METRICS, rate_distortion_loss
from .models.context_model import ARCHITECTURES, ContextMixtureModel, ModelConfig, rows_at
from .models.transforms import BACKBONES
from .models.widening import WIDENING_RULES, widen
from .refine import bf16_is_fast


@dataclass
class TrainConfig:
    """Every hyperparameter of a run (presets in ``mixcodec/presets/*.toml``)."""

    architecture: str = "gllmm"
    n: int = 128
    m: int = 0  # channels of the latent y; 0: n
    n_s: int = 0  # channels inside the synthesis transform; 0: n
    n_a: int = 0  # channels inside the analysis transform; 0: n
    backbone: str = ""  # empty: the architecture's own transforms ("residual" or "crm")
    family: str = ""  # empty: the architecture's own family
    hidden: list[int] = dataclasses.field(default_factory=list)  # empty: the architecture's widths, scaled by n
    metric: str = "mse"
    lmbdas: list[float] = dataclasses.field(default_factory=lambda: [0.0067])  # one quality level per λ, ascending
    # loss of a crop at level q times (median λ / λ_q)^balance_power: the losses at high λ are much
    # larger, and without this they dominate the gradients of the parameters shared by all levels;
    # a smaller power gives the high qualities more of those parameters (0.5: the square root)
    balance_levels: bool = False
    balance_power: float = 0.5
    crop: int = 256
    batch: int = 8
    steps: int = 1_500_000
    lr: float = 1e-4
    lr_final: float = 1e-5
    lr_drop_at: float = 0.9  # fraction of ``steps`` after which ``lr_final`` is used
    warmup_steps: int = 0  # lr rises linearly from 0 over the first steps of a run with a fresh optimizer (``--init``)
    aux_lr: float = 1e-3
    clip_norm: float = 1.0
    bf16: bool = False
    channels_last: bool = False
    threads: int = 0  # 0: torch default
    min_downscale: float = 1.0  # random down-scaling factor in [min_downscale, 1]
    # parameter-name prefixes kept at their initial values (e.g. "entropy_parameters", so that
    # the λ variants of one base model share those tensors: ``mixcodec export --base``)
    freeze: list[str] = dataclasses.field(default_factory=list)
    # latent channels from this index on are new (e.g. after ``--init`` from a model with fewer
    # latent channels): the gradient their rate sends into ``y`` rises linearly from 0 to 1 over
    # ``new_channel_warmup`` steps, so that they learn to carry detail before their rate holds them at
    # zero (0: no such channels)
    new_channels_from: int = 0
    new_channel_warmup: int = 0
    # how ``--init`` fills the new channels of a wider g_s or g_a (``n_s``, ``n_a``): "zeros"
    # or "copies" (:mod:`mixcodec.models.widening`)
    widen_rule: str = "zeros"
    checkpoint_minutes: float = 10.0
    checkpoint_part_mib: float = 0.0  # > 0: checkpoints larger than this are written split (``atomic_save``)
    val_every: int = 0  # steps between validations on real files (``train(val=...)``); 0: only at the end
    val_images: int = 4  # images of the validation folder used (0: all)
    workers: int = 0  # DataLoader worker processes making crops (0: in the training process)
    log_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.metric == "ms-ssim" and self.crop < 161:
            raise ConfigError("MS-SSIM training needs crops of at least 161 px (5 scales)")
        if self.metric not in METRICS:
            raise ConfigError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.backbone and self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.family and self.family not in ENTROPY_FAMILIES:
            raise ConfigError(f"unknown entropy family {self.family!r}; choose one of {', '.join(ENTROPY_FAMILIES)}")
        if self.widen_rule not in WIDENING_RULES:
            raise ConfigError(f"unknown widen_rule {self.widen_rule!r}; choose one of {', '.join(WIDENING_RULES)}")
        if not self.lmbdas or sorted(self.lmbdas) != list(self.lmbdas) or min(self.lmbdas) <= 0:
            raise ConfigError(f"lmbdas must be positive and ascending (one per quality level), got {self.lmbdas}")
        if not 0 <= self.balance_power <= 1:
            raise ConfigError(f"balance_power must be between 0 and 1, got {self.balance_power}")

    def model_config(self) -> ModelConfig:
        base = ARCHITECTURES[self.architecture]
        return dataclasses.replace(
            base,
            n=self.n,
            m=self.m or self.n,
            n_s=self.n_s or self.n,
            n_a=self.n_a or self.n,
            backbone=self.backbone or base.backbone,
            family=self.family or base.family,
            qualities=len(self.lmbdas),
            hidden=tuple(self.hidden)
            or tuple(width * self.n // base.n for width in base.hidden),  # the paper's widths scale with N
        )


def preset_names() -> list[str]:
    """The presets shipped with the package."""
    return sorted(
        p.name[: -len(".toml")] for p in resources.files("mixcodec.presets").iterdir() if p.name.endswith(".toml")
    )


def load_preset(name_or_path: str) -> TrainConfig:
    """A preset by name (``cpu-gllmm-n64``) or a TOML file path.

    Raises:
        ConfigError: no such preset, not TOML, an unknown key (misspelt: the closest known
            one is named) or a value of the wrong type.
    """
    if name_or_path.endswith(".toml"):
        try:
            text = Path(name_or_path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the preset {name_or_path}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
    else:
        resource = resources.files("mixcodec.presets").joinpath(f"{name_or_path}.toml")
        if not resource.is_file():
            raise ConfigError(
                f"no preset named {name_or_path!r} (presets: {', '.join(preset_names())}; or give a .toml file)"
            )
        text = resource.read_text()
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset {name_or_path} is not valid TOML: {exc}") from None
    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(TrainConfig)
    }
    for key, value in values.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            raise ConfigError(
                f"preset {name_or_path}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            )
        expected = type(defaults[key])
        fits = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
        if not (fits or (expected is float and type(value) is int)):
            raise ConfigError(f"preset {name_or_path}: {key} must be of type {expected.__name__}, got {value!r}")
    return TrainConfig(**values)


def to_toml(cfg: TrainConfig) -> str:
    """The config as a TOML preset (round-trips through :func:`load_preset`)."""
    lines = []
    for key, value in dataclasses.asdict(cfg).items():
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, str):
            text = f'"{value}"'
        else:
            text = repr(value)  # numbers, and lists of numbers (same syntax in TOML)
        lines.append(f"{key} = {text}\n")
    return "".join(lines)


def atomic_save(obj, path: Path, part_bytes: int = 0) -> None:
    """``torch.save`` to a temporary file, then rename (a crash never leaves half a checkpoint).

    ``part_bytes > 0``: a checkpoint larger than that is written *split*, as parts
    ``NAME.<digest>.000``, ``.001``, ... of at most ``part_bytes`` each and a manifest
    ``NAME.parts`` (JSON: parts, bytes, SHA-256), written last; :func:`load_checkpoint`
    reads either form.  Split files let a run on a remote machine hand back checkpoints
    through channels that limit the size of a file.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    manifest = path.with_name(path.name + ".parts")
    stale = _checkpoint_parts(path)
    if part_bytes <= 0 or len(data) <= part_bytes:
        _write_atomic(path, data)
        manifest.unlink(missing_ok=True)
    else:
        digest = hashlib.sha256(data).hexdigest()
        parts = [f"{path.name}.{digest[:12]}.{i:03d}" for i in range(-(-len(data) // part_bytes))]
        for i, name in enumerate(parts):
            _write_atomic(path.with_name(name), data[i * part_bytes : (i + 1) * part_bytes])
        _write_atomic(manifest, json.dumps({"parts": parts, "bytes": len(data), "sha256": digest}).encode())
        path.unlink(missing_ok=True)
        stale -= set(parts)
    for name in stale:
        path.with_name(name).unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _checkpoint_parts(path: Path) -> set[str]:
    manifest = path.with_name(path.name + ".parts")
    return set(json.loads(manifest.read_text())["parts"]) if manifest.exists() else set()


def checkpoint_exists(path: Path) -> bool:
    """Whether a checkpoint is at ``path``, whole or split (:func:`atomic_save`)."""
    return path.exists() or path.with_name(path.name + ".parts").exists()


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`atomic_save`, whole or split, on the CPU.

    Raises:
        InputError: a split checkpoint whose parts are missing or do not add up.
    """
    if path.suffix == ".parts":  # the manifest of a split checkpoint names it too
        path = path.with_suffix("")
    manifest = path.with_name(path.name + ".parts")
    if path.exists() or not manifest.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    index = json.loads(manifest.read_text())
    try:
        data = b"".join(path.with_name(name).read_bytes() for name in index["parts"])
    except FileNotFoundError as exc:
        raise InputError(f"{manifest}: part {Path(exc.filename).name} is missing") from None
    if len(data) != index["bytes"] or hashlib.sha256(data).hexdigest() != index["sha256"]:
        raise InputError(f"{manifest}: its parts do not add up to the checkpoint it describes")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """``lr`` (after a linear warm-up over ``warmup_steps``), then ``lr_final`` from ``lr_drop_at · steps``."""
    if step >= cfg.lr_drop_at * cfg.steps:
        return cfg.lr_final
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


def new_channel_rate_gradient(cfg: TrainConfig, channels: int, step: int, device: torch.device) -> torch.Tensor | None:
    """Factor per latent channel ``(channels,)`` on the gradient of the rate into ``y`` at ``step``
    (``cfg.new_channels_from``); None once every factor is 1."""
    if not cfg.new_channels_from or step >= cfg.new_channel_warmup:
        return None
    factors = torch.ones(channels, device=device)
    factors[cfg.new_channels_from :] = step / cfg.new_channel_warmup
    return factors


def initial_weights(path: Path) -> dict[str, torch.Tensor]:
    """Model weights (float32) from a training checkpoint (``.pt``) or a weight file (``.safetensors``)."""
    if path.suffix == ".safetensors":
        from .models.registry import TABLES_PREFIX, read_tensors

        return {k: v.float() for k, v in read_tensors(path).items() if not k.startswith(TABLES_PREFIX)}
    state = load_checkpoint(path)
    return state["model"] if "model" in state else state


#: Scale of the fresh initialization kept for the entries a widened model adds (:func:`load_matching`).
WIDENED_INIT_SCALE = 0.1


def load_matching(model: ContextMixtureModel, weights: dict[str, torch.Tensor], widen_rule: str = "zeros") -> list[str]:
    """Copy the tensors of ``weights`` into ``model``; returns the names of the model's
    tensors left at their initialization (e.g. a resized entropy-parameter network, or
    gains of another number of quality levels).

    A tensor of the same shape is copied.  When ``weights`` come from a model with
    fewer latent channels (smaller ``m``), a tensor that is smaller along some
    dimensions and larger along none is *embedded*: its entries go to the same places
    of the larger tensor (group by group along a dimension that holds several groups
    of latent channels, :meth:`ContextMixtureModel.latent_groups`), and the entries it
    lacks keep their fresh initialization, scaled by :data:`WIDENED_INIT_SCALE` where
    a convolution reads a new input channel.  The widened model then computes nearly
    what the smaller one did (new channels reach old ones only through small weights),
    while its new latent channels carry features of full size from the start: with
    small ones too, they round to zero, no gradient reaches the synthesis weights that
    read them, and their rate keeps them there (``TrainConfig.new_channels_from``).

    A narrower synthesis or analysis transform (smaller ``n_s`` or ``n_a``, same ``m``) is
    embedded by :func:`~.models.widening.widen` with ``widen_rule``: the widened ``g_s``
    reconstructs the same image, the widened ``g_a`` gives the same latent.
    """
    last_synthesis = f"g_s.{len(model.g_s) - 1}.0.weight"  # (3·4, n_s, 3, 3)
    if last_synthesis in weights and weights[last_synthesis].shape[1] < model.config.n_s:
        weights = {**weights, **widen(model.g_s, weights, "g_s.", widen_rule)}
    first_analysis = "g_a.0.skip.weight"  # (n_a, 3, 1, 1)
    if first_analysis in weights and weights[first_analysis].shape[0] < model.config.n_a:
        weights = {**weights, **widen(model.g_a, weights, "g_a.", widen_rule)}
    own = model.state_dict()
    widening = "gains.log_gain" in weights and weights["gains.log_gain"].shape[-1] < model.config.m
    groups = model.latent_groups()
    convolutions = {
        f"{name}.{k}"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Conv2d)
        for k in ("weight", "bias")
    }
    loaded = {}
    for name, value in weights.items():
        target = own.get(name)
        if target is None or target.dim() != value.dim():
            continue
        if target.shape == value.shape:
            loaded[name] = value
        elif widening and all(t >= v for t, v in zip(target.shape, value.shape)):
            widened = target.clone()
            index = []
            for dim, (t, v) in enumerate(zip(target.shape, value.shape)):
                count = groups[name][1] if name in groups and groups[name][0] == dim else 1
                if t % count or v % count:
                    break
                old = torch.arange(v)
                index.append(old // (v // count) * (t // count) + old % (v // count))
            else:
                if name in convolutions and widened.dim() == 4:
                    new_inputs = torch.ones(widened.shape[1], dtype=torch.bool)
                    new_inputs[index[1]] = False
                    widened[:, new_inputs] *= WIDENED_INIT_SCALE
                widened[torch.meshgrid(*index, indexing="ij")] = value.to(widened.dtype)
                loaded[name] = widened
    model.load_state_dict(loaded, strict=False)
    return sorted(set(own) - set(loaded))


#: Values of ``train(device=...)`` / ``mixcodec train --device``.
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(request: str) -> str:
    """``"cuda"`` or ``"cpu"`` for a requested device: ``auto`` takes CUDA when there is a
    GPU; ``cuda`` without one falls back to the CPU with a one-line message on stderr."""
    if request not in DEVICES:
        raise ConfigError(f"unknown device {request!r}; choose one of {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    if request == "cuda" and not cuda:
        reason = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        print(f"mixcodec: --device cuda: {reason} (torch {torch.__version__}); training on the CPU", file=sys.stderr)
    return "cuda" if cuda and request != "cpu" else "cpu"


def bf16_hint(cfg: TrainConfig, device: str) -> str | None:
    """A one-line hint when ``cfg.bf16`` does not suit this CPU, else None.

    bf16 autocast trains 1.6-2.2x faster than float32 on CPUs that multiply bf16 in
    hardware (:func:`.refine.bf16_is_fast`: AMX, AVX512-BF16) and is slower elsewhere
    (docs/training.md); on CUDA there is no hint.
    """
    if device != "cpu" or cfg.bf16 == bf16_is_fast():
        return None
    if cfg.bf16:
        return "mixcodec: bf16 = true, but this CPU has no bf16 hardware (AMX, AVX512-BF16): float32 is faster here"
    return (
        "mixcodec: this CPU multiplies bf16 in hardware (AMX or AVX512-BF16): "
        "bf16 = true in a copy of the preset trains 1.6-2.2x faster"
    )


def _distributed_setup(device: str) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)`` for a device type from :func:`resolve_device`; joins the
    process group when launched by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    rank = torch.distributed.get_rank()
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


@dataclass
class _Optimizers:
    """Adam on the RD loss (every trainable parameter but the prior's quantiles) and
    Adam on the quantile-fitting loss (the quantiles)."""

    params: list[torch.nn.Parameter]
    main: torch.optim.Adam
    aux: torch.optim.Adam


def _build(cfg: TrainConfig) -> tuple[ContextMixtureModel, _Optimizers]:
    """A fresh model of ``cfg`` (gains from its λ ladder, ``cfg.freeze`` frozen) and its optimizers."""
    torch.manual_seed(cfg.seed)
    model = ContextMixtureModel(cfg.model_config())
    model.gains.init_from_lmbdas(cfg.lmbdas)
    frozen = tuple(cfg.freeze)
    for name, p in model.named_parameters():
        p.requires_grad_(not (frozen and name.startswith(frozen)))
    params = [p for n, p in model.named_parameters() if n != "prior.quantiles" and p.requires_grad]
    return model, _Optimizers(
        params, torch.optim.Adam(params, lr=cfg.lr), torch.optim.Adam([model.prior.quantiles], lr=cfg.aux_lr)
    )


def _restore(
    model: ContextMixtureModel,
    optimizers: _Optimizers,
    checkpoint: Path | None,
    init: Path | None,
    rank: int,
    widen_rule: str,
) -> int:
    """Continue from ``checkpoint`` (weights, optimizer states, step) when given, else start
    from the weights of ``init`` (:func:`load_matching` with ``widen_rule``); returns the step
    to start at."""
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        optimizers.main.load_state_dict(state["optimizer"])
        optimizers.aux.load_state_dict(state["aux_optimizer"])
        return state["step"]
    if init is not None:
        fresh = load_matching(model, initial_weights(Path(init)), widen_rule)
        if fresh and rank == 0:
            print(f"--init {init}: not in it (or of another shape), left at their initialization: {', '.join(fresh)}")
    return 0


def reanchor_levels(state: dict, positions: list[float]) -> dict:
    """A training checkpoint whose quality levels sit at real qualities of ``state``'s.

    Level ``q`` of the result is the old model at quality ``positions[q - 1]``: its
    log-gain rows (and their Adam moments) become the rows the old model interpolates
    there (:func:`~.models.context_model.rows_at`), its λ the geometric interpolation of
    the old neighbours' λ.  The model codes exactly as before at those qualities, so a
    run can move its rates in one step instead of waiting for a new λ ladder to pull the
    gains there (then train on with the returned ``train_config["lmbdas"]``).

    Raises:
        ConfigError: ``positions`` is not one increasing value per level in ``[1, Q]``.
    """
    cfg = TrainConfig(**state["train_config"])
    qualities = len(cfg.lmbdas)
    if (
        len(positions) != qualities
        or any(not 1 <= p <= qualities for p in positions)
        or any(a >= b for a, b in zip(positions, positions[1:]))
    ):
        raise ConfigError(
            f"need {qualities} increasing qualities between 1 and {qualities} (one per level), got {positions}"
        )
    at = torch.tensor(positions)
    model, optimizers = _build(cfg)
    names = {id(p): name for name, p in model.named_parameters()}
    index = {names[id(p)]: i for i, p in enumerate(optimizers.main.param_groups[0]["params"])}
    weights, moments = dict(state["model"]), dict(state["optimizer"]["state"])
    for name in ("gains.log_gain", "gains.log_inverse_gain"):
        weights[name] = rows_at(weights[name], at)
        if name in index and index[name] in moments:
            moments[index[name]] = {
                key: rows_at(value, at) if value.dim() == 2 else value for key, value in moments[index[name]].items()
            }
    lmbdas = rows_at(torch.tensor(cfg.lmbdas, dtype=torch.float64).log()[:, None], at).exp()[:, 0]
    return {
        **state,
        "model": weights,
        "optimizer": {**state["optimizer"], "state": moments},
        "train_config": {**state["train_config"], "lmbdas": [float(f"{v:.4g}") for v in lmbdas]},
    }


def _save(model: ContextMixtureModel, optimizers: _Optimizers, cfg: TrainConfig, step: int, path: Path) -> None:
    """Write the checkpoint ``path`` (split into parts of ``cfg.checkpoint_part_mib``)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizers.main.state_dict(),
        "aux_optimizer": optimizers.aux.state_dict(),
        "step": step,
        "config": model.config.to_json(),
        "train_config": dataclasses.asdict(cfg),
    }
    atomic_save(state, path, int(cfg.checkpoint_part_mib * 2**20))


def _distributed(model: ContextMixtureModel, world: int) -> torch.nn.Module:
    """The module to run forward passes through: DDP around ``model`` with several processes."""
    if world == 1:
        return model
    # the quantiles get no gradient from the RD loss; their aux gradients are identical on all ranks
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ["prior.quantiles"])
    return torch.nn.parallel.DistributedDataParallel(model)


@dataclass
class _Levels:
    """The λ ladder as a training objective: a random quality level per crop, its λ and
    the weight of its loss (``balance_levels``: ``(median λ / λ)^balance_power``, by default
    the square root, so that every level moves the shared parameters about as much)."""

    lmbdas: torch.Tensor
    weights: torch.Tensor
    draws: torch.Generator

    @classmethod
    def of(cls, cfg: TrainConfig, seed: int) -> "_Levels":
        lmbdas = torch.tensor(cfg.lmbdas)
        weights = (lmbdas.median() / lmbdas) ** cfg.balance_power if cfg.balance_levels else torch.ones_like(lmbdas)
        return cls(lmbdas, weights, torch.Generator().manual_seed(seed))

    def draw(self, batch: int) -> torch.Tensor:
        """Level indices ``(batch,)`` (quality = index + 1)."""
        return torch.randint(len(self.lmbdas), (batch,), generator=self.draws)


def _step(
    network: torch.nn.Module,
    model: ContextMixtureModel,
    optimizers: _Optimizers,
    cfg: TrainConfig,
    x: torch.Tensor,
    levels: _Levels,
    step: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One optimizer step of the RD loss and one of the quantile loss on crops ``x`` ``(B, 3, H, W)``.

    Returns:
        ``(RD loss terms, aux loss, level indices of the crops)``.
    """
    device = x.device
    lr = learning_rate(cfg, step)
    for group in optimizers.main.param_groups:
        group["lr"] = lr
    level = levels.draw(x.shape[0])
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        output = network(
            x,
            quality=(level + 1).to(device),
            rate_gradient=new_channel_rate_gradient(cfg, model.config.m, step, device),
        )
    result = rate_distortion_loss(
        output, x, levels.lmbdas[level].to(device), cfg.metric, levels.weights[level].to(device)
    )
    optimizers.main.zero_grad(set_to_none=True)
    result["loss"].backward()
    if cfg.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(optimizers.params, cfg.clip_norm)
    optimizers.main.step()
    aux = model.aux_loss()
    optimizers.aux.zero_grad(set_to_none=True)
    aux.backward()
    optimizers.aux.step()
    if not math.isfinite(float(result["loss"].detach())):
        raise FloatingPointError(f"non-finite loss at step {step + 1}")
    return result, aux, level


def train(
    cfg: TrainConfig,
    data: Path,
    out: Path,
    resume: bool = False,
    init: Path | None = None,
    max_minutes: float | None = None,
    val: Path | None = None,
    tensorboard: bool = False,
    device: str = "auto",
) -> ContextMixtureModel:
    """Train (or continue) a model; returns it after writing ``out/last.pt``.

    ``data``: a folder of training images or a packed-crop file (:mod:`.data`).
    ``device``: ``auto``, ``cpu`` or ``cuda`` (:func:`resolve_device`); with ``cfg.bf16``
    the forward pass runs under bf16 autocast on that device.
    ``val``: a folder of images (e.g. Kodak) coded to real files every ``cfg.val_every``
    steps and at the end (first ``cfg.val_images``); results in ``out/val.csv``.
    ``tensorboard``: also write the log lines and validation results as TensorBoard
    scalars under ``out/tensorboard`` (needs the ``tensorboard`` package).

    Launched with ``torchrun --nproc_per_node K`` the same call trains with
    DistributedDataParallel (``batch`` crops per process; rank 0 logs and saves).
    ``max_minutes`` stops early (with a checkpoint), e.g. to fit a time slot; so does
    SIGTERM or SIGINT (Ctrl-C), after the step under way.
    """
    device_type = resolve_device(device)
    rank, world, device = _distributed_setup(device_type)
    hint = bf16_hint(cfg, device_type) if rank == 0 else None
    if hint:
        print(hint, file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, optimizers = _build(cfg)
    ckpt_path = out / "last.pt"
    checkpoint = ckpt_path if resume and checkpoint_exists(ckpt_path) else None
    step = _restore(model, optimizers, checkpoint, init, rank, cfg.widen_rule)
    model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    network = _distributed(model, world)
    seed = cfg.seed + 7919 * rank + step  # per process, new after a resume
    dataset = CropDataset(data, cfg.crop, cfg.min_downscale, cfg.batch, seed=seed)
    batches = iter(
        torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=cfg.workers, persistent_workers=cfg.workers > 0
        )
    )
    levels = _Levels.of(cfg, seed)
    val_images = (list_images(val)[: cfg.val_images or None] if val is not None else []) if rank == 0 else []
    log = _Log(out / "log.csv", len(cfg.lmbdas), out / "tensorboard" if tensorboard else None) if rank == 0 else None
    if rank == 0:
        (out / "config.toml").write_text(to_toml(cfg))
    last_save = start = time.monotonic()
    sums = _RunningMeans(len(cfg.lmbdas))
    stop = _StopRequest()
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, dynamic_ncols=True, mininterval=5, disable=rank != 0)
    while step < cfg.steps:
        x = next(batches).to(device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        result, aux, level = _step(network, model, optimizers, cfg, x, levels, step)
        step += 1
        sums.add(result, level)
        if step % cfg.log_every == 0:
            means = sums.means()
            if log:
                log.write(step, time.monotonic() - start, learning_rate(cfg, step - 1), means, float(aux.detach()))
            bar.set_postfix(loss=f"{means['loss']:.4f}", bpp=f"{means['bpp']:.3f}", psnr=f"{means['psnr']:.2f}")
            sums = _RunningMeans(len(cfg.lmbdas))
        bar.update(1)
        out_of_time = (max_minutes is not None and time.monotonic() - start > max_minutes * 60) or stop.agreed(world)
        if rank == 0 and (
            time.monotonic() - last_save > cfg.checkpoint_minutes * 60 or step == cfg.steps or out_of_time
        ):
            _save(model, optimizers, cfg, step, ckpt_path)
            last_save = time.monotonic()
        if val_images and (
            (cfg.val_every and step % cfg.val_every == 0) or step == cfg.steps or (out_of_time and not stop.requested)
        ):
            points = validate(model, cfg, val_images, out, step)
            if log:
                log.write_validation(step, points)
            summary = ", ".join(f"q{r['quality']} {r['bpp']:.3f} bpp {r['psnr']:.2f} dB" for r in points)
            bar.write(f"step {step}: {val.name} (real files): {summary}")
        if out_of_time:
            break
    bar.close()
    stop.restore()
    if log:
        log.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return model


def validate(
    model: ContextMixtureModel, cfg: TrainConfig, images: list[Path], out: Path, step: int
) -> list[dict[str, float]]:
    """Real-file bpp, PSNR-RGB and MS-SSIM of the current weights (exported as they would
    be shipped, fp16) on ``images`` at every quality; appended to ``out/val.csv``."""
    from . import eval as ev
    from .models.registry import export

    state = {k: v.cpu() for k, v in model.state_dict().items()}
    infos = export(state, model.config, out / "val.safetensors", name="val", lmbdas=cfg.lmbdas, metric=cfg.metric)
    points = ev.mean_curve(ev.evaluate(ev.learned_codec(infos), images))["val"]
    results = [
        {"step": step, "quality": int(p["quality"]), "bpp": p["bpp"], "psnr": p["psnr"], "ms_ssim": p["ms_ssim"]}
        for p in points
    ]
    path = out / "val.csv"
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(list(results[0]))
        for r in results:
            writer.writerow([step, r["quality"], *(round(r[k], 5) for k in ("bpp", "psnr", "ms_ssim"))])
    return results


class _StopRequest:
    """SIGTERM / SIGINT (Ctrl-C) during training: finish the step, write the checkpoint, return."""

    def __init__(self):
        self.requested = False
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._request)

    def _request(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, world: int) -> bool:
        """Whether any process was asked to stop (all of them stop after the same step)."""
        if world == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class _RunningMeans:
    """Means of the loss and, per quality level, of bpp and PSNR since the last log line."""

    def __init__(self, levels: int):
        self.loss, self.steps = 0.0, 0
        self.sums = torch.zeros(2, levels, dtype=torch.float64)  # bpp, psnr
        self.counts = torch.zeros(levels, dtype=torch.float64)

    def add(self, result: dict[str, torch.Tensor], level: torch.Tensor) -> None:
        self.loss += float(result["loss"].detach())
        self.steps += 1
        values = torch.stack([result["bpp"].detach(), result["psnr"].detach()]).double().cpu()
        self.sums.index_add_(1, level, values)
        self.counts += torch.bincount(level, minlength=len(self.counts))

    def means(self) -> dict[str, float]:
        """``loss``, ``bpp``, ``psnr`` (over all crops) and ``bpp_q{i}``, ``psnr_q{i}`` (nan for unseen levels)."""
        per_level = self.sums / self.counts
        total = self.sums.sum(1) / self.counts.sum()
        result = {"loss": self.loss / self.steps, "bpp": float(total[0]), "psnr": float(total[1])}
        if len(self.counts) > 1:
            for i in range(len(self.counts)):
                result[f"bpp_q{i + 1}"], result[f"psnr_q{i + 1}"] = float(per_level[0, i]), float(per_level[1, i])
        return result


class _Log:
    """Append-only CSV training log (per-quality columns for a model of several quality levels),
    mirrored as TensorBoard scalars when ``tensorboard`` (a folder) is given: ``train/<column>``
    per log line and ``val/{bpp,psnr,ms_ssim}_q<level>`` per validation."""

    def __init__(self, path: Path, levels: int, tensorboard: Path | None = None):
        self.columns = ["loss", "bpp", "psnr"] + (
            [f"{k}_q{i + 1}" for i in range(levels) for k in ("bpp", "psnr")] if levels > 1 else []
        )
        new = not path.exists()
        self.handle = path.open("a", newline="")
        self.writer = csv.writer(self.handle)
        if new:
            self.writer.writerow(["step", "time_s", "lr", *self.columns, "aux"])
        self.board = None
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter  # needs the optional `tensorboard` package

            self.board = SummaryWriter(str(tensorboard))

    def write(self, step: int, seconds: float, lr: float, means: dict[str, float], aux: float) -> None:
        self.writer.writerow([step, round(seconds, 1), lr, *(round(means[k], 5) for k in self.columns), round(aux, 3)])
        self.handle.flush()
        if self.board:
            for key, value in {"lr": lr, **{k: means[k] for k in self.columns}, "aux": aux}.items():
                self.board.add_scalar(f"train/{key}", value, step)
            self.board.flush()

    def write_validation(self, step: int, points: list[dict[str, float]]) -> None:
        if self.board:
            for p in points:
                for key in ("bpp", "psnr", "ms_ssim"):
                    self.board.add_scalar(f"val/{key}_q{p['quality']}", p[key], step)
            self.board.flush()

    def close(self) -> None:
        self.handle.close()
        if self.board:
            self.board.close()
