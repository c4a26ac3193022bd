"""The errors mixcodec raises for bad input, with a one-line message each.

Every error that a user can cause (a damaged file, an unsupported image, a missing
model, a bad preset or weight file) is a :class:`MixcodecError`; the command line
prints exactly these as one line and exits with code 2.  Anything else that
escapes is a bug.  The classes also derive from the built-in exception that
described the same case before 0.2.0 (``ValueError``, ``LookupError``), so code
that caught those keeps working.
"""

from __future__ import annotations


class MixcodecError(Exception):
    """Base class: a problem with the input or the installation, never a bug."""


class FormatError(MixcodecError, ValueError):
    """A byte string is not a valid ``.mxc`` file (damaged, truncated, unknown version)."""


class InputError(MixcodecError, ValueError):
    """An image or file given to mixcodec that it cannot read or does not accept."""


class ModelNotFoundError(MixcodecError, LookupError):
    """No installed model matches the requested name, version, quality or digest."""


#: The name used before 0.2.0.
ModelNotFound = ModelNotFoundError


class ConfigError(MixcodecError, ValueError):
    """A preset, option or weight file is invalid (unknown preset or key, unreadable or
    conflicting weight files)."""
