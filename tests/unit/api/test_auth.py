"""Bearer tokens: digests, role implications, constant-time matching, header parsing."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from engine.api import auth
from engine.api.auth import Role, TokenTable, effective_roles, token_digest


def test_token_digest_is_sha256_hex_of_the_token() -> None:
    assert token_digest("s3cret") == hashlib.sha256(b"s3cret").hexdigest()


def test_reserve_and_operate_imply_read_but_not_each_other() -> None:
    assert effective_roles(["reserve"]) == {Role.RESERVE, Role.READ}
    assert effective_roles(["operate"]) == {Role.OPERATE, Role.READ}
    assert Role.RESERVE not in effective_roles(["operate"])
    assert Role.OPERATE not in effective_roles(["reserve"])
    assert effective_roles(["read"]) == {Role.READ}


def test_unknown_role_names_grant_nothing() -> None:
    assert effective_roles(["admin", "root"]) == frozenset()


def test_known_token_gets_its_roles_and_unknown_token_gets_none() -> None:
    table = TokenTable.from_settings({token_digest("a"): ["read"], token_digest("b"): ["reserve"]})
    assert table.roles_for("a") == {Role.READ}
    assert table.roles_for("b") == {Role.RESERVE, Role.READ}
    assert table.roles_for("c") is None
    assert table.roles_for("") is None


def test_upper_case_digest_in_settings_still_matches() -> None:
    table = TokenTable.from_settings({token_digest("a").upper(): ["operate"]})
    assert table.roles_for("a") == {Role.OPERATE, Role.READ}


def test_empty_table_refuses_every_token() -> None:
    assert TokenTable.from_settings({}).roles_for("anything") is None


def test_every_entry_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return original(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    table = TokenTable.from_settings({token_digest(t): ["read"] for t in ("first", "second", "third")})
    assert table.roles_for("first") == {Role.READ}
    assert len(calls) == 3

