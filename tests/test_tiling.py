"""Transforms in stripes (mixcodec.tiling): the same values as the whole image, bounded footprints,
decoding beside the synthesis."""

from __future__ import annotations

import copy
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from conftest import smooth_image
from mixcodec import bitstream, codec, tiling
from mixcodec.errors import InputError
from mixcodec.models.registry import load_model

#: stripes of 64 image rows (4 latent rows, about one stage margin): a 200-row image is 4 stripes
ROWS = 64


@pytest.fixture(params=["crm", "residual"])
def net(request, tiny_model):
    return load_model(tiny_model(request.param))


def test_footprints_of_the_shipped_architecture(net):
    """Worked out from the modules.  g_a by hand, in image rows: 3 + 4k*2 + 6 + 3*4 + 4k*4 + 12 +
    4k*8 + 8 + 3*16 with k = 2 (CRM: four 3x3 convs in series) or 1 (residual block): 145 or 117.
    g_s (latent rows): 3 + 4k + 1.5 + 2k + 0.75 + 0.75 + k + 0.375 + k/2 + 0.125 = 14 for the CRM;
    the computed bound adds up to a row per pixel shuffle for rounding."""
    crm = net.config.backbone == "crm"
    assert tiling.footprint(net.g_a) == tiling.Footprint(145 if crm else 117, Fraction(1, 16))
    assert tiling.footprint(net.g_s).scale == 16 and (14 if crm else 7.5) <= tiling.footprint(net.g_s).radius <= 24
    assert tiling.footprint(net.h_a).scale == Fraction(1, 4)


def test_footprint_bounds_what_each_stage_reads(net):
    """Changing one input row changes only output rows whose footprint holds that row."""
    for transform, channels, rows in ((net.g_a, 3, 64), (net.g_s, net.config.m, 12), (net.h_a, net.config.m, 16)):
        x = torch.rand(1, channels, rows, 8)
        for stage in transform:
            fp = tiling.footprint(stage)
            with torch.no_grad():
                base = stage(x)
                for row in (0, rows // 2, rows - 1):
                    bumped = x.clone()
                    bumped[:, :, row] += 1.0
                    changed = np.flatnonzero((stage(bumped) != base).any(dim=3).any(dim=1)[0].numpy())
                    for out in changed:  # output row `out` may read input rows [floor(out/s) - r, ceil((out+1)/s) + r)
                        assert np.floor(out / fp.scale) - fp.radius <= row < np.ceil((out + 1) / fp.scale) + fp.radius
            x = base
            rows = x.shape[2]


def test_unknown_modules_are_refused():
    with pytest.raises(ValueError, match="footprint unknown"):
        tiling.footprint(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1)))


