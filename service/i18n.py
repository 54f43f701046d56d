"""The message catalog: Simplified Chinese by default, English available.

Every string an agent reads comes from `web/i18n/*.json`, each file a map
`{"code": {"zh": "…{placeholder}…", "en": "…"}}`. Files are merged; a code defined twice is a bug.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from .assets import AssetError, catalog_dir
from .errors import PanelError

Lang = Literal["zh", "en"]
LANGS: tuple[Lang, ...] = ("zh", "en")
DEFAULT_LANG: Lang = "zh"


class _Defaulting(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class Catalog:
    def __init__(self, messages: Mapping[str, Mapping[str, str]]) -> None:
        self._messages = messages

    @classmethod
    def load(cls, directory: Path | None = None) -> Catalog:
        """Every catalog file of `directory` (the shipped `web/i18n` by default); none at all is an AssetError."""
        directory = directory or catalog_dir()
        paths = sorted(directory.glob("*.json"))
        if not paths:
            raise AssetError(f"no message catalog (*.json) in {directory}: the package is incomplete")
        merged: dict[str, dict[str, str]] = {}
        for path in paths:
            for code, texts in json.loads(path.read_text(encoding="utf-8")).items():
                if code in merged:
                    raise ValueError(f"message {code!r} defined twice (again in {path.name})")
                missing = [lang for lang in LANGS if lang not in texts]
                if missing:
                    raise ValueError(f"message {code!r} in {path.name} lacks {missing}")
                merged[code] = texts
        return cls(merged)

    def __contains__(self, code: str) -> bool:
        return code in self._messages

    def text(self, code: str, lang: Lang, /, **params: object) -> str:
        texts = self._messages.get(code)
        if texts is None:
            return code
        return texts[lang].format_map(_Defaulting(params))

    def error_text(self, error: PanelError, lang: Lang) -> str:
        return self.text(error.code, lang, **error.params)

    def table(self, lang: Lang, prefix: str = "") -> dict[str, str]:
        """All messages of one language whose code starts with `prefix` (for the panel script)."""
        return {code: texts[lang] for code, texts in self._messages.items() if code.startswith(prefix)}


def pick_lang(query_lang: str | None, accept_language: str | None, *, default: Lang = DEFAULT_LANG) -> Lang:
    """`?lang=` wins; else the first of zh/en named in Accept-Language by quality; else Chinese."""
    if query_lang:
        short = query_lang.strip().lower()[:2]
        if short in LANGS:
            return short
    if accept_language:
        ranked: list[tuple[float, int, str]] = []
        for index, part in enumerate(accept_language.split(",")):
            tag, _, quality = part.strip().partition(";q=")
            try:
                weight = float(quality) if quality else 1.0
            except ValueError:
                weight = 0.0
            ranked.append((-weight, index, tag.strip().lower()[:2]))
        for _, _, short in sorted(ranked):
            if short in LANGS:
                return short
    return default
