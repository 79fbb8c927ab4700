"""Read a recipe source's raw rows, as `(row_id, row)` pairs, from local files or the Hugging Face Hub.

A row is a plain dict, or a `Reject` when the row could not even be read (a malformed JSON line, a text file
that is not UTF-8): readers never raise on one bad row, they hand it on so the build can count it, name it in
`rejects.jsonl` and keep going. Whole-source problems (a missing file, an unreachable dataset) are `BadInput`.

Row ids say where a row came from, so a user can open it: `file.jsonl:LINE` (1-based, as editors count),
`file.json[INDEX]` and `file.parquet[INDEX]` (0-based, as Python indexes), the file's path relative to the
directory for text/code directories, and `SPLIT[INDEX]` for Hub datasets (`ds[INDEX]` fetches it back).

Memory stays bounded by one row (or one parquet record batch), not by the source: JSONL and parquet stream;
only `.json` files are parsed whole, because JSON arrays cannot be streamed without another parser.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from pipelines.errors import BadInput
from pipelines.recipe import HFSource, LocalSource


@dataclass(frozen=True)
class Reject:
    """A row the data stage dropped: `reason` is a fixed snake_case code (the manifest counts by it),
    `detail` says exactly what is wrong (field, expected, got)."""

    source: str
    row_id: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


Row = dict[str, Any] | Reject
RowStream = Iterator[tuple[str, Row]]

PARQUET_BATCH_ROWS = 1024
_BINARY_SNIFF_BYTES = 8192


def read_source(
    source: HFSource | LocalSource, base_dir: Path | None = None, cache_dir: str | Path | None = None
) -> RowStream:
    """Rows of an `hf` or `local` source, at most `max_rows` of them (rejects count: they were read)."""
    if isinstance(source, HFSource):
        rows = read_hf(source, cache_dir=cache_dir)
    else:
        rows = read_local(source, base_dir=base_dir)
    return islice(rows, source.max_rows) if source.max_rows else rows


# -- local files ---------------------------------------------------------------------------------------------
def read_local(source: LocalSource, base_dir: Path | None = None) -> RowStream:
    """Rows of a .jsonl(.gz)/.json/.parquet file, a directory of them, or a directory of text/code files.

    A directory is read as documents (one row per file) when the source's format is `text`, and as data
    files otherwise: a downloaded Hub snapshot holds README.md and .gitattributes next to its data, and
    those are not rows. Checks run now, so a missing path fails before the first row is asked for.
    """
    path = Path(source.path).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if not path.exists():
        raise BadInput(f"local source {source.name!r}: {path}: no such file or directory")
    if path.is_file():
        _check_suffix(path, source)
        return _read_file(path, source)
    files = _directory_files(path, source)
    if source.format == "text":
        return _read_documents(path, files, source)
    return (row for file in files for row in _read_file(file, source))


def _data_kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in (".jsonl.gz", ".jsonl", ".json", ".parquet"):
        if name.endswith(suffix):
            return suffix
    return None


def _check_suffix(path: Path, source: LocalSource) -> None:
    if _data_kind(path) is None and source.format != "text":
        raise BadInput(
            f"local source {source.name!r}: {path}: unsupported file type for format {source.format!r}; "
            "use .jsonl, .jsonl.gz, .json or .parquet (or format: text for a plain text/code file)"
        )


def _read_file(path: Path, source: LocalSource) -> RowStream:
    kind = _data_kind(path)
    if kind in (".jsonl", ".jsonl.gz"):
        return _read_jsonl(path, source)
    if kind == ".json":
        return _read_json(path, source)
    if kind == ".parquet":
        return _read_parquet(path, source)
    return _read_documents(path.parent, [path], source)


def _read_jsonl(path: Path, source: LocalSource) -> RowStream:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    line_no = 0
    with opener(path, "rb") as handle:
        lines = iter(handle)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (EOFError, OSError, zlib.error) as exc:  # a truncated or corrupt .gz stream
                yield _unreadable(source, path, f"{path}:{line_no + 1}", f"after line {line_no}", exc)
                return
            line_no += 1
            row_id = f"{path}:{line_no}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield row_id, Reject(source.name, row_id, "undecodable_text", f"not UTF-8: {exc.reason}")
                continue
            text = text.rstrip("\r\n")
            text = text.removeprefix("\ufeff") if line_no == 1 else text
            if not text.strip():
                continue
            yield row_id, _parse_json_row(text, row_id, source.name)


def _unreadable(
    source: LocalSource, path: Path, row_id: str, where: str, exc: BaseException
) -> tuple[str, Row]:
    """A file that stops being readable part-way: BadInput naming the file and the place, or, with
    `on_truncated: keep`, one `truncated_file` reject that records where reading stopped (the rows before it
    are kept)."""
    problem = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    if source.on_truncated == "keep":
        return row_id, Reject(source.name, row_id, "truncated_file", f"unreadable {where}: {problem}")
    raise BadInput(
        f"local source {source.name!r}: {path}: truncated or corrupt, unreadable {where} ({problem}). "
        "Fetch the file again, or set `on_truncated: keep` on the source to keep the rows before that point "
        "(the manifest then records what was lost)."
    )


# JSON values past this depth are rejected: no real row nests this deep, and deeper values break recursive
# consumers (schema validation, chat templates) with RecursionError far from the row that caused it.
MAX_JSON_NESTING = 100
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _parse_json_row(text: str, row_id: str, source_name: str) -> Row:
    try:
        row = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        return Reject(source_name, row_id, "malformed_json", f"column {exc.colno}: {exc.msg}")
    except RecursionError:
        detail = f"nested too deeply for the JSON parser (a row may nest at most {MAX_JSON_NESTING} levels)"
        return Reject(source_name, row_id, "too_deeply_nested", detail)
    except ValueError as exc:  # an integer past Python's digit limit, NaN/Infinity
        return Reject(source_name, row_id, "invalid_number", _number_problem(exc))
    if not isinstance(row, dict):
        return Reject(
            source_name, row_id, "not_an_object", f"expected a JSON object, got {type(row).__name__}"
        )
    problem = json_value_problem(row, text)
    return Reject(source_name, row_id, problem[0], problem[1]) if problem else row


def _number_problem(exc: ValueError) -> str:
    if "integer string conversion" in str(exc):
        return f"an integer longer than {sys.get_int_max_str_digits()} digits"
    return str(exc)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def json_value_problem(value: Any, text: str) -> tuple[str, str] | None:
    """(reason, detail) when a parsed JSON value is nested past MAX_JSON_NESTING or holds a lone UTF-16
    surrogate (`"\\ud800"` parses, but no UTF-8 writer can store it). `text` is the JSON it was parsed from: the
    walk runs only when the text could hold either problem, so ordinary rows cost two substring scans."""
    deep = text.count("[") + text.count("{") > MAX_JSON_NESTING
    if not deep and not _SURROGATE_ESCAPE.search(text):
        return None
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, where = stack.pop()
        if depth > MAX_JSON_NESTING:
            return "too_deeply_nested", f"nested deeper than {MAX_JSON_NESTING} levels at {where or '<root>'}"
        if isinstance(item, str):
            if not _encodable(item):
                return "lone_surrogate", f"a lone UTF-16 surrogate (not valid Unicode) in {where or '<root>'}"
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _encodable(key):
                    return "lone_surrogate", f"a lone UTF-16 surrogate in a key under {where or '<root>'}"
                stack.append((child, depth + 1, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            stack.extend((child, depth + 1, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_json(path: Path, source: LocalSource) -> RowStream:
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"local source {source.name!r}: {path}:{exc.lineno}: malformed JSON: {exc.msg}"
        ) from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"local source {source.name!r}: {path}: not UTF-8 ({exc.reason})") from None
    except RecursionError:
        raise BadInput(
            f"local source {source.name!r}: {path}: nested deeper than the JSON parser allows"
        ) from None
    except ValueError as exc:
        raise BadInput(f"local source {source.name!r}: {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise BadInput(
            f'local source {source.name!r}: {path}: expected a JSON array of rows or {{"data": [...]}}, '
            f"got {type(data).__name__}"
        )
    for index, row in enumerate(data):
        row_id = f"{path}[{index}]"
        problem = json_value_problem(row, text) if isinstance(row, dict) else None
        if problem:
            yield row_id, Reject(source.name, row_id, *problem)
        elif isinstance(row, dict):
            yield row_id, row
        else:
            detail = f"expected a JSON object, got {type(row).__name__}"
            yield row_id, Reject(source.name, row_id, "not_an_object", detail)


def _read_parquet(path: Path, source: LocalSource) -> RowStream:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise BadInput(f"local source {source.name!r}: {path}: not a readable parquet file ({exc})") from None
    n_groups = parquet.metadata.num_row_groups
    start = 0
    # Row group by row group, in record batches: memory stays at one batch however large the file is, and a
    # corrupt row group is named (the footer can be intact while a page in the middle is not).
    for group in range(n_groups):
        index = start
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
                for row in batch.to_pylist():
                    yield f"{path}[{index}]", row
                    index += 1
        except (pa.ArrowException, OSError) as exc:
            where = f"in row group {group} of {n_groups} (rows from {start}), at row {index}"
            yield _unreadable(source, path, f"{path}[{index}]", where, exc)
        start += parquet.metadata.row_group(group).num_rows


# -- text/code directories -----------------------------------------------------------------------------------
def _directory_files(root: Path, source: LocalSource) -> list[Path]:
    """Files under `root` matching the glob, in a fixed order; hidden paths (.git, editor files) are no data."""
    matched = [p for p in root.glob(source.glob) if p.is_file() and not _hidden(p.relative_to(root).parts)]
    if source.format != "text":
        matched = [p for p in matched if _data_kind(p) is not None]
    if not matched:
        wanted = "files" if source.format == "text" else ".jsonl/.jsonl.gz/.json/.parquet files"
        raise BadInput(f"local source {source.name!r}: no {wanted} under {root} match glob {source.glob!r}")
    # Sorting on the relative POSIX path makes the order the same on every OS and file system.
    return sorted(matched, key=lambda p: p.relative_to(root).as_posix())


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(part.startswith(".") for part in parts)


def _read_documents(root: Path, files: list[Path], source: LocalSource) -> RowStream:
    """One row per text file: `{text_field: content, "path": relative path}`; binary files are skipped."""
    for file in files:
        row_id = file.relative_to(root).as_posix()
        data = file.read_bytes()
        if b"\x00" in data[:_BINARY_SNIFF_BYTES]:
            continue  # images, archives, compiled files: not documents, and not a data error either
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            detail = f"not UTF-8 at byte {exc.start}: {exc.reason}"
            yield row_id, Reject(source.name, row_id, "undecodable_text", detail)
            continue
        yield row_id, {source.text_field: text.removeprefix("\ufeff"), "path": row_id}


# -- Hugging Face Hub ----------------------------------------------------------------------------------------
def read_hf(source: HFSource, cache_dir: str | Path | None = None) -> RowStream:
    """Rows of a Hub dataset via `datasets.load_dataset` at the pinned revision (streamed when asked).

    `source.dataset` may also be a local dataset folder, which is how tests and air-gapped users exercise
    this exact code path. Loading happens now, so an unreachable dataset fails before the first row.
    """
    dataset = _load_hf(source, cache_dir)
    return _iter_hf(dataset, source)


def _load_hf(source: HFSource, cache_dir: str | Path | None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(
            source.dataset,
            source.config,
            data_dir=source.data_dir,
            split=source.split,
            revision=source.revision,
            streaming=source.streaming,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
        )
    except (OSError, ValueError) as exc:
        raise _hf_unreachable(source, exc) from None


def _iter_hf(dataset: Any, source: HFSource) -> RowStream:
    index = 0
    rows = iter(dataset)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except (OSError, ValueError) as exc:  # a streamed dataset can lose the network mid-way
            raise _hf_unreachable(source, exc, f" while reading row {index}") from None
        yield f"{source.split}[{index}]", row
        index += 1


def _hf_unreachable(source: HFSource, exc: Exception, when: str = "") -> BadInput:
    import datasets

    offline = " with HF_HUB_OFFLINE set" if datasets.config.HF_HUB_OFFLINE else ""
    config = f", config {source.config!r}" if source.config else ""
    return BadInput(
        f"hf source {source.name!r}: cannot load dataset {source.dataset!r} (split {source.split!r}{config}, "
        f"revision {source.revision!r}){offline}{when}: {type(exc).__name__}: {exc}\n"
        "  Online: check the dataset id, config, split and revision; gated datasets need `hf auth login` "
        "or HF_TOKEN.\n"
        f"  Offline: download a copy where there is internet (`hf download {source.dataset} --repo-type dataset "
        f"--revision {source.revision} --local-dir DIR`), then use a local source instead: "
        f"`type: local, path: DIR, format: {source.format}`."
    )
