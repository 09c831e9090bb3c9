"""Errors a user can cause. The CLI prints their message as one line and exits with `exit_code`."""


class ConvnetError(Exception):
    """Base of every error that is the user's to fix (bad config, bad data, bad flag)."""

    exit_code = 2


class ConfigError(ConvnetError):
    """A layer-def or layer-params file (or a flag) is wrong: the message names file, layer, key and fix."""


class DataError(ConvnetError):
    """Audio, CSV, batch files or checkpoints are missing, corrupt or of the wrong shape."""


class NonFiniteError(ConvnetError):
    """Training produced NaN or inf; the message names the first layer whose output went non-finite."""

    exit_code = 1
