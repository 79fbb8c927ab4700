"""`midtrain data build`: recipe → cleaned, decontaminated, rendered, token-mixed parquet shards + lockfile.

The build is a pipeline with one parallel step and one global step:
1. Work units (pipelines/data/plan.py: each source, large ones cut into parts by their bytes, row groups or
   rows) run on an executor (pipelines/data/executors.py: this machine's processes by default, or datatrove's
   local, Slurm and Ray executors). Per unit, in row order (pipelines/data/ingest.py): read → Trace → schema
   validation → quality filters → content digest + MinHash values → decontamination (n-gram overlap with the
   eval sets, an index built once here and loaded by every worker) → render + tokenize → reject rows longer
   than `max_seq_len` → the unit's spill parquet.
2. Here, once every unit is done, reading their results in plan order: exact and near dedup across all units
   (pipelines/data/dedup.py; the earlier row in recipe order survives, as it would in one process), rejects
   merged into one file in source row order, then the token mix (plan targets, seeded sampling with capped
   upsampling, train/eval split by Trace id, order) and the output shards, gathered from the units' spills.
Units are cut by the input alone and read back in order, so the output bytes, shards and lockfile are the
same for any executor and any number of workers or tasks (tests/test_data_scale.py).

Memory: rows never accumulate. A worker holds one render batch and one spill row group (~2M tokens); output
shards are gathered from the spills one output row group at a time (`_Shuffler`), so neither the shard size nor
the corpus sets the write step's peak. What grows with the corpus is per-row bookkeeping in this process: what
mixing needs (typed columns: source, cluster, token counts, difficulty, a 64-bit id digest; 35 bytes per kept
row measured on a million rows, where a dict of objects took 341), while dedup runs 16 bytes per row plus one
LSH band (64 bytes) per row at a time, and in the write step the selected rows' (row, epoch) order (~100 bytes
per selected row).
scripts/bench_data.py --scale measures the peak per corpus size.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel
from pydantic import Field as PydanticField

from pipelines import folders, resources
from pipelines.chat import (
    Rendered,
    conversation,
    load_tokenizer,
    render_batch,
    render_trace,
    training_chat_template,
)
from pipelines.config import validate_data
from pipelines.data import executors, ingest  # ingest imports this module: its attributes at run time
from pipelines.data import manifest as mf
from pipelines.data.card import write_card
from pipelines.data.clean import NearDeduper
from pipelines.data.decontam import ContaminationIndex, build_index
from pipelines.data.dedup import Duplicate, UnitKeys, locate, resolve_duplicates
from pipelines.data.mix import (
    SourcePool,
    TrainPairs,
    id_digest,
    is_eval_digest,
    order_eval,
    order_train,
    plan_mix,
    sample_source,
)
from pipelines.data.plan import PLAN, BuildPlan, BuildSettings, ExecutorSettings, WorkUnit, plan_units
from pipelines.data.sources import Reject, combine_part_revisions, path_sha256, resolve_hub_commits
from pipelines.errors import BadInput, MidtrainError
from pipelines.recipe import LocalSource, Recipe
from pipelines.run_config import REPO_ROOT, RunConfig
from pipelines.schema import Trace
from pipelines.thought import ThoughtSchema, load_thought_schema

# `messages` and `tools` hold one JSON object per message and per tool: datasets' `Json` feature (Arrow's JSON
# extension type), which `load_dataset` decodes back to dicts with exactly their own keys. A struct column would
# give every message every key any message has (`tool_calls: null` on user turns) and force all argument dicts
# into one union schema, and chat templates render those nulls.
JSON_LIST = pa.list_(pa.json_())
CONVERSATION_COLUMNS = ("messages", "tools")
OUTPUT_FIELDS = [
    ("id", pa.string()),
    ("source", pa.string()),
    ("category", pa.string()),
    ("kind", pa.string()),
    ("cluster", pa.string()),
    ("pattern", pa.string()),
    ("difficulty", pa.int32()),
    ("epoch", pa.int32()),
    ("n_tokens", pa.int32()),
    ("n_loss_tokens", pa.int32()),
    ("messages", JSON_LIST),  # tool traces: OpenAI/TRL conversational format
    ("tools", JSON_LIST),  # tool traces: OpenAI function specs (null when none are offered)
    ("text", pa.string()),  # code/text documents
    ("input_ids", pa.list_(pa.int32())),
    ("assistant_masks", pa.list_(pa.int8())),
    ("trace", pa.string()),
]
OUTPUT_SCHEMA = pa.schema(OUTPUT_FIELDS, metadata={"huggingface": mf.hf_features(OUTPUT_FIELDS)})
SPILL_SCHEMA = pa.schema([f for f in OUTPUT_SCHEMA if f.name != "epoch"])
# Fixed writer options: same rows in → same bytes out (parquet-cpp writes no timestamps).
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": ["source", "category", "kind", "cluster", "pattern"],
    "write_statistics": True,
    "version": "2.6",
    "data_page_version": "1.0",
}
OUTPUT_ROW_GROUP = 1000
RENDER_BATCH_ROWS = 256
RENDER_BATCH_CHARS = 4_000_000
SPILL_FLUSH_TOKENS = 2_000_000
# Bucket files open at once in the write step: one per output row group (5 per default 5,000-row shard), so a
# pass over the spill fills ~100 shards; well under the usual 1,024 open-file limit.
MAX_OPEN_BUCKETS = 512


class BuildResult(BaseModel):
    """What the data stage returns: where the mix is, its manifest (the lockfile) and phase timings."""

    out_dir: Path
    manifest: dict[str, Any]
    timings: dict[str, float] = PydanticField(default_factory=dict)


@dataclass
class SourceStats:
    name: str
    type: str
    category: str
    rows_in: int = 0
    rows_clean: int = 0
    tokens_in: int = 0
    rejects: Counter = field(default_factory=Counter)
    revision: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _RowMeta:
    """What mixing and the manifest need of a spilled row (the row itself stays on disk)."""

    source: str
    cluster: str
    n_tokens: int
    n_loss_tokens: int
    difficulty: int


class _RowMetaTable:
    """`_RowMeta` of every spilled row, in typed columns indexed by global spill row: 24 bytes a spilled row
    where a dict of objects took ~250 a kept row (a billion-token mix is ~a million rows). Rows never set
    (duplicates) read as 0."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {"source": [], "cluster": []}
        self._codes: dict[str, dict[str, int]] = {"source": {}, "cluster": {}}
        self.source, self.cluster, self.difficulty = array("h"), array("h"), array("i")
        self.n_tokens, self.n_loss_tokens = array("i"), array("i")
        self.id_digest = array("Q")  # mix.id_digest of the row's Trace id

    def _code(self, kind: str, name: str) -> int:
        codes = self._codes[kind]
        if name not in codes:
            codes[name] = len(codes)
            self.names[kind].append(name)
        return codes[name]

    def set(self, row: int, source: str, cluster: str, n_tokens: int, n_loss_tokens: int, difficulty: int,
            id_digest: int) -> None:  # fmt: skip
        columns = (
            self.source,
            self.cluster,
            self.n_tokens,
            self.n_loss_tokens,
            self.difficulty,
            self.id_digest,
        )
        if row >= len(self.source):  # spill rows arrive unit by unit: grow every column to cover this one
            for column in columns:
                column.frombytes(bytes((row + 1 - len(column)) * column.itemsize))
        self.source[row] = self._code("source", source)
        self.cluster[row] = self._code("cluster", cluster)
        self.n_tokens[row] = n_tokens
        self.n_loss_tokens[row] = n_loss_tokens
        self.difficulty[row] = difficulty
        self.id_digest[row] = id_digest

    def unique_ids(self, rows: Any) -> int:
        """Distinct Trace ids among `rows`, by their 64-bit digests (a collision is ~1 in 10^7 at a million rows)."""
        digests = np.frombuffer(self.id_digest, dtype=np.uint64)
        return int(np.unique(digests[np.asarray(rows, dtype=np.int64)]).size)

    def token_sums(self, rows: Any) -> tuple[int, int]:
        """(tokens, loss tokens) over `rows` (repeats counted), without a Python object per row."""
        index = np.asarray(rows, dtype=np.int64)
        tokens = np.asarray(self.n_tokens, dtype=np.int64)[index].sum()
        loss = np.asarray(self.n_loss_tokens, dtype=np.int64)[index].sum()
        return int(tokens), int(loss)

    def __getitem__(self, row: int) -> _RowMeta:
        return _RowMeta(
            self.names["source"][self.source[row]], self.names["cluster"][self.cluster[row]],
            self.n_tokens[row], self.n_loss_tokens[row], self.difficulty[row],
        )  # fmt: skip


