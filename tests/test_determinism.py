"""A file encoded in one process decodes identically in another with another thread count."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import smooth_image

SCRIPT = """
import sys, torch, numpy as np
torch.set_num_threads(int(sys.argv[1]))
from PIL import Image
from mixcodec import codec
from mixcodec.models.registry import read_infos
info = read_infos(sys.argv[3])[0]
if sys.argv[2] == "encode":
    open(sys.argv[5], "wb").write(codec.compress(np.asarray(Image.open(sys.argv[4])), model=info))
else:
    header, net, y = codec.decode_latents(open(sys.argv[4], "rb").read(), model=info)
    np.save(sys.argv[5], y.numpy())
    codec.decompress(open(sys.argv[4], "rb").read(), model=info).save(sys.argv[5] + ".png")
"""


def run(threads, *args):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-c", SCRIPT, str(threads), *map(str, args)], check=True, env=env, timeout=300)


def test_encode_one_thread_decode_two_threads(tiny_model, tmp_path):
    info = tiny_model()
    Image.fromarray(smooth_image(130, 200, seed=5)).save(tmp_path / "in.png")
    run(1, "encode", info.path, tmp_path / "in.png", tmp_path / "a.mxc")
    run(2, "decode", info.path, tmp_path / "a.mxc", tmp_path / "two.npy")
    run(1, "decode", info.path, tmp_path / "a.mxc", tmp_path / "one.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
    one = np.asarray(Image.open(tmp_path / "one.npy.png"), dtype=int)
    two = np.asarray(Image.open(tmp_path / "two.npy.png"), dtype=int)
    assert np.abs(one - two).max() <= 1