def test_striped_transforms_equal_whole(net):
    """g_a, h_a and g_s in stripes give the whole-image values (the gains, padding and
    rounding around them: next test).  In float64, to rounding
    (a missing margin gives errors of order 1, next test); the 8-channel float32 test
    models may pick other kernels for other heights (tiling's docstring)."""
    net = copy.deepcopy(net).double()  # load_model caches the model: not in place
    image = smooth_image(200, 150)
    padded = codec._pad(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].double() / 255)
    with torch.no_grad():
        x = padded.contiguous(memory_format=torch.channels_last)
        y_whole = net.g_a(x)
        torch.testing.assert_close(y_whole, tiling.run(net.g_a, x, ROWS // 16), rtol=0, atol=1e-9)
        torch.testing.assert_close(net.h_a(y_whole), tiling.run(net.h_a, y_whole, ROWS // 64), rtol=0, atol=1e-9)
        y_hat = torch.round(y_whole)
        x_whole = net.g_s(y_hat.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(x_whole, tiling.run(net.g_s, y_hat, ROWS), rtol=0, atol=1e-9)


def test_progressive_stripes_equal_whole_and_come_sooner(net):
    """Fed one latent row at a time (as the decoder feeds it), progressive g_s stripes give the
    whole-image values, and the first pixels come out after fewer rows than with whole stripes
    only (each stage then waits for one stripe of its input plus its margin)."""
    net = copy.deepcopy(net).double()
    with torch.no_grad():
        y_hat = torch.round(
            net.g_a(codec._pad(torch.from_numpy(smooth_image(1024, 32)).permute(2, 0, 1)[None].double() / 255))
        )
        whole = net.g_s(y_hat.contiguous(memory_format=torch.channels_last))
        first_output = {}
        for progressive in (False, True):
            striped = tiling.StripedSequential.of(net.g_s, y_hat.shape[2], ROWS, progressive=progressive)
            pieces = []
            for row in range(y_hat.shape[2]):
                for out in striped.push(y_hat[:, :, row : row + 1].contiguous(memory_format=torch.channels_last)):
                    first_output.setdefault(progressive, row + 1)
                    pieces.append(out)
            torch.testing.assert_close(torch.cat(pieces, dim=2), whole, rtol=0, atol=1e-9)
    assert first_output[True] < first_output[False]


def test_striped_integer_hyper_synthesis_is_exact(tiny_model, monkeypatch):
    """The entropy path's integer h_s in stripes: the same integers (sums below 2**53 are exact)."""
    from mixcodec.entropy import exact
    from mixcodec.models.registry import load

    hyperprior = load(tiny_model()).hyperprior
    z_hat = torch.round(4 * torch.randn(1, tiny_model().config.n, 7, 3))
    whole = hyperprior.hyper(z_hat)
    monkeypatch.setattr(tiling, "STRIPE_PIXELS", 1)  # stripes of MIN_STRIPE_ROWS image rows: 8 latent rows of 28
    assert tiling.is_striped(64 * 7, 64 * 3)
    assert torch.equal(whole, hyperprior.hyper(z_hat))
    assert torch.equal(whole, hyperprior.hyper_synthesis(exact.to_fixed(z_hat))[0])


def test_striped_pixels_within_rounding_of_whole(net):
    """float32, as coded: latents and pixels of the stripes are those of the whole image
    but for float rounding (the tiny models' narrow layers): at most one step, rarely."""
    image = smooth_image(200, 150)
    padded = codec._pad(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255)
    (y_whole, _), (y_striped, _) = codec.quantize_latents(net, padded, 1), codec.image_latents(net, image, 1, ROWS)
    assert (y_whole != y_striped).float().mean() < 1e-3 and (y_whole - y_striped).abs().max() <= 1
    whole = codec.reconstruct(net, y_whole, 1, 200, 150, rows=10**6).astype(int)
    striped = codec.reconstruct(net, y_whole, 1, 200, 150, rows=ROWS).astype(int)
    assert np.abs(whole - striped).max() <= 1 and (whole != striped).mean() < 1e-3


def test_a_stripe_margin_smaller_than_the_footprint_differs(net, monkeypatch):
    """The bit-exactness above depends on the margins (the test can fail)."""
    y_hat = torch.round(8 * torch.randn(1, net.config.m, 12, 10))
    with torch.no_grad():
        whole = net.g_s(y_hat.contiguous(memory_format=torch.channels_last))
        monkeypatch.setattr(tiling, "footprint", lambda m, real=tiling.footprint: tiling.Footprint(0, real(m).scale))
        assert not torch.equal(whole, tiling.run(net.g_s, y_hat, 32))


def test_small_images_take_the_whole_image_path(net, monkeypatch):
    """One stripe or less: the transforms are never cut (today's code path, so today's bytes)."""
    monkeypatch.setattr(tiling, "StripedSequential", None)  # any use would fail
    image = smooth_image(70, 90)
    y_hat, _ = codec.image_latents(net, image, 1)
    assert codec.reconstruct(net, y_hat, 1, 70, 90).shape == (70, 90, 3)
    assert not tiling.is_striped(512, 768) and not tiling.is_striped(768, 512)  # Kodak, both ways up
    assert tiling.is_striped(4096, 4096)


@pytest.mark.parametrize("threads", [1, 2])
def test_decoding_beside_the_synthesis_gives_the_sequential_pixels(tiny_model, threads):
    """Threaded (2 threads) or not (1), striped decoding equals decode_latents + striped
    reconstruct, and decompress takes it for an image over one stripe."""
    info = tiny_model()
    image = smooth_image(200, 130, seed=3)
    data = codec.compress(image, model=info)
    header, net, y_hat = codec.decode_latents(data, model=info)
    expected = codec.reconstruct(net, y_hat, header.quality, 200, 130, rows=ROWS)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, pixels = codec.decode_pixels(data, model=info, rows=ROWS)
        assert torch.get_num_threads() == threads  # the caller's count is put back
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(pixels, expected)


def test_rows_are_reported_final_in_order(tiny_model):
    """The wavefront tells the rows it has finished; each reported row is already its final value."""
    info = tiny_model()
    data = codec.compress(smooth_image(200, 130), model=info)
    _, _, y_hat = codec.decode_latents(data, model=info)
    header, y_stream, hyper, loaded, latent_size = codec._open(data, info)
    seen = []

    def on_rows(done, latents):
        assert torch.equal(latents[:, :done].float(), y_hat[0, :, :done])
        seen.append(done)

    loaded.context.decompress(y_stream, hyper, header.active, header.schedule, on_rows=on_rows)
    assert seen == sorted(set(seen)) and seen[-1] == latent_size[0] and len(seen) == latent_size[0]


def test_synthesis_errors_reach_the_caller(tiny_model):
    info = tiny_model()
    net = load_model(info)
    synthesis = tiling.Synthesis(net, 1, (8, 4), 128, 64, ROWS)
    with pytest.raises(RuntimeError), tiling.BackgroundSynthesis(synthesis, threads=1) as background:
        background.feed(8, torch.zeros(net.config.m + 1, 8, 4))  # wrong channel count


def test_stripes_left_after_the_entropy_decoding_get_the_callers_threads():
    """The synthesis lags behind the entropy decoding: the stripes it still has to make when the
    block ends run with the caller's thread count, from the next stripe on (not after the push
    under way, which can hold most of the image)."""

    class SlowSynthesis:  # one push that finishes three stripes, the first still inside the block
        def __init__(self):
            self.started, self.threads = threading.Event(), []

        def push(self, rows, after_stripe=lambda: None, partial=True):
            self.started.set()
            time.sleep(0.5)  # the caller leaves the block meanwhile
            for _ in range(3):
                self.threads.append(torch.get_num_threads())
                after_stripe()

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        synthesis = SlowSynthesis()
        with tiling.BackgroundSynthesis(synthesis, threads=1) as background:
            background.feed(1, torch.zeros(4, 2, 2))
            assert synthesis.started.wait(timeout=30)
    finally:
        torch.set_num_threads(before)
    assert synthesis.threads == [1, 2, 2]


def test_a_synthesis_behind_the_entropy_decoding_makes_whole_stripes_only():
    """Rows pushed while more wait in the queue ask for whole stripes only (partial ones
    recompute their margins); the last rows waiting, and rows that find the worker idle, allow
    partial ones.  The rows arrive in order."""

    class BusySynthesis:
        def __init__(self):
            self.started, self.go, self.pushes = threading.Event(), threading.Event(), []

        def push(self, rows, after_stripe=lambda: None, partial=True):
            self.started.set()
            assert self.go.wait(timeout=30)
            self.pushes.append((rows[0, 0, :, 0].tolist(), partial))

    synthesis = BusySynthesis()
    latents = torch.arange(6.0)[None, :, None].expand(2, 6, 3)
    with tiling.BackgroundSynthesis(synthesis, threads=1) as background:
        background.feed(1, latents)
        assert synthesis.started.wait(timeout=30)
        for done in (2, 4, 6):  # queued while the first push runs
            background.feed(done, latents)
        synthesis.go.set()
        deadline = time.monotonic() + 30
        while len(synthesis.pushes) < 4 and time.monotonic() < deadline:  # all taken inside the block
            time.sleep(0.01)
    assert synthesis.pushes == [([0.0], True), ([1.0], False), ([2.0, 3.0], False), ([4.0, 5.0], True)]


def test_the_worker_is_idle_only_while_it_waits_for_rows():
    """``idle()`` (when the entropy decoding may use its helper thread): true while the worker
    waits on an empty queue, false while it synthesizes and while rows wait for it."""

    class GatedSynthesis:
        def __init__(self):
            self.started, self.go = threading.Event(), threading.Event()

        def push(self, rows, after_stripe=lambda: None, partial=True):
            self.started.set()
            assert self.go.wait(timeout=30)

    def soon(condition) -> bool:
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.005)
        return condition()

    synthesis = GatedSynthesis()
    with tiling.BackgroundSynthesis(synthesis, threads=1) as background:
        assert soon(background.idle)  # nothing fed yet
        background.feed(1, torch.zeros(2, 3, 2))
        assert synthesis.started.wait(timeout=30)
        assert not background.idle()  # in a push
        background.feed(2, torch.zeros(2, 3, 2))
        synthesis.go.set()
        assert soon(background.idle)  # both pushes done
    assert not background.idle()  # the worker has ended


def test_size_limit_is_over_100_megapixels():
    bitstream.check_size(10_000, 10_000)
    bitstream.check_size(bitstream.MAX_SIDE, bitstream.MAX_PIXELS // bitstream.MAX_SIDE)
    with pytest.raises(InputError):
        bitstream.check_size(bitstream.MAX_SIDE, bitstream.MAX_PIXELS // bitstream.MAX_SIDE + 1)


def test_shared_table_coding_writes_the_bits_of_one_call(monkeypatch):
    """ẑ's coding in chunks (bounded memory) gives the bytes of one call with per-element
    tables, escapes (values outside the window) included, and decodes back."""
    from mixcodec.entropy import coding

    rng = np.random.default_rng(0)
    table = rng.random((3, 9)) / 9
    offsets = np.array([-4, -2, 0])
    rows = np.repeat(np.arange(3), 50)
    values = rng.integers(-6, 10, rows.size)  # some outside their window
    one = coding.new_encoder()
    coding.encode_symbols(one, values, table[rows], offsets[rows])
    monkeypatch.setattr(coding, "TABLE_CHUNK", 16)
    chunked = coding.new_encoder()
    coding.encode_table_symbols(chunked, values, table, offsets, rows)
    data = coding.finish(chunked)
    assert data == coding.finish(one)
    assert np.array_equal(coding.decode_table_symbols(coding.new_decoder(data), table, offsets, rows), values)
