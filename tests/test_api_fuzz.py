"""The HTTP API under attack: schemathesis generates requests for every operation of
/openapi.json (valid and invalid bodies, parameters and uploads), with and without the token,
and checks each answer: no 5xx, only documented status codes and content types, and bodies
that match their documented schemas."""

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev extra) is missing")
pytest.importorskip("starlette", reason="the serve extra is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from selva_rt.runtime.pipeline import Pipeline  # noqa: E402
from selva_rt.runtime.service.server import create_app, openapi_document  # noqa: E402

TOKEN = "fuzz-token"
EXAMPLES = 30  # per operation and mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def operations() -> list[tuple[str, GenerationMode]]:
    """(label, mode) for every operation: valid requests, and invalid ones where there is
    something to make invalid (parameters or a body)."""
    found = []
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            found.append((f"{method.upper()} {path}", GenerationMode.POSITIVE))
            if "parameters" in item or "parameters" in operation or "requestBody" in operation:
                found.append((f"{method.upper()} {path}", GenerationMode.NEGATIVE))
    return found


def without_lifespan(app):
    """`app` whose lifespan does nothing: schemathesis starts and stops an ASGI app around each
    call, and the worker (not under test here) must neither start nor close the journal."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    return wrapped


@pytest.fixture(scope="module")
def api(tmp_path_factory, sample_clip):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "clips").mkdir()
    (root / "clips" / "a.mp4").write_bytes(sample_clip.read_bytes())
    pipe = Pipeline.from_pretrained("tiny", device="cpu", precision="fp32")
    # The worker does not run, so accepted jobs only queue (up to the limit: then 429).
    app = create_app(pipe, [root / "clips"], root / "out", token=TOKEN)
    return schemathesis.openapi.from_asgi("/openapi.json", without_lifespan(app))


@pytest.mark.parametrize(("label", "mode"), operations(), ids=lambda x: getattr(x, "value", x))
def test_every_operation_answers_as_documented(api, label, mode):
    operation = api.find_operation_by_label(label)

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def attack(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)
        case.call_and_validate(checks=CHECKS)  # no token: 401 where one is needed, documented

    attack()
