"""Errors that are the user's to fix (a value, a path, a lock, a refusal): `adq` prints them as one line.

`cli.main` catches `UserError` (and a few standard ones: FileNotFoundError, YAML errors) and prints
`adq: error: <message>` with exit status 2; anything else keeps its traceback (exit 1). Library code
raises a subclass that names the field, file or URI, the value and the fix.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class of every error a user fixes by changing an argument, a file or the environment."""


class InputError(UserError, ValueError):
    """The input cannot yield a dataset (empty, no class folders, too few readable images, budget 0)."""


class OwnershipError(UserError):
    """The run refuses to write where it could destroy what it does not own (overlap, foreign output)."""


class LockError(UserError):
    """Another run holds the output's lock, or this run lost it."""


class WeightsError(UserError, ValueError):
    """A weights file is missing, unreadable or not a plain state dict of tensors."""
