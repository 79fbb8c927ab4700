"""Cleaning steps of the data stage: quality filters, exact and near dedup, decontamination, source readers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash

from pipelines.data.clean import (
    ExactDeduper,
    NearDeduper,
    content_hash,
    dedup_text,
    ngram_hashes,
    quality_verdict,
    repeated_line_fraction,
    word_hashes,
)
from pipelines.data.decontam import ContaminationIndex, bfcl_questions, build_index
from pipelines.data.sources import Reject, _paragraph_chunks, distribution_license, open_source
from pipelines.errors import BadInput
from pipelines.recipe import Decontamination, NearDedup, PydocTextSource, PythonCodeSource, QualityFilters
from pipelines.schema import Trace
from tests.helpers import prose, valid_row


# -- quality filters -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Too short.", "too_short"),
        ("word " * 50_000, "too_long_chars"),
        ("{}[]();=+-*/<>!@#$%^&|~ " * 20 + "some words here", "symbol_ratio"),
        ("1234567890 0987654321 " * 20 + "abc", "alpha_ratio"),
        ("this exact line repeats over and over\n" * 10 + prose(1), "repeated_lines"),
    ],
)
def test_quality_filter_rejects_with_reason(text: str, reason: str) -> None:
    verdict = quality_verdict(text, QualityFilters())
    assert verdict is not None and verdict.reason == reason
    assert verdict.detail  # the number that failed, for rejects.jsonl


def test_quality_filter_keeps_prose_and_real_code() -> None:
    filters = QualityFilters()
    assert quality_verdict(prose(2), filters) is None
    code = (Path(importlib.util.find_spec("json").origin).parent / "decoder.py").read_text()
    assert quality_verdict(code, filters) is None


def test_repeated_line_fraction_ignores_short_boilerplate_lines() -> None:
    code = "".join(f"if x == {i}:\n    pass\nelse:\n    pass\n" for i in range(20))
    assert repeated_line_fraction(code) == 0.0
    assert repeated_line_fraction("same long line here\n" * 4) == pytest.approx(0.75)


# -- exact and near dedup ------------------------------------------------------------------------------------
def test_exact_dedup_normalises_case_and_whitespace() -> None:
    dedup = ExactDeduper()
    assert dedup.check_and_add(content_hash("Hello   World\nagain"), "a") is None
    verdict = dedup.check_and_add(content_hash("hello world again "), "b")
    assert verdict is not None and verdict.reason == "exact_duplicate" and "a" in verdict.detail
    assert dedup.check_and_add(content_hash("hello world, again"), "c") is None  # punctuation is content


def test_near_dedup_catches_small_edits_only() -> None:
    near = NearDeduper(NearDedup(threshold=0.8))
    base = prose(3, 300)
    edited = base.replace("river", "stream", 1) + " One more closing sentence."
    assert near.check_and_add(word_hashes(base), "base") is None
    verdict = near.check_and_add(word_hashes(edited), "edited")
    assert verdict is not None and verdict.reason == "near_duplicate" and "base" in verdict.detail
    assert near.check_and_add(word_hashes(prose(4, 300)), "other") is None


def test_minhash_signature_matches_datasketch() -> None:
    """Our vectorised signature is datasketch's own MinHash (same permutations, same scheme)."""
    near = NearDeduper(NearDedup(num_perm=64))
    shingles = near.shingles(word_hashes(prose(5, 200)))
    reference = MinHash(num_perm=64, seed=1, hashfunc=lambda v: v)
    reference.update_batch([int(v) for v in shingles])
    assert np.array_equal(near.signature(shingles).hashvalues, reference.hashvalues)


def test_ngram_hashes_ignore_case_and_punctuation() -> None:
    a = ngram_hashes(word_hashes("The quick, brown fox!"), 3)
    b = ngram_hashes(word_hashes("the QUICK brown   fox"), 3)
    assert len(a) == 2 and np.array_equal(a, b)
    assert len(ngram_hashes(word_hashes("too short"), 3)) == 0


