"""The parallel step of a data build: one work unit (pipelines/data/plan.py) → the unit's files.

Per row, in the unit's order: read → Trace → schema validation → quality filters (code/text) → content digest
→ MinHash values → decontamination (the eval n-gram index, built once by the driver and loaded here) →
render + tokenize in batches (a render thread overlaps tokenization, which runs in Rust without the GIL, with
the next rows' cleaning) → reject rows longer than `max_seq_len` → the unit's spill parquet.

Which rows are duplicates is not decided here: that needs every unit (pipelines/data/dedup.py). A unit writes
each candidate row's dedup keys instead; only a row that repeats an earlier row of the same unit exactly is
known to be dropped already, and is not rendered. The unit's folder, `units/NNNNNN/`:
- `rows.parquet`: rendered rows (the build's spill schema), in row order;
- `cands.parquet`: per candidate (a row that passed the filters): its row number, origin, id, spill row;
- `digest.npy`, `has_sig.npy`, `sig.npy`: the dedup keys;
- `rejects.jsonl`: rows dropped here, `[row number, candidate or -1, stage/reason, reject JSON]` in row order;
- `done.json`, written last: counts, the reader's lockfile entry, the spill's row groups.

Nothing in a unit's files depends on which process or machine ran it, or on what else ran there.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import pickle
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.chat import Rendered, load_tokenizer, tokenizer_class_of

# The output rows' format (spill schema, rendering, batching) is the build's; ingest.py and build.py import
# each other, so only attributes of the module are used, at run time.
from pipelines.data import build as output
from pipelines.data.clean import (
    NearDeduper,
    Verdict,
    content_digest,
    dedup_text,
    quality_verdict,
    word_hashes,
)
from pipelines.data.decontam import ContaminationIndex
from pipelines.data.plan import BuildPlan, WorkUnit
from pipelines.data.sources import Reject, open_source
from pipelines.errors import MidtrainError
from pipelines.progress import progress_bar
from pipelines.schema import Trace, validate_trace
from pipelines.template_check import FirstRowsCheck
from pipelines.thought import load_thought_schema

UNITS = "units"
DONE = "done.json"
FAILED = "failed"
DECONTAM_INDEX = "decontam.pkl"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_CLASS = "class.txt"
CANDS_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("origin", pa.string()),
        ("trace_id", pa.string()),
        ("spill_row", pa.int32()),
    ]
)


def unit_dir(work: Path, index: int) -> Path:
    return work / UNITS / f"{index:06d}"


def write_unit_tokenizer(work: Path, tokenizer: Any) -> None:
    """The driver's tokenizer, saved with the class AutoTokenizer chose, for the processes that run units."""
    folder = work / TOKENIZER_DIR
    tokenizer.save_pretrained(str(folder))
    (folder / TOKENIZER_CLASS).write_text(tokenizer_class_of(tokenizer) + "\n", encoding="utf-8")


def unit_tokenizer(work: Path, settings: Any) -> Any:
    """The build's tokenizer in a process that runs units. The driver (and a 1-worker build, whose units run in
    it) has it loaded already; a worker process or a cluster task loads the copy the driver saved, with the class
    AutoTokenizer chose there, and never imports AutoTokenizer: that import pulls in torch, +400 MB of RSS per
    worker for nothing (a worker only tokenizes). Same rendering, same bytes: the byte-identity tests compare
    builds whose units ran in the driver with builds whose units ran in workers."""
    s = settings
    driver = output.tokenizer_for.cache_info().currsize > 0  # this process has loaded the build's tokenizer
    if driver:
        return output.tokenizer_for(s.tokenizer, s.chat_template, s.tokenizer_revision, s.tool_format)
    folder = work / TOKENIZER_DIR
    reference = (folder / TOKENIZER_CLASS).read_text(encoding="utf-8").strip()
    return load_tokenizer(str(folder), local_files_only=True, tokenizer_class=reference)


def write_decontam_index(work: Path, index: ContaminationIndex) -> None:
    """The driver builds the eval index once; every worker loads this copy (a broadcast, not a rebuild)."""
    index.verdict(np.empty(0, dtype=np.uint64))  # freeze the sorted arrays before pickling them
    with (work / DECONTAM_INDEX).open("wb") as handle:
        pickle.dump(index, handle, protocol=pickle.HIGHEST_PROTOCOL)


# -- running units: what every executor calls -----------------------------------------------------------------
def run_units(work: Path, rank: int, world_size: int) -> None:
    """Process units `rank::world_size` of the plan in `work`, skipping units already done. A user-facing
    error stops this rank and is written to `failed/`, where the driver reads it back (executors on other
    machines cannot raise into the driver); anything else propagates as the bug it is."""
    context = UnitContext.load(work)
    for unit in context.plan.units[rank::world_size]:
        if (unit_dir(work, unit.index) / DONE).is_file():
            continue
        try:
            ingest_unit(context, unit)
        except MidtrainError as exc:
            record_failure(work, unit.index, exc)
            return


