"""Errors of the sweep layer, kept import-light for the CLI: bad input (exit code 2) and an interrupted sweep (130)."""


class SweepError(ValueError):
    """A sweep that cannot start as asked; the message names the flag or path and the fix."""


class ResultsError(ValueError):
    """An experiment folder that cannot be summarized; the message says why."""


class SweepInterrupted(KeyboardInterrupt):
    """A sweep or its finalize run stopped by Ctrl-C (SIGINT); what ended is kept, the message says how to go on."""

    def __init__(self, message: str, location: str):
        super().__init__(message)
        self.location = location  # the experiment (folder or URI) the message's command continues
