"""PMG's prompts as data: ``pmg/prompts.yaml`` loaded and rendered in its Vicuna-like frame, per scenario.

Used by the keyword extractors (:mod:`pmg.keywords`), the behaviour texts (:mod:`pmg.behaviour`, the summary
prompt) and the emoticon scenario.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

PROMPTS_PATH = Path(__file__).with_name("prompts.yaml")


@functools.lru_cache(maxsize=8)
def _load_yaml(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_prompts(path: str | Path | None = None) -> dict:
    """The prompt file as a dict (``frame``, ``summarise``, ``scenarios``); the packaged one by default."""
    return _load_yaml(str(path or PROMPTS_PATH))


def scenario_names(path: str | Path | None = None) -> list[str]:
    return list(load_prompts(path)["scenarios"])


_FIELD = re.compile(r"\{(\w+)\}")


def render_template(template: str, **fields: Any) -> str:
    """Fill ``{name}`` placeholders (only those; other braces stay). A missing field raises KeyError."""

    def sub(m: re.Match) -> str:
        if m.group(1) not in fields:
            raise KeyError(f"template field {{{m.group(1)}}} not given (have: {sorted(fields)})")
        return str(fields[m.group(1)])

    return _FIELD.sub(sub, template)


def render_history(texts: Sequence[str], start: int = 1) -> str:
    """``"1. text 2. text ..."`` (1-based by default; the MindSpore demo counted from 0)."""
    return " ".join(f"{i}. {t}" for i, t in enumerate(texts, start))


class ScenarioPrompts:
    """The prompts of one scenario (``costume``, ``movie``, ``emoticon``) rendered in the Vicuna-like frame.

    Args:
        scenario: a key of ``scenarios`` in the prompt file.
        path: prompt file; the packaged ``pmg/prompts.yaml`` by default.
    """

    KINDS = ("preference", "attribute", "integrate", "soft", "target")

    def __init__(self, scenario: str, path: str | Path | None = None) -> None:
        data = load_prompts(path)
        if scenario not in data["scenarios"]:
            raise KeyError(f"unknown scenario {scenario!r}; valid: {sorted(data['scenarios'])}")
        self.name = scenario
        self.frame: str = data["frame"]
        self.summary: dict = data.get("summarise", {})
        spec = data["scenarios"][scenario]
        self.system: str = spec["system"]
        self.attributes: list[str] = list(spec.get("attributes", []))
        self.negative: str = " ".join(str(spec.get("negative", "")).split())
        self.item_text: str = spec.get("item_text", "{title}")
        self.turns: dict[str, dict] = {k: spec[k] for k in self.KINDS if k in spec}

    def template(self, kind: str) -> str:
        """The unfilled prompt of ``kind`` (used in prompt hashes)."""
        if kind not in self.turns:
            raise KeyError(f"scenario {self.name!r} has no {kind!r} prompt; has: {sorted(self.turns)}")
        turn = self.turns[kind]
        return render_template(self.frame, system=self.system, human=turn["human"], prefill=turn.get("prefill", ""))

    def render(self, kind: str, **fields: Any) -> str:
        """The full prompt text of ``kind`` with ``fields`` filled in."""
        turn = self.turns.get(kind)
        if turn is None:
            raise KeyError(f"scenario {self.name!r} has no {kind!r} prompt; has: {sorted(self.turns)}")
        human = " ".join(render_template(turn["human"], **fields).split())
        return render_template(self.frame, system=self.system, human=human, prefill=turn.get("prefill", "")).rstrip()

    def render_summary(self, text: str, n: int) -> str:
        s = self.summary
        human = " ".join(render_template(s["human"], text=text, n=n).split())
        return render_template(self.frame, system=s["system"], human=human, prefill=s.get("prefill", "")).rstrip()
