"""Recipe sources → a stream of Traces (and rejects), plus what the manifest needs to pin each source.

Every reader yields, in a deterministic order, either a `Trace` or a `Reject` (a row that could not become a
Trace, with its reason), and after the stream is exhausted `revision()` says exactly which bytes were read:
a Hub commit sha, a file sha256, or the Python version + a sha256 over the harvested stdlib files.
Readers stream: nothing here holds more than one row (or one generated batch) at a time.

Hub sources are pinned by commit: `resolve_hub_commits` turns each source's `revision` (a branch, a tag or a
sha) into the 40-hex commit it names, before the build reads anything; the rows are read at that commit and the
lockfile records it next to the revision as written, and `data verify` rebuilds at the recorded commit.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pipelines.errors import BadInput
from pipelines.hashing import update_with_file
from pipelines.recipe import (
    GeneratedSource,
    HFSource,
    LocalSource,
    PydocTextSource,
    PythonCodeSource,
    Recipe,
    SourceBase,
    TeacherSource,
)
from pipelines.schema import Trace

_ALWAYS_SKIPPED_DIRS = {"__pycache__", "site-packages", "dist-packages"}


@dataclass(frozen=True)
class Reject:
    """One dropped row, as written to rejects.jsonl; `reason` is a fixed code, `detail` the specifics."""

    source: str
    row_id: str  # where the row was read: `file.jsonl:LINE`, `file.parquet[INDEX]`, `SPLIT[INDEX]`
    stage: str
    reason: str
    detail: str = ""
    trace_id: str = ""  # the row's own id, once it became a Trace (ids need not be unique)

    def to_json(self) -> str:
        record = {k: v for k, v in asdict(self).items() if v or k != "trace_id"}
        return json.dumps(record, ensure_ascii=False, sort_keys=True)

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.reason}"


class SourceReader:
    """Base: `rows()` streams Trace | Reject; `revision()` is valid once the stream is exhausted."""

    def __init__(self, spec: SourceBase, category: str) -> None:
        self.spec = spec
        self.category = category
        self._digest = hashlib.sha256()

    def rows(self) -> Iterator[Trace | Reject]:
        raise NotImplementedError

    def revision(self) -> dict[str, Any]:
        return {"sha256": self._digest.hexdigest()}

    def reject(self, row_id: str, reason: str, detail: str = "", stage: str = "source") -> Reject:
        return Reject(self.spec.name, row_id, stage, reason, detail)

    def finish(self, trace: Trace, origin: str | None = None) -> Trace:
        """Apply the recipe's cluster labels: a fixed `cluster` wins, then `cluster_by_pattern`, else the row's.
        `origin` is where the row was read, when that is not its id."""
        cluster = self.spec.cluster_of(str(trace.meta.get("pattern", "")))
        updates: dict[str, Any] = {"source": self.spec.name}
        if cluster:
            updates["cluster"] = cluster
        finished = trace.model_copy(update=updates)
        return finished.with_origin(origin) if origin else finished


# -- python_code ---------------------------------------------------------------------------------------------
class PythonCodeReader(SourceReader):
    """`.py` files of the standard library (PSF) or of installed packages (license from their metadata)."""

    spec: PythonCodeSource

    def rows(self) -> Iterator[Trace | Reject]:
        read = 0
        for label, root, license_name in self._roots():
            for path in _python_files(root, set(self.spec.exclude)):
                if self.spec.max_rows is not None and read >= self.spec.max_rows:
                    return
                read += 1
                yield self._row(label, root, path, license_name)

    def _roots(self) -> list[tuple[str, Path, str]]:
        roots = []
        for root in self.spec.roots:
            if root == "stdlib":
                roots.append(("stdlib", Path(sysconfig.get_paths()["stdlib"]), "PSF"))
                continue
            path = Path(root).expanduser()
            if not path.is_dir():
                raise BadInput(f"source {self.spec.name!r}: python_code root {root!r} is not a directory")
            roots.append((path.name, path, distribution_license(path)))
        return roots

    def _row(self, label: str, root: Path, path: Path, license_name: str) -> Trace | Reject:
        rel = path.relative_to(root).as_posix()
        row_id = f"{self.spec.name}:{label}/{rel}"
        data = path.read_bytes()
        self._digest.update(f"{label}/{rel}\0{len(data)}\0".encode())
        self._digest.update(data)
        if not _license_allowed(license_name, self.spec.licenses):
            return self.reject(row_id, "license", f"license {license_name!r} not in {self.spec.licenses}")
        if len(data) < self.spec.min_bytes:
            return self.reject(row_id, "too_small", f"{len(data)} bytes < min_bytes {self.spec.min_bytes}")
        if len(data) > self.spec.max_bytes:
            return self.reject(row_id, "too_large", f"{len(data)} bytes > max_bytes {self.spec.max_bytes}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self.reject(row_id, "not_utf8", str(exc))
        meta = {"path": f"{label}/{rel}", "license": license_name}
        trace = Trace(id=row_id, source=self.spec.name, kind="code", cluster="code", text=text, meta=meta)
        return self.finish(trace)

    def revision(self) -> dict[str, Any]:
        out: dict[str, Any] = {"python": platform.python_version(), "sha256": self._digest.hexdigest()}
        packages = [r for r in self.spec.roots if r != "stdlib"]
        if packages:
            out["licenses"] = {Path(r).name: distribution_license(Path(r)) for r in packages}
        return out


def _python_files(root: Path, exclude: set[str]) -> Iterator[Path]:
    """Sorted so the harvest order, and so first-occurrence dedup, is the same on every machine."""
    skipped = exclude | _ALWAYS_SKIPPED_DIRS
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if not (set(parts[:-1]) & skipped) and path.is_file():
            yield path


def distribution_license(package_dir: Path) -> str:
    """License of the installed distribution that owns a top-level package directory ("unknown" if none)."""
    owners = importlib.metadata.packages_distributions().get(package_dir.name, [])
    for dist_name in sorted(owners):
        meta = importlib.metadata.metadata(dist_name)
        # PackageMetadata is an email.message.Message, whose `get` typeshed declares only from Python 3.12.
        expression = meta.get("License-Expression")  # type: ignore[attr-defined]
        if expression:
            return expression.strip()
        classifiers = [
            c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")
        ]
        if classifiers:
            return "; ".join(classifiers)
        text = (meta.get("License") or "").strip()  # type: ignore[attr-defined]  # as above
        if text:
            return text.splitlines()[0][:100]
    return "unknown"


def _license_allowed(license_name: str, allowed: list[str]) -> bool:
    """SPDX-style: `A OR B` needs one alternative allowed, `A AND B` needs every part allowed. Allowed names
    match as case-insensitive substrings, so `BSD` admits "BSD-3-Clause" and "BSD License"."""
    names = [a.lower() for a in allowed]

    def part_ok(part: str) -> bool:
        part = part.strip(" ()").lower()
        return bool(part) and any(name in part for name in names)

    alternatives = re.split(r"\s+OR\s+", license_name)
    return any(all(part_ok(p) for p in re.split(r"\s+AND\s+|;", alt)) for alt in alternatives)


# -- pydoc_text ----------------------------------------------------------------------------------------------
class PydocTextReader(SourceReader):
    """The standard library's reference topics (`pydoc_data.topics`): one document per topic, title + text,
    or paragraph-aligned parts of at most `max_chunk_chars` (long topics would exceed `max_seq_len`)."""

    spec: PydocTextSource

    def rows(self) -> Iterator[Trace | Reject]:
        from pydoc_data.topics import topics

        for n, key in enumerate(sorted(topics)):
            if self.spec.max_rows is not None and n >= self.spec.max_rows:
                return
            body = topics[key]
            self._digest.update(f"{key}\0{body}\0".encode())
            parts = _paragraph_chunks(body, self.spec.max_chunk_chars)
            for i, part in enumerate(parts):
                row_id = f"{self.spec.name}:{key}" + (f"#{i}" if len(parts) > 1 else "")
                title = key if len(parts) == 1 else f"{key} (part {i + 1}/{len(parts)})"
                text = f"{title}\n\n{part}".strip()
                if len(text) < self.spec.min_chars:
                    yield self.reject(
                        row_id, "too_small", f"{len(text)} chars < min_chars {self.spec.min_chars}"
                    )
                    continue
                meta = {"topic": key, "part": i}
                yield self.finish(
                    Trace(id=row_id, source=self.spec.name, kind="text", cluster="text", text=text, meta=meta)
                )

    def revision(self) -> dict[str, Any]:
        return {"python": platform.python_version(), "sha256": self._digest.hexdigest()}


def _paragraph_chunks(text: str, max_chars: int | None) -> list[str]:
    """Greedy packing of blank-line-separated paragraphs; a paragraph is never cut (it may exceed the cap)."""
    if max_chars is None or len(text) <= max_chars:
        return [text]
    chunks: list[str] = []
    current = ""
    for para in text.split("\n\n"):
        candidate = f"{current}\n\n{para}" if current else para
        if current and len(candidate) > max_chars:
            chunks.append(current)
            candidate = para
        current = candidate
    if current.strip():
        chunks.append(current)
    return chunks


# -- generated -----------------------------------------------------------------------------------------------
class GeneratedReader(SourceReader):
    """Executed, verified traces from the built-in environments (pipelines.tasks.generate)."""

    spec: GeneratedSource

    def rows(self) -> Iterator[Trace | Reject]:
        from pipelines.tasks.domains import DOMAINS
        from pipelines.tasks.generate import generate_traces

        spec = self.spec
        domains = sorted(DOMAINS) if spec.domains == ["all"] else spec.domains
        n = min(spec.n, spec.max_rows) if spec.max_rows else spec.n
        result = generate_traces(domains, n, spec.seed, spec.patterns, offer=spec.tool_offer())
        for trace in result.traces:
            self._digest.update(trace.to_json().encode("utf-8") + b"\n")
            yield self.finish(trace)
        for reject in result.rejects:  # {"id", "reason", "detail"}: draws that failed verification
            yield self.reject(
                reject.get("id", ""), reject.get("reason", "generation"), reject.get("detail", ""), "generate"
            )

    def revision(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "generator": "pipelines.tasks.generate",
            "domains": spec.domains,
            "seed": spec.seed,
            "n": spec.n,
            "sha256": self._digest.hexdigest(),
        }


# -- teacher -------------------------------------------------------------------------------------------------
class TeacherReader(SourceReader):
    """Traces an LLM teacher writes over a task file's train rows, verified (pipelines.tasks.llm_teacher); the task
    file's bad rows and the teacher's failed episodes are rejects with their reasons."""

    spec: TeacherSource

    def rows(self) -> Iterator[Trace | Reject]:
        from pipelines.tasks.llm_teacher import teacher_traces
        from pipelines.tasks.task_file import load_task_file
        from pipelines.thought import load_thought_schema

        spec = self.spec
        assert spec.cache is not None, "pin_paths sets the cache path"
        task_set = load_task_file(spec.tasks, spec.env)
        for bad in task_set.rejects:
            yield self.reject(
                f"{bad['file']}:{bad['line']}", bad["reason"], f"{bad['id']}: {bad['detail']}", "tasks"
            )
        tasks = task_set.train[: spec.max_rows] if spec.max_rows else task_set.train
        self._tasks_sha256 = path_sha256(task_set.path)
        held = frozenset(" ".join(t.request.lower().split()) for t in task_set.heldout)
        run = teacher_traces(
            tasks, task_set.envs, spec.teacher, Path(spec.cache), load_thought_schema(self.thought_schema),
            spec.samples_per_task, spec.seed, spec.replay, propose=spec.propose, avoid=held,
        )  # fmt: skip
        self._run = run
        for item in run.results:
            if isinstance(item, Trace):
                self._digest.update(item.to_json().encode("utf-8") + b"\n")
                yield self.finish(item)
            else:
                yield self.reject(item["id"], item["reason"], item["detail"], "teacher")

    thought_schema = "think-plan-reflect"  # set by the builder to the recipe's schema

    def revision(self) -> dict[str, Any]:
        run = getattr(self, "_run", None)
        return {
            "teacher": self.spec.teacher.model,
            "tasks": self.spec.tasks,
            "tasks_sha256": getattr(self, "_tasks_sha256", ""),
            "cache": self.spec.cache,
            "cache_sha256": run.cache_sha256 if run else "",
            "responses_used": (run.requests + run.cached) if run else 0,
            "sha256": self._digest.hexdigest(),
        }


# -- Hub revisions -------------------------------------------------------------------------------------------
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


def resolve_hub_commits(recipe: Recipe, pinned: dict[str, str] | None = None) -> dict[str, str]:
    """Source name → the Hub commit sha each `hf` source reads. `pinned` (a lockfile's commits, for `data verify`)
    wins over resolving; local dataset folders have no commit and are left out."""
    commits: dict[str, str] = {}
    for _, spec in recipe.sources():
        if not isinstance(spec, HFSource):
            continue
        commit = (pinned or {}).get(spec.name) or hub_commit(spec)
        if commit is not None:
            commits[spec.name] = commit
    return commits


def hub_commit(spec: HFSource) -> str | None:
    """The commit sha `spec.revision` names on the Hub (`HfApi().dataset_info(...).sha`); a revision that is already
    a 40-hex sha needs no network. None for a local dataset folder, which `datasets` reads without a revision."""
    if Path(spec.dataset).expanduser().exists():
        return None
    if _COMMIT_SHA.fullmatch(spec.revision):
        return spec.revision
    from huggingface_hub import HfApi, constants

    from pipelines.data.hub_access import dataset_hub_errors

    where = f"hf source {spec.name!r}: dataset {spec.dataset!r} revision {spec.revision!r}"
    offline = (
        " is not a commit sha, and HF_HUB_OFFLINE is set, so it cannot be resolved to one.\n"
        "  Pin the commit in the recipe (`revision: <40-hex sha>`, listed at "
        f"{constants.ENDPOINT}/datasets/{spec.dataset}/commits/{spec.revision}) to build offline from the "
        "cache, or unset HF_HUB_OFFLINE."
    )
    unreachable = (
        "cannot reach the Hub to resolve it to a commit ({error}).\n"
        "  Offline: pin `revision:` to the commit sha and set HF_HUB_OFFLINE=1 to read the cached copy."
    )
    with dataset_hub_errors(where, offline, unreachable):
        info = HfApi().dataset_info(spec.dataset, revision=spec.revision)
    if not isinstance(info.sha, str) or not _COMMIT_SHA.fullmatch(info.sha):
        raise BadInput(f"{where}: the Hub answered no commit sha (got {info.sha!r})")
    return info.sha


# -- hf / local (readers + converters) -----------------------------------------------------------------------
class ConvertedReader(SourceReader):
    """Hub datasets and local files: `readers` streams raw rows, `converters` turns each into a Trace.

    Reader rejects (malformed JSON, undecodable text) are stage `read`; rows that do not convert to a valid
    Trace (missing fields, calls to undeclared tools, arguments failing the tool's schema) are stage `schema`.
    A Hub source is read at `commit` (its revision resolved by `hub_commit`) when one is given.
    """

    spec: HFSource | LocalSource

    def __init__(
        self, spec: SourceBase, category: str, commit: str | None = None, part: dict[str, Any] | None = None
    ) -> None:
        super().__init__(spec, category)
        self.commit = commit
        self.part = part
        self.truncated: list[dict[str, str]] = []

    def rows(self) -> Iterator[Trace | Reject]:
        from pipelines.data import converters, readers

        text_kind: Literal["text", "code"] = "code" if self.category == "code" else "text"
        spec = self.spec
        if isinstance(spec, HFSource) and self.commit:
            spec = spec.model_copy(update={"revision": self.commit})
        raw = readers.read_part(spec, self.part) if self.part else readers.read_source(spec)
        for row_id, row in raw:
            if isinstance(row, readers.Reject):
                if row.reason == "truncated_file":
                    self.truncated.append({"row_id": row_id, "detail": row.detail})
                yield self.reject(row_id, row.reason, row.detail, stage="read")
                continue
            if isinstance(self.spec, HFSource):  # local files are pinned by their own sha256 instead
                self._digest.update(json.dumps(row, sort_keys=True, default=str).encode("utf-8") + b"\n")
            try:
                trace = converters.convert_row(
                    self.spec.format,
                    row,
                    self.spec.name,
                    row_id,
                    self.spec.cluster,
                    text_field=self.spec.text_field,
                    text_kind=text_kind,
                )
            except converters.ConversionError as exc:
                yield self.reject(row_id, exc.reason, exc.detail, stage="schema")
                continue
            yield self.finish(trace, origin=row_id)

    def revision(self) -> dict[str, Any]:
        if isinstance(self.spec, HFSource):
            spec = self.spec
            return {
                "dataset": spec.dataset,
                "config": spec.config,
                "split": spec.split,
                "revision": spec.revision,
                "commit": self.commit,
                "rows_sha256": self._digest.hexdigest(),
            }
        pinned = {"path": self.spec.path, "sha256": path_sha256(Path(self.spec.path), self.spec.glob)}
        # `on_truncated: keep` read past an unreadable part: the lockfile says what was lost.
        return pinned | ({"truncated": self.truncated} if self.truncated else {})

    def part_revision(self) -> dict[str, Any]:
        """What one part contributes to its source's lockfile entry (`combine_part_revisions`)."""
        if isinstance(self.spec, HFSource):
            return {"rows_sha256": self._digest.hexdigest()}
        return {"truncated": self.truncated}


def combine_part_revisions(
    spec: SourceBase, commit: str | None, parts: list[dict[str, Any]], local: dict[str, Any] | None
) -> dict[str, Any]:
    """The lockfile entry of a source read in parts: a local source's is the one it has read whole (its
    path's sha256, hashed once when the build was planned); a Hub source's row digest is the sha256 over its
    parts' row digests (parts of `plan.HF_PART_ROWS` rows), and says so."""
    if isinstance(spec, HFSource):
        digest = hashlib.sha256("".join(p["rows_sha256"] for p in parts).encode()).hexdigest()
        return {
            "dataset": spec.dataset,
            "config": spec.config,
            "split": spec.split,
            "revision": spec.revision,
            "commit": commit,
            "rows_sha256": digest,
            "parts": len(parts),
            "rows_sha256_over": "row digests of the parts, in order",
        }
    assert local is not None
    truncated = [t for p in parts for t in p["truncated"]]
    return local | ({"truncated": truncated} if truncated else {})


def path_sha256(path: Path, glob: str = "**/*") -> str:
    """sha256 of a file, or of a directory's matching files (relative names + bytes, in sorted order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.glob(glob) if p.is_file())
    for file in files:
        digest.update(f"{file.relative_to(path) if file != path else file.name}\0".encode())
        update_with_file(digest, file)
    return digest.hexdigest()


_READERS: dict[str, type[SourceReader]] = {
    "python_code": PythonCodeReader,
    "pydoc_text": PydocTextReader,
    "generated": GeneratedReader,
    "teacher": TeacherReader,
    "hf": ConvertedReader,
    "local": ConvertedReader,
}


def open_source(
    spec: SourceBase, category: str, commit: str | None = None, part: dict[str, Any] | None = None
) -> SourceReader:
    """The reader of a recipe source, or of one `part` of it (pipelines/data/plan.py); `commit` pins a Hub
    source (see `resolve_hub_commits`)."""
    if isinstance(spec, HFSource | LocalSource):
        return ConvertedReader(spec, category, commit, part)
    return _READERS[spec.type](spec, category)  # type: ignore[attr-defined]
