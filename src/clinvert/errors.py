"""The error type every user-facing check raises: one line naming the field, the value and what is
allowed. The command line prints it and exits with status 2; nothing is half-written before it."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid. ``str(err)`` is one line: field, value, what is allowed."""
