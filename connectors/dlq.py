"""The dead-letter record: a message the flow could not use, with where it came from and why.

Wire form on ``inventory.dlq``:

* **value**: a JSON object ``{dlq_id, topic, partition, offset, timestamp_ms, reason, detail,
  event_type, event_id, key_b64, original_b64, original_size, original_truncated,
  original_sha256}``. ``original_b64`` is the message value, byte for byte (base64, because a bad
  message need not be UTF-8); only a value above ``MAX_ORIGINAL_BYTES`` is cut, and then
  ``original_truncated`` is true and the size and SHA-256 still describe the whole value.
* **headers**: ``dlq.id``, ``dlq.reason``, ``dlq.topic``, ``dlq.partition``, ``dlq.offset`` (UTF-8),
  so a consumer can route or filter without decoding the value.
* **key**: the original key (so a re-drive lands in the same partition), else ``dlq_id``.

``dlq_id`` = ``topic:partition:offset`` of the bad message. The record holds no wall-clock time,
so a record written twice (a replay after a crash) is byte-identical and consumers dedupe by id.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

MAX_ORIGINAL_BYTES = 512 * 1024
"""Largest original value copied whole into a record (base64 adds a third; brokers cap at ~1 MB)."""

_MAX_DETAIL = 500

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class DlqRecord:
    """One dead-lettered message."""

    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    original: bytes | None
    key: bytes | None = None
    timestamp_ms: int = 0
    event_type: str | None = None
    event_id: str | None = None

    @property
    def dlq_id(self) -> str:
        """``topic:partition:offset`` of the bad message: the same on every replay."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    def to_json(self) -> dict[str, Any]:
        """The JSON value (see the module doc)."""
        original = self.original or b""
        kept = original[:MAX_ORIGINAL_BYTES]
        return {
            "dlq_id": self.dlq_id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "reason": self.reason,
            "detail": self.detail[:_MAX_DETAIL],
            "event_type": self.event_type,
            "event_id": self.event_id,
            "key_b64": base64.b64encode(self.key).decode() if self.key is not None else None,
            "original_b64": base64.b64encode(kept).decode() if self.original is not None else None,
            "original_size": len(original),
            "original_truncated": len(kept) < len(original),
            "original_sha256": hashlib.sha256(original).hexdigest(),
        }

    def headers(self) -> Headers:
        """The ``dlq.*`` headers (UTF-8 values)."""
        return [
            ("dlq.id", self.dlq_id.encode()),
            ("dlq.reason", self.reason.encode()),
            ("dlq.topic", self.topic.encode()),
            ("dlq.partition", str(self.partition).encode()),
            ("dlq.offset", str(self.offset).encode()),
        ]

    def to_message(self) -> tuple[bytes, bytes, Headers]:
        """``(key, value, headers)`` ready for a producer."""
        key = self.key if self.key else self.dlq_id.encode()
        return key, orjson.dumps(self.to_json()), self.headers()


class DlqDecodeError(ValueError):
    """A message on the DLQ topic is not a DLQ record."""


def decode_dlq_value(value: bytes | None) -> DlqRecord:
    """Read a DLQ record back from its JSON value; raises ``DlqDecodeError`` for anything else.

    A truncated original comes back truncated (check ``original_truncated`` in the JSON if it matters).
    """
    if not value:
        raise DlqDecodeError("empty DLQ message")
    try:
        data = orjson.loads(value)
        original = data["original_b64"]
        key = data["key_b64"]
        return DlqRecord(
            topic=_str(data["topic"]),
            partition=_int(data["partition"]),
            offset=_int(data["offset"]),
            reason=_str(data["reason"]),
            detail=_str(data["detail"]),
            original=base64.b64decode(original, validate=True) if original is not None else None,
            key=base64.b64decode(key, validate=True) if key is not None else None,
            timestamp_ms=_int(data.get("timestamp_ms", 0)),
            event_type=data.get("event_type"),
            event_id=data.get("event_id"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DlqDecodeError(f"not a DLQ record: {exc}") from exc


def header(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    """The UTF-8 value of header ``name`` (first occurrence), or None."""
    for k, v in headers or ():
        if k == name:
            return v.decode("utf-8", "replace") if v is not None else None
    return None


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"expected an integer, got {type(v).__name__}")
    return v
