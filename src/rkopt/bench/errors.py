"""Errors of the benchmark harness that the command line reports without a traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: the message names the flag (or config key) and the fix."""
