"""`midtrain data build`: recipe → cleaned, decontaminated, rendered, token-mixed parquet shards + lockfile.

Pipeline, per source in recipe order (the order decides which duplicate survives):
read → Trace → schema validation → quality filters (code/text) → exact dedup → near-dup (MinHash LSH) →
decontamination (n-gram overlap with eval sets) → render + tokenize in batches → reject rows longer than
`max_seq_len` → append to a spill parquet. Then: plan token targets, sample per source (seeded, capped
upsampling), split train/eval by Trace id, order, and stream the output shards out of the spill.

Memory: rows never accumulate. Sources stream, rendered rows go to the spill file batch by batch, output
shards are gathered from the spill one shard at a time, so row data in memory is bounded by batch and shard
size. What does grow with the corpus is per-row bookkeeping: what mixing needs (id, token count,
difficulty, cluster: ~0.3 KB) and the global dedup state (exact-hash table and datasketch's LSH index:
~3 KB per kept row with the default 128 permutations), i.e. ~3 GB per million kept rows. Past that, the
LSH index moves out of process (datasketch's Redis/Cassandra `storage_config`) or to a sharded pipeline.

Scaling up. On a bigger machine the same recipe runs with `data.num_proc: N` (or `--num-proc N`): rendering
(the chat template is Python, tokenization is Rust) fans out to N processes with bounded in-flight batches,
and results are consumed in submission order, so the output bytes do not depend on N. The remaining serial
part is cleaning (hashing and MinHash, numpy-vectorised, well under the tokenizer's cost per byte). Moving
to a cluster means sharding the two global steps: exact dedup becomes a shuffle by content hash, near-dup
becomes datatrove's MinHash pipeline (signatures per shard → bucket by band → cluster → filter) and
decontamination a broadcast of the eval n-gram set; reading, filtering and rendering are embarrassingly
parallel (datatrove or Ray Data executors over file shards). Mixing stays on one node: it needs only
(id, tokens) per row. The spill and the shards would live on object storage instead of local disk.
"""

from __future__ import annotations

import bisect
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel
from pydantic import Field as PydanticField

from pipelines import folders
from pipelines.chat import (
    Rendered,
    conversation,
    load_tokenizer,
    render_batch,
    render_trace,
    training_chat_template,
)
from pipelines.config import validate_data
from pipelines.data import manifest as mf
from pipelines.data.card import write_card
from pipelines.data.clean import (
    ExactDeduper,
    NearDeduper,
    Verdict,
    content_hash,
    dedup_text,
    quality_verdict,
    word_hashes,
)
from pipelines.data.decontam import ContaminationIndex, build_index
from pipelines.data.mix import SourcePool, is_eval_id, order_eval, order_train, plan_mix, sample_source
from pipelines.data.sources import Reject, open_source, resolve_hub_commits
from pipelines.errors import BadInput, MidtrainError
from pipelines.models import DEFAULT_MODEL
from pipelines.progress import progress_bar
from pipelines.recipe import Recipe
from pipelines.run_config import REPO_ROOT, RunConfig
from pipelines.schema import Trace, validate_trace
from pipelines.template_check import FirstRowsCheck
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
PROGRESS_EVERY_ROWS = 64  # the bar redraws 10 times a second at most; a row count is cheap
RENDER_BATCH_CHARS = 4_000_000
SPILL_FLUSH_TOKENS = 2_000_000
MAX_OPEN_BUCKETS = 128


@dataclass(frozen=True)
class BuildSettings:
    """Everything besides the recipe that decides the output bytes (recorded in the manifest)."""

    tokenizer: str = DEFAULT_MODEL
    tokenizer_revision: str | None = None
    chat_template: str = "auto"
    thought_schema: str | None = None  # None: the recipe's
    tool_format: str = "auto"


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


def _progress_note(stats: SourceStats, pending_rejects: list[Any]) -> str:
    rejected = stats.rejects.total() + len(pending_rejects)
    return f"{stats.rows_clean:,} kept · {stats.tokens_in:,} tokens · {rejected:,} rejected"


