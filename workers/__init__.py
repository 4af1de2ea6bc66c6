"""OptiShear workers: Ray actors that hold a model and evaluate candidates, and their pool."""

# The runtime module sets Ray's auth mode; importing it first means that happens before any
# module of this package imports Ray.
import workers.runtime  # noqa: F401