# -- entry points --------------------------------------------------------------------------------------------
def run(config: RunConfig, out_dir: Path | None = None, num_proc: int | None = None) -> BuildResult:
    """The data stage of a run config: `runs/<name>/data`, the model's tokenizer and chat template."""
    recipe = config.data.recipe
    if config.model.thought_schema != recipe.thought_schema:
        raise BadInput(
            f"model.thought_schema {config.model.thought_schema!r} differs from the recipe's thought_schema "
            f"{recipe.thought_schema!r}: SFT data must be rendered with the schema the model is trained on"
        )
    settings = BuildSettings(
        tokenizer=config.model.name_or_path,
        tokenizer_revision=config.model.revision,
        chat_template=config.model.chat_template,
        thought_schema=config.model.thought_schema,
        tool_format=config.model.tool_format,
    )
    out = out_dir or config.run_dir / "data"
    return build(recipe, out, settings, num_proc or config.data.num_proc, executor=config.data.executor)


def default_out_dir(target: RunConfig | Recipe) -> Path:
    if isinstance(target, RunConfig):
        return target.run_dir / "data"
    return Path("runs") / target.name / "data"


def build(
    recipe: Recipe,
    out_dir: str | Path,
    settings: BuildSettings | None = None,
    num_proc: int = 1,
    hub_commits: dict[str, str] | None = None,
    executor: ExecutorSettings | None = None,
) -> BuildResult:
    """Build the mix into `out_dir` (replaced atomically: a failed build leaves the old output intact). A folder
    that midtrain did not write is never replaced (BadInput). `num_proc` worker processes on the local
    executor; `executor` picks another (none of it changes the output bytes).

    Hub revisions are resolved to commits first (`hub_commits`, a lockfile's, skips that), so an unreachable
    Hub or an offline machine fails before any work is done."""
    settings = settings or BuildSettings()
    executor = executor or ExecutorSettings()
    commits = resolve_hub_commits(recipe, hub_commits)
    out_dir = Path(out_dir)
    _adopt_earlier_output(out_dir)
    folders.check_replaceable(out_dir, "output folder")  # before the work, not after it
    folders.check_writable(out_dir.parent, "output folder")
    for label in (f"{out_dir.name}.build", f"{out_dir.name}.old"):
        folders.clean_stale_scratch(out_dir.parent, label)
    logs_dir = _executor_logs_path(out_dir, executor)  # checked before the work, made after setup
    builder = _Builder(pin_paths(recipe, out_dir), settings, num_proc, commits, executor)
    builder.setup()  # tokenizer, thought schema, eval sets: their problems surface before any folder is made
    logs = folders.fresh_output_dir(logs_dir, EXECUTOR_LOGS, owner=True) if logs_dir else None
    work = folders.scratch_dir(out_dir.parent, f"{out_dir.name}.build")
    try:
        result = builder.run(work, logs)
        folders.replace_dir(work, out_dir, "output folder")
    except BaseException as exc:
        if logs is not None:
            with contextlib.suppress(OSError):  # never hide the build's own error behind this one
                folders.mark(logs, EXECUTOR_LOGS)  # kept for the user; no build owns them any more
            if isinstance(exc, MidtrainError) and str(logs) not in str(exc):
                # The same exception (its type and attributes: RenderError's check, say), with the logs named.
                exc.args = (f"{exc} (the executor's logs are kept in {logs})",)
        raise
    finally:
        if work.exists():
            shutil.rmtree(work)
    if logs is not None:
        shutil.rmtree(logs)
    result.out_dir = out_dir
    return result


