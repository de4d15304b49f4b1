"""Schemathesis drives every operation of the OpenAPI schema against a real server on loopback:
whatever it sends, the server never answers 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.helpers import serve_on_loopback, tiny_loader

KEY = "schema-test-key-0123456789"


def _serve(tiny_llama: Path, tmp: Path) -> str:
    from service.app import create_app
    from service.settings import ApiKey, Limits, Settings

    settings_ = Settings(
        auth_disabled=False,
        generator=str(tiny_llama),
        data_dir=tmp,
        api_keys=[ApiKey(name="a", key=KEY, scopes=["admin"])],  # type: ignore[arg-type,list-item]
        limits=Limits(max_new_tokens=8, rate_limit_per_minute=0),
    )
    app = create_app(settings_, loader=tiny_loader(tiny_llama, tmp, adapters=tmp / "adapters"))
    return serve_on_loopback(app)[0]


@pytest.fixture(scope="module")
def base_url(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _serve(tiny_llama, tmp_path_factory.mktemp("schema"))


def drive(operation: object, base_url: str, statuses: list[int], failures: list) -> None:
    """Send hypothesis-generated requests for one operation; record statuses and any 5xx."""
    label = operation.label  # type: ignore[attr-defined]

    @settings(
        max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy())  # type: ignore[attr-defined]
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"})
        statuses.append(response.status_code)
        if response.status_code >= 500:
            failures.append((label, response.status_code, response.text[:200]))

    run()


@pytest.mark.slow
def test_no_operation_answers_5xx(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures = []
    statuses: list[int] = []
    operations = 0
    for result in schema.get_all_operations():
        operations += 1
        drive(result.ok(), base_url, statuses, failures)
    assert failures == []
    assert operations >= 14 and len(statuses) >= 5 * operations  # it really drove the API
    assert any(200 <= c < 300 for c in statuses) and any(c == 422 for c in statuses)
