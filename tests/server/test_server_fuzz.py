"""Schema fuzzing: schemathesis generates valid and invalid requests from the server's own OpenAPI schema;
none may answer 5xx, and every error must be a JSON body. Bounded (derandomized, a few dozen examples per
operation and mode) to stay well under a minute on a tiny model."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from gte_onnx.server.app import create_app  # noqa: E402
from gte_onnx.server.backend import OnnxBackend  # noqa: E402
from gte_onnx.server.settings import ServerSettings  # noqa: E402
from load_tests.load_server import ServerThread  # noqa: E402

pytestmark = pytest.mark.slow  # schema fuzzing: hundreds of generated requests

EXAMPLES = 25


def fuzz(app, url: str, skip: frozenset[str] = frozenset()) -> list[str]:
    """Every operation of the schema, positive then negative data; the failures as readable lines."""
    schema = schemathesis.openapi.from_dict(app.openapi())
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:
        if operation.path in skip:
            continue
        for mode in schemathesis.GenerationMode:

            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                response = case.call(base_url=url, timeout=60)
                where = f"{case.method} {case.path} ({mode.value}) body={str(case.body)[:200]!r}"
                if response.status_code >= 500:
                    failures.append(f"{response.status_code} for {where}: {response.text[:300]}")
                if response.status_code >= 400:
                    try:
                        response.json()
                    except ValueError:
                        failures.append(f"non-JSON {response.status_code} for {where}: {response.text[:200]}")

            try:
                check()
            except Unsatisfiable:
                # A GET without parameters has no invalid variant; nothing to negate.
                assert mode == schemathesis.GenerationMode.NEGATIVE and operation.method.upper() == "GET"
    return failures


@pytest.fixture(scope="module")
def settings_():
    return ServerSettings(model_name="tiny", max_client_batch_size=16, payload_limit=256 * 1024)


def test_fuzz_embedding_server(tiny_gte_dir, settings_):
    app = create_app(OnnxBackend(tiny_gte_dir, threads=1), settings_)
    with ServerThread(app) as live:
        failures = fuzz(app, live.url)
    assert not failures, "\n".join(failures[:20])


def test_fuzz_rerank_server(tiny_reranker_dir, settings_):
    app = create_app(OnnxBackend(tiny_reranker_dir, threads=1), settings_)
    with ServerThread(app) as live:
        # The other routes were fuzzed above; here the rerank routes run their success paths too.
        failures = fuzz(app, live.url, skip=frozenset({"/v1/embeddings", "/embed", "/", "/v1/models", "/info",
                                                       "/metrics", "/health"}))
    assert not failures, "\n".join(failures[:20])