EXECUTOR_LOGS = "executor logs"


def _executor_logs_path(out_dir: Path, executor: ExecutorSettings) -> Path | None:
    """Where datatrove's logs and completion marks go, next to the output: removed after a build that succeeds, kept
    after one that fails (the error names them; a Slurm task's traceback is only there). Not inside the work
    folder, which a failed build removes; emptied first, since datatrove skips the ranks it finds complete.
    Only a logs folder of ours is replaced (not another kind of midtrain output that happens to have the name),
    and not while the build that wrote it still runs."""
    if executor.kind == "local":
        return None
    logs = out_dir.parent / f"{out_dir.name}.executor-logs"
    owner = folders.marker(logs)
    if (logs.exists() or logs.is_symlink()) and (
        logs.is_symlink() or (owner or {}).get("kind") != EXECUTOR_LOGS
    ):
        raise BadInput(
            f"{logs}: a data build with a datatrove executor keeps its logs in this folder, which exists and "
            f"is not one of its logs folders; move it away or choose another --out"
        )
    if owner and "pid" in owner and folders.owner_alive(owner):
        raise BadInput(
            f"{logs}: the logs folder of a build of {out_dir} started on {owner.get('host')} (pid "
            f"{owner.get('pid')}), which may still be running; wait for it, or remove the folder if it is not"
        )
    return logs


def _adopt_earlier_output(out_dir: Path) -> None:
    """Mark an output of a midtrain version from before output markers as ours, when that is provable: its
    manifest has our format and every file in the folder is one the manifest lists (or the plot)."""
    manifest_path = out_dir / mf.MANIFEST
    if folders.is_ours(out_dir) or out_dir.is_symlink() or not manifest_path.is_file():
        return
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if not (isinstance(found, str) and found.startswith(mf.FORMAT_PREFIX)):
        return
    files = manifest.get("files")
    known = {mf.MANIFEST, "mix.png", *(files if isinstance(files, dict) else {})}
    if all(p.is_file() and not p.is_symlink() and p.name in known for p in out_dir.iterdir()):
        folders.mark(out_dir, "output folder")


def pin_paths(recipe: Recipe, out_dir: Path | None = None) -> Recipe:
    """Absolute paths for local files, package roots, task files, env files, teacher caches and eval files, so
    the manifest rebuilds from anywhere. A teacher source's cache defaults to
    `<out_dir>/../teacher-cache/<source>.jsonl`: inside the run, outside the data folder a build replaces."""
    data = recipe.model_dump(mode="json")
    for cat in data["categories"].values():
        for src in cat["sources"]:
            if src["type"] == "teacher":
                src["tasks"] = str(_existing(src["tasks"], f"source {src['name']!r}: tasks"))
                if isinstance(src.get("env"), str) and src["env"].endswith((".yaml", ".yml")):
                    src["env"] = str(_existing(src["env"], f"source {src['name']!r}: env"))
                elif isinstance(src.get("env"), dict):  # an inline block: its relative paths are the cwd's
                    env = src["env"]
                    if env.get("cwd") is not None:
                        env["cwd"] = str(Path(env["cwd"]).expanduser().resolve())
                    if env.get("path"):
                        env["path"] = [str(Path(p).expanduser().resolve()) for p in env["path"]]
                if src.get("cache") is None:
                    folder = (out_dir or Path("runs") / recipe.name / "data").resolve().parent
                    src["cache"] = str(folder / "teacher-cache" / f"{src['name']}.jsonl")
                else:
                    src["cache"] = str(Path(src["cache"]).expanduser().resolve())
            elif src["type"] == "local":
                src["path"] = str(_existing(src["path"], f"source {src['name']!r}: path"))
            elif src["type"] == "python_code":
                src["roots"] = [
                    r if r == "stdlib" else str(_existing(r, f"source {src['name']!r}: root"))
                    for r in src["roots"]
                ]
    sets = data["decontamination"]["sets"]
    data["decontamination"]["sets"] = [s if s in ("bfcl", "heldout") else _pinned_set(s) for s in sets]
    return Recipe.model_validate(data)


def _pinned_set(entry: str) -> str:
    from pipelines.tasks.task_file import TASKS_SET_PREFIX

    if entry.startswith(TASKS_SET_PREFIX):
        path = entry.removeprefix(TASKS_SET_PREFIX)
        return TASKS_SET_PREFIX + str(_existing(path, "decontamination set (task file)"))
    return str(_existing(entry, "decontamination set"))


def _existing(path: str, what: str) -> Path:
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and not candidate.exists() and (REPO_ROOT / candidate).exists():
        candidate = REPO_ROOT / candidate
    if not candidate.exists():
        raise BadInput(f"{what} {path!r} not found")
    return candidate.resolve()


