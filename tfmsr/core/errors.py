"""Errors a user can cause through a configuration."""


class ConfigError(ValueError):
    """A configuration mistake (unknown model or parameter, bad value), naming the key."""
