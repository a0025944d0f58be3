"""Tokens and roles (SPEC: Tokens)."""

from __future__ import annotations

from stream.core.auth import HOST_DATA_READERS, ROLES, SENDERS, Tokens


def test_generated_tokens_cover_every_role_and_monitor_sends_nothing() -> None:
    tokens = Tokens.generate()
    assert {tokens.role(tokens.for_role(r)) for r in ROLES} == set(ROLES)
    assert "monitor" in ROLES and "monitor" not in SENDERS
    assert {"host", "monitor"} == HOST_DATA_READERS


def test_a_viewer_token_of_any_characters_is_refused_not_an_error() -> None:
    tokens = Tokens.generate()
    assert tokens.is_viewer("v1", tokens.viewer_token("v1"))
    for token in ("ü", "\ud800", "", "x" * 1000, tokens.viewer_token("v2")):
        assert not tokens.is_viewer("v1", token)
