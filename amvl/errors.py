"""Errors a user can fix: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input or configuration; the message names the file, row or key."""


class ConfigError(UserError):
    """A config value is unknown, mistyped or out of range; the message names the key."""