@dataclass
class _RowMeta:
    """What mixing and the manifest need of a spilled row (the row itself stays on disk)."""

    source: str
    cluster: str
    n_tokens: int
    n_loss_tokens: int
    difficulty: int


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
    return build(recipe, out_dir or config.run_dir / "data", settings, num_proc or config.data.num_proc)


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
) -> BuildResult:
    """Build the mix into `out_dir` (replaced atomically: a failed build leaves the old output intact). A folder
    that midtrain did not write is never replaced (BadInput).

    Hub revisions are resolved to commits first (`hub_commits`, a lockfile's, skips that), so an unreachable
    Hub or an offline machine fails before any work is done."""
    settings = settings or BuildSettings()
    commits = resolve_hub_commits(recipe, hub_commits)
    out_dir = Path(out_dir)
    _adopt_earlier_output(out_dir)
    folders.check_replaceable(out_dir, "output folder")  # before the work, not after it
    folders.check_writable(out_dir.parent, "output folder")
    for label in (f"{out_dir.name}.build", f"{out_dir.name}.old"):
        folders.clean_stale_scratch(out_dir.parent, label)
    builder = _Builder(pin_paths(recipe, out_dir), settings, num_proc, commits)
    builder.setup()  # tokenizer, thought schema, eval sets: their problems surface before any folder is made
    work = folders.scratch_dir(out_dir.parent, f"{out_dir.name}.build")
    try:
        result = builder.run(work)
        folders.replace_dir(work, out_dir, "output folder")
    finally:
        if work.exists():
            shutil.rmtree(work)
    result.out_dir = out_dir
    return result


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
    def __init__(
        self,
        recipe: Recipe,
        settings: BuildSettings,
        num_proc: int,
        hub_commits: dict[str, str] | None = None,
    ) -> None:
        self.recipe = recipe
        self.hub_commits = hub_commits or {}
        self.settings = settings
        self.num_proc = num_proc
        self.schema_name = settings.thought_schema or recipe.thought_schema
        self.timings: dict[str, float] = {}
        self.stats: dict[str, SourceStats] = {}
        self.pools: dict[str, SourcePool] = {}
        self.meta: list[_RowMeta] = []

    def run(self, work: Path) -> BuildResult:
        """Build into the scratch folder `work` (after `setup`)."""
        self.work = work
        started = time.perf_counter() - self.timings["setup"]
        self.spill = _Spill(self.work / "spill.parquet")
        with (self.work / mf.REJECTS).open("w", encoding="utf-8") as rejects, _RenderPool(self) as renderer:
            self.rejects_out = rejects
            for category, spec in self.recipe.sources():
                self._ingest(category, spec, renderer)
        self.spill.close()
        self.timings["ingest"] = time.perf_counter() - started
        mark = time.perf_counter()
        plan, selections = self._mix()
        self.timings["mix"] = time.perf_counter() - mark
        mark = time.perf_counter()
        files = self._write_outputs(selections)
        (self.work / "spill.parquet").unlink()
        manifest = self._manifest(plan, selections, files)
        files[mf.CARD] = write_card(self.work, manifest)  # from the manifest, which then lists it
        mf.write_manifest(self.work, manifest)
        self._plot(manifest)
        self.timings["write"] = time.perf_counter() - mark
        self.timings["total"] = time.perf_counter() - started
        return BuildResult(out_dir=self.work, manifest=manifest, timings=self.timings)

    def setup(self) -> None:
        mark = time.perf_counter()
        s = self.settings
        self.tokenizer = _tokenizer(s.tokenizer, s.chat_template, s.tokenizer_revision, s.tool_format)
        self.schema: ThoughtSchema = load_thought_schema(self.schema_name)
        self.template_check = FirstRowsCheck(self.tokenizer, self.schema)
        self.training_template = training_chat_template(self.tokenizer)
        self.exact = ExactDeduper()
        self.near = NearDeduper(self.recipe.near_dedup) if self.recipe.near_dedup.enabled else None
        self.contamination: ContaminationIndex = build_index(self.recipe.decontamination)
        self.timings["setup"] = time.perf_counter() - mark

    # -- ingest: read, clean, render, spill ----------------------------------------------------------------
    def _ingest(self, category: str, spec: Any, renderer: _RenderPool) -> None:
        stats = SourceStats(spec.name, spec.type, category)
        self.stats[spec.name] = stats
        self.pools[spec.name] = SourcePool(
            spec.name, category, spec.weight, spec.max_epochs or self.recipe.max_epochs
        )
        reader = open_source(spec, category, self.hub_commits.get(spec.name))
        if spec.type == "teacher":  # the teacher is asked for, and checked against, the mix's thought schema
            reader.thought_schema = self.schema_name  # type: ignore[attr-defined]
        rejects: list[tuple[int, Reject]] = []
        batch: list[tuple[int, Trace]] = []
        batch_chars = 0
        with progress_bar(f"{category}/{spec.name}", unit="rows") as update:
            for seq, item in enumerate(reader.rows()):
                stats.rows_in += 1
                if seq % PROGRESS_EVERY_ROWS == 0:
                    update(completed=stats.rows_in, note=_progress_note(stats, rejects))
                problem = item if isinstance(item, Reject) else self._clean(item)
                if problem is not None:
                    rejects.append((seq, problem))
                    continue
                assert isinstance(item, Trace), "a Reject went to `rejects` above"
                batch.append((seq, item))
                batch_chars += len(item.text) + sum(len(m.content) for m in item.messages)
                if len(batch) >= RENDER_BATCH_ROWS or batch_chars >= RENDER_BATCH_CHARS:
                    renderer.submit(category, batch, rejects)
                    batch, batch_chars = [], 0
                    self._write_rejects(stats, rejects, renderer.oldest_pending(default=seq + 1))
            renderer.submit(category, batch, rejects)
            renderer.drain()
            update(completed=stats.rows_in, note=_progress_note(stats, rejects))
        stats.revision = reader.revision()
        self._write_rejects(stats, rejects, None)
        written = stats.rows_clean + stats.rejects.total()
        if written != stats.rows_in:  # every row read is either in the pool or in rejects.jsonl
            raise MidtrainError(f"source {spec.name!r}: read {stats.rows_in} rows, accounted for {written}")

    def _write_rejects(
        self, stats: SourceStats, rejects: list[tuple[int, Reject]], before: int | None
    ) -> None:
        """Write, in row order, the rejects no pending render batch can precede; keep the rest buffered, in
        the same list (pending batches append their render rejects to it). So rejects.jsonl is in source row
        order whatever the render concurrency, in bounded memory."""
        rejects.sort(key=lambda r: r[0])
        cut = len(rejects) if before is None else sum(1 for r in rejects if r[0] < before)
        for _, reject in rejects[:cut]:
            stats.rejects[reject.key] += 1
            self.rejects_out.write(reject.to_json() + "\n")
        del rejects[:cut]

    def _clean(self, trace: Trace) -> Reject | None:
        verdict, stage = self._verdict(trace)
        if verdict is None:
            return None
        return Reject(trace.source, trace.origin, stage, verdict.reason, verdict.detail, trace.id)

    def _verdict(self, trace: Trace) -> tuple[Verdict | None, str]:
        problems = validate_trace(trace)
        if problems:
            return Verdict("invalid_trace", "; ".join(problems[:5])), "schema"
        text = dedup_text(trace)
        if trace.kind != "tool":
            verdict = quality_verdict(text, self.recipe.filters)
            if verdict:
                return verdict, "quality"
        # Duplicates name where the kept row was read (two rows may share an id; two Hub sources both have a
        # `train[0]`), which also keeps one row's label from matching another's.
        where = f"{trace.origin} ({trace.source})"
        verdict = self.exact.check_and_add(content_hash(text), where)
        if verdict:
            return verdict, "exact_dedup"
        hashes = word_hashes(text)
        if self.near is not None and (verdict := self.near.check_and_add(hashes, where)):
            return verdict, "near_dedup"
        verdict = self.contamination.task_verdict(trace.meta.get("task_id"))
        verdict = verdict or self.contamination.verdict(hashes)
        return (verdict, "decontam") if verdict else (None, "")

    def accept(self, category: str, seq: int, trace: Trace, rendered: Rendered | str) -> Reject | None:
        """A rendered row: spill it, or say why not (render error, too long)."""
        if isinstance(rendered, str):
            return Reject(trace.source, trace.origin, "render", "render_error", rendered, trace.id)
        self.template_check(trace)
        n_tokens = len(rendered.input_ids)
        if n_tokens > self.recipe.max_seq_len:
            detail = f"{n_tokens} tokens > max_seq_len {self.recipe.max_seq_len}"
            return Reject(trace.source, trace.origin, "render", "too_long_tokens", detail, trace.id)
        tool = trace.kind == "tool"
        difficulty = len(trace.calls()) if tool else 0
        n_loss = rendered.n_loss_tokens if tool else n_tokens  # documents: every token is in the loss
        chat = chat_columns(trace, self.tokenizer, self.schema)
        row = self.spill.add(trace, category, rendered, difficulty, n_loss, chat)
        self.meta.append(_RowMeta(trace.source, trace.cluster, n_tokens, n_loss, difficulty))
        pool = self.pools[trace.source]
        pool.rows.append(row)
        pool.tokens.append(n_tokens)
        pool.ids.append(trace.id)
        pool.eval_mask.append(is_eval_id(trace.id, self.recipe.seed, self.recipe.eval_fraction))
        stats = self.stats[trace.source]
        stats.rows_clean += 1
        stats.tokens_in += n_tokens
        return None

    # -- mix -----------------------------------------------------------------------------------------------
    def _mix(self) -> tuple[Any, dict[str, Any]]:
        plan = plan_mix(self.recipe, self.pools)
        selections = {
            name: sample_source(pool, plan.source_targets[name], self.recipe.seed)
            for name, pool in self.pools.items()
        }
        return plan, selections

    # -- outputs -------------------------------------------------------------------------------------------
    def _write_outputs(self, selections: dict[str, Any]) -> dict[str, dict[str, Any]]:
        train = [item for sel in selections.values() for item in sel.train]
        evals = [row for sel in selections.values() for row in sel.eval]
        difficulty = {row: self.meta[row].difficulty for row, _ in train}
        train = order_train(train, difficulty, self.recipe.seed, self.recipe.curriculum)
        ordered_eval = [(row, 0) for row in order_eval(evals, self.recipe.seed)]
        files: dict[str, dict[str, Any]] = {}
        shuffler = _Shuffler(self.work / "spill.parquet", self.spill.row_group_starts, self.work)
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


