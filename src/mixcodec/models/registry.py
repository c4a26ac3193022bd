"""Trained models: the set shipped inside the package, and loading/exporting weight files.

Weights are fp16 safetensors files whose metadata hold the model config (JSON), its
name and *version*, and a description (λ per quality, metric, measured Kodak RD).
Loading never unpickles anything.  A file may *share* tensors with another weight
file of the same folder (a model fine-tuned with some modules frozen, e.g. the λ
variants of one base model): it then holds only its own tensors and names the other
file, the shared tensors and their SHA-256, which loading checks (the other file's
own tensors may change: a retrained base model keeps its variants valid).

Identity: a model is its tensors and its config, not the bytes of its file.  Its
*digest* (:func:`model_digest`) is the SHA-256 of every tensor (shared ones included)
and the config in a canonical order; ``.mxc`` files record its first 8 bytes, so a
stream is never decoded with other weights, and metadata (name, version, measured
RD) can change without orphaning any file.  Files written before 0.2.0 name the
SHA-256 of the *whole* weight file instead; a weight file lists those *legacy
digests* of its earlier bytes in its metadata, and for a file without that
metadata (exported before 0.2.0) the registry hashes the file itself.

Versions: several versions of one model name may be installed side by side.  A
name means its newest installed version for compression (``name@version`` picks
another); decompression takes whichever installed file holds the weights a file
names (:func:`find_written`).  Where the released versions live and how to add
one: ``weights-archive/README.md`` of the source repository.
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

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..bitstream import QUALITY_RESOLUTION
from ..context_coding import IntegerContextCodec, IntegerHyperprior
from ..errors import ConfigError, ModelNotFoundError
from . import releases
from .context_model import ContextMixtureModel, ModelConfig

DEFAULT_MODEL = "gllmm"
#: ``name@version`` selects one version of a model.
VERSION_SEPARATOR = "@"
#: Metadata keys of a weight file (besides ``config``, ``lmbdas``, ``metric``, ``kodak``, ...).
NAME_KEY, VERSION_KEY, DIGEST_KEY, LEGACY_KEY = "name", "version", "digest", "legacy_digests"
#: Bytes of a digest that ``.mxc`` files record.
DIGEST_BYTES = 8


@dataclass(frozen=True)
class ModelInfo:
    """One quality of a weight file: a trained level (an integer ``1 .. config.qualities``),
    or a value between two levels (:func:`find_model`)."""

    name: str
    quality: float
    path: Path
    sha256: str  # the model digest (hex): tensors and config, :func:`model_digest`
    config: ModelConfig
    lmbda: float = 0.0  # the λ this quality was trained with (between levels: geometric interpolation)
    metric: str = "mse"
    kodak: dict = field(default_factory=dict, hash=False, compare=False)  # measured bpp/psnr/ms_ssim
    version: int | None = None  # None: a file exported before versions existed, not a known release
    legacy_digests: tuple[str, ...] = ()  # hex SHA-256 of the whole file as written before 0.2.0

    @property
    def digest(self) -> bytes:
        """The bytes new ``.mxc`` files record."""
        return bytes.fromhex(self.sha256)[:DIGEST_BYTES]

    def holds(self, digest: bytes) -> bool:
        """Whether a file naming ``digest`` (header field) was written with these weights."""
        return digest in {bytes.fromhex(d)[:DIGEST_BYTES] for d in (self.sha256, *self.legacy_digests)}

    @property
    def label(self) -> str:
        """``name version V`` (or just the name of an unversioned file)."""
        return self.name if self.version is None else f"{self.name} version {self.version}"


#: ``ModelConfig`` fields of 0.2.0, always part of a model's identity.  A field added later
#: enters it only when it differs from its default, so adding one keeps every digest.
IDENTITY_FIELDS = ("backbone", "family", "hidden", "m", "n", "qualities")


def identity_config(config: ModelConfig) -> str:
    """The canonical JSON of ``config`` that :func:`model_digest` hashes."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    values = json.loads(config.to_json())  # derived fields at their derived value are left out there
    kept = {k: v for k, v in values.items() if k in IDENTITY_FIELDS or v != defaults[k]}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"))