def test_dedup_text_leaves_out_tool_specs() -> None:
    trace = Trace.model_validate(valid_row())
    text = dedup_text(trace)
    assert "add 1 and 2" in text and "two adds" in text and '"a": 1' in text
    assert "Add two integers" not in text  # the tool's description


# -- decontamination -----------------------------------------------------------------------------------------
@pytest.mark.integration
def test_bfcl_questions_cover_every_file_kind() -> None:
    labels = {label.split("#")[0] for label, _ in bfcl_questions()}
    assert "BFCL_v4_simple_python.json" in labels
    assert "BFCL_v4_live_multiple.json" in labels
    assert "BFCL_v4_multi_turn_base.json" in labels
    assert any(label.startswith("memory_prereq_conversation/") for label in labels)


@pytest.fixture(scope="module")
def bfcl_index() -> ContaminationIndex:
    return build_index(Decontamination(sets=["bfcl"]))


@pytest.mark.integration
def test_planted_bfcl_question_is_found(bfcl_index: ContaminationIndex) -> None:
    label, question = next(
        (label, text)
        for label, text in bfcl_questions()
        if label.startswith("BFCL_v4_live_simple") and len(text.split()) > 20
    )
    row = f"{prose(6)}\nUser asked: {question.upper()}\n{prose(7)}"
    verdict = bfcl_index.verdict(word_hashes(row))
    assert verdict is not None and verdict.reason == "contaminated:bfcl" and label in verdict.detail
    assert bfcl_index.verdict(word_hashes(prose(8, 400))) is None


def test_sharing_template_phrases_is_not_containing_the_eval_text(tmp_path: Path) -> None:
    eval_file = tmp_path / "heldout.jsonl"
    template = "please implement it save it as the solution and make sure the tests pass"
    eval_file.write_text(json.dumps({"request": f"I need a function that sums the digits of n. {template}"}))
    sibling = f"I need a function that reverses a linked list in place. {template.capitalize()}!"
    copy = "Task: i need a FUNCTION that sums the digits of n; " + template + ". Thanks."
    index = build_index(Decontamination(sets=[str(eval_file)]))
    assert index.verdict(word_hashes(sibling)) is None  # same template, different task
    hit = index.verdict(word_hashes(copy))
    assert hit is not None and hit.reason == "contaminated:heldout.jsonl" and "heldout.jsonl#0" in hit.detail
    strict = build_index(Decontamination(sets=[str(eval_file)], min_overlap=1e-9))
    assert strict.verdict(word_hashes(sibling)) is not None  # GPT-3 style: any shared 13-gram


def test_short_eval_texts_match_whole_and_numbers_alone_never(tmp_path: Path) -> None:
    eval_file = tmp_path / "evals.jsonl"
    rows = [
        {"q": "please convert ten euros into japanese yen today"},  # 8 words: matched as a whole
        {"q": "how old am i"},  # too short to mean anything
        {"q": " ".join(str(i) for i in range(40))},  # numbers only
    ]
    eval_file.write_text("\n".join(json.dumps(r) for r in rows))
    index = build_index(Decontamination(sets=[str(eval_file)]))
    hit = index.verdict(word_hashes("Hi! Please convert ten euros into Japanese yen today, thanks."))
    assert hit is not None and hit.reason == "contaminated:evals.jsonl"
    assert index.verdict(word_hashes("So how old am I now?")) is None
    assert index.verdict(word_hashes(" ".join(str(i) for i in range(50)))) is None


