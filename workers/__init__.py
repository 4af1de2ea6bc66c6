"""OptiShear workers: the job runner that drives searches, and Ray actors that evaluate candidates."""

# The runtime module sets Ray's auth mode; importing it first means that happens before any
# module of this package imports Ray.
import workers.runtime  # noqa: F401