@lru_cache(maxsize=2)
def _tokenizer(ref: str, chat_template: str, revision: str | None, tool_format: str) -> Any:
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


_WORKER: dict[str, Any] = {}


def _worker_context() -> Any:
    """forkserver where the OS has it, else spawn; never a plain fork of this process.

    The builder runs with threads alive (the tokenizer's Rust pool, tqdm's monitor, torch's OpenMP pool): a
    fork copies their locks in whatever state they are, and a worker that starts holding one never runs and
    never dies (a CI run hung 15 min in `Pool.terminate` on such a worker). The forkserver is a fresh
    single-threaded process; it imports this module once, so each worker still starts in milliseconds and only
    loads the tokenizer (from the local cache: the parent has already loaded it)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _worker_init(settings: dict[str, Any], schema_name: str) -> None:
    """Each worker loads its own tokenizer and schema."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    # Ctrl-C reaches the whole process group: the parent stops the pool and reports once; workers stay quiet.
    # SIGTERM (Pool.terminate) must kill a worker even when it is inside native code: the default action.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER["tokenizer"] = load_tokenizer(
        settings["tokenizer"],
        settings["chat_template"],
        settings["tokenizer_revision"],
        settings["tool_format"],
    )
    _WORKER["schema"] = load_thought_schema(schema_name)


