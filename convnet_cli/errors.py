"""Errors a user can cause. The CLI prints their message as one line and exits with `exit_code`.

`did_you_mean` is the one spelling hint every error message uses.
"""
import difflib


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


def did_you_mean(word, options) -> str:
    """' (did you mean 'x'?)' for the option closest to `word` (a case-only difference first), or ''."""
    word = str(word)
    options = [str(o) for o in options]
    lower = {o.lower(): o for o in options}
    if word.lower() in lower:
        return f" (did you mean '{lower[word.lower()]}'?)"
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