def test_heldout_tasks_match_by_request_and_by_task_id() -> None:
    from pipelines.data.decontam import ContaminationIndex, heldout_tasks

    tasks = heldout_tasks(Decontamination(heldout_n=12))
    index = ContaminationIndex(13)
    index.add_heldout(tasks)
    assert index.counts["heldout"] >= 1
    task = next(t for t in tasks if len(t.request.split()) >= 13)
    hit = index.verdict(word_hashes(f"{prose(11, 30)} {task.request} {prose(12, 30)}"))
    assert hit is not None and hit.reason == "contaminated:heldout" and task.task_id in hit.detail
    same_task = index.task_verdict(tasks[0].task_id)
    assert same_task is not None and same_task.reason == "contaminated:heldout"
    assert index.task_verdict("calculator-other-000000000000") is None and index.task_verdict(None) is None


def test_missing_eval_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="nope.jsonl.*not found"):
        build_index(Decontamination(sets=[str(tmp_path / "nope.jsonl")]))


# -- sources -------------------------------------------------------------------------------------------------
def _drain(reader) -> tuple[list[Trace], list[Reject]]:
    items = list(reader.rows())
    return [i for i in items if isinstance(i, Trace)], [i for i in items if isinstance(i, Reject)]


@pytest.mark.integration
def test_python_code_stdlib_records_license_and_size_rejects() -> None:
    spec = PythonCodeSource(name="py", type="python_code", max_rows=40, min_bytes=500)
    reader = open_source(spec, "code")
    traces, rejects = _drain(reader)
    assert len(traces) + len(rejects) == 40
    assert all(t.kind == "code" and t.meta["license"] == "PSF" for t in traces)
    assert {r.reason for r in rejects} <= {"too_small", "too_large", "not_utf8"}
    assert any(r.reason == "too_small" and "< min_bytes 500" in r.detail for r in rejects)
    revision = reader.revision()
    assert revision["python"] and len(revision["sha256"]) == 64
    again = open_source(spec, "code")
    _drain(again)
    assert again.revision() == revision


@pytest.mark.integration
def test_python_code_package_license_from_metadata() -> None:
    idna = Path(importlib.util.find_spec("idna").origin).parent  # BSD-3-Clause
    certifi = Path(importlib.util.find_spec("certifi").origin).parent  # MPL-2.0
    assert distribution_license(idna) == "BSD-3-Clause"
    spec = PythonCodeSource(name="pkgs", type="python_code", roots=[str(idna), str(certifi)], min_bytes=1)
    traces, rejects = _drain(open_source(spec, "code"))
    assert traces and all(t.meta["license"] == "BSD-3-Clause" for t in traces)
    licensed = [r for r in rejects if r.reason == "license"]
    assert licensed and all(r.row_id.startswith("pkgs:certifi/") and "MPL" in r.detail for r in licensed)
    assert not any(t.id.startswith("pkgs:certifi/") for t in traces)


def test_python_code_missing_root_is_bad_input(tmp_path: Path) -> None:
    spec = PythonCodeSource(name="py", type="python_code", roots=[str(tmp_path / "missing")])
    with pytest.raises(BadInput, match="missing.*not a directory"):
        _drain(open_source(spec, "code"))


@pytest.mark.integration
def test_pydoc_topics_one_document_each_or_paragraph_parts() -> None:
    whole, _ = _drain(open_source(PydocTextSource(name="d", type="pydoc_text", min_chars=1), "text"))
    from pydoc_data.topics import topics

    assert len(whole) == len(topics)
    assert whole[0].text.startswith(sorted(topics)[0] + "\n\n")
    parts, _ = _drain(open_source(PydocTextSource(name="d", type="pydoc_text", max_chunk_chars=3000), "text"))
    assert len(parts) > len(whole)
    long_topic = [t for t in parts if t.meta["topic"] == "specialnames"]
    assert len(long_topic) > 3 and long_topic[1].text.startswith("specialnames (part 2/")


def test_paragraph_chunks_never_cut_a_paragraph() -> None:
    text = "\n\n".join(f"paragraph {i} " + "x" * 50 for i in range(10))
    chunks = _paragraph_chunks(text, 150)
    assert "\n\n".join(chunks) == text
    assert all(len(c) <= 150 for c in chunks)