def _worker_render(traces_json: list[str]) -> list[tuple[list[int], list[int]] | str]:
    traces = [Trace.model_validate_json(t) for t in traces_json]
    out = render_rows(traces, _WORKER["tokenizer"], _WORKER["schema"])
    return [r if isinstance(r, str) else (r.input_ids, r.assistant_masks) for r in out]


class _RenderPool:
    """Renders batches in submission order, overlapped with cleaning.

    num_proc 1: one render thread. Tokenization runs in Rust without the GIL, so the main thread cleans the
    next batch meanwhile. num_proc N: N worker processes (the chat template is Python, so tool traces need
    processes to scale). Either way at most 2×N batches are in flight, which bounds memory."""

    def __init__(self, builder: _Builder) -> None:
        self.builder = builder
        self.pool: Any = None
        self.thread: ThreadPoolExecutor | None = None
        self.pending: deque[tuple[Any, str, list[tuple[int, Trace]], list[tuple[int, Reject]]]] = deque()

    def __enter__(self) -> _RenderPool:
        if self.builder.num_proc <= 1:
            self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")
            return self
        initargs = (asdict(self.builder.settings), self.builder.schema_name)
        self.pool = _worker_context().Pool(self.builder.num_proc, initializer=_worker_init, initargs=initargs)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.thread is not None:
            self.thread.shutdown(wait=True, cancel_futures=True)
        if self.pool is not None:
            if exc_type is None:  # every batch collected: idle workers exit on the close sentinel
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()

    def submit(
        self, category: str, batch: list[tuple[int, Trace]], rejects: list[tuple[int, Reject]]
    ) -> None:
        if not batch:
            return
        traces = [t for _, t in batch]
        if self.thread is not None:
            job = self.thread.submit(render_rows, traces, self.builder.tokenizer, self.builder.schema)
        else:
            job = self.pool.apply_async(_worker_render, ([trace_json(t) for t in traces],))
        self.pending.append((job, category, batch, rejects))
        while len(self.pending) > 2 * self.builder.num_proc:
            self._collect()

    def oldest_pending(self, default: int) -> int:
        """Row number of the first row still being rendered (its rejects are not known yet)."""
        return self.pending[0][2][0][0] if self.pending else default

    def drain(self) -> None:
        while self.pending:
            self._collect()

    def _collect(self) -> None:
        job, category, batch, rejects = self.pending.popleft()
        if self.thread is not None:
            rendered = job.result()
        else:
            rendered = [r if isinstance(r, str) else Rendered(list(r[0]), list(r[1])) for r in job.get()]
        self._accept(category, batch, rendered, rejects)

    def _accept(
        self, category: str, batch: list[tuple[int, Trace]], rendered: list[Any], rejects: list[Any]
    ) -> None:
        for (seq, trace), item in zip(batch, rendered, strict=True):
            reject = self.builder.accept(category, seq, trace, item)
            if reject is not None:
                rejects.append((seq, reject))


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


