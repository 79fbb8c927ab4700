"""Readers: local files stream rows with ids that point back at the file, bad rows become rejects instead of
errors, whole-source problems are BadInput, and the Hub path runs `datasets.load_dataset` for real on
local files laid out like the real datasets."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from pipelines.data.converters import convert_rows
from pipelines.data.readers import PARQUET_BATCH_ROWS, Reject, read_hf, read_local, read_source
from pipelines.errors import BadInput
from pipelines.recipe import HFSource, LocalSource

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def local(path: Path | str, fmt: str = "trace", **kwargs) -> LocalSource:
    return LocalSource(type="local", name="src", path=str(path), format=fmt, **kwargs)


def hf(dataset: str, fmt: str = "xlam", **kwargs) -> HFSource:
    return HFSource(
        type="hf", name="hub", dataset=dataset, revision=kwargs.pop("revision", "main"), format=fmt, **kwargs
    )


# -- jsonl / json --------------------------------------------------------------------------------------------
JSONL_LINES = [
    b'\xef\xbb\xbf{"a": 1}',  # a byte-order mark on line 1 is not an error
    b"",
    b'{"a": 2}',
    b'{"a": 3',
    b"[1, 2]",
    b'{"a": "caf\xe9"}',
    b'{"a": 7}',
]


def expect_jsonl_rows(rows: list, path: Path) -> None:
    ids = [row_id for row_id, _ in rows]
    assert ids == [f"{path}:{n}" for n in (1, 3, 4, 5, 6, 7)]  # blank line 2 is skipped, not counted
    by_line = {int(row_id.rsplit(":", 1)[1]): row for row_id, row in rows}
    assert by_line[1] == {"a": 1} and by_line[3] == {"a": 2} and by_line[7] == {"a": 7}
    assert isinstance(by_line[4], Reject) and by_line[4].reason == "malformed_json"
    assert by_line[4].detail.startswith("column 8:") and by_line[4].row_id == f"{path}:4"
    assert by_line[5].reason == "not_an_object" and "list" in by_line[5].detail
    assert by_line[6].reason == "undecodable_text"


def test_jsonl_rows_and_rejects_keep_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(JSONL_LINES) + b"\n")
    expect_jsonl_rows(list(read_local(local(path))), path)


def test_gzipped_jsonl_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(JSONL_LINES) + b"\n"))
    expect_jsonl_rows(list(read_local(local(path))), path)


def test_json_array_and_data_wrapper(tmp_path: Path) -> None:
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"a": 1}, "oops", {"a": 3}]))
    rows = list(read_local(local(array)))
    assert [r for r, _ in rows] == [f"{array}[0]", f"{array}[1]", f"{array}[2]"]
    assert rows[0][1] == {"a": 1} and rows[1][1].reason == "not_an_object"
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": 2, "data": [{"b": 1}]}))
    assert list(read_local(local(wrapped))) == [(f"{wrapped}[0]", {"b": 1})]


def test_bad_json_files_are_bad_input_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"a": 1},\n{"a": }\n]')
    with pytest.raises(BadInput, match=r"broken\.json:3: malformed JSON"):
        list(read_local(local(broken)))
    scalar = tmp_path / "scalar.json"
    scalar.write_text("42")
    with pytest.raises(BadInput, match=r"scalar\.json: expected a JSON array"):
        list(read_local(local(scalar)))


def test_missing_or_unsupported_paths_fail_before_reading(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"'src'.*nowhere\.jsonl: no such file or directory"):
        read_local(local(tmp_path / "nowhere.jsonl"))  # eager: no iteration needed
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(BadInput, match=r"rows\.csv: unsupported file type for format 'xlam'"):
        read_local(local(csv, "xlam"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no files under .* match glob"):
        read_local(local(tmp_path / "empty", "text"))


def test_relative_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jsonl").write_text('{"k": 1}\n')
    rows = list(read_local(local("data/x.jsonl"), base_dir=tmp_path))
    assert rows == [(f"{tmp_path / 'data' / 'x.jsonl'}:1", {"k": 1})]


# -- parquet -------------------------------------------------------------------------------------------------
def test_parquet_streams_every_row_in_order(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = PARQUET_BATCH_ROWS * 2 + 17  # more than one record batch, with a ragged last one
    table = pa.Table.from_pylist([{"i": i, "text": f"row {i}", "tags": ["a"] * (i % 3)} for i in range(n)])
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path, row_group_size=700)
    rows = list(read_local(local(path, "text")))
    assert len(rows) == n
    assert rows[0] == (f"{path}[0]", {"i": 0, "text": "row 0", "tags": []})
    assert rows[-1][0] == f"{path}[{n - 1}]" and rows[-1][1]["i"] == n - 1
    assert [row["i"] for _, row in rows] == list(range(n))


def test_unreadable_parquet_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(BadInput, match=r"fake\.parquet: not a readable parquet file"):
        list(read_local(local(path)))


# -- directories ---------------------------------------------------------------------------------------------
def make_code_tree(root: Path) -> None:
    files = {
        "pkg/zeta.py": "def z():\n    return 26\n",
        "pkg/__init__.py": '"""Package."""\n',
        "alpha.py": "print('alpha')\n",
        "notes/readme.md": "# Notes\nSome text.\n",
        ".git/config": "[core]\n",
        "pkg/.hidden.py": "secret = 1\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "pkg" / "latin1.py").write_bytes(b"# caf\xe9\n")


def test_text_directory_reads_sorted_documents_and_skips_binary_and_hidden(tmp_path: Path) -> None:
    make_code_tree(tmp_path)
    rows = list(read_local(local(tmp_path, "text", text_field="content")))
    assert [row_id for row_id, _ in rows] == [
        "alpha.py",
        "notes/readme.md",
        "pkg/__init__.py",
        "pkg/latin1.py",
        "pkg/zeta.py",
    ]
    docs = dict(rows)
    assert docs["alpha.py"] == {"content": "print('alpha')\n", "path": "alpha.py"}
    assert docs["pkg/latin1.py"] == Reject(
        "src", "pkg/latin1.py", "undecodable_text", docs["pkg/latin1.py"].detail
    )
    assert "byte 5" in docs["pkg/latin1.py"].detail
    only_py = [row_id for row_id, _ in read_local(local(tmp_path, "text", glob="pkg/*.py"))]
    assert only_py == ["pkg/__init__.py", "pkg/latin1.py", "pkg/zeta.py"]


def test_code_documents_convert_with_their_path(tmp_path: Path) -> None:
    make_code_tree(tmp_path)
    source = local(tmp_path, "text", glob="**/*.py")
    items = dict(convert_rows("text", read_local(source), "stdlib", text_kind="code"))
    zeta = items["pkg/zeta.py"]
    assert zeta.kind == "code" and zeta.meta["path"] == "pkg/zeta.py" and zeta.text.startswith("def z")
    assert isinstance(items["pkg/latin1.py"], Reject)


def test_data_directory_reads_data_files_only(tmp_path: Path) -> None:
    """A downloaded Hub snapshot: README and .gitattributes sit next to the data and are not rows."""
    (tmp_path / "data").mkdir()
    shutil.copy(FIXTURES / "xlam.jsonl", tmp_path / "data" / "train-00000.jsonl")
    (tmp_path / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n")
    (tmp_path / ".gitattributes").write_text("*.json filter=lfs\n")
    rows = list(read_local(local(tmp_path, "xlam")))
    assert len(rows) == 6 and rows[0][0].endswith("train-00000.jsonl:1")
    (tmp_path / "data" / "train-00000.jsonl").unlink()
    with pytest.raises(BadInput, match=r"no \.jsonl/\.jsonl\.gz/\.json/\.parquet files"):
        read_local(local(tmp_path, "xlam"))


def test_max_rows_counts_rejects_too(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{bad\n{"a": 3}\n{"a": 4}\n')
    rows = list(read_source(local(path, max_rows=3)))
    assert [r for r, _ in rows] == [f"{path}:1", f"{path}:2", f"{path}:3"]


# -- Hugging Face Hub path -----------------------------------------------------------------------------------
@pytest.fixture
def xlam_dataset_dir(tmp_path: Path) -> Path:
    """A local dataset folder laid out like the Hub repo (one JSON-lines file per split)."""
    root = tmp_path / "xlam-function-calling-60k"
    root.mkdir()
    shutil.copy(FIXTURES / "xlam.jsonl", root / "train.jsonl")
    return root


def test_hf_streaming_reads_the_rows_the_local_reader_reads(xlam_dataset_dir: Path) -> None:
    hub_rows = list(read_hf(hf(str(xlam_dataset_dir), streaming=True)))
    local_rows = list(read_local(local(FIXTURES / "xlam.jsonl", "xlam")))
    assert [row_id for row_id, _ in hub_rows] == [f"train[{i}]" for i in range(6)]
    assert [row for _, row in hub_rows] == [row for _, row in local_rows]
    converted = dict(convert_rows("xlam", hub_rows, "hub"))
    assert converted["train[0]"].id == "0" and converted["train[5]"].reason == "arguments_mismatch"


def test_hf_non_streaming_nested_columns(tmp_path: Path) -> None:
    root = tmp_path / "hermes-function-calling-v1"
    root.mkdir()
    shutil.copy(FIXTURES / "hermes.jsonl", root / "train.jsonl")
    rows = list(read_hf(hf(str(root), "hermes"), cache_dir=tmp_path / "cache"))
    assert len(rows) == 6 and rows[1][1]["conversations"][2]["from"] == "gpt"
    converted = dict(convert_rows("hermes", rows, "hub"))
    assert [c.name for c in converted["train[3]"].calls()] == ["get_stock_price", "get_stock_price"]


def test_hf_offline_names_the_dataset_and_the_local_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    source = hf("Salesforce/xlam-function-calling-60k", revision="4a8a9ae", streaming=True)
    with pytest.raises(BadInput) as info:
        read_hf(source)
    message = str(info.value)
    assert "'Salesforce/xlam-function-calling-60k'" in message and "revision '4a8a9ae'" in message
    assert "HF_HUB_OFFLINE" in message
    assert (
        "hf download Salesforce/xlam-function-calling-60k --repo-type dataset --revision 4a8a9ae" in message
    )
    assert "type: local, path: DIR, format: xlam" in message


def test_hf_missing_dataset_or_split_is_bad_input(tmp_path: Path, xlam_dataset_dir: Path) -> None:
    with pytest.raises(BadInput, match="cannot load dataset .*nope"):
        read_hf(hf(str(tmp_path / "nope")))
    with pytest.raises(BadInput, match="split 'validation'"):
        read_hf(hf(str(xlam_dataset_dir), split="validation"), cache_dir=tmp_path / "cache")
