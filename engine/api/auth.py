"""Bearer-token authentication and role checks for the HTTP API.

Tokens are never stored: settings map the **sha256 hex digest** of each token to its roles
(``ATP_API_TOKENS='{"<sha256 hex>": ["read", "reserve"]}'`` or ``[api_tokens]`` in the TOML
file). A presented token is hashed and compared with every configured digest in constant
time (``hmac.compare_digest``, no early exit), so timing tells nothing about which digest, if
any, came close.

Roles: ``read`` (ATP, reservations, policies), ``reserve`` (hold / confirm / release /
extend), ``operate`` (policies, adjustments, counts). ``reserve`` and ``operate`` each imply
``read`` — a checkout reads ATP before it reserves, an operator reads before changing — but
neither implies the other.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """What a token may do."""

    READ = "read"
    RESERVE = "reserve"
    OPERATE = "operate"


#: A role granted in settings also grants these.
IMPLIED: dict[Role, frozenset[Role]] = {
    Role.READ: frozenset({Role.READ}),
    Role.RESERVE: frozenset({Role.RESERVE, Role.READ}),
    Role.OPERATE: frozenset({Role.OPERATE, Role.READ}),
}


def token_digest(token: str) -> str:
    """The sha256 hex digest of a token, the form settings keep it in."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def effective_roles(granted: Iterable[str]) -> frozenset[Role]:
    """The roles a token has once implications are applied; unknown names are ignored."""
    roles: set[Role] = set()
    for name in granted:
        try:
            roles |= IMPLIED[Role(name)]
        except ValueError:
            continue
    return frozenset(roles)


@dataclass(frozen=True)
class TokenTable:
    """The configured tokens as (digest bytes, roles) pairs, compared in constant time."""

    entries: tuple[tuple[bytes, frozenset[Role]], ...]

    @classmethod
    def from_settings(cls, api_tokens: Mapping[str, Iterable[str]]) -> TokenTable:
        """Build from ``Settings.api_tokens`` (sha256 hex → role names)."""
        return cls(
            tuple(
                (digest.lower().encode("ascii"), effective_roles(roles))
                for digest, roles in api_tokens.items()
            )
        )

    def roles_for(self, token: str) -> frozenset[Role] | None:
        """The roles of ``token``, or None when it matches no configured digest.

        Every entry is compared, whatever matched earlier, so the time taken does not
        depend on which entry matched.
        """
        presented = token_digest(token).encode("ascii")
        found: frozenset[Role] | None = None
        for digest, roles in self.entries:
            if hmac.compare_digest(presented, digest):
                found = roles
        return found

