"""VIP5 prompt templates (A-1..A-9, B-1..B-8, C-1..C-12) loaded from ``templates.yaml`` and rendered to text.

The template strings are the paper's (jeykigung/VIP5 ``src/all_templates.py``); the rendering reproduces its
``data.py``:

* user ids are written ``user_<uid>``; single items ``item_<iid>`` (where the template says so); history and
  candidate lists hold bare ids;
* every item of a list is followed by its ``n`` image placeholders, the last one included:
  ``12 <ph> <ph> , 34 <ph> <ph>``; a single item's photo slot is the ``n`` placeholders joined by spaces;
* the history separator is ``", "`` or ``" -> "``. The original flips a fair coin per sample even at test time,
  so test prompts change between runs; here the caller picks a fixed separator, ``"coin"`` with a seeded
  ``random.Random`` (use :func:`sample_rng` for a per-sample deterministic coin at test time), which is the
  faithful option in training.
  Candidate lists always use ``", "``.

Item id strings come from an item index elsewhere; here they are plain strings.
"""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FAMILIES = ("sequential", "direct", "explanation")
ROLES = ("train", "seen_test", "unseen")
TARGET_KINDS = ("item", "yes_no", "text", "rating_text")
#: Names a template may list under ``requires``; ``drop_unavailable`` takes a subset of these.
REQUIREMENTS = frozenset({"titles", "user_names", "reviews", "candidates", "features", "ratings"})
SOURCE_SLOTS = frozenset(
    {
        "user_id",
        "user_desc",
        "history",
        "candidates",
        "item_id",
        "item_photo",
        "item_title",
        "review_headline",
        "star_rating",
        "feature",
    }
)
TARGET_SLOTS = {
    "item": {"target"},
    "yes_no": {"answer"},
    "text": {"explanation"},
    "rating_text": {"rating_text", "explanation"},
}
#: Alternative field names accepted by ``render`` (slot -> alias): the Amazon review/meta key names.
FIELD_ALIASES = {"item_title": "title", "review_headline": "summary"}
HISTORY_SEPARATORS = (", ", " -> ")
COIN = "coin"
DEFAULT_TEMPLATES = Path(__file__).with_name("templates.yaml")
_ROLE_GROUPS = {
    "train": ("train", "seen_test"),  # seen test prompts are training templates too
    "seen_test": ("seen_test",),
    "unseen": ("unseen",),
    "test": ("seen_test", "unseen"),
}


def _slots(fmt: str) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None)


@dataclass(frozen=True)
class Template:
    """One prompt template. ``source``/``target`` are ``str.format`` strings with named slots."""

    id: str
    family: str
    role: str
    source: str
    target: str
    target_kind: str
    requires: frozenset[str]

    @property
    def source_slots(self) -> tuple[str, ...]:
        """Slot names of the source, in text order (the order image placeholders appear)."""
        return _slots(self.source)

    @property
    def target_slots(self) -> tuple[str, ...]:
        return _slots(self.target)

    @property
    def for_training(self) -> bool:
        return self.role in _ROLE_GROUPS["train"]


class Templates(dict):
    """``dict[str, Template]`` whose missing-key error lists the valid ids."""

    def __missing__(self, key: str) -> Template:
        raise KeyError(f"unknown template id {key!r}; valid ids: {', '.join(self)}")


def _check(tid: str, raw: Mapping[str, Any]) -> Template:
    keys = {"family", "role", "requires", "source", "target", "target_kind"}
    if set(raw) != keys:
        raise ValueError(f"template {tid}: keys must be {sorted(keys)}, got {sorted(raw)}")
    for key, valid in (("family", FAMILIES), ("role", ROLES), ("target_kind", TARGET_KINDS)):
        if raw[key] not in valid:
            raise ValueError(f"template {tid}: {key} {raw[key]!r} is not one of {valid}")
    requires = frozenset(raw["requires"] or ())
    if not requires <= REQUIREMENTS:
        raise ValueError(f"template {tid}: unknown requirement(s) {sorted(requires - REQUIREMENTS)}")
    t = Template(tid, raw["family"], raw["role"], raw["source"], raw["target"], raw["target_kind"], requires)
    bad = set(t.source_slots) - SOURCE_SLOTS
    if bad:
        raise ValueError(f"template {tid}: unknown source slot(s) {sorted(bad)}; valid: {sorted(SOURCE_SLOTS)}")
    if set(t.target_slots) != TARGET_SLOTS[t.target_kind]:
        raise ValueError(f"template {tid}: a {t.target_kind} target uses slots {sorted(TARGET_SLOTS[t.target_kind])}")
    if "history" in t.source_slots and "candidates" in t.source_slots:
        raise ValueError(f"template {tid}: a prompt holds a history or a candidate list, not both")
    return t