def model_digest(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> str:
    """The identity of a model (hex SHA-256): its canonical config and every tensor of its
    file as stored (shared tensors and coding tables included; :func:`tensors_digest`)."""
    h = hashlib.sha256(b"mixcodec model\0")
    h.update(identity_config(config).encode() + b"\0")
    h.update(bytes.fromhex(tensors_digest(tensors)))
    return h.hexdigest()


def _metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file; unreadable files raise :class:`ConfigError`."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"cannot read the weight file {path}: {exc}") from None


@lru_cache(maxsize=64)
def _hashed_identity(path: Path, mtime_ns: int, size: int, config: ModelConfig) -> tuple[str, str]:
    """``(model digest, whole-file SHA-256)`` of a file without a stored digest (exported
    before 0.2.0), computed once per file state (path, modification time, size)."""
    try:
        whole = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ConfigError(f"cannot read the weight file {path}: {exc}") from None
    return model_digest(config, read_tensors(path)), whole


def read_infos(path: Path) -> list[ModelInfo]:
    """Read the metadata of a weight file (no tensors are loaded when it stores its
    digest): one :class:`ModelInfo` per quality.

    Raises:
        ConfigError: not a readable mixcodec weight file.
    """
    path = Path(path)
    meta = _metadata(path)
    if "config" not in meta:
        raise ConfigError(f"{path} is not a mixcodec weight file (no config in its metadata)")
    try:
        config = ModelConfig.from_json(meta["config"])
        lmbdas = json.loads(meta.get("lmbdas", "[]")) or [0.0] * config.qualities
        kodak = json.loads(meta.get("kodak", "[]")) or [{}] * config.qualities
        legacy = tuple(json.loads(meta.get(LEGACY_KEY, "[]")))
        version = int(meta[VERSION_KEY]) if VERSION_KEY in meta else None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path} has malformed metadata: {exc}") from None
    if len(lmbdas) != config.qualities or len(kodak) != config.qualities:
        raise ConfigError(f"{path}: its metadata describe {len(lmbdas)} λ values for {config.qualities} quality levels")
    name = meta.get(NAME_KEY, path.stem)
    if DIGEST_KEY in meta:
        digest = meta[DIGEST_KEY]
    else:
        stat = path.stat()
        digest, whole = _hashed_identity(path.resolve(), stat.st_mtime_ns, stat.st_size, config)
        legacy = (whole, *legacy)
        release = releases.find(digest)
        version = release.version if release is not None and version is None else version
    metric = meta.get("metric", "mse")
    return [
        ModelInfo(
            name=name,
            quality=q + 1,
            path=path,
            sha256=digest,
            config=config,
            lmbda=float(lmbdas[q]),
            metric=metric,
            kodak=kodak[q],
            version=version,
            legacy_digests=legacy,
        )
        for q in range(config.qualities)
    ]


#: Environment variable with extra folders of weight files (``os.pathsep``-separated).
MODELS_ENV = "MIXCODEC_MODELS"


