"""Schemathesis over /openapi.json: generated requests (valid and not) never get a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from service.app import create_app


def test_no_server_errors_on_any_operation(settings_for_fuzz, thread_runner) -> None:
    # A runner is up, so /readyz answers 200 (its 503 means "no runner", which is not a crash).
    runner = thread_runner(settings_for_fuzz)
    runner.runner.register()  # before its thread starts: /readyz sees it from the first call
    with runner:
        _fuzz(settings_for_fuzz)


def _fuzz(service_settings) -> None:
    app = create_app(service_settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=20,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        check()