def record_failure(work: Path, index: int, exc: MidtrainError) -> None:
    folder = work / FAILED
    folder.mkdir(exist_ok=True)
    record = {"unit": index, "type": type(exc).__name__, "exit_code": exc.exit_code, "message": str(exc)}
    (folder / f"{index:06d}.json").write_text(json.dumps(record), encoding="utf-8")


@dataclass
class UnitContext:
    """What every unit of a build needs, loaded once per process and reused for its units."""

    work: Path
    plan: BuildPlan
    tokenizer: Any
    schema: Any
    contamination: ContaminationIndex
    near: NearDeduper | None
    _cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, work: Path) -> UnitContext:
        key = str(work)
        if _CONTEXTS.get("key") == key:
            return _CONTEXTS["context"]
        plan = BuildPlan.read(work)
        s = plan.settings
        with (work / DECONTAM_INDEX).open("rb") as handle:
            contamination = pickle.load(handle)
        near = plan.recipe.near_dedup
        context = cls(
            work=work,
            plan=plan,
            tokenizer=unit_tokenizer(work, s),
            schema=load_thought_schema(plan.schema_name),
            contamination=contamination,
            near=NearDeduper(near) if near.enabled else None,
        )
        _CONTEXTS.update(key=key, context=context)
        return context


_CONTEXTS: dict[str, Any] = {}


# -- one unit ------------------------------------------------------------------------------------------------
def ingest_unit(context: UnitContext, unit: WorkUnit) -> None:
    folder = unit_dir(context.work, unit.index)
    folder.mkdir(parents=True, exist_ok=True)
    plan = context.plan
    spec = plan.spec(unit.source)
    reader = open_source(spec, unit.category, plan.hub_commits.get(spec.name), unit.part)
    if spec.type == "teacher":  # the teacher is asked for, and checked against, the mix's thought schema
        reader.thought_schema = plan.schema_name  # type: ignore[attr-defined]
    if plan.offline_teacher:
        from pipelines.tasks.llm_teacher import offline_teacher

        with offline_teacher():
            rows = _UnitRows(context, unit, folder)
            rows.consume(reader.rows())
    else:
        rows = _UnitRows(context, unit, folder)
        rows.consume(reader.rows())
    revision = reader.part_revision() if unit.part else reader.revision()  # type: ignore[attr-defined]
    rows.finish(revision)


PROGRESS_EVERY_ROWS = 64  # the bar redraws 10 times a second at most; a row count is cheap


def _no_update(*args: Any, **kwargs: Any) -> None:
    return None


