"""Domain errors: every user-facing failure is an OptiShearError with a readable message."""


class OptiShearError(Exception):
    """Base class of the errors OptiShear reports to users."""


class ConfigError(OptiShearError, ValueError):
    """A setting is out of range or inconsistent with another one."""


class UnknownMethodError(ConfigError, KeyError):
    """A pruning method or metric name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedModelError(OptiShearError):
    """The model has no decoder blocks with linear projections that we can prune."""


class ModelSourceError(OptiShearError):
    """A model path, name or hub id cannot be resolved or loaded."""


class AssetError(OptiShearError):
    """Bundled assets cannot be fetched, verified or converted."""


class DataError(OptiShearError):
    """Calibration or evaluation text is missing, unreadable or too short."""
