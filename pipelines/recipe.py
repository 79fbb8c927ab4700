"""Data recipe: what goes into the mid-training mix, by token share (data_recipes/*.yaml or inline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config import StrictModel
from pipelines.envs.spec import EnvRef
from pipelines.tasks.teacher_settings import TeacherSettings

if TYPE_CHECKING:  # generate imports the environments; a recipe loads without them
    from pipelines.tasks.generate import ToolOffer

CATEGORIES = ("tool", "code", "text")
CONVERTER_FORMATS = ("trace", "openai", "sharegpt", "xlam", "glaive", "hermes", "toolace", "text")


def checked_thought_schema(name_or_path: str) -> str:
    """A thought schema that loads (a shipped name or a YAML path); its problem as a ValueError otherwise."""
    from pipelines.errors import BadInput
    from pipelines.thought import load_thought_schema

    try:
        load_thought_schema(name_or_path)
    except BadInput as exc:
        raise ValueError(str(exc)) from None
    return name_or_path


class SourceBase(StrictModel):
    name: str = Field(description="Unique within the recipe; names rows in rejects.jsonl and the manifest.")
    weight: float = Field(1.0, gt=0, description="Relative token weight within its category.")
    cluster: str | None = Field(None, description="Cluster label for every row; None keeps the row's own.")
    cluster_by_pattern: dict[str, str] = Field(
        default_factory=dict, description="meta.pattern → cluster, for sources that mix thinking modes."
    )
    max_rows: int | None = Field(None, gt=0, description="Read at most this many rows (after skipping none).")
    max_epochs: float | None = Field(None, gt=0, description="Upsampling cap; None uses the recipe's.")

    def cluster_of(self, pattern: str) -> str | None:
        """The recipe's label for a row of this source: a fixed `cluster` wins, then `cluster_by_pattern`;
        None keeps the row's own."""
        return self.cluster or self.cluster_by_pattern.get(pattern)


class HFSource(SourceBase):
    type: Literal["hf"]
    dataset: str = Field(description="Hub dataset id, e.g. Salesforce/xlam-function-calling-60k.")
    config: str | None = None
    data_dir: str | None = Field(
        None, description="Sub-folder of the dataset repo, e.g. the-stack-smol's data/python."
    )
    split: str = "train"
    revision: str = Field(description="Pinned commit sha or tag: a moving branch breaks byte-exact rebuilds.")
    format: Literal[CONVERTER_FORMATS] = "trace"  # type: ignore[valid-type]
    streaming: bool = False
    text_field: str = "text"


class LocalSource(SourceBase):
    type: Literal["local"]
    path: str = Field(description="A .jsonl/.json/.parquet file, or a directory of text/code files.")
    format: Literal[CONVERTER_FORMATS] = "trace"  # type: ignore[valid-type]
    glob: str = "**/*"
    text_field: str = "text"
    on_truncated: Literal["error", "keep"] = Field(
        "error",
        description="A truncated .jsonl.gz or a parquet file with a corrupt row group: `error` stops the build "
        "(exit 2, naming the file and the row or row group), `keep` keeps the rows that could be read and "
        "records the loss in rejects.jsonl and in the manifest's source revision.",
    )


# Which tools a prompt offers, in the data (`generated` sources), RL and the held-out eval alike: `all` of its
# domain's, or `task`: the task's own plus a few distractors.
ToolOfferMode = Literal["all", "task"]


class GeneratedSource(SourceBase):
    type: Literal["generated"]
    domains: list[str] = Field(default_factory=lambda: ["all"])
    n: int = Field(1000, gt=0)
    seed: int = 0
    patterns: dict[str, float] | None = Field(None, description="Pattern → probability; None = defaults.")
    offered_tools: ToolOfferMode = Field(
        "all",
        description="Tools each trace's prompt declares: `all` of its domain, or `task`: the tools the trace calls "
        "plus `distractor_tools` others of its domain and `pool_distractors` API-pool signatures that cannot serve "
        "it (3-4x shorter traces: the schemas were most of each one). Irrelevance traces offer a sample of the "
        "wrong toolset.",
    )
    distractor_tools: int = Field(
        1, ge=0, description="With `offered_tools: task`: other tools of the domain."
    )
    pool_distractors: int = Field(
        1, ge=0, description="With `offered_tools: task`: API-pool signatures of unrelated areas."
    )
    request_variation: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of user requests re-worded (greeting, politeness, sign-off, case, final stop; values "
        "untouched), so the model does not learn only the generator's templates.",
    )

    one_tool_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="With `offered_tools: task`: share of single-call and irrelevance traces whose prompt declares "
        "one tool, as BFCL's simple and irrelevance categories do: the call's own tool, or for irrelevance a near "
        "miss (an API task's own business area about another noun; a calculator tool of another kind). Measured at "
        "0.5 on the embedded model: irrelevance fell, simple did not rise (configs/README.md).",
    )

    @model_validator(mode="after")
    def _one_tool_needs_task_offers(self) -> GeneratedSource:
        if self.one_tool_share and self.offered_tools != "task":
            raise ValueError(
                "one_tool_share needs offered_tools: task (with `all` every prompt declares its domain's whole "
                "toolset, so the share would change nothing)"
            )
        return self

    def tool_offer(self) -> ToolOffer:
        from pipelines.tasks.generate import ToolOffer

        return ToolOffer(
            self.offered_tools, self.distractor_tools, self.pool_distractors, self.request_variation,
            self.one_tool_share,
        )  # fmt: skip


