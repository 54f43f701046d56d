"""Error codes and the message catalog: every code an agent may meet reads well in both languages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sobot_panel.assets import AssetError
from sobot_panel.errors import Code, PanelError, SignError
from sobot_panel.i18n import LANGS, Catalog

ROOT = Path(__file__).resolve().parent.parent
CATALOG = Catalog.load()


@pytest.mark.parametrize("code", list(Code), ids=[code.value for code in Code])
def test_every_code_has_a_message_in_both_languages(code: Code) -> None:
    assert code in CATALOG
    for lang in LANGS:
        text = CATALOG.text(code, lang)
        assert text and text != code.value
        words = re.sub(r"\{\w+\}", "", text)  # placeholders are filled in; what is left is what an agent reads
        assert not re.search(r"[A-Za-z]+_[a-z_]+", words), f"an internal word shows through: {text!r}"


def test_the_chinese_messages_are_chinese() -> None:
    for code in Code:
        assert re.search(r"[\u4e00-\u9fff]", CATALOG.text(code, "zh")), code


def test_codes_travel_as_plain_strings() -> None:
    error = SignError(Code.SIGN_MISMATCH, field="sign")
    assert json.dumps({"code": error.code}) == '{"code": "sign_mismatch"}'
    assert CATALOG.error_text(error, "en") == CATALOG.text("sign_mismatch", "en")


def test_no_code_is_raised_that_the_enum_does_not_name() -> None:
    """A code written as a bare string at a raise site would escape the catalog check above."""
    families = "PanelError|QueryError|SignError|NotFound|Unavailable|TokenError|PayloadError|WecomSecretError"
    raised = re.compile(rf"(?:{families})\(\s*\"([a-z_]+)\"")
    for path in (ROOT / "service").rglob("*.py"):
        assert not raised.findall(path.read_text(encoding="utf-8")), path


def test_a_panel_error_carries_its_parameters() -> None:
    error = PanelError(Code.VALUE_TOO_LONG, field="params", limit=4096)
    assert error.params == {"field": "params", "limit": 4096}
    assert "4096" in CATALOG.error_text(error, "zh")


def test_a_missing_catalog_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="no message catalog"):
        Catalog.load(tmp_path)
