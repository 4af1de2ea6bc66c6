"""How a job ends early: the exceptions the runner's loop turns into queue states."""


class LeaseLostError(Exception):
    """Another runner holds our job now: stop without writing anything more."""


class CancelledError(Exception):
    """The search was cancelled through the API."""


class StoppedError(Exception):
    """This runner is shutting down: hand the job back after the generation just saved."""
