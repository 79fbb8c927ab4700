"""Thought schemas: render and parse are exact inverses for every shipped schema."""

from __future__ import annotations

import random

import pytest

from pipelines.errors import BadInput
from pipelines.schema import ThinkingSection
from pipelines.thought import ThoughtSchema, load_thought_schema

WORDS = [
    "plan",
    "the",
    "call",
    "check",
    "the",
    "result",
    "then",
    "answer",
    "because",
    "the",
    "tool",
    "said",
    "so",
    "ok",
]


def _text(rng: random.Random) -> str:
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(1, 8))) for _ in range(rng.randint(1, 3))]
    return "\n".join(lines)


def _random_thinking(schema: ThoughtSchema, rng: random.Random) -> list[ThinkingSection]:
    names = list(schema.sections)
    out: list[ThinkingSection] = []
    for _ in range(rng.randint(0, 4)):
        name = rng.choice(names)
        # Two adjacent untagged sections are indistinguishable in text, so the generator never emits them.
        if out and not schema.sections[name].open and not schema.sections[out[-1].section].open:
            continue
        out.append(ThinkingSection(section=name, text=_text(rng)))
    return out


def test_round_trip_for_every_schema(thought_schemas: list[ThoughtSchema]) -> None:
    rng = random.Random(0)
    for schema in thought_schemas:
        for _ in range(300):
            thinking = _random_thinking(schema, rng)
            content = _text(rng) if rng.random() < 0.7 else ""
            rendered = schema.render(thinking, content)
            assert schema.parse(rendered) == (thinking, content), (schema.name, rendered)


def test_reserved_tags_in_text_are_rejected() -> None:
    schema = load_thought_schema("think-plan-reflect")
    with pytest.raises(BadInput, match="reserved tag '</think>'"):
        schema.render([ThinkingSection(section="plan", text="x </think> y")], "")


def test_unknown_section_names_the_known_ones() -> None:
    schema = load_thought_schema("think-plan-reflect")
    with pytest.raises(BadInput, match="no section 'dream'.*known: plan, observe, reflect, verify"):
        schema.render([ThinkingSection(section="dream", text="x")], "")


def test_aliases_map_semantic_sections() -> None:
    schema = load_thought_schema("reflection70b")
    text = schema.render([ThinkingSection(section="verify", text="checked")], "done")
    assert text == "<thinking><reflection>checked</reflection></thinking>\n<output>done</output>"


def test_two_untagged_sections_are_refused() -> None:
    with pytest.raises(ValueError, match="at most one section may have empty tags"):
        ThoughtSchema(name="x", wrapper={"open": "<t>", "close": "</t>"}, sections={"a": {}, "b": {}})


def test_unknown_schema_lists_shipped_ones() -> None:
    with pytest.raises(BadInput, match="shipped: reflection70b, think-plan-reflect"):
        load_thought_schema("nope")