# -- the builder ---------------------------------------------------------------------------------------------
class _Builder:
    """The driver: plans the work units, has an executor run them, then the global steps (dedup, mix, write)."""

    def __init__(
        self,
        recipe: Recipe,
        settings: BuildSettings,
        num_proc: int,
        hub_commits: dict[str, str] | None = None,
        executor: ExecutorSettings | None = None,
    ) -> None:
        self.recipe = recipe
        self.hub_commits = hub_commits or {}
        self.settings = settings
        self.num_proc = num_proc
        self.executor = executor or ExecutorSettings()
        self.schema_name = settings.thought_schema or recipe.thought_schema
        self.timings: dict[str, float] = {}
        self.stats: dict[str, SourceStats] = {}
        self.pools: dict[str, SourcePool] = {}
        self.meta = _RowMetaTable()  # by spill row

    def setup(self) -> None:
        """Tokenizer, thought schema, eval sets and the unit plan: their problems surface before any folder
        is made."""
        mark = time.perf_counter()
        s = self.settings
        self.tokenizer = tokenizer_for(s.tokenizer, s.chat_template, s.tokenizer_revision, s.tool_format)
        self.schema: ThoughtSchema = load_thought_schema(self.schema_name)
        self.training_template = training_chat_template(self.tokenizer)
        self.contamination: ContaminationIndex = build_index(self.recipe.decontamination)
        units = plan_units(self.recipe, self.hub_commits, self.executor.unit_bytes)
        self.plan = BuildPlan(
            self.recipe, s, self.hub_commits, units, self.executor.unit_bytes, _teacher_offline()
        )
        for _, spec in self.recipe.sources():
            if isinstance(spec, LocalSource) and sum(u.source == spec.name for u in units) > 1:
                path = Path(spec.path)
                self.plan.local_revisions[spec.name] = {
                    "path": spec.path,
                    "sha256": path_sha256(path, spec.glob),
                }
        self.timings["setup"] = time.perf_counter() - mark

    def run(self, work: Path, logs: Path | None = None) -> BuildResult:
        """Build into the scratch folder `work` (after `setup`): the units on the executor (datatrove's write
        their logs in `logs`), then the global steps here: dedup across units, the mix, the shards, the
        manifest."""
        self.work = work
        self.logs = logs
        self.started = time.perf_counter() - self.timings["setup"]
        self.plan.write(work)
        ingest.write_decontam_index(work, self.contamination)
        ingest.write_unit_tokenizer(work, self.tokenizer)
        mark = time.perf_counter()
        executors.run_units(self.executor, work, len(self.plan.units), self.num_proc, logs)
        resources.release_freed_memory()  # the units' freed C heap, before the global steps' working sets
        self.timings["ingest"] = time.perf_counter() - mark
        mark = time.perf_counter()
        summaries = self._unit_summaries()
        spill = self._merge_units(summaries)
        self.timings["dedup"] = time.perf_counter() - mark
        mark = time.perf_counter()
        plan, selections = self._mix()
        self.timings["mix"] = time.perf_counter() - mark
        mark = time.perf_counter()
        resources.release_freed_memory()
        files = self._write_outputs(selections, spill)
        self._remove_scratch_files()
        manifest = self._manifest(plan, selections, files)
        files[mf.CARD] = write_card(self.work, manifest)  # from the manifest, which then lists it
        mf.write_manifest(self.work, manifest)
        self._plot(manifest)
        self.timings["write"] = time.perf_counter() - mark
        self.timings["total"] = time.perf_counter() - self.started
        return BuildResult(out_dir=self.work, manifest=manifest, timings=self.timings)

    # -- after the units: their results, in plan order ---------------------------------------------------------
    def _unit_summaries(self) -> list[dict[str, Any]]:
        failed = sorted((self.work / ingest.FAILED).glob("*.json"))  # none when the folder is absent
        if failed:  # the first failing unit in plan order, as the error it was
            record = json.loads(failed[0].read_text(encoding="utf-8"))
            error = BadInput if record["exit_code"] == 2 else MidtrainError
            raise error(record["message"])
        summaries = []
        for unit in self.plan.units:
            done = ingest.unit_dir(self.work, unit.index) / ingest.DONE
            if not done.is_file():
                where = f"; the executor's logs are in {self.logs}" if self.logs else ""
                raise MidtrainError(f"work unit {unit.index} (source {unit.source!r}) did not finish{where}")
            summaries.append(json.loads(done.read_text(encoding="utf-8")))
        return summaries

    def _merge_units(self, summaries: list[dict[str, Any]]) -> _SpillIndex:
        """Dedup across units, then per unit in order: its rejects (and the duplicates) to rejects.jsonl in row
        order, its kept rows into the source pools. Returns where the kept rows' bytes are."""
        near = NearDeduper(self.recipe.near_dedup) if self.recipe.near_dedup.enabled else None
        folders_ = [ingest.unit_dir(self.work, u.index) for u in self.plan.units]
        duplicates = resolve_duplicates([UnitKeys(f) for f in folders_], near.bands if near else None)
        self.candidate_offsets = np.cumsum([0] + [s["candidates"] for s in summaries])
        spill = _SpillIndex()
        revisions: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with (self.work / mf.REJECTS).open("w", encoding="utf-8") as rejects_out:
            for unit, summary, folder, dups in zip(
                self.plan.units, summaries, folders_, duplicates, strict=True
            ):
                stats = self._source_stats(unit)
                stats.rows_in += summary["rows_in"]
                revisions[unit.source].append(summary["revision"])
                cands = pq.read_table(folder / "cands.parquet").to_pydict()
                self._write_unit_rejects(stats, unit, folder, cands, dups, rejects_out)
                self._pool_unit_rows(unit, folder, cands, dups, spill.add(folder / "rows.parquet", summary))
        for _, spec in self.recipe.sources():
            parts = revisions[spec.name]
            whole = len(parts) == 1 and not next(u for u in self.plan.units if u.source == spec.name).part
            self.stats[spec.name].revision = (
                parts[0]
                if whole
                else combine_part_revisions(
                    spec, self.hub_commits.get(spec.name), parts, self.plan.local_revisions.get(spec.name)
                )
            )
            stats = self.stats[spec.name]
            if stats.rows_clean + stats.rejects.total() != stats.rows_in:
                raise MidtrainError(
                    f"source {spec.name!r}: read {stats.rows_in} rows, accounted for "
                    f"{stats.rows_clean + stats.rejects.total()}"
                )
        return spill

    def _source_stats(self, unit: WorkUnit) -> SourceStats:
        if unit.source not in self.stats:
            spec = self.plan.spec(unit.source)
            self.stats[unit.source] = SourceStats(spec.name, spec.type, unit.category)
            self.pools[unit.source] = SourcePool(
                spec.name, unit.category, spec.weight, spec.max_epochs or self.recipe.max_epochs
            )
        return self.stats[unit.source]

    def _write_unit_rejects(
        self,
        stats: SourceStats,
        unit: WorkUnit,
        folder: Path,
        cands: dict[str, list[Any]],
        dups: dict[int, Duplicate],
        out: Any,
    ) -> None:
        records: list[tuple[int, str, str]] = []
        with (folder / "rejects.jsonl").open(encoding="utf-8") as lines:
            for line in lines:
                seq, cand, key, text = json.loads(line)
                if cand < 0 or cand not in dups:  # a duplicate's own reason wins over decontam and render
                    records.append((seq, key, text))
        for cand, dup in dups.items():
            verb = "same content as" if dup.reason == "exact_duplicate" else "near-duplicate of"
            detail = f"{verb} {self._label(dup.kept)}"
            reject = Reject(
                unit.source, cands["origin"][cand], dup.stage, dup.reason, detail, cands["trace_id"][cand]
            )
            records.append((cands["seq"][cand], reject.key, reject.to_json()))
        records.sort(key=lambda r: r[0])
        for _, key, text in records:
            stats.rejects[key] += 1
            out.write(text + "\n")

    def _label(self, row: int) -> str:
        """How a duplicate names the row it repeats: where that row was read, and its source."""
        unit, cand = locate(row, self.candidate_offsets)
        return f"{self._origins(unit)[cand]} ({self.plan.units[unit].source})"

    @lru_cache(maxsize=16)  # noqa: B019 - one builder per build; the cache goes with it
    def _origins(self, unit: int) -> list[str]:
        path = ingest.unit_dir(self.work, unit) / "cands.parquet"
        return pq.read_table(path, columns=["origin"]).column("origin").to_pylist()

    def _pool_unit_rows(
        self, unit: WorkUnit, folder: Path, cands: dict[str, list[Any]], dups: dict[int, Duplicate], base: int
    ) -> None:
        kept = sorted(row for cand, row in enumerate(cands["spill_row"]) if row >= 0 and cand not in dups)
        if not kept:
            return
        columns = ["id", "cluster", "n_tokens", "n_loss_tokens", "difficulty"]
        small = pq.read_table(folder / "rows.parquet", columns=columns).take(kept).to_pydict()
        pool, stats = self.pools[unit.source], self.stats[unit.source]
        for i, row in enumerate(kept):
            n_tokens = small["n_tokens"][i]
            digest = id_digest(small["id"][i], self.recipe.seed)
            self.meta.set(
                base + row, unit.source, small["cluster"][i], n_tokens, small["n_loss_tokens"][i],
                small["difficulty"][i], digest,
            )  # fmt: skip
            pool.rows.append(base + row)
            pool.tokens.append(n_tokens)
            pool.eval_mask.append(is_eval_digest(digest, self.recipe.eval_fraction))
            stats.rows_clean += 1
            stats.tokens_in += n_tokens

    def _remove_scratch_files(self) -> None:
        """The work folder becomes the output folder: only the outputs stay."""
        for name in (ingest.UNITS, ingest.FAILED, ingest.TOKENIZER_DIR):
            if (self.work / name).exists():
                shutil.rmtree(self.work / name)
        for name in (PLAN, ingest.DECONTAM_INDEX):
            (self.work / name).unlink(missing_ok=True)

    # -- mix -----------------------------------------------------------------------------------------------
    def _mix(self) -> tuple[Any, dict[str, Any]]:
        plan = plan_mix(self.recipe, self.pools)
        selections = {
            name: sample_source(pool, plan.source_targets[name], self.recipe.seed)
            for name, pool in self.pools.items()
        }
        return plan, selections

    # -- outputs -------------------------------------------------------------------------------------------
    def _write_outputs(self, selections: dict[str, Any], spill: _SpillIndex) -> dict[str, dict[str, Any]]:
        train = TrainPairs.concat(sel.train for sel in selections.values())
        train = order_train(train, self.meta.difficulty, self.recipe.seed, self.recipe.curriculum)
        evals = order_eval([row for sel in selections.values() for row in sel.eval], self.recipe.seed)
        ordered_eval = TrainPairs(np.asarray(evals, dtype=np.int64), np.zeros(len(evals), dtype=np.int32))
        files: dict[str, dict[str, Any]] = {}
        shuffler = _Shuffler(spill, self.work)
        for prefix, rows in (("train", train), (mf.VALIDATION, ordered_eval)):
            for path, table in shuffler.write(prefix, rows, self.recipe.shard_rows):
                tokens = pa.compute.sum(table["n_tokens"]).as_py()
                loss = pa.compute.sum(table["n_loss_tokens"]).as_py()
                files[path.name] = mf.file_record(path, table.num_rows, tokens, loss)
        rejects_path = self.work / mf.REJECTS
        files[mf.REJECTS] = mf.file_record(rejects_path, sum(s.rejects.total() for s in self.stats.values()))
        return files

    def _manifest(self, plan: Any, selections: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        recipe = self.recipe
        s = self.settings
        return {
            "format": mf.FORMAT,
            **mf.recipe_record(recipe),
            "build": {
                "tokenizer": s.tokenizer,
                "tokenizer_revision": s.tokenizer_revision,
                "chat_template": s.chat_template,
                "thought_schema": self.schema_name,
                "tool_format": s.tool_format,
            },
            "tokenizer": mf.tokenizer_record(
                self.tokenizer, s.tokenizer, s.tokenizer_revision, self.training_template
            ),
            "thought_schema": {
                "name": self.schema.name,
                "sha256": mf.sha256_text(mf.canonical_json(self.schema.model_dump(mode="json"))),
            },
            "seeds": _seeds(recipe),
            "libraries": mf.library_versions(),
            "decontamination": {
                "ngram": recipe.decontamination.ngram,
                "min_overlap": recipe.decontamination.min_overlap,
                "eval_texts": self.contamination.counts,
                "heldout_task_ids": len(self.contamination.task_ids),
            },
            **mf.mix_report(recipe, plan, self.pools, selections, self.meta, self.stats),
            "files": files,
        }

    def _plot(self, manifest: dict[str, Any]) -> None:
        from pipelines.data.inspect import plot_mix

        plot_mix(self.work, manifest)


def _teacher_offline() -> bool:
    """Whether this build runs under `teacher.offline_teacher()` (`data verify`); its workers are told so.
    Looked up without importing the teacher: a build without teacher sources never loads it."""
    teacher = sys.modules.get("pipelines.tasks.llm_teacher")
    return bool(teacher is not None and teacher.teacher_offline())


@lru_cache(maxsize=2)
def tokenizer_for(ref: str, chat_template: str, revision: str | None, tool_format: str) -> Any:
    """One load per process: `verify` rebuilds right after reading the manifest, with the same tokenizer."""
    return load_tokenizer(ref, chat_template, revision, tool_format)


def _seeds(recipe: Recipe) -> dict[str, Any]:
    generated = {s.name: s.seed for _, s in recipe.sources() if s.type == "generated"}
    return {
        "recipe": recipe.seed,
        "generated_sources": generated,
        "heldout": recipe.decontamination.heldout_seed,
        "near_dedup_minhash": 1,
    }


# -- rendering, in process or fanned out -----------------------------------------------------------------------
def render_rows(traces: list[Trace], tokenizer: Any, schema: ThoughtSchema) -> list[Rendered | str]:
    """Batch render; when the batch fails, render one by one so only the bad rows become rejects."""
    try:
        return list(render_batch(traces, tokenizer, schema))
    except Exception:
        out: list[Rendered | str] = []
        for trace in traces:
            try:
                out.append(render_trace(trace, tokenizer, schema))
            except Exception as exc:
                out.append(f"{type(exc).__name__}: {exc}")
        return out


# -- spill and shards ----------------------------------------------------------------------------------------
def trace_json(trace: Trace) -> str:
    """The Trace as one-line JSON in its own key order. Not `Trace.to_json()`, which sorts keys: the chat
    template writes tool specs and call arguments in dict order, so only the original order re-renders to
    the stored `input_ids` (and matches what the model sees at inference, where tools keep their order)."""
    return json.dumps(trace.to_dict(), ensure_ascii=False, separators=(",", ":"))


class ChatColumns(NamedTuple):
    """An output row's conversation columns, as JSON text per message/tool (see OUTPUT_FIELDS)."""

    messages: list[str] | None
    tools: list[str] | None
    text: str | None


def chat_columns(trace: Trace, tokenizer: Any, schema: ThoughtSchema) -> ChatColumns:
    """A tool trace as the `messages` + `tools` that, through this tokenizer's chat template, render to the row's
    `input_ids`; a document as its `text` (no EOS: trainers add their own)."""
    if trace.kind != "tool":
        return ChatColumns(None, None, trace.text)
    messages, tools = conversation(trace, tokenizer, schema)
    return ChatColumns(
        [_json_object(m) for m in messages], [_json_object(t) for t in tools or []] or None, None
    )


def _json_object(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Spill:
    """Rendered rows in arrival order, flushed to parquet row groups every ~2M tokens."""

    def __init__(self, path: Path) -> None:
        self.writer = pq.ParquetWriter(path, SPILL_SCHEMA, compression="none")  # scratch: CPU over disk
        self.columns: dict[str, list[Any]] = {f.name: [] for f in SPILL_SCHEMA}
        self.rows = 0
        self.buffered_tokens = 0
        self.row_group_starts: list[int] = []

    def add(
        self, trace: Trace, category: str, rendered: Rendered, difficulty: int, n_loss: int, chat: ChatColumns
    ) -> int:
        tool = trace.kind == "tool"
        n_tokens = len(rendered.input_ids)
        masks = np.asarray(rendered.assistant_masks, dtype=np.int8) if tool else None  # documents: all ones
        for key, value in (
            ("id", trace.id),
            ("source", trace.source),
            ("category", category),
            ("kind", trace.kind),
            ("cluster", trace.cluster),
            ("pattern", str(trace.meta.get("pattern", "")) if tool else ""),
            ("difficulty", difficulty),
            ("n_tokens", n_tokens),
            ("n_loss_tokens", n_loss),
            ("messages", chat.messages),
            ("tools", chat.tools),
            ("text", chat.text),
            # As numpy, not the renderer's lists: a Python int list costs 36 bytes a token, and a spill buffers
            # ~2M tokens before it flushes (the driver's peak in a one-worker build rose with that buffer).
            ("input_ids", np.asarray(rendered.input_ids, dtype=np.int32)),
            ("assistant_masks", masks),
            ("trace", trace_json(trace)),
        ):
            self.columns[key].append(value)
        self.rows += 1
        self.buffered_tokens += n_tokens
        if self.buffered_tokens >= SPILL_FLUSH_TOKENS:
            self.flush()
        return self.rows - 1

    def flush(self) -> None:
        n = len(self.columns["id"])
        if not n:
            return
        self.row_group_starts.append(self.rows - n)
        columns = self.columns
        arrays = {name: pa.array(columns[name], type=SPILL_SCHEMA.field(name).type) for name in _SCALARS}
        for name in CONVERSATION_COLUMNS:  # JSON text, typed as JSON (Arrow builds no extension type itself)
            arrays[name] = pa.array(columns[name], type=pa.list_(pa.string())).cast(JSON_LIST)
        arrays["input_ids"] = _list_array(columns["input_ids"], np.int32)
        arrays["assistant_masks"] = _list_array(columns["assistant_masks"], np.int8, columns["n_tokens"])
        table = pa.table({f.name: arrays[f.name] for f in SPILL_SCHEMA}, schema=SPILL_SCHEMA)
        self.writer.write_table(table, row_group_size=n)
        self.columns = {f.name: [] for f in SPILL_SCHEMA}
        self.buffered_tokens = 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


_SCALARS = [
    f.name for f in SPILL_SCHEMA if f.name not in ("input_ids", "assistant_masks", *CONVERSATION_COLUMNS)
]


def _list_array(lists: list[Any], dtype: type, ones_lengths: list[int] | None = None) -> pa.ListArray:
    """Token lists → an Arrow list array via numpy: ~8× faster than `pa.array` on nested Python lists.
    A None entry (with `ones_lengths`) is a document's mask: that many ones, never built as a list."""
    lengths = [len(x) if x is not None else ones_lengths[i] for i, x in enumerate(lists)]  # type: ignore[index]
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    parts = [
        np.asarray(x, dtype=dtype) if x is not None else np.ones(n, dtype=dtype)
        for x, n in zip(lists, lengths, strict=True)
    ]
    values = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


class _SpillIndex:
    """The spill of a build: the units' `rows.parquet` files one after another, numbered by a global row
    index (unit order, then row order), read one row group at a time."""

    def __init__(self) -> None:
        self.starts: list[int] = []  # global index of each row group's first row, ascending
        self.groups: list[tuple[Path, int]] = []  # (file, row group in that file)
        self.rows = 0

    def add(self, path: Path, summary: dict[str, Any]) -> int:
        """Append a unit's spill; returns the global index of its first row."""
        base = self.rows
        for group, start in enumerate(summary["row_group_starts"]):
            self.starts.append(base + start)
            self.groups.append((path, group))
        self.rows += summary["spilled"]
        return base

    def read(self, group: int) -> pa.Table:
        path, index = self.groups[group]
        return pq.ParquetFile(path).read_row_group(index)


class _Shuffler:
    """Writes rows of the spill, in any global order, as output shards, reading the spill once per group of
    up to MAX_OPEN_BUCKETS buckets (not once per shard: a shuffled shard draws from every spill row group).

    A bucket is one output row group (OUTPUT_ROW_GROUP rows of one shard). Pass 1 streams the spill's row groups
    and appends each wanted row, tagged with its output position, to its bucket file; pass 2 sorts one bucket at
    a time by position and appends it to its shard as that shard's next row group. Memory: one spill row group
    plus one output row group, whatever the shard size and the corpus (a whole shard in memory grew the peak
    with `shard_rows`: +370 MB for 5,000-row shards of 1,500-token rows)."""

    def __init__(self, spill: _SpillIndex, work: Path) -> None:
        self.spill = spill
        self.starts = spill.starts
        self.work = work

    def write(self, prefix: str, rows: TrainPairs, shard_rows: int) -> list[tuple[Path, pa.Table]]:
        """(path, the shard's small columns) per shard written; `rows` are (spill row, epoch) in output order."""
        n_shards = -(-len(rows) // shard_rows)
        per_shard = -(-shard_rows // OUTPUT_ROW_GROUP)  # buckets (row groups) of a full shard
        shards_per_pass = max(1, MAX_OPEN_BUCKETS // per_shard)
        written = []
        for first in range(0, n_shards, shards_per_pass):
            shards = range(first, min(first + shards_per_pass, n_shards))
            buckets = self._fill_buckets(rows, shard_rows, shards)
            for shard in shards:
                path = self.work / f"{prefix}-{shard:05d}.parquet"
                mine = [bucket for (owner, _), bucket in sorted(buckets.items()) if owner == shard]
                written.append((path, self._finish(mine, rows, path)))
        return written

    def _fill_buckets(self, rows: TrainPairs, shard_rows: int, shards: range) -> dict[tuple[int, int], Path]:
        # Spill row group → this pass's output positions, ascending (a stable sort by group).
        first, stop = shards.start * shard_rows, min(shards.stop * shard_rows, len(rows))
        positions = np.arange(first, stop, dtype=np.int64)
        groups = np.searchsorted(self.starts, rows.rows[first:stop], side="right") - 1
        by_position = np.argsort(groups, kind="stable")
        bounds = np.flatnonzero(np.diff(groups[by_position])) + 1
        by_group = {int(groups[run[0]]): positions[run] for run in np.split(by_position, bounds) if len(run)}
        paths: dict[tuple[int, int], Path] = {}
        # Arrow IPC streams, not Parquet: a ParquetWriter holds ~1 MB of column buffers while open, per bucket
        # (measured), so the step grew with the shards of a pass (18 buckets on the 100 MB bench corpus, up to
        # MAX_OPEN_BUCKETS at scale); an IPC stream writes each piece through and holds nothing.
        writers: dict[tuple[int, int], pa.ipc.RecordBatchStreamWriter] = {}
        try:
            for group in sorted(by_group):
                table, first_row = self.spill.read(group), self.starts[group]
                # One bucket's rows copied at a time: a copy of every wanted row of the group doubled the step's
                # peak (a spill row group is ~2M tokens).
                for key, wanted in _by_bucket(by_group[group], shard_rows):
                    piece = table.take(rows.rows[wanted] - first_row)
                    piece = piece.append_column("_pos", pa.array(wanted, type=pa.int64()))
                    if key not in writers:
                        paths[key] = self.work / f"bucket-{key[0]:05d}-{key[1]:05d}.arrow"
                        writers[key] = pa.ipc.new_stream(str(paths[key]), piece.schema)
                    writers[key].write_table(piece)
                del table, piece
                _release_arrow_memory()
        finally:
            for writer in writers.values():
                writer.close()
        return paths

    def _finish(self, buckets: list[Path], rows: TrainPairs, path: Path) -> pa.Table:
        """The shard, one row group per bucket in order: the same row groups (so the same bytes) that writing
        the whole shard with `row_group_size=OUTPUT_ROW_GROUP` gives."""
        small = []
        with pq.ParquetWriter(path, OUTPUT_SCHEMA, **PARQUET_OPTIONS) as writer:
            for bucket in buckets:
                with pa.OSFile(str(bucket)) as stream:  # read, not memory-mapped: freed pages leave the RSS
                    table = pa.ipc.open_stream(stream).read_all().sort_by("_pos")
                bucket.unlink()
                epochs = pa.array(rows.epochs[table["_pos"].to_numpy()], type=pa.int32())
                table = table.drop_columns(["_pos"]).add_column(
                    OUTPUT_SCHEMA.get_field_index("epoch"), "epoch", epochs
                )
                # One contiguous chunk per column: the bytes depend on the rows alone, not on how they were gathered.
                writer.write_table(
                    table.cast(OUTPUT_SCHEMA).combine_chunks(), row_group_size=OUTPUT_ROW_GROUP
                )
                small.append(table.select(["n_tokens", "n_loss_tokens"]))
                del table
                _release_arrow_memory()
        return pa.concat_tables(small)


def _by_bucket(positions: Any, shard_rows: int) -> list[tuple[tuple[int, int], Any]]:
    """Ascending output positions split into runs of one bucket each: (shard, row group within the shard)."""
    shard, row_group = positions // shard_rows, (positions % shard_rows) // OUTPUT_ROW_GROUP
    bounds = np.flatnonzero((np.diff(shard) != 0) | (np.diff(row_group) != 0)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    keys = zip(shard[starts].tolist(), row_group[starts].tolist(), strict=True)
    return list(zip(keys, np.split(positions, bounds), strict=True))


def _release_arrow_memory() -> None:
    """Hand the pages Arrow's pool (mimalloc) freed back to the OS after each row group: it keeps them, so the
    write step's resident set grew with the row groups a shard has (probed in one process on the 100 MB bench
    corpus, 5 row groups a shard: +150-195 MB per shard; after every row group: bounded by one)."""
    pa.default_memory_pool().release_unused()


# -- verify --------------------------------------------------------------------------------------------------
@dataclass
class VerifyResult:
    data_dir: Path
    compared: list[str]
    differing: list[str]
    missing: list[str]
    extra: list[str]

    @property
    def identical(self) -> bool:
        return not (self.differing or self.missing or self.extra)


def verify(data_dir: str | Path, num_proc: int = 1) -> VerifyResult:
    """Rebuild from the manifest into a temp dir and compare every data file, byte for byte."""
    data_dir = Path(data_dir)
    mf.read_manifest(data_dir)  # a bad manifest is reported before a scratch folder is made
    folders.clean_stale_scratch(data_dir.parent, "verify")
    scratch = folders.scratch_dir(data_dir.parent, "verify")
    try:
        rebuild(data_dir, scratch / "data", num_proc)
        return compare_dirs(data_dir, scratch / "data")
    finally:
        shutil.rmtree(scratch)


def rebuild(data_dir: Path, out_dir: Path, num_proc: int = 1) -> BuildResult:
    """Build into `out_dir` what `data_dir`'s manifest records: its recipe and build settings, Hub sources at
    the commits it pinned (not wherever their branch points today), teacher sources from their cache only."""
    from pipelines.tasks.llm_teacher import offline_teacher

    manifest = mf.read_manifest(data_dir)
    recipe = validate_data(Recipe, manifest["recipe"], f"{data_dir / mf.MANIFEST}: recipe")
    settings = BuildSettings(**manifest["build"])  # its fields were checked by read_manifest
    with offline_teacher():  # a teacher source answers from its cache; a miss is an error, not a request
        return build(recipe, out_dir, settings, num_proc, hub_commits=mf.hub_commits(manifest))


def compare_dirs(original: Path, rebuilt: Path) -> VerifyResult:
    def data_files(folder: Path) -> set[str]:
        return {
            p.name
            for p in folder.iterdir()
            if p.suffix in (".parquet", ".jsonl") or p.name in (mf.MANIFEST, mf.CARD)
        }

    ours, theirs = data_files(original), data_files(rebuilt)
    common = sorted(ours & theirs)
    differing = [n for n in common if mf.sha256_file(original / n) != mf.sha256_file(rebuilt / n)]
    return VerifyResult(original, common, differing, sorted(theirs - ours), sorted(ours - theirs))
