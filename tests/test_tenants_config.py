"""The tenants file (CONTRACT, "Several Sobot companies from one deployment"): one line per problem, naming
the tenant and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from sobot_panel.tenants.config import TenantsError, load_tenants

GOOD = """
[tenants.acme]
sysnum = "1001"
secret_file = "acme.secret"
directory_url = "https://crm.acme.example"
card_format = "v6"

[tenants.globex-2]
sysnum = "2002"
secret = "globex-key"
host_origins = "https://*.sobot.com"
lang = "en"
"""


def write(tmp_path: Path, text: str, **files: str) -> Path:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(TenantsError) as caught:
        load_tenants(path)
    return caught.value.problems


def test_a_good_file(tmp_path: Path) -> None:
    tenants = load_tenants(write(tmp_path, GOOD, **{"acme.secret": "acme-key\n"}))
    assert list(tenants) == ["acme", "globex-2"]
    acme, globex = tenants["acme"], tenants["globex-2"]
    assert acme.secret is not None and acme.secret.get_secret_value() == "acme-key"  # relative to the file
    assert acme.card_format == "v6" and acme.lang == "zh" and acme.card_surfaces == "workbench"
    assert globex.lang == "en" and globex.directory_url is None


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('[tenants.acme]\nsecret = "k"', "tenant acme: sysnum: Field required"),
        ('[tenants.acme]\nsysnum = "1"\nsecret = ""', "tenant acme: secret: set but empty"),
        ('[tenants.acme]\nsysnum = "1"\ncolour = "red"', "tenant acme: colour: not a setting a tenant takes"),
        ('[tenants.Acme]\nsysnum = "1"', "tenant 'Acme': a name is lower-case letters"),
        ('[tenants.acme]\nsysnum = "1"\ncard_format = "v7"', "tenant acme: card_format:"),
        ('[tenants.acme]\nsysnum = "1"\nsecret = "a"\nsecret_file = "x"', "secret and secret_file are both set"),
        ('[tenants.acme]\nsysnum = "1"\nsecret_file = "missing"', "tenant acme: secret_file: cannot read"),
        ('[tenants.acme]\nsysnum = "1"\ndirectory_url = "ftp://x"', "tenant acme: directory_url: must start"),
        ('[tenants.acme]\nsysnum = "1"\ntrust_unsigned = "uphone"', "tenant acme: trust_unsigned: uphone"),
        ('[tenants.a]\nsysnum = "1"\n[tenants.b]\nsysnum = "1"', "tenant b: sysnum: 1 is also tenant a's"),
        ('sysnum = "1"', "no [tenants.NAME] table"),
        ("[tenants.acme", "not TOML"),
    ],
    ids=["no-sysnum", "empty", "unknown-key", "bad-name", "card-format", "both", "missing-file", "url",
         "trust", "same-sysnum", "no-table", "not-toml"],
)  # fmt: skip
def test_each_problem_names_the_tenant_and_the_key(tmp_path: Path, table: str, expected: str) -> None:
    found = problems(write(tmp_path, table))
    assert any(expected in line for line in found), found
    assert all(line.startswith(str(tmp_path / "tenants.toml")) for line in found)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(write(tmp_path, '[tenants.a]\nsecret = ""\n[tenants.b]\nsysnum = "2"\ncard_format = "x"'))
    assert len(found) == 3 and sum("tenant a" in line for line in found) == 2


def test_no_secret_shows_in_a_problem(tmp_path: Path) -> None:
    found = problems(write(tmp_path, '[tenants.a]\nsysnum = "1"\nsecret = "top-secret-value"\nlang = "fr"'))
    assert found and not any("top-secret-value" in line for line in found)