def load_templates(path: str | Path | None = None) -> Templates:
    """Read and validate a templates YAML (default: the packaged ``vip5/templates.yaml``), in file order."""
    path = Path(path) if path is not None else DEFAULT_TEMPLATES
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a mapping of template id -> template")
    return Templates((str(tid), _check(str(tid), spec)) for tid, spec in raw.items())


def templates_for(
    family: str | None = None, role: str | None = None, templates: Mapping[str, Template] | None = None
) -> Templates:
    """Templates of one family (None: all) and role group (None: all).

    Role groups: ``train`` (train + seen_test: the seen test prompts are also drawn in training), ``seen_test``,
    ``unseen`` (held-out zero-shot prompts) and ``test`` (seen_test + unseen).
    """
    templates = load_templates() if templates is None else templates
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {FAMILIES}")
    if role is not None and role not in _ROLE_GROUPS:
        raise ValueError(f"unknown role {role!r}; valid: {tuple(_ROLE_GROUPS)}")
    return Templates(
        (tid, t)
        for tid, t in templates.items()
        if (family is None or t.family == family) and (role is None or t.role in _ROLE_GROUPS[role])
    )


def drop_unavailable(
    templates: Mapping[str, Template] | Iterable[Template], available: Iterable[str]
) -> tuple[Templates, list[str]]:
    """Split templates into those whose ``requires`` are all in ``available`` and the ids of the others."""
    available = set(available)
    if not available <= REQUIREMENTS:
        raise ValueError(f"unknown data name(s) {sorted(available - REQUIREMENTS)}; valid: {sorted(REQUIREMENTS)}")
    items = templates.values() if isinstance(templates, Mapping) else templates
    kept, dropped = Templates(), []
    for t in items:
        if t.requires <= available:
            kept[t.id] = t
        else:
            dropped.append(t.id)
    return kept, dropped


# ------------------------------------------------------------------------------------------------ rendering
def sample_rng(seed: int, *key: Any) -> random.Random:
    """A ``random.Random`` fixed by ``seed`` and a sample key (e.g. split, template id, user id).

    Stable across processes and Python runs (crc32, not ``hash``), so test prompts are reproducible.
    """
    digest = zlib.crc32(repr((seed, *key)).encode("utf-8"))
    return random.Random(digest)


def coin_separator(rng: random.Random) -> str:
    """The original's fair coin between the two history separators (``random() > 0.5`` -> ``", "``)."""
    return ", " if rng.random() > 0.5 else " -> "


def image_placeholders(n_image_tokens: int, image_token: str = "<extra_id_0>") -> str:
    """The photo slot of one item: ``n`` placeholders joined by spaces (empty for n = 0)."""
    return " ".join([image_token] * n_image_tokens)


def render_item_list(
    item_ids: Iterable[str], n_image_tokens: int, image_token: str = "<extra_id_0>", separator: str = ", "
) -> str:
    """Bare ids, each followed by its ``n`` placeholders, joined by the separator.

    Reproduces the original join ``' {ph}, '.join(ids) + ' ph'*n``: the separator gets a space on its left
    (``12 <ph> <ph> , 34 <ph> <ph>`` and ``12 <ph> -> 34 <ph>``).
    """
    photo = image_placeholders(n_image_tokens, image_token)
    parts = [f"{iid} {photo}" if photo else str(iid) for iid in item_ids]
    return f" {separator.strip()} ".join(parts)


def _rating(value: Any) -> str:
    """Source star rating as the original writes it: ``int(overall)``."""
    try:
        return str(int(float(value)))
    except (TypeError, ValueError):
        return str(value)


def jitter_rating(rating: float, rng: random.Random) -> str:
    """Training-time rating text of C-7/C-8 (original ``gaussian_sampling``; val/test use ``int(rating)``).

    Star s is drawn from N(centre, width/4) of its bucket (1: [1.0, 1.4], 2: [1.5, 2.4], ..., 5: [4.5, 5.0]),
    rounded to 0.1 and clipped to [1, 5].
    """
    lo, hi = {1: (1.0, 1.4), 2: (1.5, 2.4), 3: (2.5, 3.4), 4: (3.5, 4.4)}.get(int(rating), (4.5, 5.0))
    value = round(rng.gauss((lo + hi) / 2, (hi - lo) / 4), 1)
    return str(min(5.0, max(1.0, value)))


def _with_aliases(fields: Mapping[str, Any]) -> Mapping[str, Any]:
    extra = {slot: fields[alias] for slot, alias in FIELD_ALIASES.items() if slot not in fields and alias in fields}
    return {**fields, **extra} if extra else fields


