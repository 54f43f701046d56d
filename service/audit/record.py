"""One audit record: what CONTRACT.md's "The audit stream" names, its schema version, and its content digest.

A record is stored as flat string fields (`fields()`), in `FIELD_ORDER`. Version 2 adds `v`, `sysnum` and
`request_id`; an entry written by version 1 has no `v` and is read as `v` 1 (`from_fields`). The JSON
Schema of the stored entry ships beside this module (`record.schema.json`, printed by
`sobot-panel audit schema`); tests/test_audit_schema.py keeps the two in step.

`digest()` binds an idempotency key to what it recorded: the payload and the claims that sent it
(surface, agent, partner_id, uid, cid, sysnum) and the kind. A retry with the same id must carry the same
digest, or it is a different send reusing an id (HTTP 409), never a duplicate of the first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..protocol.send import EVENT_ID_PATTERN, SendKind

SCHEMA_VERSION = 2
SCHEMA_RESOURCE = "record.schema.json"
# What the digest covers, in this order; `id`, `at`, `v` and `request_id` differ between honest retries.
DIGEST_FIELDS = ("kind", "surface", "agent", "partner_id", "uid", "cid", "sysnum", "payload")


class AuditRecord(BaseModel):
    """One entry of the stream, as CONTRACT.md defines it (version 2)."""

    model_config = ConfigDict(frozen=True)

    kind: SendKind
    id: str = Field(pattern=EVENT_ID_PATTERN.pattern)
    at: int
    surface: str
    agent: str
    partner_id: str = ""
    uid: str = ""
    cid: str = ""
    payload: str
    v: int = SCHEMA_VERSION
    sysnum: str = ""
    request_id: str = ""

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> AuditRecord:
        """A stored entry's fields as a record; one without `v` was written by version 1."""
        return cls.model_validate({"v": "1", **fields})

    def fields(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in FIELD_ORDER}

    def values(self) -> list[str]:
        """The fields' values in FIELD_ORDER (what the append script pairs with the names)."""
        return [str(getattr(self, name)) for name in FIELD_ORDER]

    def digest(self) -> str:
        """sha256 over the content an idempotency key vouches for (hex, 64 characters)."""
        content = json.dumps([str(getattr(self, name)) for name in DIGEST_FIELDS], ensure_ascii=False)
        return hashlib.sha256(content.encode("utf-8")).hexdigest()


FIELD_ORDER: tuple[str, ...] = tuple(AuditRecord.model_fields)


def schema_text() -> str:
    """The JSON Schema of a stored entry, as shipped in the package."""
    return resources.files(__package__ or "sobot_panel.audit").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded
