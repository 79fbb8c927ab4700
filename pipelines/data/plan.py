"""The build plan: a recipe's sources cut into work units, and everything a worker needs to process one.

A data build is a pipeline with one parallel step and one global step (pipelines/data/build.py):
  1. per work unit (parallel, on any executor): read → convert → validate → filter → hash and MinHash →
     decontaminate → render → tokenize, written to the unit's own files (pipelines/data/ingest.py);
  2. once (global): exact and near dedup across all units in recipe order (pipelines/data/dedup.py), then the
     token mix and the output shards.
A work unit is a whole source, or a part of a large one (`readers.read_part`). Units are cut by the input
alone (file sizes, row groups, dataset lengths, `unit_bytes`), never by the number of workers or tasks, and
step 2 reads their results in unit order, so the output bytes do not depend on how the units were run.

The plan is written to `plan.json` in the build's work folder: the workers of every executor (local
processes, datatrove tasks on one machine, Slurm array jobs, Ray tasks) read it from there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from pipelines.config import StrictModel
from pipelines.data import readers
from pipelines.models import DEFAULT_MODEL
from pipelines.recipe import HFSource, LocalSource, Recipe, SourceBase

PLAN = "plan.json"
# Rows per part of a (downloaded) Hub dataset. Fixed, not a setting: a multi-part Hub source's lockfile
# entry hashes its parts' row digests, so the part size is part of what the lockfile means.
HF_PART_ROWS = 100_000
DEFAULT_UNIT_BYTES = 64 * 2**20


@dataclass(frozen=True)
class BuildSettings:
    """Everything besides the recipe that decides the output bytes (recorded in the manifest)."""

    tokenizer: str = DEFAULT_MODEL
    tokenizer_revision: str | None = None
    chat_template: str = "auto"
    thought_schema: str | None = None  # None: the recipe's
    tool_format: str = "auto"


ExecutorKind = Literal["local", "datatrove", "ray", "slurm"]


class SlurmSettings(StrictModel):
    partition: str = Field(description="Slurm partition of the job array.")
    time: str = Field("04:00:00", description="Time limit per task (sbatch --time).")
    cpus_per_task: int = Field(2, ge=1, description="Cores per task: one renders, one reads and cleans.")
    mem_per_cpu_gb: int = Field(4, ge=1)
    env_command: str | None = Field(
        None,
        description=(
            "Shell line that activates the environment in the job, e.g. `source .venv/bin/activate` "
            "(default: the driver's interpreter folder first on PATH)."
        ),
    )
    sbatch_args: dict[str, str] = Field(default_factory=dict, description="Extra sbatch options.")


class ExecutorSettings(StrictModel):
    """`data.executor` in a run config (or `data build --executor ...`). None of it changes the output bytes."""

    kind: ExecutorKind = "local"
    workers: int | None = Field(
        None,
        ge=1,
        description="Units processed at once (default: data.num_proc on `local`, all tasks on others).",
    )
    tasks: int | None = Field(
        None,
        ge=1,
        description="datatrove tasks (default: one per work unit); task r takes units r, r+tasks, …",
    )
    unit_mb: float = Field(
        64,
        gt=0,
        description="Target size of a work unit: large sources are cut into parts of about this size.",
    )
    slurm: SlurmSettings | None = None

    @model_validator(mode="after")
    def _slurm_needs_a_partition(self) -> ExecutorSettings:
        if self.kind == "slurm" and self.slurm is None:
            raise ValueError("executor 'slurm' needs data.executor.slurm.partition (or --slurm-partition)")
        return self

    @property
    def unit_bytes(self) -> int:
        return max(1, int(self.unit_mb * 2**20))


@dataclass(frozen=True)
class WorkUnit:
    """A whole source (`part` None: its reader as-is) or one part of it (see `readers.read_part`)."""

    index: int  # position in the build: results are read in this order
    source: str
    category: str
    part: dict[str, Any] | None = None
    part_index: int = 0
    parts: int = 1


@dataclass
class BuildPlan:
    recipe: Recipe
    settings: BuildSettings
    hub_commits: dict[str, str]
    units: list[WorkUnit]
    unit_bytes: int
    offline_teacher: bool = False
    # Lockfile entries of multi-part local sources, hashed once here rather than once per part.
    local_revisions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def schema_name(self) -> str:
        return self.settings.thought_schema or self.recipe.thought_schema

    def spec(self, name: str) -> Any:
        return next(s for _, s in self.recipe.sources() if s.name == name)

    def write(self, work: Path) -> None:
        payload = {
            "recipe": self.recipe.model_dump(mode="json"),
            "settings": asdict(self.settings),
            "hub_commits": self.hub_commits,
            "units": [asdict(u) for u in self.units],
            "unit_bytes": self.unit_bytes,
            "offline_teacher": self.offline_teacher,
            "local_revisions": self.local_revisions,
        }
        (work / PLAN).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def read(cls, work: Path) -> BuildPlan:
        payload = json.loads((work / PLAN).read_text(encoding="utf-8"))
        return cls(
            recipe=Recipe.model_validate(payload["recipe"]),
            settings=BuildSettings(**payload["settings"]),
            hub_commits=payload["hub_commits"],
            units=[WorkUnit(**u) for u in payload["units"]],
            unit_bytes=payload["unit_bytes"],
            offline_teacher=payload["offline_teacher"],
            local_revisions=payload["local_revisions"],
        )


def plan_units(recipe: Recipe, hub_commits: dict[str, str], unit_bytes: int) -> list[WorkUnit]:
    """Sources in recipe order, each cut into parts where it is large and its format allows (see module doc)."""
    units: list[WorkUnit] = []
    for category, spec in recipe.sources():
        parts = plan_parts(spec, hub_commits.get(spec.name), unit_bytes)
        if len(parts) <= 1:
            units.append(WorkUnit(len(units), spec.name, category))
            continue
        for i, part in enumerate(parts):
            units.append(WorkUnit(len(units), spec.name, category, part, i, len(parts)))
    return units


def plan_parts(spec: SourceBase, commit: str | None, unit_bytes: int) -> list[dict[str, Any]]:
    """The parts of a source; [] (or one part) when it is read whole. A downloaded Hub dataset has a length,
    so `max_rows` is an index range of it; a local source with `max_rows` is read whole (its cut-off row is
    only known while reading), and so are generated, teacher, stdlib and streamed Hub sources, whose readers
    produce one ordered stream (split those into several sources to spread them)."""
    if isinstance(spec, HFSource) and not spec.streaming:
        return _hf_parts(spec, commit)
    if spec.max_rows is not None:
        return []
    if isinstance(spec, LocalSource):
        return _local_parts(spec, unit_bytes)
    return []


def _local_parts(spec: LocalSource, unit_bytes: int) -> list[dict[str, Any]]:
    root, files = readers.source_files(spec)
    if Path(spec.path).expanduser().is_dir() and spec.format == "text":
        return _document_parts(root, files, unit_bytes)
    parts: list[dict[str, Any]] = []
    for file in files:
        kind = readers.data_kind(file)
        if kind == ".jsonl":
            parts.extend(_jsonl_parts(file, unit_bytes))
        elif kind == ".parquet":
            parts.extend(_parquet_parts(file, spec, unit_bytes))
        elif kind is None:  # a single text or code file
            parts.append({"kind": "documents", "root": str(file.parent), "files": [str(file)]})
        else:  # .jsonl.gz and .json are read whole
            parts.append({"kind": "file", "file": str(file)})
    return parts


def _jsonl_parts(file: Path, unit_bytes: int) -> list[dict[str, Any]]:
    """Byte ranges of about `unit_bytes`, each starting on a line, with the number of that line."""
    size = file.stat().st_size
    if size <= unit_bytes:
        return [{"kind": "file", "file": str(file)}]
    cuts = [(0, 1)]  # (byte offset, number of the line that starts there)
    newlines = offset = 0
    next_cut = unit_bytes
    with file.open("rb") as handle:
        while block := handle.read(1 << 23):
            while next_cut < offset + len(block):
                nl = block.find(b"\n", max(next_cut - offset, 0))
                if nl < 0:
                    break  # the cut falls in the next block
                cut = offset + nl + 1
                if cut < size:
                    cuts.append((cut, newlines + block.count(b"\n", 0, nl + 1) + 1))
                next_cut = cut + unit_bytes
            newlines += block.count(b"\n")
            offset += len(block)
    ends = [start for start, _ in cuts[1:]] + [None]
    return [
        {"kind": "jsonl_range", "file": str(file), "start": start, "end": end, "first_line": line}
        for (start, line), end in zip(cuts, ends, strict=True)
    ]


def _parquet_parts(file: Path, spec: LocalSource, unit_bytes: int) -> list[dict[str, Any]]:
    """Runs of whole row groups of about `unit_bytes` (uncompressed), with the index of their first row."""
    meta = readers.open_parquet(file, spec).metadata
    parts: list[dict[str, Any]] = []
    first_group = first_index = index = size = 0
    for group in range(meta.num_row_groups):
        size += meta.row_group(group).total_byte_size
        index += meta.row_group(group).num_rows
        if size >= unit_bytes or group == meta.num_row_groups - 1:
            parts.append(
                {
                    "kind": "parquet_groups",
                    "file": str(file),
                    "first_group": first_group,
                    "stop_group": group + 1,
                    "first_index": first_index,
                }
            )
            first_group, first_index, size = group + 1, index, 0
    return parts if len(parts) > 1 else [{"kind": "file", "file": str(file)}]


def _document_parts(root: Path, files: list[Path], unit_bytes: int) -> list[dict[str, Any]]:
    groups: list[list[str]] = [[]]
    size = 0
    for file in files:
        if groups[-1] and size >= unit_bytes:
            groups.append([])
            size = 0
        groups[-1].append(str(file))
        size += file.stat().st_size
    return [{"kind": "documents", "root": str(root), "files": group} for group in groups]


def _hf_parts(spec: HFSource, commit: str | None) -> list[dict[str, Any]]:
    """Index ranges of HF_PART_ROWS rows. Loading the dataset here downloads and prepares it once (into the
    HF cache, which multi-node workers must share); each worker then maps its range from that cache."""
    at_commit = spec.model_copy(update={"revision": commit}) if commit else spec
    length = len(readers.load_hf(at_commit))
    if spec.max_rows is not None:
        length = min(length, spec.max_rows)
    return [
        {"kind": "hf_range", "start": start, "stop": min(start + HF_PART_ROWS, length)}
        for start in range(0, length, HF_PART_ROWS)
    ]
