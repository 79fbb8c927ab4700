"""Thought schemas: how an assistant turn's structured reasoning is written into text and read back.

A schema (pipelines/thought_schemas/*.yaml, shipped with the package; or any YAML path) names the sections and their tags. `render` and `parse` are exact
inverses for section texts that are stripped and free of the schema's own tags (validated on render), which is
what lets SFT data, RL reward parsing and eval all agree on one format.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator

from pipelines.config import StrictModel, load_model_file
from pipelines.errors import BadInput
from pipelines.schema import ThinkingSection

# Package data, not repo files: a wheel install must find the built-in schemas.
SCHEMA_DIR = Path(__file__).resolve().parent / "thought_schemas"


class Tags(StrictModel):
    open: str = ""
    close: str = ""


class ThoughtSchema(StrictModel):
    name: str
    description: str = ""
    wrapper: Tags = Field(description="Around all reasoning sections, e.g. <think>…</think>.")
    sections: dict[str, Tags] = Field(description="Section name → tags; at most one may have empty tags.")
    # Traces name sections semantically (plan/observe/reflect/verify); a schema with fewer sections maps the
    # rest onto its own, e.g. Reflection-70B writes observations as plain thinking and checks as reflections.
    aliases: dict[str, str] = Field(default_factory=dict, description="Trace section → schema section.")
    separator: str = "\n"
    after_reasoning: str = Field("\n", description="Between the reasoning block and the visible content.")
    content: Tags = Field(
        default_factory=Tags, description="Around the visible answer, e.g. <output>…</output>."
    )
    # Where reasoning goes: `content` prepends it to the message content; `reasoning_field` passes it as
    # `reasoning_content` for chat templates that render that field themselves (Qwen3, DeepSeek-R1).
    placement: str = Field("content", pattern="^(content|reasoning_field)$")

    @model_validator(mode="after")
    def _one_plain_section(self) -> ThoughtSchema:
        plain = [name for name, tags in self.sections.items() if not tags.open]
        if len(plain) > 1:
            raise ValueError(f"at most one section may have empty tags (ambiguous to parse): {plain}")
        if not self.wrapper.open or not self.wrapper.close:
            raise ValueError("wrapper needs both open and close tags")
        bad = {k: v for k, v in self.aliases.items() if v not in self.sections}
        if bad:
            raise ValueError(f"aliases point at unknown sections: {bad} (sections: {list(self.sections)})")
        return self

    def all_tags(self) -> list[str]:
        tags = [self.wrapper.open, self.wrapper.close, self.content.open, self.content.close]
        tags += [t for s in self.sections.values() for t in (s.open, s.close)]
        return [t for t in tags if t]

    def render_reasoning(self, thinking: list[ThinkingSection]) -> str:
        """Reasoning block alone (no content), in the schema's wrapper: what goes before the content."""
        if not thinking:
            return ""
        return self.wrapper.open + self.render_sections(thinking) + self.wrapper.close

    def render_sections(self, thinking: list[ThinkingSection]) -> str:
        """The sections without the wrapper: `reasoning_content` for a template that frames reasoning itself
        (Qwen3's `<think>`), which `parse_sections` reads back."""
        parts = []
        for item in thinking:
            tags = self.sections.get(self.aliases.get(item.section, item.section))
            if tags is None:
                raise BadInput(
                    f"thought schema {self.name!r} has no section {item.section!r} "
                    f"(known: {', '.join(self.sections)})"
                )
            self._check_text(item.text, item.section)
            parts.append(f"{tags.open}{item.text}{tags.close}")
        return self.separator.join(parts)

    def render(self, thinking: list[ThinkingSection], content: str) -> str:
        """Full assistant text: reasoning block, then the visible content in its tags."""
        self._check_text(content, "content")
        reasoning = self.render_reasoning(thinking)
        visible = f"{self.content.open}{content}{self.content.close}" if content else ""
        if reasoning and visible:
            return reasoning + self.after_reasoning + visible
        return reasoning or visible

    def parse(self, text: str) -> tuple[list[ThinkingSection], str]:
        """Inverse of `render`: (sections, content). Text without a reasoning block is all content."""
        thinking: list[ThinkingSection] = []
        rest = text
        if text.startswith(self.wrapper.open):
            end = text.find(self.wrapper.close)
            if end != -1:
                inner = text[len(self.wrapper.open) : end]
                thinking = self.parse_sections(inner)
                rest = text[end + len(self.wrapper.close) :]
                rest = rest.removeprefix(self.after_reasoning) if rest.strip() else ""
        if self.content.open and rest.startswith(self.content.open) and rest.endswith(self.content.close):
            rest = rest[len(self.content.open) : len(rest) - len(self.content.close)]
        return thinking, rest

    def parse_sections(self, inner: str) -> list[ThinkingSection]:
        tagged = {tags.open: (name, tags.close) for name, tags in self.sections.items() if tags.open}
        plain = next((name for name, tags in self.sections.items() if not tags.open), None)
        out: list[ThinkingSection] = []
        pos = 0
        while pos < len(inner):
            opener = next((o for o in tagged if inner.startswith(o, pos)), None)
            if opener is not None:
                name, closer = tagged[opener]
                end = inner.find(closer, pos + len(opener))
                end = len(inner) if end == -1 else end
                out.append(ThinkingSection(section=name, text=inner[pos + len(opener) : end]))
                pos = end + len(closer)
            else:
                nxt = min((i for o in tagged if (i := inner.find(o, pos)) != -1), default=len(inner))
                chunk = inner[pos:nxt]
                if chunk.strip(self.separator) and plain is not None:
                    out.append(ThinkingSection(section=plain, text=chunk.removesuffix(self.separator)))
                pos = nxt
            if inner.startswith(self.separator, pos):
                pos += len(self.separator)
        return out

    def reserved_tag_in(self, text: str) -> str | None:
        """The first of the schema's own tags that `text` holds: reasoning markup where none belongs."""
        return next((tag for tag in self.all_tags() if tag in text), None)

    def _check_text(self, text: str, where: str) -> None:
        if tag := self.reserved_tag_in(text):
            raise BadInput(f"thought schema {self.name!r}: {where} text contains the reserved tag {tag!r}")


@lru_cache(maxsize=32)
def load_thought_schema(name_or_path: str) -> ThoughtSchema:
    """A shipped schema by name (`think-plan-reflect`) or a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCHEMA_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCHEMA_DIR.glob("*.yaml")))
        raise BadInput(f"thought schema {name_or_path!r} not found (shipped: {known})")
    return load_model_file(ThoughtSchema, path)
