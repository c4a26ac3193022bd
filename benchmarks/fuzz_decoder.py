"""Fuzz ``bitstream.parse`` and the whole decoder with mutated ``.mxc`` files (hypothesis).

    python benchmarks/fuzz_decoder.py --seconds 1200 [--keep tests/fuzz_regressions]

Inputs are the conformance files (``tests/conformance/``: tiny models of every backbone x
entropy family and the shipped models) mutated by hypothesis: byte flips and overwrites,
insertions, deletions, truncation, header fields set to edge values, streams swapped or
replaced by random bytes; most get a valid CRC again, so that the mutations reach the header
checks and the stream decoders instead of only the checksum.  Every input must either
decode or raise a :class:`~mixcodec.errors.MixcodecError` (what the CLI prints as one line,
exit 2); anything else is a crash, and an input that takes longer than ``--hang`` seconds
is a hang.  Each crash or hang is written to ``--keep`` (``tests/test_fuzz_regressions.py``
decodes every file there in the default test run) and listed at the end.

Decoding work grows with the image size a header declares (a flat 4096x4096 image is a
few hundred bytes), so inputs that parse to more than ``--max-pixels`` are only parsed,
not decoded: a bound of the harness, not of the decoder.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import signal
import struct
import sys
import time
import zlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixcodec import bitstream, codec
from mixcodec.errors import MixcodecError

ROOT = Path(__file__).resolve().parents[1]


def _load_conformance():
    """``tests/conformance/make.py``: the seed files and the folders of their models."""
    spec = importlib.util.spec_from_file_location("conformance_make", ROOT / "tests" / "conformance" / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


conformance = _load_conformance()

#: Offset of the model name in every file (magic, version, name length).
_NAME_AT = 6
EDGE_VALUES = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)
#: Defaults of ``--max-pixels`` and ``--hang``.
MAX_PIXELS = 128 * 128
HANG_SECONDS = 20.0


class Hang(Exception):
    """An input ran past the time limit."""


def seeds() -> list[bytes]:
    """The conformance files (valid inputs to mutate)."""
    return [(conformance.HERE / e["file"]).read_bytes() for e in conformance.read_manifest()["entries"]]


def header_fields(data: bytes) -> list[tuple[int, str]]:
    """``(offset, struct format)`` of the fixed header fields after the name."""
    at = _NAME_AT + data[5] if len(data) > 5 else _NAME_AT
    return [
        (at, ">H"),
        (at + 10, ">I"),
        (at + 14, ">I"),
        (at + 18, ">B"),
        (at + 19, ">B"),
        (at + 20, ">H"),
        (4, ">B"),
        (5, ">B"),
    ]


@st.composite
def mutated(draw, files: list[bytes]) -> bytes:
    """A conformance file with a few random mutations, usually with its CRC fixed."""
    data = bytearray(draw(st.sampled_from(files))[:-4])
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3, 4]))):
        # in-place mutations keep the lengths consistent, so most inputs reach the decoder
        kind = draw(
            st.sampled_from(
                [
                    "flip",
                    "flip",
                    "set",
                    "set",
                    "overwrite",
                    "overwrite",
                    "field",
                    "field",
                    "insert",
                    "delete",
                    "truncate",
                    "stream",
                    "swap",
                ]
            )
        )
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[where] = draw(st.integers(0, 255))
        elif kind == "overwrite" and data:
            chunk = draw(st.binary(min_size=1, max_size=32))
            data[where : where + len(chunk)] = chunk[: len(data) - where]
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[where : where + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[where:]
        elif kind == "field":
            offset, fmt = draw(st.sampled_from(header_fields(bytes(data))))
            size = struct.calcsize(fmt)
            value = draw(st.sampled_from(EDGE_VALUES) | st.integers(0, 255)) % (1 << (8 * size))
            if offset + size <= len(data):
                data[offset : offset + size] = struct.pack(fmt, value)
        elif kind == "stream":  # random bytes of a plausible length in place of the tail (the streams)
            tail = draw(st.binary(min_size=0, max_size=64))
            cut = max(len(data) - draw(st.integers(0, 64)), 0)
            data[cut:] = tail
        elif kind == "swap" and len(data) > 8:
            a, b = sorted((where, draw(st.integers(0, len(data) - 1))))
            data[a:b] = data[a:b][::-1]
    body = bytes(data)
    crc = draw(st.integers(0, 2**32 - 1)) if draw(st.integers(0, 9)) == 0 else zlib.crc32(body)
    return body + struct.pack(">I", crc)


def check_input(data: bytes, max_pixels: int, hang_seconds: float, stats: dict | None = None) -> str | None:
    """Parse and (when small enough) decode ``data``: ``None`` if it decodes or raises a
    :class:`MixcodecError`, else a one-line description of the crash or hang.
    ``stats``: counts ``parsed`` and ``decoded`` inputs."""
    stats = {"parsed": 0, "decoded": 0} if stats is None else stats

    def alarm(signum, frame):
        raise Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, hang_seconds)
    try:
        header = bitstream.parse(data)[0]
        stats["parsed"] += 1
        if header.height * header.width <= max_pixels:
            codec.decompress(data)
            stats["decoded"] += 1
        return None
    except MixcodecError:
        return None
    except Hang:
        return f"hang: more than {hang_seconds:g} s"
    except Exception as exc:  # noqa: BLE001 -- anything else is what the fuzzer looks for
        return f"crash: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fuzz(seconds: float, keep: Path, max_pixels: int, hang_seconds: float) -> dict:
    """Run hypothesis for ``seconds``; returns counts and the findings (kept in ``keep``)."""
    conformance.use_model_folders()
    files = seeds()
    stats = {"inputs": 0, "parsed": 0, "decoded": 0, "findings": {}}
    deadline = time.monotonic() + seconds

    @settings(max_examples=10**9, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutated(files))
    def one(data: bytes) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError  # ends the run (not a finding)
        stats["inputs"] += 1
        finding = check_input(data, max_pixels, hang_seconds, stats)
        if finding is not None:
            digest = hashlib.sha256(data).hexdigest()[:16]
            if digest not in stats["findings"]:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"{digest}.mxc").write_bytes(data)
                stats["findings"][digest] = finding
                print(f"{digest}: {finding}", flush=True)

    while time.monotonic() < deadline:
        try:
            one()
        except TimeoutError:
            break
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--keep", type=Path, default=ROOT / "tests" / "fuzz_regressions", help="folder for crashing or hanging inputs"
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help="decode only inputs whose header declares at most this many pixels",
    )
    parser.add_argument(
        "--hang", type=float, default=HANG_SECONDS, help="seconds after which an input counts as a hang"
    )
    args = parser.parse_args()
    start = time.monotonic()
    stats = fuzz(args.seconds, args.keep, args.max_pixels, args.hang)
    elapsed = time.monotonic() - start
    import platform

    import hypothesis
    import torch

    print(
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, "
        f"torch {torch.__version__}, hypothesis {hypothesis.__version__}"
    )
    print(
        f"{stats['inputs']} inputs in {elapsed:.0f} s: {stats['parsed']} passed bitstream.parse, "
        f"{stats['decoded']} decoded to an image "
        f"(the rest raised a MixcodecError), "
        f"{len(stats['findings'])} crashes or hangs" + (f", kept in {args.keep}" if stats["findings"] else "")
    )
    for digest, finding in stats["findings"].items():
        print(f"  {digest}.mxc: {finding}")
    sys.exit(1 if stats["findings"] else 0)


if __name__ == "__main__":
    main()
