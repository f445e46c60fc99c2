"""Errors of the sweep layer that mean 'bad input' (exit code 2), kept import-light for the CLI."""


class SweepError(ValueError):
    """A sweep that cannot start as asked; the message names the flag or path and the fix."""


class ResultsError(ValueError):
    """An experiment folder that cannot be summarized; the message says why."""
