"""Errors a user can cause and fix: reported as one line, exit code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user: a config, a data file, a run directory."""


class ConfigError(UserError):
    """The study config is invalid; the message names the field and what is expected."""


class DataError(UserError):
    """The data is invalid (NaN, wrong shape, labels out of range, empty split)."""