class _Spill:
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
            ("input_ids", rendered.input_ids),
            ("assistant_masks", rendered.assistant_masks if tool else None),  # documents: all ones
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
        np.array(x, dtype=dtype) if x is not None else np.ones(n, dtype=dtype)
        for x, n in zip(lists, lengths, strict=True)
    ]
    values = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


class _Shuffler:
    """Writes rows of the spill, in any global order, as output shards, reading the spill once per group of
    up to MAX_OPEN_BUCKETS shards (not once per shard: a shuffled shard draws from every spill row group).

    Pass 1 streams the spill's row groups and appends each wanted row, tagged with its output position, to
    its shard's bucket file; pass 2 sorts one bucket at a time by position and writes the shard. Memory: one
    spill row group plus one shard."""

    def __init__(self, spill: Path, row_group_starts: list[int], work: Path) -> None:
        self.file = pq.ParquetFile(spill)
        self.starts = row_group_starts
        self.work = work

    def write(self, prefix: str, rows: list[tuple[int, int]], shard_rows: int) -> list[tuple[Path, pa.Table]]:
        """(path, the shard's small columns) per shard written; `rows` are (spill row, epoch) in output order."""
        n_shards = -(-len(rows) // shard_rows)
        written = []
        for first in range(0, n_shards, MAX_OPEN_BUCKETS):
            shards = range(first, min(first + MAX_OPEN_BUCKETS, n_shards))
            buckets = self._fill_buckets(rows, shard_rows, shards)
            for shard in shards:
                path = self.work / f"{prefix}-{shard:05d}.parquet"
                written.append((path, self._finish(buckets[shard], rows, path)))
        return written

    def _fill_buckets(self, rows: list[tuple[int, int]], shard_rows: int, shards: range) -> dict[int, Path]:
        by_group: dict[int, list[int]] = defaultdict(list)  # spill row group → output positions, ascending
        for pos in range(shards.start * shard_rows, min(shards.stop * shard_rows, len(rows))):
            by_group[bisect.bisect_right(self.starts, rows[pos][0]) - 1].append(pos)
        paths = {shard: self.work / f"bucket-{shard:05d}.parquet" for shard in shards}
        writers: dict[int, pq.ParquetWriter] = {}
        try:
            for group in sorted(by_group):
                positions = by_group[group]
                piece = self.file.read_row_group(group).take(
                    [rows[p][0] - self.starts[group] for p in positions]
                )
                piece = piece.append_column("_pos", pa.array(positions, type=pa.int64()))
                start = 0
                for shard, run in itertools.groupby(positions, key=lambda p: p // shard_rows):
                    length = len(list(run))
                    if shard not in writers:
                        writers[shard] = pq.ParquetWriter(paths[shard], piece.schema, compression="none")
                    writers[shard].write_table(piece.slice(start, length))
                    start += length
        finally:
            for writer in writers.values():
                writer.close()
        return paths

    def _finish(self, bucket: Path, rows: list[tuple[int, int]], path: Path) -> pa.Table:
        table = pq.read_table(bucket).sort_by("_pos")
        bucket.unlink()
        epochs = pa.array([rows[p][1] for p in table["_pos"].to_pylist()], type=pa.int32())
        table = table.drop_columns(["_pos"]).add_column(
            OUTPUT_SCHEMA.get_field_index("epoch"), "epoch", epochs
        )
        _write_parquet(table, path)
        return table.select(["n_tokens", "n_loss_tokens"])


def _write_parquet(table: pa.Table, path: Path) -> None:
    # One contiguous chunk per column: the bytes then depend on the rows alone, not on how they were gathered.
    with pq.ParquetWriter(path, OUTPUT_SCHEMA, **PARQUET_OPTIONS) as writer:
        writer.write_table(table.cast(OUTPUT_SCHEMA).combine_chunks(), row_group_size=OUTPUT_ROW_GROUP)


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
