"""Model identity (a digest of tensors and config), versions side by side, legacy digests,
the catalog of released weights, and what a file with missing weights says."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from conftest import smooth_image
from mixcodec import ConfigError, ModelNotFoundError, bitstream, codec
from mixcodec.models import releases
from mixcodec.models.context_model import ContextMixtureModel, ModelConfig
from mixcodec.models.registry import (
    DIGEST_KEY,
    LEGACY_KEY,
    VERSION_KEY,
    export,
    find_model,
    find_written,
    identity_config,
    installed_models,
    load_model,
    model_folders,
    read_infos,
    rewrite_metadata,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ModelConfig(n=8, hidden=(24, 32))


def tiny(path: Path, seed: int, **meta) -> Path:
    torch.manual_seed(seed)
    export(ContextMixtureModel(CONFIG).state_dict(), CONFIG, path, **{"name": "tiny", "lmbdas": [0.01], **meta})
    return path


def strip_to_pre_020(path: Path) -> Path:
    """The file as 0.1.0 exported it: no version, no stored digest."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        meta = {k: v for k, v in (handle.metadata() or {}).items() if k not in (VERSION_KEY, DIGEST_KEY, LEGACY_KEY)}
    path.write_bytes(save(tensors, meta))
    return path


def test_the_digest_is_the_tensors_and_config_not_the_metadata(tmp_path):
    first = read_infos(tiny(tmp_path / "a.safetensors", 0))[0]
    renamed = rewrite_metadata(
        first.path, tmp_path / "b.safetensors", name="other", kodak=json.dumps([{"bpp": 1.0}]), version=3
    )[0]
    assert renamed.sha256 == first.sha256 and renamed.name == "other" and renamed.version == 3
    assert (tmp_path / "a.safetensors").read_bytes() != (tmp_path / "b.safetensors").read_bytes()
    other_weights = read_infos(tiny(tmp_path / "c.safetensors", 1))[0]
    assert other_weights.sha256 != first.sha256
    data = codec.compress(smooth_image(40, 50), model=first)
    assert bitstream.parse(data)[0].digest == bytes.fromhex(first.sha256)[:8]
    assert np.asarray(codec.decompress(data, renamed)).shape == (40, 50, 3)  # the renamed file decodes it
    with pytest.raises(ModelNotFoundError, match="not with tiny"):
        codec.decompress(data, other_weights)


def test_the_canonical_config_is_pinned():
    assert identity_config(CONFIG) == '{"backbone":"crm","family":"gllmm","hidden":[24,32],"m":8,"n":8,"qualities":1}'


def test_changed_tensors_under_a_stored_digest_are_refused(tmp_path):
    path = tiny(tmp_path / "a.safetensors", 0)
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        meta = handle.metadata()
    key = next(k for k in tensors if k.endswith("weight"))
    tensors[key] = tensors[key] + 1
    path.write_bytes(save(tensors, meta))
    with pytest.raises(ConfigError, match="other tensors than its digest"):
        load_model(read_infos(path)[0])


def test_files_written_before_020_decode_by_their_whole_file_digest(tmp_path, monkeypatch):
    (tmp_path / "w").mkdir()
    path = strip_to_pre_020(tiny(tmp_path / "w" / "old.safetensors", 0))
    old = read_infos(path)[0]
    whole = hashlib.sha256(path.read_bytes()).hexdigest()
    assert old.version is None and old.legacy_digests == (whole,)
    header, z, y = bitstream.parse(codec.compress(smooth_image(30, 30), model=old))
    header.digest = bytes.fromhex(whole)[:8]  # what 0.1.0 wrote
    legacy_file = bitstream.pack(header, z, y)
    monkeypatch.setenv("MIXCODEC_MODELS", str(tmp_path / "w"))
    decoded = np.asarray(codec.decompress(legacy_file))
    stamped = rewrite_metadata(path, path, version=1)[0]  # a version added: the legacy digest is kept in the metadata
    assert stamped.version == 1 and stamped.legacy_digests == (whole,) and stamped.sha256 == old.sha256
    np.testing.assert_array_equal(np.asarray(codec.decompress(legacy_file)), decoded)


@pytest.fixture()
def two_versions(tmp_path, monkeypatch):
    """``tiny`` versions 1 and 2 (different weights) installed side by side."""
    folder = tmp_path / "models"
    folder.mkdir()
    tiny(folder / "tiny-v1.safetensors", 0, version=1)
    tiny(folder / "tiny-v2.safetensors", 1, version=2)
    monkeypatch.setenv("MIXCODEC_MODELS", str(folder))
    return folder


def test_versions_side_by_side(two_versions):
    assert find_model("tiny").version == 2  # a name means its newest version
    assert find_model("tiny@1").version == 1
    with pytest.raises(ModelNotFoundError, match="tiny version 3 is not installed"):
        find_model("tiny@3")
    image = smooth_image(30, 40)
    files = {v: codec.compress(image, model=f"tiny@{v}") for v in (1, 2)}
    for version, data in files.items():  # decompression picks the exact weights each file names
        assert codec.decode_latents(data)[1] is load_model(find_model(f"tiny@{version}"))
        assert find_written("tiny", bitstream.parse(data)[0].digest).version == version


