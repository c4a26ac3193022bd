"""Trained models: the set shipped inside the package, and loading/exporting weight files.

Weights are fp16 safetensors files whose metadata hold the model config (JSON)
and a description (name, quality, λ, metric, measured Kodak RD).  Loading never
unpickles anything.  A file may *share* tensors with another weight file of the
same folder (a model fine-tuned with some modules frozen, e.g. the λ variants of
one base model): it then holds only its own tensors and names the other file, the
shared tensors and their SHA-256, which loading checks (the other file's own
tensors may change: a retrained base model keeps its variants valid).  A file's *digest* is the SHA-256 of its bytes; ``.mxc``
files record its first 8 bytes so a stream is never decoded with other weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from .context_model import QUALITY_RESOLUTION, ContextMixtureModel, ModelConfig

DEFAULT_MODEL = "gllmm"


class ModelNotFound(LookupError):
    """No installed model matches the requested name/quality/digest."""


@dataclass(frozen=True)
class ModelInfo:
    """One quality of a weight file: a trained level (an integer ``1 .. config.qualities``),
    or a value between two levels (:func:`find_model`)."""

    name: str
    quality: float
    path: Path
    sha256: str  # of the whole file
    config: ModelConfig
    lmbda: float = 0.0  # the λ this quality was trained with (between levels: geometric interpolation)
    metric: str = "mse"
    kodak: dict = field(default_factory=dict, hash=False, compare=False)  # measured bpp/psnr/ms_ssim

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.sha256)[:8]


def read_infos(path: Path) -> list[ModelInfo]:
    """Read the metadata of a weight file (no tensors are loaded): one :class:`ModelInfo` per quality."""
    data = Path(path).read_bytes()
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} is not a mixcodec weight file (no config in its metadata)")
    config = ModelConfig.from_json(meta["config"])
    lmbdas = json.loads(meta.get("lmbdas", "[]")) or [0.0] * config.qualities
    kodak = json.loads(meta.get("kodak", "[]")) or [{}] * config.qualities
    if len(lmbdas) != config.qualities or len(kodak) != config.qualities:
        raise ValueError(f"{path}: its metadata describe {len(lmbdas)} λ values for {config.qualities} quality levels")
    sha256 = hashlib.sha256(data).hexdigest()
    name, metric = meta.get("name", Path(path).stem), meta.get("metric", "mse")
    return [
        ModelInfo(name=name, quality=q + 1, path=Path(path), sha256=sha256, config=config, lmbda=float(lmbdas[q]), metric=metric, kodak=kodak[q])
        for q in range(config.qualities)
    ]


#: Environment variable with extra folders of weight files (``os.pathsep``-separated).
MODELS_ENV = "MIXCODEC_MODELS"


def model_folders() -> list[Path]:
    """``mixcodec/weights`` followed by the folders named in ``$MIXCODEC_MODELS``."""
    extra = [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    return [Path(str(resources.files("mixcodec") / "weights")), *extra]


def installed_models() -> list[ModelInfo]:
    """Every quality of the weight files in :func:`model_folders`, sorted by name and quality.

    Raises:
        ValueError: two files carry the same model name.
    """
    paths = [p for folder in model_folders() if folder.is_dir() for p in sorted(folder.glob("*.safetensors"))]
    infos = [info for p in paths for info in read_infos(p)]
    files: dict[str, Path] = {}
    for info in infos:
        if files.setdefault(info.name, info.path) != info.path:
            raise ValueError(f"two weight files are named {info.name!r}: {files[info.name]} and {info.path}")
    return sorted(infos, key=lambda i: (i.name, i.quality))


def find_model(name: str = DEFAULT_MODEL, quality: float | None = None, digest: bytes | None = None) -> ModelInfo:
    """The installed model ``name`` at ``quality`` (default: the middle level, the lower one of two).

    ``name`` may also be the path of a weight file.  ``quality`` is any number from 1
    to the number of trained levels, rounded to a multiple of ``1 / QUALITY_RESOLUTION``;
    between two levels the gains (and the reported λ) are interpolated geometrically.
    ``digest``: the weights a file was written with (first 8 bytes of their SHA-256).
    """
    if name.endswith(".safetensors") and Path(name).exists():
        candidates = read_infos(Path(name))
    else:
        candidates = [i for i in installed_models() if i.name == name]
    if not candidates:
        known = sorted({i.name for i in installed_models()})
        raise ModelNotFound(f"no installed model named {name!r} (installed: {', '.join(known) or 'none'})")
    if digest is not None and candidates[0].digest != digest:
        raise ModelNotFound(f"the file was written with {name} weights {digest.hex()}, which are not installed (installed: {candidates[0].digest.hex()})")
    if quality is None:
        return candidates[(len(candidates) - 1) // 2]
    q = round(quality * QUALITY_RESOLUTION) / QUALITY_RESOLUTION
    if not 1 <= q <= len(candidates):
        raise ModelNotFound(f"{name} has no quality {quality:g} (available: 1 to {len(candidates)}, fractions between two levels too)")
    low = candidates[math.floor(q) - 1]
    if q == low.quality:
        return low
    high, t = candidates[math.floor(q)], q - low.quality
    return dataclasses.replace(low, quality=q, lmbda=low.lmbda ** (1 - t) * high.lmbda**t, kodak={})


#: Prefix of the integer coding tables stored beside the weights.
TABLES_PREFIX = "coding."


#: Metadata key of a file that shares tensors: JSON ``{"file", "tensors", "sha256"}`` (digest of those tensors).
SHARES_KEY = "shares"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a weight file, with the shared ones read from the file they live in."""
    with safe_open(str(path), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
        meta = handle.metadata() or {}
    if SHARES_KEY in meta:
        shares = json.loads(meta[SHARES_KEY])
        base = Path(path).parent / shares["file"]
        shared = {}
        if base.is_file():
            with safe_open(str(base), framework="pt") as handle:
                shared = {key: handle.get_tensor(key) for key in shares["tensors"] if key in handle.keys()}
        if len(shared) != len(shares["tensors"]) or tensors_digest(shared) != shares["sha256"]:
            raise ValueError(f"{path} shares tensors with {shares['file']}, which is missing or holds other values for them")
        state.update(shared)
    return state


def load_model(info: ModelInfo) -> ContextMixtureModel:
    """The model of ``info`` (shared by every quality of its file) in float32, evaluation
    mode, with its coding tables (``model.prior.coding_tables``)."""
    return _load_file(info.path, info.sha256, info.config)


@lru_cache(maxsize=8)
def _load_file(path: Path, sha256: str, config: ModelConfig) -> ContextMixtureModel:
    model = ContextMixtureModel(config)
    state = read_tensors(path)
    tables = {k[len(TABLES_PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(TABLES_PREFIX)}
    model.load_state_dict({k: v.float() for k, v in state.items()})
    if set(tables) != {"z_pmf", "z_offsets"}:
        raise ValueError(f"{path} has no coding tables; re-export it")
    model.prior.coding_tables = (tables["z_pmf"].numpy().astype(np.float64) * 2.0**-32, tables["z_offsets"].numpy())
    # channels-last convolutions are 10-25% faster on CPU for inference (measured on N=64);
    # training keeps NCHW (channels-last backward crashes in torch 2.13, docs/training.md)
    return model.eval().to(memory_format=torch.channels_last)


def export(state_dict: dict[str, torch.Tensor], config: ModelConfig, path: Path, base: Path | None = None, **meta) -> list[ModelInfo]:
    """Write an fp16 safetensors weight file with ``config`` and ``meta`` in its metadata;
    returns its :class:`ModelInfo` per quality.

    ``meta`` may hold ``name``, ``lmbdas`` (one per quality), ``metric``, ``train_steps``
    and ``kodak`` (one dict of measured bpp/psnr/ms_ssim per quality).
    ``base``: another weight file, to be installed in the same folder; tensors
    bit-identical (in fp16) to its own are not written but shared with it.
    """
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state_dict.items()}
    model = ContextMixtureModel(config)
    model.load_state_dict({k: v.float() for k, v in tensors.items()})  # tables of the weights as stored
    metadata = {"config": config.to_json()}
    if base is not None:
        with safe_open(str(base), framework="pt") as handle:
            shared = [k for k in tensors if k in handle.keys() and torch.equal(handle.get_tensor(k), tensors[k])]
        digest = tensors_digest({key: tensors.pop(key) for key in shared})
        metadata[SHARES_KEY] = json.dumps({"file": Path(base).name, "tensors": shared, "sha256": digest})
    tensors.update({TABLES_PREFIX + k: v.contiguous() for k, v in model.prior.integer_tables().items()})
    for key, value in meta.items():
        metadata[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(save(tensors, metadata))
    tmp.replace(path)
    return read_infos(path)
