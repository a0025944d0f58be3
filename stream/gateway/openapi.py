"""`GET /openapi.json`: the gateway's HTTP interface as an OpenAPI 3.1 document.

Schemas come from the msgspec Structs (`msgspec.json.schema_components`): the events
the gateway decodes (`models.AnyEvent`), the metrics it encodes (`RoomMetrics`), and the
answer Structs below, which describe the JSON the handlers write. Nothing is written by
hand but the list of operations; a route of the app that is not in it still appears
(with a generic answer), so the document always covers every route, and a test runs
schemathesis against it.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

import msgspec
from aiohttp import hdrs, web

from stream.core.models import AnyEvent, Id
from stream.hostview.afterreads import FollowUps
from stream.hostview.dashboard import Broadcasts
from stream.hostview.metrics import RoomMetrics
from stream.hostview.picklist import PickList

REF = "#/components/schemas/{name}"


class ErrorAnswer(msgspec.Struct, kw_only=True):
    """Every refusal: what was wrong, naming the field where there is one."""

    error: str
    request_id: str | None = None  # on a 500: the id the gateway's log line carries


class RejectedItem(msgspec.Struct, kw_only=True):
    index: Annotated[int, msgspec.Meta(ge=0)]
    error: str


class Accepted(msgspec.Struct, kw_only=True):
    """`202` to `POST /v1/events`: the count written to Kafka, each refused item."""

    accepted: Annotated[int, msgspec.Meta(ge=0)]
    rejected: list[RejectedItem]


class SkuLevel(msgspec.Struct, kw_only=True):
    sku: str
    available: int
    reserved: int
    sold: int
    version: int


class StockSnapshot(msgspec.Struct, kw_only=True):
    room_id: str
    skus: list[SkuLevel]


class HeldTag(msgspec.Struct, kw_only=True):
    room_id: str
    tag: str
    value: str


class ViewerTags(msgspec.Struct, kw_only=True):
    viewer_id: str
    tags: list[HeldTag]


class Health(msgspec.Struct, kw_only=True):
    status: str
    redis: str | None = None


EventList = list[AnyEvent]

_NAMED: dict[str, Any] = {"Events": EventList, "ErrorAnswer": ErrorAnswer,
                          "Accepted": Accepted, "StockSnapshot": StockSnapshot,
                          "ViewerTags": ViewerTags, "Health": Health,
                          "RoomMetrics": RoomMetrics, "Broadcasts": Broadcasts, "Id": Id,
                          "PickList": PickList, "FollowUps": FollowUps}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(name=ref)}}}}


def _error(description: str) -> dict[str, Any]:
    return _json("ErrorAnswer", description)


def _text(media: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"$ref": REF.format(name="Id")}}


ROOM = _path("room", "the room id")
# One Server-Sent Event as schemathesis and OpenAPI 3.2's `itemSchema` read it.
SSE_EVENT = {"type": "object", "required": ["event", "data"],
             "properties": {"event": {"enum": ["snapshot", "stock"]},
                            "data": {"type": "string", "contentMediaType": "application/json"}}}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
HOST_DATA = {"401": _error("no token, or an unknown one"),
             "403": _error("a token of another role than host or monitor")}
BROADCAST = {"name": "broadcast", "in": "query", "required": False,
             "description": "a broadcast id (default: the one on air, or the latest)",
             "schema": {"$ref": REF.format(name="Id")}}
FORMAT = {"name": "format", "in": "query", "required": False,
          "schema": {"enum": ["json", "csv"]}}
BAD_ROOM = {"400": _error("the room id does not match [A-Za-z0-9._:@-]{1,64}")}

# (method, path) -> operation. Paths as aiohttp registers them ("{room}").
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/events"): {
        "summary": "Send events (a JSON array, one event, or NDJSON)",
        "description": "A platform token sends viewer and interaction events, a commerce "
                       "token `order.*`, a host token `segment.*`, `product.pinned`, "
                       "`broadcast.*`, `stock.set`. Valid items are accepted even when "
                       "their neighbours are refused. NDJSON (one event per line) "
                       "is accepted as well.",
        "security": BEARER,
        # NDJSON (one event per line) is accepted too; JSON Schema cannot describe lines,
        # so the document names the JSON form only.
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": REF.format(name="Events")}}}},
        "responses": {
            "202": _json("Accepted", "written to Kafka; refused items with their errors"),
            "400": _error("the body is not JSON (nor NDJSON), or nests too deeply"),
            "401": _error("no token, or an unknown one"),
            "403": _error("an event this token's role may not send; nothing accepted"),
            "408": _error("the body did not arrive within LIVECOMMERCE_READ_TIMEOUT_S"),
            "413": _error("the body is over LIVECOMMERCE_MAX_BODY_BYTES"),
            "429": _error("this token's rate limit; see Retry-After"),
            "503": _error("Kafka or Redis unavailable, or ids still being written; retry"),
        }},
    ("GET", "/v1/rooms/{room}/stock"): {
        "summary": "The room's stock now", "parameters": [ROOM],
        "responses": {"200": _json("StockSnapshot", "every SKU of the room"), **BAD_ROOM,
                      "503": _error("Redis unavailable; retry")}},
    ("GET", "/v1/rooms/{room}/stock/stream"): {
        "summary": "Live stock as Server-Sent Events: `snapshot`, then `stock` events",
        "parameters": [ROOM],
        "responses": {"200": {"description": "the stream (never ends); each event's data "
                                             "is JSON: StockSnapshot, then StockUpdate",
                              "content": {"text/event-stream": {"schema": SSE_EVENT}}},
                      **BAD_ROOM,
                      "503": _error("past LIVECOMMERCE_MAX_SUBSCRIBERS (see Retry-After), "
                                    "Redis unavailable, or the gateway is stopping")}},
    ("GET", "/v1/rooms/{room}/ws"): {
        "summary": "WebSocket: stock events, and with a viewer token that viewer's nudges",
        "parameters": [ROOM,
                       {"name": "viewer", "in": "query", "required": False,
                        "schema": {"$ref": REF.format(name="Id")}},
                       {"name": "token", "in": "query", "required": False,
                        "schema": {"type": "string"},
                        "description": "HMAC-SHA256 of the viewer id (hex)"}],
        "responses": {"101": {"description": "switched to the WebSocket protocol"},
                      "400": _error("no WebSocket upgrade, or a bad room id"),
                      "403": _error("not this viewer's token, or an Origin not allowed"),
                      "429": _error("this viewer's connect rate; see Retry-After"),
                      "503": _error("past LIVECOMMERCE_MAX_SUBSCRIBERS (see Retry-After), "
                                    "Redis unavailable, or the gateway is stopping")}},
    ("GET", "/v1/viewers/{viewer}/tags"): {
        "summary": "A viewer's current tags (personal data: commerce token only)",
        "security": BEARER, "parameters": [_path("viewer", "the viewer id")],
        "responses": {"200": _json("ViewerTags", "the tags held now"),
                      "401": _error("no token, or an unknown one"),
                      "403": _error("a token of another role than commerce"),
                      "429": _error("this token's rate limit; see Retry-After")}},
    ("GET", "/v1/rooms/{room}/metrics"): {
        "summary": "One broadcast's live metrics (host data: host or monitor token)",
        "security": BEARER,
        "parameters": [ROOM, {"name": "broadcast", "in": "query", "required": False,
                              "schema": {"$ref": REF.format(name="Id")},
                              "description": "a broadcast id of the room (default: the "
                                             "one on air, or the latest)"}],
        "responses": {"200": _json("RoomMetrics", "the metrics"), **BAD_ROOM, **HOST_DATA,
                      "404": _error("the room has no broadcast of that id"),
                      "429": _error("this token's rate limit; see Retry-After")}},
    ("GET", "/v1/rooms/{room}/broadcasts"): {
        "summary": "The room's broadcasts, newest first (host data: host or monitor token)",
        "security": BEARER, "parameters": [ROOM],
        "responses": {"200": _json("Broadcasts", "the broadcasts"), **BAD_ROOM, **HOST_DATA,
                      "429": _error("this token's rate limit; see Retry-After")}},
    ("GET", "/v1/rooms/{room}/picklist"): {
        "summary": "A broadcast's pick list from its paid orders, by SKU, leader (pickup "
                   "point) or customer; JSON or CSV (UTF-8 with a BOM)",
        "description": "A commerce or host token for every view (by=customer names "
                       "buyers); a monitor token gets 403.",
        "security": BEARER,
        "parameters": [ROOM, BROADCAST,
                       {"name": "by", "in": "query", "required": False,
                        "schema": {"enum": ["sku", "leader", "customer"]}},
                       FORMAT],
        "responses": {"200": {"description": "the pick list",
                              "content": {"application/json": {
                                  "schema": {"$ref": REF.format(name="PickList")}},
                                  "text/csv": {"schema": {"type": "string"}}}},
                      "400": _error("a room, broadcast, by or format that is not valid"),
                      "401": _error("no token, or an unknown one"),
                      "403": _error("a token of a role that may not read this view"),
                      "404": _error("the room has no broadcast of that id"),
                      "429": _error("this token's rate limit; see Retry-After")}},
    ("GET", "/v1/rooms/{room}/followups"): {
        "summary": "A broadcast's follow-ups (viewer_id, segment, action, due_at, leader) "
                   "for the SCRM; JSON or CSV (UTF-8 with a BOM); commerce or host token",
        "security": BEARER, "parameters": [ROOM, BROADCAST, FORMAT],
        "responses": {"200": {"description": "the follow-ups",
                              "content": {"application/json": {
                                  "schema": {"$ref": REF.format(name="FollowUps")}},
                                  "text/csv": {"schema": {"type": "string"}}}},
                      "400": _error("a room, broadcast or format that is not valid"),
                      "401": _error("no token, or an unknown one"),
                      "403": _error("a token of another role than commerce or host"),
                      "404": _error("the room has no broadcast of that id"),
                      "429": _error("this token's rate limit; see Retry-After")}},
    ("GET", "/dashboard/{room}"): {
        "summary": "The host's live dashboard page (its data needs a host or monitor "
                   "token: `#token=` in the URL or the sign-in form)",
        "parameters": [ROOM],
        "responses": {"200": _text("text/html", "the page"), **BAD_ROOM}},
    ("GET", "/dashboard/assets/{name}"): {
        "summary": "The dashboard's script and style sheet",
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": _text("text/plain", "the file"),
                      "404": _error("no such asset")}},
    ("GET", "/v1/rooms/{room}/products"): {
        "summary": "The room's products: names and prices for a viewer page's labels (public)",
        "parameters": [ROOM],
        "responses": {"200": {"description": "the products",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                      **BAD_ROOM}},
    ("GET", "/live/{room}"): {
        "summary": "The reference viewer page: live remaining stock and the nudge popup "
                   "(`#viewer=ID&token=T` in the URL for the viewer's own nudges)",
        "parameters": [ROOM],
        "responses": {"200": _text("text/html", "the page"), **BAD_ROOM}},
    ("GET", "/live/assets/{name}"): {
        "summary": "The viewer page's script and style sheet",
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": _text("text/plain", "the file"),
                      "404": _error("no such asset")}},
    ("GET", "/client/livecommerce.js"): {
        "summary": "The browser client, one ES module: connect({gateway, room, viewer?, "
                   "token?}) -> onStock, onNudge, onStatus, close",
        "responses": {"200": _text("text/javascript", "the module")}},
    ("GET", "/metrics"): {
        "summary": "Prometheus exposition; the rooms' series only with a host or monitor "
                   "token", "security": [{}, {"bearer": []}],
        "responses": {"200": _text("text/plain", "Prometheus text format")}},
    ("GET", "/healthz"): {
        "summary": "Health", "responses": {"200": _json("Health", "up"),
                                           "503": _json("Health", "Redis unavailable")}},
    ("GET", "/openapi.json"): {
        "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3.1",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}},
}

_GENERIC: dict[str, Any] = {"summary": "(not described yet)",
            "responses": {"default": {"description": "see the README"}}}


def _portable(node: Any) -> Any:
    """msgspec writes Python's `\\Z` (end of string) into patterns; JSON Schema regexes are
    ECMA-262, where a pattern's `$` means the same without the multiline flag."""
    if isinstance(node, dict):
        return {k: (v.replace("\\Z", "$") if k == "pattern" and isinstance(v, str)
                    else _portable(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_portable(v) for v in node]
    return node


def document(app: web.Application) -> dict[str, Any]:
    """The document for `app`: every route it has, described or generic."""
    names = list(_NAMED)
    schemas, components = msgspec.json.schema_components(
        [_NAMED[n] for n in names], ref_template=REF)
    components = dict(components)
    components.update({n: s for n, s in zip(names, schemas, strict=True)
                       if "$ref" not in s or n == "Events"})
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        method = route.method.upper()
        if method in (hdrs.METH_HEAD, hdrs.METH_OPTIONS, hdrs.METH_ANY):
            continue
        path = route.resource.canonical if route.resource is not None else None
        if path is None:
            continue
        op = OPERATIONS.get((method, path))
        if op is None:
            op = copy.deepcopy(_GENERIC)
            params = [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]
            if params:
                op["parameters"] = [{"name": p, "in": "path", "required": True,
                                     "schema": {"type": "string"}} for p in params]
        paths.setdefault(path, {})[method.lower()] = copy.deepcopy(op)
    doc: dict[str, Any] = _portable({
        "openapi": "3.1.0",
        "info": {"title": "livecommerce gateway", "version": "1",
                 "description": "Events in, live stock, nudges, tags and the host's "
                                "metrics out. See SPEC 'Interfaces / HTTP'."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    })
    return doc


OPENAPI = web.AppKey("openapi", bytes)


def publish(app: web.Application) -> None:
    """Serve the document of `app` at `/openapi.json` (call once every route is added)."""
    app.router.add_get("/openapi.json", openapi_json)
    app[OPENAPI] = msgspec.json.encode(document(app))


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
