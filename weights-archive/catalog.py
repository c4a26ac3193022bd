"""Maintain the released weight files and the catalog of releases (run from the repository root).

    python weights-archive/catalog.py stamp SRC OUT --version V [--released COMMIT]
        copy the weight file SRC to OUT with its version (and the commit that first
        shipped it) in its metadata, its model digest stored, and, for a file exported
        before 0.2.0, its whole-file SHA-256 kept as a legacy digest; the tensors are
        copied unchanged (SRC may be OUT).
    python weights-archive/catalog.py build [--check]
        regenerate src/mixcodec/models/releases.json from the weight files in
        src/mixcodec/weights/ and weights-archive/ (--check: only say whether it is up to date).

See weights-archive/README.md for when to use which.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mixcodec.models import releases
from mixcodec.models.registry import read_infos, rewrite_metadata

ROOT = Path(__file__).resolve().parents[1]
#: Folders of the repository with released weight files: inside the wheel, and outside it.
FOLDERS = ("src/mixcodec/weights", "weights-archive")
CATALOG = ROOT / "src" / "mixcodec" / "models" / releases.CATALOG_FILE


def build() -> dict:
    """The catalog of every weight file in :data:`FOLDERS`, sorted by name and version.

    Raises:
        SystemExit: a file without a version, or two files with one name and version.
    """
    entries = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).glob("*.safetensors")):
            info = read_infos(path)[0]
            if info.version is None:
                sys.exit(f"{path} has no version: stamp it first")
            entries.append(
                {
                    "name": info.name,
                    "version": info.version,
                    "digest": info.sha256,
                    "legacy_digests": list(info.legacy_digests),
                    "file": f"{folder}/{path.name}",
                }
            )
    entries.sort(key=lambda e: (e["name"], e["version"]))
    keys = [(e["name"], e["version"]) for e in entries]
    if len(set(keys)) != len(keys):
        sys.exit(f"two weight files have the same name and version: {sorted(k for k in keys if keys.count(k) > 1)}")
    return {"releases": entries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    stamp = commands.add_parser("stamp", help="add a version to a weight file's metadata")
    stamp.add_argument("source", type=Path)
    stamp.add_argument("output", type=Path)
    stamp.add_argument("--version", type=int, required=True)
    stamp.add_argument("--released", help="commit that first shipped the file")
    check = commands.add_parser("build", help="regenerate the catalog")
    check.add_argument("--check", action="store_true", help="exit 1 when the catalog is out of date, write nothing")
    args = parser.parse_args()
    if args.command == "stamp":
        meta = {"version": args.version, **({"released": args.released} if args.released else {})}
        info = rewrite_metadata(args.source, args.output, **meta)[0]
        print(
            f"{args.output}: {info.label}, digest {info.sha256[:16]}, "
            f"legacy {', '.join(d[:16] for d in info.legacy_digests) or '-'}"
        )
        return
    text = json.dumps(build(), indent=1) + "\n"
    if args.check:
        sys.exit(
            0
            if CATALOG.read_text() == text
            else f"{CATALOG} is out of date: run python weights-archive/catalog.py build"
        )
    CATALOG.write_text(text)
    print(f"wrote {CATALOG} ({len(json.loads(text)['releases'])} releases)")


if __name__ == "__main__":
    main()
