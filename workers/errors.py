"""Errors of the Ray workers, reported like every other OptiShear error."""

from optishear.core.errors import OptiShearError


class WorkerError(OptiShearError):
    """A Ray worker failed, or died more often than it may be restarted."""


class WorkerStartError(WorkerError):
    """A Ray worker could not start: the model does not load, or resources never came free."""