def test_one_version_with_two_weights_is_refused_for_compression_only(two_versions):
    data = codec.compress(smooth_image(20, 20), model="tiny@2")
    tiny(two_versions / "impostor.safetensors", 2, version=2)
    with pytest.raises(ConfigError, match="tiny version 2 is held by weight files with different weights"):
        find_model("tiny")
    assert codec.decompress(data).size == (20, 20)  # decoding still finds the exact weights


def test_the_same_weights_in_two_folders_are_listed_once(two_versions, monkeypatch, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "x.safetensors").write_bytes((two_versions / "tiny-v1.safetensors").read_bytes())
    monkeypatch.setenv("MIXCODEC_MODELS", f"{two_versions}:{copy}")
    assert [(i.name, i.version) for i in installed_models() if i.name == "tiny"] == [("tiny", 1), ("tiny", 2)]


def test_missing_released_weights_name_model_version_digest_and_where(monkeypatch):
    release = next(r for r in releases.catalog() if r.file.startswith("weights-archive/"))
    header = bitstream.Header(
        release.name, 1, bytes.fromhex(release.legacy_digests[0])[:8], 16, 16, "RGB", "wavefront", np.arange(0), 64
    )
    monkeypatch.setenv("MIXCODEC_MODELS", "")
    with pytest.raises(ModelNotFoundError) as error:
        codec.decompress(bitstream.pack(header, b"", b""))
    message = str(error.value)
    for part in (
        f"{release.name} version {release.version}",
        release.legacy_digests[0][:16],
        release.file,
        "MIXCODEC_MODELS",
    ):
        assert part in message
    assert "\n" not in message


def test_the_catalog_lists_every_released_file_and_the_package_fits_its_budget():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "weights-archive" / "catalog.py"), "build", "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for release in releases.catalog():
        info = read_infos(ROOT / release.file)[0]
        assert (info.name, info.version, info.sha256) == (release.name, release.version, release.digest)
    shipped = list(model_folders()[0].glob("*.safetensors"))
    assert sum(p.stat().st_size for p in shipped) <= 80e6  # the weight budget of the wheel
    assert {p.name for p in shipped} == {
        Path(r.file).name for r in releases.catalog() if r.file.startswith("src/mixcodec/weights/")
    }


def test_adding_a_config_field_with_its_default_keeps_every_digest():
    @dataclasses.dataclass(frozen=True)
    class Later(ModelConfig):
        latent_codec: str = "context"

    assert identity_config(Later(n=8, hidden=(24, 32))) == identity_config(CONFIG)
    assert identity_config(Later(n=8, hidden=(24, 32), latent_codec="other")) != identity_config(CONFIG)


def test_measuring_again_keeps_every_file_decodable(tmp_path):
    """`mixcodec export --measure` again rewrites the metadata (other measured RD), never the identity."""
    from PIL import Image

    from mixcodec.train import TrainConfig

    torch.manual_seed(3)
    config = ModelConfig(n=8, hidden=(24, 32), qualities=2)
    train_config = dataclasses.asdict(TrainConfig(n=8, lmbdas=[0.002, 0.03]))
    torch.save(
        {
            "model": ContextMixtureModel(config).state_dict(),
            "config": config.to_json(),
            "train_config": train_config,
            "step": 7,
        },
        tmp_path / "last.pt",
    )
    for name, seed in (("one", 1), ("two", 2)):
        (tmp_path / name).mkdir()
        Image.fromarray(smooth_image(64, 64, seed)).save(tmp_path / name / "a.png")
    weights = tmp_path / "models" / "m.safetensors"
    weights.parent.mkdir()
    env = {"MIXCODEC_MODELS": str(weights.parent)}

    def cli(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "mixcodec.cli", *map(str, args)],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, **env},
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    cli("export", tmp_path / "last.pt", "-o", weights, "--name", "m", "--measure", tmp_path / "one")
    before = read_infos(weights)
    cli("compress", tmp_path / "one" / "a.png", "-o", tmp_path / "a.mxc", "--model", "m")
    cli("decompress", tmp_path / "a.mxc", "-o", tmp_path / "first.png")
    file_bytes = weights.read_bytes()
    cli("export", tmp_path / "last.pt", "-o", weights, "--name", "m", "--measure", tmp_path / "two", "--force")
    after = read_infos(weights)
    assert (
        weights.read_bytes() != file_bytes and after[0].kodak != before[0].kodak
    )  # other measurements in the metadata
    assert (after[0].sha256, after[0].version) == (before[0].sha256, before[0].version) == (before[0].sha256, 1)
    cli("decompress", tmp_path / "a.mxc", "-o", tmp_path / "second.png")
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "second.png").read_bytes()


def test_the_changelog_describes_this_version():
    import re

    import mixcodec

    first = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M).group(1)
    assert first == mixcodec.__version__
