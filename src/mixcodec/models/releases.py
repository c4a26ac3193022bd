"""The catalog of released model versions: every weight file the project has shipped as a
default, and where it lives in the source repository now.

``releases.json`` (beside this module) lists for each released version its model name,
version, model digest, legacy digests (whole-file SHA-256 that ``.mxc`` files written
before 0.2.0 name) and the path of its weight file in the repository:
``src/mixcodec/weights/`` (inside the wheel) or ``weights-archive/`` (outside it; list
that folder in ``MIXCODEC_MODELS``).  The weight files' own metadata are the source of
these facts: ``python weights-archive/catalog.py`` regenerates the catalog from them and
a test checks that it is up to date.  The registry uses the catalog only to say where
missing weights come from and to version weight files exported before versions existed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

CATALOG_FILE = "releases.json"


@dataclass(frozen=True)
class Release:
    """One released model version."""

    name: str
    version: int
    digest: str  # hex model digest (tensors + config)
    legacy_digests: tuple[str, ...]  # hex whole-file SHA-256 of its bytes as shipped before 0.2.0
    file: str  # path of its weight file in the source repository

    def names(self, digest: str) -> bool:
        """Whether ``digest`` (hex, at least the 8 bytes a file records) is one of this release's."""
        return len(digest) >= 16 and any(d.startswith(digest.lower()) for d in (self.digest, *self.legacy_digests))


@lru_cache(maxsize=1)
def catalog() -> tuple[Release, ...]:
    """The releases listed in ``releases.json`` (read once: it is part of the package)."""
    data = json.loads(resources.files("mixcodec.models").joinpath(CATALOG_FILE).read_text())
    return tuple(Release(**{**entry, "legacy_digests": tuple(entry["legacy_digests"])}) for entry in data["releases"])


def find(digest: str) -> Release | None:
    """The release whose model or legacy digest starts with ``digest`` (hex), if any."""
    return next((r for r in catalog() if r.names(digest)), None)
