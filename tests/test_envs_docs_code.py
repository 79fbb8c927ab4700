"""Document search and code runner environments: tools, ground truth, rewards, mistakes, determinism."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from transformers.utils import get_json_schema

from pipelines.envs.base import ToolEnv
from pipelines.envs.code_runner import Case, CodeRunnerEnv, format_verdicts, run_test_cases, same_value
from pipelines.envs.docsearch import Bm25, DocSearchEnv, _squash, corpus, search, tokenize
from pipelines.errors import BadInput
from pipelines.tasks import code_runner as code_tasks
from pipelines.tasks.code_problems import PROBLEMS
from pipelines.tasks.code_runner import _cases
from pipelines.tasks.code_runner import sample_task as sample_code_task
from pipelines.tasks.docsearch import _phrase_candidates, _quotable_lines, unique_phrases
from pipelines.tasks.docsearch import sample_task as sample_doc_task
from pipelines.tasks.domains import DOMAINS
from pipelines.tasks.records import Task


def fresh(env_cls: type[ToolEnv], task: Task) -> ToolEnv:
    env = env_cls()
    env.reset(task=task.to_json())
    return env


def solve(env: ToolEnv, task: Task) -> list[str]:
    """Run the reference solution; every call must succeed. Returns the observations."""
    observations = []
    for turn in task.solution:
        for step in turn:
            text, is_error = env._call_tool(step.tool, step.arguments)
            assert not is_error, f"{task.task_id}: {step.tool} failed: {text}"
            observations.append(text)
    return observations


def lines_shown(observation: str) -> str:
    """The document lines a find_in_doc (JSON) or read_doc (numbered text) observation shows."""
    if observation.startswith("{"):
        return "\n".join(line["text"] for line in json.loads(observation)["lines"])
    return "" if observation.startswith("[") else observation


def final_answer(task: Task) -> str:
    return task.final_template.format(answer=task.answer or "")


def mistake_observation(env: ToolEnv, mistake) -> tuple[str, bool]:  # type: ignore[no-untyped-def]
    text, is_error = env._call_tool(mistake.step.tool, mistake.step.arguments)
    for step in mistake.followed_by:
        text, is_error = env._call_tool(step.tool, step.arguments)
    return text, is_error


# -- registry and schemas -------------------------------------------------------------------------------------
def test_domains_are_registered_with_schema_valid_tools() -> None:
    assert DOMAINS["docsearch"] == (DocSearchEnv, sample_doc_task)
    assert DOMAINS["coderunner"] == (CodeRunnerEnv, sample_code_task)
    assert DocSearchEnv._tool_methods() == ["find_in_doc", "read_doc", "search_docs"]
    assert CodeRunnerEnv._tool_methods() == ["run_python", "run_tests", "write_solution"]
    for env_cls in (DocSearchEnv, CodeRunnerEnv):
        for name in env_cls._tool_methods():
            spec = get_json_schema(getattr(env_cls, name))["function"]
            assert spec["description"] and all(
                p.get("description") for p in spec["parameters"]["properties"].values()
            )


# -- document search ------------------------------------------------------------------------------------------
def test_bm25_ranks_by_term_rarity_and_length() -> None:
    index = Bm25(
        [tokenize("apple apple banana"), tokenize("banana cherry"), tokenize("cherry " * 20 + "apple")]
    )
    assert [i for i, _ in index.top(["apple"], 3)] == [0, 2]  # the short doc with two hits first
    assert [i for i, _ in index.top(["banana", "cherry"], 1)] == [1]
    assert index.top(["durian"], 3) == []


def test_search_finds_the_obvious_topics() -> None:
    assert search("assert statement", 3)[0][0].doc_id == "assert"
    assert "while" in [d.doc_id for d, _ in search("while loop else clause", 5)]
    env = DocSearchEnv()
    results = json.loads(env.search_docs("membership test operators in not in", top_k=2))
    assert len(results) == 2 and results[0]["doc_id"] == "in"
    assert {"doc_id", "title", "score", "snippet"} == set(results[0])


def test_read_and_find_show_numbered_lines() -> None:
    env = DocSearchEnv()
    page = env.read_doc("assert", start_line=1, max_lines=2)
    assert page.splitlines()[0].startswith('assert — The "assert" statement (lines 1-2 of')
    assert page.splitlines()[1] == '1: The "assert" statement'
    found = json.loads(env.find_in_doc("assert", "raise   assertionERROR"))  # case and whitespace are ignored
    assert found["matches"] >= 1 and all("AssertionError" in line["text"] for line in found["lines"])
    line = found["lines"][0]["line"]
    assert corpus().by_id["assert"].lines[line - 1].strip() == found["lines"][0]["text"]


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("read_doc", {"doc_id": "asert"}, "unknown doc_id 'asert'; did you mean 'assert'"),
        ("find_in_doc", {"doc_id": "assert", "phrase": "no such words here"}, "no line in 'assert' contains"),
        ("search_docs", {"query": "assert", "top_k": 0}, "top_k must be an integer from 1 to 20"),
        ("search_docs", {"query": "?!", "top_k": 3}, "no words to search for"),
        ("read_doc", {"doc_id": "assert", "start_line": 10_000}, "start_line must be from 1 to"),
        ("read_doc", {"doc_id": "assert", "max_lines": 0}, "max_lines must be from 1 to 200"),
        ("search_docs", {"question": "assert"}, "bad arguments for search_docs"),
    ],
)
def test_doc_tool_errors_say_what_is_wrong(tool: str, arguments: dict, message: str) -> None:
    text, is_error = DocSearchEnv()._call_tool(tool, arguments)
    assert is_error and message in text, text


@pytest.mark.integration
def test_docsearch_tasks_solve_to_reward_one_and_wrong_answers_to_zero() -> None:
    kinds, difficulties = set(), set()
    for seed in range(120):
        task = sample_doc_task(random.Random(seed))
        kinds.add(task.task_id.split("-")[1])
        difficulties.add(task.difficulty)
        assert task.difficulty == sum(len(turn) for turn in task.solution)
        env = fresh(DocSearchEnv, task)
        observations = solve(env, task)
        shown = "\n".join(lines_shown(text) for text in observations)
        for part in task.answer.split(" | "):  # the ground-truth line is exactly what the tools showed
            assert part in shown, (task.task_id, part)
        env._record_final_answer(final_answer(task))
        assert env.get_reward() == 1.0, task.task_id
        env._record_final_answer("I could not find it.")
        assert env.get_reward() == 0.0
        if " | " in task.answer:  # one answer of several is not enough
            env._record_final_answer(task.answer.split(" | ")[0])
            assert env.get_reward() == 0.0
    assert kinds == {"by_id", "quote", "next", "multi"} and difficulties == set(range(1, 9))


@pytest.mark.parametrize(
    ("difficulty", "parallel"), [(1, False), (2, False), (3, False), (4, True), (8, True)]
)
def test_docsearch_difficulty_and_parallel_shape(difficulty: int, parallel: bool) -> None:
    task = sample_doc_task(random.Random(difficulty), difficulty, parallel)
    assert task.difficulty == difficulty
    assert any(len(turn) >= 2 for turn in task.solution) == parallel
    assert task.setup == {"corpus_sha256": corpus().sha256}


def test_docsearch_mistakes_fail_as_described() -> None:
    seen = set()
    for seed in range(40):
        task = sample_doc_task(random.Random(seed))
        assert task.mistakes, task.task_id
        for mistake in task.mistakes:
            text, is_error = mistake_observation(fresh(DocSearchEnv, task), mistake)
            assert is_error and mistake.error_contains in text, (task.task_id, text)
            assert 0 <= mistake.turn < len(task.solution)
            seen.add(mistake.error_contains)
    assert seen == {"unknown doc_id", "no line in"}


def test_docsearch_sampling_is_deterministic() -> None:
    first = [sample_doc_task(random.Random(seed)).to_json() for seed in range(10)]
    assert first == [sample_doc_task(random.Random(seed)).to_json() for seed in range(10)]
    assert len(set(first)) == 10
    assert Task.from_json(first[0]).to_json() == first[0]


def test_task_from_another_python_version_is_refused() -> None:
    task = sample_doc_task(random.Random(0))
    task.setup["corpus_sha256"] = "0" * 16
    with pytest.raises(BadInput, match="another Python version"):
        fresh(DocSearchEnv, task)


# -- code runner ----------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_bank_references_pass_and_buggy_drafts_fail_in_the_sandbox() -> None:
    """Every problem: the reference passes all its tests in the sandbox, and the buggy draft fails the visible
    example the sampler chose to expose it (the one the recovery trace's error message names)."""
    assert len(PROBLEMS) >= 40 and len({p.name for p in PROBLEMS}) == len(PROBLEMS)
    for problem in PROBLEMS:
        cases, exposing = _cases(random.Random(f"bank/{problem.name}"), problem)
        good = run_test_cases(problem.reference, problem.name, cases)
        bad = run_test_cases(problem.buggy, problem.name, cases)
        assert all(v.passed for v in good), format_verdicts(problem.name, good)
        failed_visible = [v.case.args for v in bad if not v.passed and not v.case.hidden]
        assert exposing in failed_visible, (problem.name, format_verdicts(problem.name, bad))
        assert sum(c.hidden for c in cases) >= 2 and sum(not c.hidden for c in cases) == 3


@pytest.mark.integration
def test_code_tasks_solve_to_reward_one_and_wrong_solutions_to_zero() -> None:
    kinds, difficulties = set(), set()
    for seed in range(100):
        task = sample_code_task(random.Random(seed))
        kinds.add(task.task_id.split("-")[1])
        difficulties.add(task.difficulty)
        env = fresh(CodeRunnerEnv, task)
        observations = solve(env, task)
        env._record_final_answer(final_answer(task))
        assert env.get_reward() == 1.0, (task.task_id, observations)
        if task.answer is not None:
            assert all(part in " ".join(observations) for part in task.answer.split(" | "))
            env._record_final_answer("42.5")
            assert env.get_reward() == 0.0
        elif seed % 4 == 0:  # a wrong solution (the buggy draft) scores 0
            buggy = next(m for m in task.mistakes if m.followed_by).step
            env._call_tool(buggy.tool, buggy.arguments)
            assert env.get_reward() == 0.0
    assert kinds == {"compute", "function"} and difficulties == {1, 2, 3, 4}


@pytest.mark.integration
def test_code_mistakes_fail_as_described() -> None:
    for seed in range(12):
        task = sample_code_task(random.Random(seed), difficulty=2 + seed % 3)
        for mistake in task.mistakes:
            text, is_error = mistake_observation(fresh(CodeRunnerEnv, task), mistake)
            assert mistake.error_contains in text, (task.task_id, mistake.error_contains, text)
            # a buggy draft saves fine and shows up as failing tests; other mistakes are tool errors
            assert is_error == (not mistake.followed_by)
            if mistake.followed_by:
                assert text.startswith(f"Tests for {task.setup['function']}:") and "FAIL" in text


def test_compute_mistake_is_a_crashing_script() -> None:
    task = sample_code_task(random.Random(3), difficulty=1)
    [mistake] = task.mistakes
    text, is_error = mistake_observation(fresh(CodeRunnerEnv, task), mistake)
    assert is_error and "NameError" in text and "the script failed (exit code 1)" in text


def test_code_sampling_is_deterministic_and_round_trips() -> None:
    first = [sample_code_task(random.Random(seed)).to_json() for seed in range(10)]
    assert first == [sample_code_task(random.Random(seed)).to_json() for seed in range(10)]
    restored = Task.from_json(first[4])
    assert restored.to_json() == first[4]
    assert all(
        isinstance(step, type(restored.solution[0][0])) for m in restored.mistakes for step in m.followed_by
    )


def test_write_solution_checks_syntax_and_the_function_name() -> None:
    task = next(
        t for t in (sample_code_task(random.Random(s), 2) for s in range(20)) if t.setup.get("function")
    )
    env = fresh(CodeRunnerEnv, task)
    text, is_error = env._call_tool("run_tests", {})
    assert is_error and "no solution saved yet" in text
    text, is_error = env._call_tool("write_solution", {"code": "def broken(:\n    pass"})
    assert is_error and "syntax error on line 1" in text
    text, is_error = env._call_tool("write_solution", {"code": "def other():\n    return 1"})
    assert is_error and f"must define a function named `{task.setup['function']}`" in text


@pytest.mark.integration
def test_tests_are_judged_outside_the_sandbox() -> None:
    """Printing a fake 'all passed' report, exiting early or crashing cannot pass the hidden tests."""
    cases = [Case([2], True, False), Case([9], False, True), Case([1], False, True)]
    forged = (  # a report for the harness's channel, written before the harness could run, then exit
        "import os\n"
        "os.write(1, b\"@@midtrain-test-results@@[('value', 'True'), ('value', 'True'), ('value', 'True')]\\n\")\n"
        "os._exit(0)\n"
    )
    verdicts = run_test_cases(forged, "is_prime", cases)
    assert [v.passed for v in verdicts] == [True, False, False]
    looping = run_test_cases("def is_prime(n):\n    while True:\n        pass\n", "is_prime", cases[:1])
    assert not looping[0].passed and "TimeoutError" in looping[0].detail
    crashing = run_test_cases("raise SystemExit(3)\n", "is_prime", cases[:1])
    assert not crashing[0].passed and "importing solution.py failed" in crashing[0].detail
    report = format_verdicts("is_prime", verdicts)
    assert (
        "FAIL hidden test 1" in report and "expected False" not in report
    )  # hidden expectations stay hidden


def test_same_value_is_strict_about_types_but_not_float_noise() -> None:
    assert same_value(0.1 + 0.2, 0.3) and same_value([1, {"a": 2.0}], [1, {"a": 2}])
    assert not same_value(1, True) and not same_value("1", 1) and not same_value([1], [1, 2])


def test_run_python_sees_the_saved_solution() -> None:
    env = CodeRunnerEnv()
    env.reset()
    env._call_tool("write_solution", {"code": "def double(x):\n    return 2 * x\n"})
    text, is_error = env._call_tool("run_python", {"code": "from solution import double\nprint(double(21))"})
    assert (text, is_error) == ("42", False)
    text, is_error = env._call_tool("run_tests", {})
    assert is_error and "no tests" in text


# -- regressions found by the verified trace generator (generate.py replays every trace) ---------------------------
def _generated(domain: str, n: int, seed: int, patterns: dict[str, float]) -> list[Any]:
    """`n` verified traces of one domain; any reject fails the test with its reasons."""
    from pipelines.tasks.generate import generate_traces

    result = generate_traces([domain], n, seed, patterns)
    assert not result.rejects, [(r["reason"], r["detail"]) for r in result.rejects]
    assert len(result.traces) == n
    return result.traces


@pytest.mark.integration
def test_docsearch_traces_all_verify() -> None:
    """Every pattern that calls find_in_doc with a reference phrase: none may come back empty."""
    patterns = {"single": 1.0, "sequential": 1.0, "parallel": 1.0, "recovery": 1.0, "instanced": 1.0}
    traces = _generated("docsearch", 200, 0, patterns)
    finds = [c for t in traces for c in t.calls() if c.name == "find_in_doc"]
    assert len(finds) >= 200


@pytest.mark.integration
def test_every_quotable_phrase_is_found_on_its_own_line_only() -> None:
    """A window stripped of its punctuation ("list. For" → "list For") matches no line at all and made the
    reference find_in_doc call fail; every phrase a task may quote must be found by the tool on its line only."""
    env, stripped = DocSearchEnv(), 0
    for doc_id, line_no in _quotable_lines():
        doc = corpus().by_id[doc_id]
        for phrase in unique_phrases(doc, line_no):
            found = json.loads(env.find_in_doc(doc_id, phrase))
            assert [line["line"] for line in found["lines"]] == [line_no], (doc_id, line_no, phrase)
        line = doc.lines[line_no - 1]
        stripped += sum(_squash(p) not in _squash(line) for p in _phrase_candidates(line))
    assert stripped > 0  # such windows exist in the corpus: the filter is doing real work


@pytest.mark.integration
def test_function_traces_write_the_draft_before_running_it() -> None:
    """Tasks with run_python probes once ran the *correct* function first and only then wrote the buggy draft.
    Now the first call writes solution.py, probes import it, and a buggy draft is the first code written."""
    traces = _generated("coderunner", 12, 1, {"code": 1.0})
    functions = [t for t in traces if Task.from_json(t.meta["task"]).setup.get("function")]
    probed = [t for t in functions if "run_python" in [c.name for c in t.calls()]]
    drafts = [t for t in probed if t.meta["mistake"]["followed_by"] == ["run_tests"]]
    assert len(probed) >= 4 and drafts, (len(probed), len(drafts))
    for trace in functions:
        calls = trace.calls()
        assert calls[0].name == "write_solution", [c.name for c in calls]
        name = Task.from_json(trace.meta["task"]).setup["function"]
        for call in calls:
            if call.name == "run_python":
                assert call.arguments["code"].startswith(f"from solution import {name}\n")
    for trace in drafts:
        [first_write, *_] = [c for c in trace.calls() if c.name == "write_solution"]
        task = Task.from_json(trace.meta["task"])
        buggy = next(m.step for m in task.mistakes if m.followed_by)
        assert first_write.arguments == buggy.arguments  # the draft is the first code the trace writes…
        assert [c.name for c in trace.calls()][:2] == [
            "write_solution",
            "run_tests",
        ]  # …and its tests fail next


@pytest.mark.parametrize("difficulty", [3, 4])
def test_function_probes_follow_the_write(difficulty: int) -> None:
    for seed in range(30):
        task = sample_code_task(random.Random(seed), difficulty, parallel=difficulty == 4 and seed % 2 == 0)
        [[write], *middle, [run]] = task.solution  # only function tasks need 3-4 calls
        assert (write.tool, run.tool) == ("write_solution", "run_tests")
        assert [s.tool for turn in middle for s in turn] == ["run_python"] * (difficulty - 2)
        assert all(m.turn == 0 for m in task.mistakes)  # the wrong write replaces the first call


@pytest.mark.integration
def test_failing_test_lines_quote_dict_arguments_as_the_runner_prints_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The buggy draft's Mistake names the failing call; for dict arguments its key order must be the one the
    test report prints, whatever order the problem's generator built the dicts in."""
    problems = [p for p in PROBLEMS if "dict" in p.params]
    assert {p.name for p in problems} >= {"merge_counts", "invert_dict"}
    for problem in problems:
        monkeypatch.setattr(code_tasks, "PROBLEMS", (problem,))
        for seed in range(3):
            task = Task.from_json(code_tasks._build_function(random.Random(seed), 2, False).to_json())
            mistake = next(m for m in task.mistakes if m.followed_by)
            assert "{" in mistake.error_contains, mistake.error_contains
            text, is_error = mistake_observation(fresh(CodeRunnerEnv, task), mistake)
            assert not is_error and mistake.error_contains in text, (mistake.error_contains, text)