def _need(template: Template, fields: Mapping[str, Any], names: Iterable[str]) -> None:
    missing = [n for n in names if n not in fields]
    if missing:
        raise KeyError(f"template {template.id} needs field(s) {missing}; got {sorted(fields)}")


def image_items(template: Template, items: Mapping[str, Any]) -> list[str]:
    """Item ids whose image placeholders the source holds, in placeholder order (one feature row each).

    ``items`` maps ``history``/``candidates`` to id lists and ``item_id`` (or ``item``: a one-element list or an
    id) to the single item. Pass the render ``fields`` to get the prompt's id strings, or a mapping of corpus
    item ids to get the feature rows in prompt order when prompts show re-indexed id strings.
    """
    out: list[str] = []
    for slot in template.source_slots:
        if slot in ("history", "candidates"):
            out.extend(str(i) for i in items[slot])
        elif slot == "item_photo":
            item = items["item_id"] if "item_id" in items else items["item"]
            out.extend([str(item)] if isinstance(item, str) else [str(i) for i in item])
    return out


def render_source(
    template: Template,
    fields: Mapping[str, Any],
    n_image_tokens: int,
    image_token: str = "<extra_id_0>",
    separator: str = ", ",
    rng: random.Random | None = None,
) -> tuple[str, int]:
    """The prompt text and the number of images (feature rows) it consumes (0 when ``n_image_tokens`` is 0).

    ``fields`` holds the slot values (``history``/``candidates`` are lists of id strings; ``item_photo`` needs
    ``item_id``, the item the photo shows, even when the text names it by title; ``title``/``summary`` are
    accepted for ``item_title``/``review_headline``). Feature rows in prompt order: :func:`image_items`.
    ``separator`` is ``", "``, ``" -> "`` or ``"coin"`` (draws from ``rng``; see :func:`sample_rng`).
    """
    if n_image_tokens < 0:
        raise ValueError(f"n_image_tokens must be >= 0, got {n_image_tokens}")
    fields = _with_aliases(fields)
    slots = template.source_slots
    _need(template, fields, [s for s in slots if s != "item_photo"] + (["item_id"] if "item_photo" in slots else []))
    if separator == COIN:
        if rng is None:
            raise ValueError('separator="coin" needs an rng (random.Random; see prompts.sample_rng)')
        separator = coin_separator(rng)
    values: dict[str, str] = {}
    for slot in slots:
        if slot == "history":
            values[slot] = render_item_list(fields[slot], n_image_tokens, image_token, separator)
        elif slot == "candidates":
            values[slot] = render_item_list(fields[slot], n_image_tokens, image_token, ", ")
        elif slot == "item_photo":
            values[slot] = image_placeholders(n_image_tokens, image_token)
        elif slot == "star_rating":
            values[slot] = _rating(fields[slot])
        else:
            values[slot] = str(fields[slot])
    n_images = len(image_items(template, fields)) if n_image_tokens > 0 else 0
    return template.source.format(**values), n_images


def render_target(template: Template, fields: Mapping[str, Any]) -> str:
    """Target text: the bare item id (``target``), yes/no (``label`` bool, or ``answer``/``target`` "yes"/"no"),
    or the explanation.

    ``rating_text`` targets take ``rating_text`` (e.g. :func:`jitter_rating` in training) or fall back to
    ``int(star_rating)`` as the original does at val/test time.
    """
    kind = template.target_kind
    if kind == "item":
        _need(template, fields, ["target"])
        return template.target.format(target=fields["target"])
    if kind == "yes_no":
        given = fields.get("answer", fields.get("target"))
        if given is not None:
            answer = str(given)
            if answer not in ("yes", "no"):
                raise ValueError(f"template {template.id}: answer must be 'yes' or 'no', got {answer!r}")
        else:
            _need(template, fields, ["label"])
            answer = "yes" if fields["label"] else "no"
        return template.target.format(answer=answer)
    _need(template, fields, ["explanation"])
    if kind == "text":
        return template.target.format(explanation=fields["explanation"])
    if "rating_text" in fields:
        rating_text = str(fields["rating_text"])
    else:
        _need(template, fields, ["star_rating"])
        rating_text = _rating(fields["star_rating"])
    return template.target.format(rating_text=rating_text, explanation=fields["explanation"])


def render(
    template: Template,
    fields: Mapping[str, Any],
    n_image_tokens: int,
    image_token: str = "<extra_id_0>",
    separator: str = ", ",
    rng: random.Random | None = None,
) -> tuple[str, str, int]:
    """Render one sample: ``(source, target, n_images)``. See :func:`render_source` and :func:`render_target`."""
    source, n_images = render_source(template, fields, n_image_tokens, image_token, separator, rng)
    return source, render_target(template, fields), n_images
