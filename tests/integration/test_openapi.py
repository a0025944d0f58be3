"""The gateway holds to its own `/openapi.json`: schemathesis generates requests for every
operation from the document and sends them to a running gateway.

Fails on any 5xx, on an answer (status, content type, body) the document does not
describe, and on a request the document allows that is refused without naming a field
(a 400 whose error, or a 202 whose rejected item, does not say where it went wrong).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import hypothesis
import orjson
import pytest
from aiohttp import ClientSession
from helpers import running_gateway

from stream.core.auth import Tokens
from stream.core.config import Settings
from stream.core.models import AnyEvent

pytestmark = pytest.mark.integration

# Bounded: the whole run stays well under a minute on the shared 2 cores.
EXAMPLES = {"POST /v1/events": 60, "GET /v1/rooms/{room}/stock/stream": 4}
DEFAULT_EXAMPLES = 15
# A streaming answer is read this long, then cut (schemathesis stops reading an SSE body
# at the request timeout).
TIMEOUT_S = 3.0
# How a refusal names its field: msgspec's "- at `$.items[0].qty`", or "room: …" (a path
# parameter), "Upgrade: …" (a header).
NAMES_A_FIELD = re.compile(r"at `\$[^`]*`|^[A-Za-z_-]+: ")
_ROLE_OF = {cls.__struct_config__.tag: cls.role for cls in AnyEvent.__args__}  # type: ignore[attr-defined]


def _headers(label: str, body: Any, tokens: Tokens) -> dict[str, str]:
    """A token that may make the request: by the first event's type, or for host data."""
    if label == "POST /v1/events":
        first = body[0] if isinstance(body, list) and body else {}
        role = _ROLE_OF.get(first.get("type") if isinstance(first, dict) else None,
                            "platform")
    elif "/tags" in label:
        role = "commerce"
    else:
        role = "monitor"
    return {"Authorization": f"Bearer {tokens.for_role(role)}"}


def _names_a_field(response: Any) -> None:
    if response.status_code == 400:
        error = orjson.loads(response.content)["error"]
        assert NAMES_A_FIELD.search(error), f"400 without naming a field: {error!r}"
    elif response.status_code == 202:
        for item in orjson.loads(response.content)["rejected"]:
            assert NAMES_A_FIELD.search(item["error"]), \
                f"item {item['index']} refused without naming a field: {item['error']!r}"


def _run_operation(operation: Any, label: str, base_url: str, tokens: Tokens,
                   checks: list[Any], seen: Counter[tuple[str, int]]) -> None:
    @hypothesis.settings(max_examples=EXAMPLES.get(label, DEFAULT_EXAMPLES),
                         deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @hypothesis.given(case=operation.as_strategy())
    def run(case: Any) -> None:
        headers = _headers(label, case.body, tokens)
        response = case.call(base_url=base_url, headers=headers, timeout=TIMEOUT_S)
        seen[label, response.status_code] += 1
        if response.status_code == 202:
            seen["accepted", 0] += orjson.loads(response.content)["accepted"]
        case.validate_response(response, checks=checks, headers=headers)
        _names_a_field(response)

    run()


def fuzz(document: dict[str, Any], base_url: str, tokens: Tokens,
         seen: Counter[tuple[str, int]]) -> dict[str, str]:
    """Run every operation; returns the failures by operation (empty: all held)."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_dict(document)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    failures: dict[str, str] = {}
    ran: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        ran.append(label)

        try:
            _run_operation(operation, label, base_url, tokens, checks, seen)
        except Exception as exc:  # one operation's failure must not hide the others'
            failures[label] = f"{type(exc).__name__}: {exc}"[:3000]
    assert len(ran) == len({(m, p) for p, ops in document["paths"].items() for m in ops})
    return failures


async def test_every_route_is_in_the_document(settings: Settings) -> None:
    async with running_gateway(settings) as (gw, url, _), ClientSession() as http, \
            http.get(f"{url}/openapi.json") as resp:
        assert resp.status == 200
        document = await resp.json()
        assert gw._runner is not None
        routes = {(r.method.lower(), r.resource.canonical) for r in gw._runner.app.router.routes()
                  if r.method not in ("HEAD", "OPTIONS") and r.resource is not None}
    assert document["openapi"].startswith("3.1")
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert routes == documented
    # Described, not the generic stand-in for a route added without a description.
    generic = sorted(f"{m.upper()} {p}" for p, ops in document["paths"].items()
                     for m, op in ops.items() if op["summary"] == "(not described yet)")
    assert not generic, generic
    # The event schemas are msgspec's, one per event type.
    schemas = document["components"]["schemas"]
    assert {c.__name__ for c in AnyEvent.__args__} <= set(schemas)  # type: ignore[attr-defined]
    assert schemas["OrderPlaced"]["required"][:4] == ["type", "event_id", "room_id", "ts"]


async def test_schemathesis_finds_nothing(settings: Settings) -> None:
    async with running_gateway(settings) as (_, url, tokens):
        async with ClientSession() as http, http.get(f"{url}/openapi.json") as resp:
            document = await resp.json()
        # schemathesis is synchronous (requests): in a thread, the gateway on this loop.
        seen: Counter[tuple[str, int]] = Counter()
        failures = await asyncio.to_thread(fuzz, document, url, tokens, seen)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    # It reached the paths that matter, not only refusals: events went in, data came out.
    assert seen["accepted", 0] > 0, seen
    for label in ("GET /v1/rooms/{room}/metrics", "GET /v1/rooms/{room}/stock",
                  "GET /v1/rooms/{room}/stock/stream", "GET /v1/viewers/{viewer}/tags"):
        assert seen[label, 200] > 0, (label, seen)
