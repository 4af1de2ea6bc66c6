"""OptiShear workers: Ray actors that hold a model and evaluate candidates."""
