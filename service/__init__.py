"""OptiShear service: REST API, job queue and dashboard (see the service issue)."""