class _UnitRows:
    """One unit's rows on their way to its files (see the module doc)."""

    def __init__(self, context: UnitContext, unit: WorkUnit, folder: Path) -> None:
        self.context, self.unit, self.folder = context, unit, folder
        self.recipe = context.plan.recipe
        self.spill = output.Spill(folder / "rows.parquet")
        self.template_check = FirstRowsCheck(context.tokenizer, context.schema)
        self.rows_in = self.kept = self.tokens = 0
        self.cands: dict[str, list[Any]] = {name: [] for name in CANDS_SCHEMA.names}
        self.digests: list[bytes] = []
        self.first_digest: dict[bytes, int] = {}
        self.has_sig: list[bool] = []
        self.sigs: list[np.ndarray] = []
        self.rejects: list[tuple[int, int, str, str]] = []
        self.render = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")
        self.pending: deque[tuple[Future, list[tuple[int, int, Trace]]]] = deque()

    # -- reading and cleaning -----------------------------------------------------------------------------
    def consume(self, items: Any) -> None:
        # A bar per unit where the unit runs in the command's own process (the local executor with one worker);
        # bars drawn by several worker processes would overwrite each other.
        label = f"{self.unit.category}/{self.unit.source}"
        in_driver = multiprocessing.parent_process() is None
        with progress_bar(label, unit="rows") if in_driver else contextlib.nullcontext(_no_update) as update:
            self._consume(items, update)
            update(completed=self.rows_in, note=self._progress_note())

    def _progress_note(self) -> str:
        return f"{self.kept:,} kept · {self.tokens:,} tokens · {len(self.rejects):,} rejected"

    def _consume(self, items: Any, update: Any) -> None:
        batch: list[tuple[int, int, Trace]] = []
        chars = 0
        try:
            for seq, item in enumerate(items):
                self.rows_in += 1
                if seq % PROGRESS_EVERY_ROWS == 0:
                    update(completed=self.rows_in, note=self._progress_note())
                if isinstance(item, Reject):
                    self.reject(seq, -1, item)
                    continue
                trace = self.candidate(seq, item)
                if trace is None:
                    continue
                batch.append((seq, len(self.digests) - 1, trace))
                chars += len(trace.text) + sum(len(m.content) for m in trace.messages)
                if len(batch) >= output.RENDER_BATCH_ROWS or chars >= output.RENDER_BATCH_CHARS:
                    self.submit(batch)
                    batch, chars = [], 0
            self.submit(batch)
            while self.pending:
                self.collect()
        finally:
            self.render.shutdown(wait=True, cancel_futures=True)

    def candidate(self, seq: int, trace: Trace) -> Trace | None:
        """Record a row that passes the filters as a dedup candidate; the trace when it is to be rendered."""
        text = dedup_text(trace)
        verdict, stage = _filter_verdict(trace, text, self.recipe)
        if verdict is not None:
            self.reject(seq, -1, _reject(trace, stage, verdict))
            return None
        digest = content_digest(text)
        cand = len(self.digests)
        self.digests.append(digest)
        for name, value in (
            ("seq", seq),
            ("origin", trace.origin),
            ("trace_id", trace.id),
            ("spill_row", -1),
        ):
            self.cands[name].append(value)
        if self.first_digest.setdefault(digest, cand) != cand:
            self.has_sig.append(False)  # an exact duplicate within the unit: dropped whatever else happens
            return None
        hashes = word_hashes(text)
        values = self.context.near.signature_values(hashes) if self.context.near is not None else None
        self.has_sig.append(values is not None)
        if values is not None:
            self.sigs.append(values)
        contamination = self.context.contamination
        verdict = contamination.task_verdict(trace.meta.get("task_id")) or contamination.verdict(hashes)
        if verdict is not None:
            self.reject(seq, cand, _reject(trace, "decontam", verdict))
            return None
        return trace

    def reject(self, seq: int, cand: int, reject: Reject) -> None:
        self.rejects.append((seq, cand, reject.key, reject.to_json()))

    # -- rendering ------------------------------------------------------------------------------------------
    def submit(self, batch: list[tuple[int, int, Trace]]) -> None:
        if not batch:
            return
        traces = [t for _, _, t in batch]
        job = self.render.submit(output.render_rows, traces, self.context.tokenizer, self.context.schema)
        self.pending.append((job, batch))
        while len(self.pending) > 2:  # bounded: at most two batches in flight
            self.collect()

    def collect(self) -> None:
        job, batch = self.pending.popleft()
        for (seq, cand, trace), rendered in zip(batch, job.result(), strict=True):
            problem = self.accept(cand, trace, rendered)
            if problem is not None:
                self.reject(seq, cand, problem)

    def accept(self, cand: int, trace: Trace, rendered: Rendered | str) -> Reject | None:
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
        chat = output.chat_columns(trace, self.context.tokenizer, self.context.schema)
        self.cands["spill_row"][cand] = self.spill.add(
            trace, self.unit.category, rendered, difficulty, n_loss, chat
        )
        self.kept += 1
        self.tokens += n_tokens
        return None

    # -- the unit's files -----------------------------------------------------------------------------------
    def finish(self, revision: dict[str, Any]) -> None:
        self.spill.close()
        folder = self.folder
        table = pa.table(
            {n: pa.array(self.cands[n], type=CANDS_SCHEMA.field(n).type) for n in CANDS_SCHEMA.names}
        )
        pq.write_table(table, folder / "cands.parquet", compression="none")
        digests = np.frombuffer(b"".join(self.digests), dtype=np.uint8).reshape(-1, 16)
        np.save(folder / "digest.npy", digests)
        np.save(folder / "has_sig.npy", np.array(self.has_sig, dtype=bool))
        num_perm = self.recipe.near_dedup.num_perm
        sigs = np.stack(self.sigs) if self.sigs else np.empty((0, num_perm), dtype=np.uint32)
        np.save(folder / "sig.npy", sigs)
        self.rejects.sort(key=lambda r: r[0])
        with (folder / "rejects.jsonl").open("w", encoding="utf-8") as out:
            for record in self.rejects:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        summary = {
            "unit": self.unit.index,
            "source": self.unit.source,
            "rows_in": self.rows_in,
            "candidates": len(self.digests),
            "spilled": self.spill.rows,
            "row_group_starts": self.spill.row_group_starts,
            "revision": revision,
        }
        partial = folder / f"{DONE}.{os.getpid()}"
        partial.write_text(json.dumps(summary, ensure_ascii=False), encoding="utf-8")
        partial.rename(folder / DONE)  # last, and atomic: a unit with done.json is complete


def _filter_verdict(trace: Trace, text: str, recipe: Any) -> tuple[Verdict | None, str]:
    problems = validate_trace(trace)
    if problems:
        return Verdict("invalid_trace", "; ".join(problems[:5])), "schema"
    if trace.kind != "tool":
        verdict = quality_verdict(text, recipe.filters)
        if verdict:
            return verdict, "quality"
    return None, ""


def _reject(trace: Trace, stage: str, verdict: Verdict) -> Reject:
    return Reject(trace.source, trace.origin, stage, verdict.reason, verdict.detail, trace.id)