def model_folders() -> list[Path]:
    """``mixcodec/weights`` followed by the folders named in ``$MIXCODEC_MODELS``."""
    extra = [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    return [Path(str(resources.files("mixcodec") / "weights")), *extra]


def installed_models() -> list[ModelInfo]:
    """Every quality of the weight files in :func:`model_folders`, sorted by name, version
    and quality.  A model found in several files (the same digest) is listed once, from
    the first folder."""
    paths = [p for folder in model_folders() if folder.is_dir() for p in sorted(folder.glob("*.safetensors"))]
    seen: dict[str, Path] = {}
    infos = []
    for path in paths:
        file_infos = read_infos(path)
        if seen.setdefault(file_infos[0].sha256, path) == path:
            infos += file_infos
    return sorted(infos, key=lambda i: (i.name, -1 if i.version is None else i.version, i.quality))


def _installed_summary(infos: list[ModelInfo]) -> str:
    labels = sorted({i.label for i in infos})
    return ", ".join(labels) or "none"


def _at_quality(candidates: list[ModelInfo], quality: float | None) -> ModelInfo:
    """The quality ``quality`` of one file's infos (default: the middle level, the lower one of two)."""
    if quality is None:
        return candidates[(len(candidates) - 1) // 2]
    q = round(quality * QUALITY_RESOLUTION) / QUALITY_RESOLUTION
    if not 1 <= q <= len(candidates):
        raise ModelNotFoundError(
            f"{candidates[0].label} has no quality {quality:g} "
            f"(available: 1 to {len(candidates)}, fractions between two levels too)"
        )
    low = candidates[math.floor(q) - 1]
    if q == low.quality:
        return low
    high, t = candidates[math.floor(q)], q - low.quality
    return dataclasses.replace(low, quality=q, lmbda=low.lmbda ** (1 - t) * high.lmbda**t, kodak={})


def find_model(name: str = DEFAULT_MODEL, quality: float | None = None) -> ModelInfo:
    """The model to compress with: ``name`` at ``quality`` (default: the middle level, the lower one of two).

    ``name`` is an installed model name (its newest version), ``name@version``, or the
    path of a weight file.  ``quality`` is any number from 1 to the number of trained
    levels, rounded to a multiple of ``1 / QUALITY_RESOLUTION``; between two levels the
    gains (and the reported λ) are interpolated geometrically.

    Raises:
        ModelNotFoundError: no such model, version or quality.
        ConfigError: the newest version of ``name`` is held by two files with different weights.
    """
    if name.endswith(".safetensors"):
        if not Path(name).is_file():
            raise ModelNotFoundError(f"no weight file {name}")
        return _at_quality(read_infos(Path(name)), quality)
    installed = installed_models()
    base, _, version = name.partition(VERSION_SEPARATOR)
    candidates = [i for i in installed if i.name == base]
    if not candidates:
        raise ModelNotFoundError(f"no installed model named {base!r} (installed: {_installed_summary(installed)})")
    if version:
        if not version.isdigit():
            raise ModelNotFoundError(f"bad model version {version!r} in {name!r} (versions are numbers: {base}@1)")
        candidates = [i for i in candidates if i.version == int(version)]
        if not candidates:
            raise ModelNotFoundError(
                f"{base} version {version} is not installed "
                f"(installed: {_installed_summary([i for i in installed if i.name == base])})"
            )
    newest = candidates[-1].version
    chosen = [i for i in candidates if i.version == newest]
    if len({i.sha256 for i in chosen}) > 1:
        files = sorted({str(i.path) for i in chosen})
        raise ConfigError(
            f"{chosen[0].label} is held by weight files with different weights: {' and '.join(files)}; "
            "pass one of them with --model"
        )
    return _at_quality(chosen, quality)


def find_written(name: str, digest: bytes) -> ModelInfo:
    """The installed model that a file names by its header (``name``, ``digest``), at its
    first quality: whichever installed file holds those weights, under any name.

    Raises:
        ModelNotFoundError: with one line naming the model, its version and digest and
            where its weight file comes from (:mod:`.releases`).
    """
    installed = installed_models()
    held = [i for i in installed if i.holds(digest)]
    if held:
        return held[0]
    release = releases.find(digest.hex())
    if release is None:
        raise ModelNotFoundError(
            f"the file was written with {name} weights {digest.hex()}, which are not installed "
            f"(installed: {_installed_summary(installed)}); "
            f"put their weight file in a folder listed in {MODELS_ENV}, or pass it with --model"
        )
    raise ModelNotFoundError(
        f"the file was written with {release.name} version {release.version} (weights {digest.hex()}), "
        "which is not installed; "
        f"its weight file is {release.file} in the mixcodec source repository: "
        f"list that folder in {MODELS_ENV}, or pass the file with --model"
    )


def newest_version(name: str) -> int:
    """The highest version of ``name`` installed or released (:mod:`.releases`; 0: none)."""
    versions = [i.version or 0 for i in installed_models() if i.name == name] + [
        r.version for r in releases.catalog() if r.name == name
    ]
    return max(versions, default=0)


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
    """Every tensor of a weight file, with the shared ones read from the file they live in.

    Raises:
        ConfigError: the file, or the file it shares tensors with, is missing or unreadable.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
            meta = handle.metadata() or {}
        shares = json.loads(meta[SHARES_KEY]) if SHARES_KEY in meta else None
        shared = {}
        if shares is not None and (Path(path).parent / shares["file"]).is_file():
            with safe_open(str(Path(path).parent / shares["file"]), framework="pt") as handle:
                shared = {key: handle.get_tensor(key) for key in shares["tensors"] if key in handle.keys()}
    except (OSError, SafetensorError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the weight file {path}: {exc}") from None
    if shares is not None:
        if len(shared) != len(shares["tensors"]) or tensors_digest(shared) != shares["sha256"]:
            raise ConfigError(
                f"{path} shares tensors with {shares['file']}, which is missing or holds other values for them"
            )
        state.update(shared)
    return state


@dataclass(frozen=True)
class LoadedModel:
    """A weight file ready to code: the float model (float32, evaluation mode, no
    gradients; shared by every caller, so never modify it) and the exact faces of its
    latent codecs.  :func:`load` returns one object per file state and digest.

    Attributes:
        net: the transforms and float entropy model (``g_a``, ``g_s``, the gains, ...).
        hyperprior: codes ``ẑ`` with the file's integer tables and gives the hyper features.
        context: codes ``ŷ`` given those features.
    """

    net: ContextMixtureModel
    hyperprior: IntegerHyperprior
    context: IntegerContextCodec


def load(info: ModelInfo) -> LoadedModel:
    """The loaded model of ``info`` (the same object for every quality of its file).

    Raises:
        ConfigError: the file's tensors are not those of its digest (changed after export).
    """
    return _load_file(info.path, info.sha256, info.config, _file_states(info.path))


def _file_states(path: Path) -> tuple[tuple[int, int], ...]:
    """``(modification time, size)`` of a weight file and of the file it shares tensors
    with: the cache of :func:`load` follows both (a retrained base model is reloaded)."""
    files = [Path(path)]
    shares = _metadata(path).get(SHARES_KEY)
    if shares is not None:
        files.append(Path(path).parent / json.loads(shares)["file"])
    return tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.is_file() else (0, 0) for f in files)


def load_model(info: ModelInfo) -> ContextMixtureModel:
    """The float model of ``info``: ``load(info).net``."""
    return load(info).net


@lru_cache(maxsize=8)
def _load_file(path: Path, sha256: str, config: ModelConfig, states: tuple) -> LoadedModel:
    model = ContextMixtureModel(config)
    state = read_tensors(path)
    if model_digest(config, state) != sha256:
        raise ConfigError(f"{path} holds other tensors than its digest {sha256[:16]} says (changed after export?)")
    tables = {k[len(TABLES_PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(TABLES_PREFIX)}
    if set(tables) != {"z_pmf", "z_offsets"}:
        raise ConfigError(f"{path} has no coding tables; re-export it")
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:  # tensors that do not fit the config
        raise ConfigError(f"{path}: its tensors do not fit its config ({str(exc).splitlines()[0]})") from None
    model.requires_grad_(False)
    hyperprior = IntegerHyperprior.from_tables(model.prior, model.h_s, tables["z_pmf"], tables["z_offsets"])
    context = IntegerContextCodec(model.y_codec)
    # channels-last convolutions are 10-25% faster on CPU for inference (measured on N=64);
    # training keeps NCHW (channels-last backward crashes in torch 2.13, docs/training.md)
    return LoadedModel(model.eval().to(memory_format=torch.channels_last), hyperprior, context)


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically (temporary file in the same folder + rename)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(save(tensors, metadata))
    tmp.replace(path)


def _metadata_values(meta: dict) -> dict[str, str]:
    return {
        key: json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value) for key, value in meta.items()
    }


def _stored_tensors(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The tensors a weight file of ``state_dict`` holds: fp16 weights and the coding tables computed from them."""
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state_dict.items()}
    model = ContextMixtureModel(config)
    model.load_state_dict({k: v.float() for k, v in tensors.items()})  # tables of the weights as stored
    tensors.update({TABLES_PREFIX + k: v.contiguous() for k, v in model.prior.integer_tables().items()})
    return tensors


def export_digest(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> str:
    """The model digest that :func:`export` gives ``state_dict`` (writes nothing)."""
    return model_digest(config, _stored_tensors(state_dict, config))


def export(
    state_dict: dict[str, torch.Tensor],
    config: ModelConfig,
    path: Path,
    base: Path | None = None,
    version: int = 1,
    **meta,
) -> list[ModelInfo]:
    """Write an fp16 safetensors weight file with ``config``, ``version``, its digest and
    ``meta`` in its metadata; returns its :class:`ModelInfo` per quality.

    ``meta`` may hold ``name``, ``lmbdas`` (one per quality), ``metric``, ``train_steps``
    and ``kodak`` (one dict of measured bpp/psnr/ms_ssim per quality); none of them
    enters the digest, so re-exporting the same weights with other metadata keeps
    every file written with them decodable.
    ``base``: another weight file, to be installed in the same folder; tensors
    bit-identical (in fp16) to its own are not written but shared with it.
    """
    tensors = _stored_tensors(state_dict, config)
    metadata = {"config": config.to_json(), VERSION_KEY: str(int(version)), DIGEST_KEY: model_digest(config, tensors)}
    if base is not None:
        with safe_open(str(base), framework="pt") as handle:
            shared = [
                k
                for k in tensors
                if not k.startswith(TABLES_PREFIX)
                and k in handle.keys()
                and torch.equal(handle.get_tensor(k), tensors[k])
            ]
        digest = tensors_digest({key: tensors.pop(key) for key in shared})
        metadata[SHARES_KEY] = json.dumps({"file": Path(base).name, "tensors": shared, "sha256": digest})
    metadata.update(_metadata_values(meta))
    _write(path, tensors, metadata)
    return read_infos(path)


def rewrite_metadata(path: Path, output: Path, **meta) -> list[ModelInfo]:
    """Copy a weight file to ``output`` with ``meta`` added to (or replacing) its metadata
    and its digest stored; the tensors are copied unchanged, so the model digest stays.

    A file exported before 0.2.0 also gets its whole-file SHA-256 as a legacy digest:
    files written with it name that.
    """
    (info, *_) = read_infos(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = dict(handle.metadata() or {})
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"cannot read the weight file {path}: {exc}") from None
    metadata.update({DIGEST_KEY: info.sha256, LEGACY_KEY: json.dumps(list(info.legacy_digests))})
    if info.version is not None:
        metadata.setdefault(VERSION_KEY, str(info.version))
    metadata.update(_metadata_values(meta))
    _write(output, tensors, metadata)
    return read_infos(output)
