"""Who may read a room's host data: a `host` or a `monitor` token (SPEC: Tokens).

Every host-view endpoint (metrics JSON, broadcasts, later ones) wraps its handler in
`@host_data`: no token (or an unknown one) gets `401`, a token of another role `403`,
before the handler runs. The dashboard page itself is public; its data is not.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from stream.core.auth import HOST_DATA_READERS, TokenRole, Tokens, bearer

# The gateway's tokens, on its app (the gateway sets it; `appkeys.TOKENS` is this key).
TOKENS = web.AppKey("tokens", Tokens)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def role_of(request: web.Request) -> TokenRole | None:
    """The role of the request's `Authorization: Bearer` token, or None."""
    token = bearer(request.headers.get("Authorization"))
    tokens = request.app.get(TOKENS)
    return None if token is None or tokens is None else tokens.role(token)


def reads_host_data(request: web.Request) -> bool:
    """True if the request carries a host or monitor token."""
    return role_of(request) in HOST_DATA_READERS


def refusal(request: web.Request) -> web.Response | None:
    """The `401`/`403` answer for a request that may not read host data, else None."""
    token = bearer(request.headers.get("Authorization"))
    role = role_of(request)
    if role in HOST_DATA_READERS:
        return None
    if role is None:
        why = "missing bearer token" if token is None else "unknown token"
        return _error(401, f"{why}: host data needs a host or monitor token",
                      headers={"WWW-Authenticate": 'Bearer realm="host data"'})
    return _error(403, f"host data needs a host or monitor token, this one is {role}")


def host_data(handler: Handler) -> Handler:
    """Decorator for host-view handlers: only host and monitor tokens get through."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        refused = refusal(request)
        return refused if refused is not None else await handler(request)

    return guarded


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps({"error": message}), status=status,
                        content_type="application/json", headers=headers)


def refusal_unless(request: web.Request, roles: frozenset[TokenRole], *,
                   what: str) -> web.Response | None:
    """The `401`/`403` answer for a request whose token is not of one of `roles` (for
    data narrower than host data: personal data, the pick lists), else None."""
    token = bearer(request.headers.get("Authorization"))
    role = role_of(request)
    if role in roles:
        return None
    needed = " or ".join(sorted(roles))
    if role is None:
        why = "missing bearer token" if token is None else "unknown token"
        return _error(401, f"{why}: {what} needs a {needed} token",
                      headers={"WWW-Authenticate": f'Bearer realm="{what}"'})
    return _error(403, f"{what} needs a {needed} token, this one is {role}")
