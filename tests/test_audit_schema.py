"""The audit record's JSON Schema: shipped in the package, printed by `sobot-panel audit schema`, in step
with the record the service writes, and honest about which fields Sobot signs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from sobot_panel.audit.record import FIELD_ORDER, SCHEMA_VERSION, AuditRecord, schema
from sobot_panel.protocol.surfaces import Surface

ROOT = Path(__file__).resolve().parent.parent
SIX = {"call", "call-task", "ticket", "customer", "qa", "monitor"}
ALL = {surface.value for surface in Surface}


def test_the_schema_names_every_field_the_record_has() -> None:
    loaded = schema()
    jsonschema.Draft202012Validator.check_schema(loaded)
    assert list(loaded["properties"]) == list(FIELD_ORDER)
    assert loaded["x-schema-version"] == SCHEMA_VERSION == 2


@pytest.mark.parametrize("version", [1, 2])
def test_records_of_both_versions_validate(version: int) -> None:
    record = AuditRecord(kind="ticket", id="evt-00000001", at=1_764_000_000_000, surface="call", agent="a@acme.cn",
                         payload='{"type":"createOrder","params":{}}', sysnum="acme", request_id="r1")  # fmt: skip
    fields = record.fields()
    if version == 1:
        fields = {name: value for name, value in fields.items() if name not in ("v", "sysnum", "request_id")}
        assert AuditRecord.from_fields(fields).v == 1
    jsonschema.validate(fields, schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**fields, "kind": "fax"}, schema())


def test_the_schema_says_what_sobot_does_not_sign() -> None:
    """ARCHITECTURE.md's trust table: the agent's email, uid and cid are never signed, partnerId only on
    workbench and wecom."""
    props = schema()["properties"]
    assert set(props["agent"]["x-trust"]["unsigned_on"]) == ALL - {"wecom"}
    assert set(props["uid"]["x-trust"]["unsigned_on"]) == ALL
    assert set(props["cid"]["x-trust"]["unsigned_on"]) == ALL
    assert set(props["partner_id"]["x-trust"]["unsigned_on"]) == SIX
    assert set(props["partner_id"]["x-trust"]["signed_on"]) == {"workbench", "wecom"}
    for name in ("agent", "uid", "cid", "partner_id"):
        assert "unsigned" in props[name]["description"]
        trust = props[name]["x-trust"]
        assert set(trust["signed_on"]) | set(trust["unsigned_on"]) == ALL, name
    for name in ("kind", "at", "payload", "v", "sysnum"):
        assert props[name]["x-trust"]["source"] == "server"


def test_the_cli_prints_the_shipped_schema() -> None:
    done = subprocess.run([sys.executable, "-m", "sobot_panel", "audit", "schema"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == schema()