class TeacherSource(SourceBase):
    """Traces an LLM teacher writes over an environment, on a task file's `train` rows (pipelines/tasks/llm_teacher.py)."""

    type: Literal["teacher"]
    tasks: str = Field(description="Task file (JSONL); only its `train` rows are used, held-out rows never.")
    env: EnvRef | None = Field(
        None, description="Environment of rows that name none (domain, env YAML, block)."
    )
    teacher: TeacherSettings
    samples_per_task: int = Field(1, ge=1, description="Episodes per task (distinct seeds).")
    propose: int = Field(
        0,
        ge=0,
        description="Tasks the teacher first proposes per environment from its tool schemas (APIGen-MT style); "
        "kept only if their reference calls run cleanly and their answer is in the results.",
    )
    seed: int = 0
    replay: Literal["exact", "executes"] = Field(
        "exact",
        description="Replay check: identical observations (deterministic servers), or only no new errors.",
    )
    cache: str | None = Field(
        None,
        description="Teacher response cache (JSONL); default `<data dir>/../teacher-cache/<source name>.jsonl`. "
        "`data verify` rebuilds from it offline.",
    )


class PythonCodeSource(SourceBase):
    type: Literal["python_code"]
    roots: list[str] = Field(
        default_factory=lambda: ["stdlib"], description="`stdlib` or package directories."
    )
    licenses: list[str] = Field(default_factory=lambda: ["PSF", "MIT", "BSD", "Apache"])
    min_bytes: int = 200
    max_bytes: int = 200_000
    exclude: list[str] = Field(default_factory=lambda: ["test", "tests", "idlelib", "turtledemo", "lib2to3"])


class PydocTextSource(SourceBase):
    type: Literal["pydoc_text"]
    min_chars: int = 200
    max_chunk_chars: int | None = Field(
        None,
        gt=0,
        description="Split long topics into paragraph-aligned parts of at most this many characters; "
        "None keeps one document per topic (long topics are then rejected by max_seq_len).",
    )


Source = Annotated[
    HFSource | LocalSource | GeneratedSource | TeacherSource | PythonCodeSource | PydocTextSource,
    Field(discriminator="type"),
]


class Category(StrictModel):
    share: float = Field(ge=0, le=1, description="Target share of the mix's tokens.")
    sources: list[Source] = Field(default_factory=list)


class QualityFilters(StrictModel):
    min_chars: int = 50
    max_chars: int = 200_000
    max_repeated_line_fraction: float = 0.3
    max_symbol_ratio: float = 0.35
    min_alpha_ratio: float = 0.25


class NearDedup(StrictModel):
    enabled: bool = True
    threshold: float = Field(0.85, gt=0, le=1)
    num_perm: int = 128
    shingle_words: int = 5


class Decontamination(StrictModel):
    ngram: int = Field(13, ge=4)
    min_overlap: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of an eval text's distinct n-grams a row must contain to count as contaminated. "
        "1e-9 = any shared n-gram (GPT-3 style); the default ignores rows that only share template phrases "
        "with templated eval requests.",
    )
    sets: list[str] = Field(
        default_factory=lambda: ["bfcl", "heldout"],
        description="`bfcl` (every file in bfcl-eval), `heldout` (the project's eval tasks), `tasks:PATH` (a task "
        "file's held-out rows: requests and ids), or jsonl paths (every string in them).",
    )
    heldout_seed: int = 1_000_003
    heldout_n: int = 300


class Recipe(StrictModel):
    name: str
    seed: int = 0
    total_tokens: int = Field(gt=0, description="Token budget of the whole mix (train + eval).")
    eval_fraction: float = Field(0.02, ge=0, lt=0.5)
    max_epochs: float = Field(4.0, gt=0, description="Default cap on how often a source's rows may repeat.")
    allow_shortfall: bool = False
    curriculum: Literal["none", "difficulty"] = "none"
    thought_schema: str = "think-plan-reflect"
    max_seq_len: int = Field(2048, gt=16, description="Longer rendered rows are rejected, never truncated.")
    shard_rows: int = Field(5000, gt=0)
    categories: dict[str, Category]
    filters: QualityFilters = Field(default_factory=QualityFilters)
    near_dedup: NearDedup = Field(default_factory=NearDedup)
    decontamination: Decontamination = Field(default_factory=Decontamination)

    @field_validator("thought_schema")
    @classmethod
    def _known_thought_schema(cls, value: str) -> str:
        return checked_thought_schema(value)

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, value: dict[str, Category]) -> dict[str, Category]:
        unknown = set(value) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; use {list(CATEGORIES)}")
        return value

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> Recipe:
        total = sum(c.share for c in self.categories.values())
        if abs(total - 1.0) > 1e-6:
            shares = ", ".join(f"{k}={c.share}" for k, c in self.categories.items())
            raise ValueError(f"category shares must sum to 1, got {total:.4f} ({shares})")
        names = [s.name for c in self.categories.values() for s in c.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {dupes}")
        for key, cat in self.categories.items():
            if cat.share > 0 and not cat.sources:
                raise ValueError(f"category {key!r} has share {cat.share} but no sources")
        return self

    def sources(self) -> list[tuple[str, Any]]:
        return [(key, src) for key, cat in self.categories.items() for src in cat.sources]
