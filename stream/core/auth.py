"""Bearer tokens and their roles, and HMAC-signed viewer tokens (SPEC: Tokens)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Literal

import msgspec

from stream.core.models import Role

# A token's role: one of the roles that send events (models.Role), or `monitor`, which
# reads the host's data (metrics, broadcasts, dashboard, room series on /metrics) for
# Grafana, Prometheus and analysts, and sends nothing.
TokenRole = Role | Literal["monitor"]
SENDERS: tuple[Role, ...] = ("platform", "commerce", "host")
ROLES: tuple[TokenRole, ...] = (*SENDERS, "monitor")
# Who may read a room's host data: the host, and the read-only monitor.
HOST_DATA_READERS: frozenset[TokenRole] = frozenset({"host", "monitor"})


class TokensFile(msgspec.Struct, forbid_unknown_fields=True):
    tokens: dict[str, TokenRole]
    viewer_secret: str = ""


class Tokens:
    """Who a bearer token is; and whether a viewer token belongs to a viewer."""

    def __init__(self, tokens: dict[str, TokenRole], viewer_secret: str) -> None:
        self._roles = dict(tokens)
        self._secret = viewer_secret.encode()

    @classmethod
    def load(cls, path: Path) -> Tokens:
        try:
            spec = msgspec.json.decode(path.read_bytes(), type=TokensFile)
        except msgspec.DecodeError as exc:
            raise ValueError(f"{path}: {exc}") from None
        return cls(spec.tokens, spec.viewer_secret)

    @classmethod
    def generate(cls) -> Tokens:
        """Fresh random tokens, one per role, for `up` and `demo`."""
        return cls({f"{role}-{secrets.token_urlsafe(16)}": role for role in ROLES},
                   secrets.token_hex(32))

    def save(self, path: Path) -> None:
        path.write_bytes(msgspec.json.encode(
            TokensFile(tokens=self._roles, viewer_secret=self._secret.decode())))
        path.chmod(0o600)

    def role(self, token: str) -> TokenRole | None:
        return self._roles.get(token)

    def has_role(self, role: TokenRole) -> bool:
        return role in self._roles.values()

    def for_role(self, role: TokenRole) -> str:
        """Some token of `role` (for the simulator and demo clients)."""
        for token, r in self._roles.items():
            if r == role:
                return token
        raise KeyError(f"no token with role {role!r}")

    def viewer_token(self, viewer_id: str) -> str:
        return hmac.new(self._secret, viewer_id.encode(), hashlib.sha256).hexdigest()

    def is_viewer(self, viewer_id: str, token: str) -> bool:
        if not self._secret:
            return False
        # As bytes: compare_digest refuses a str with non-ASCII characters (TypeError), and
        # a query string may hold anything (schemathesis sent one).
        return hmac.compare_digest(self.viewer_token(viewer_id).encode(),
                                   token.encode("utf-8", "replace"))


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer X` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
