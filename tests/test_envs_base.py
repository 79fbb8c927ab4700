"""The helpers every domain shares (pipelines/envs/base.py) and the code bank's bug edits."""

from __future__ import annotations

import random

import pytest

from pipelines.envs.base import ToolEnv
from pipelines.tasks.building import build_task, spoken_list
from pipelines.tasks.code_problems import Problem
from pipelines.tasks.records import Step, Task, every_answer_said


def test_every_answer_said_needs_each_separated_part_after_normalisation() -> None:
    assert every_answer_said("1,024 | Paris", "It is 1024 bytes, and the city is PARIS.")
    assert not every_answer_said("1024 | Paris", "It is 1024 bytes.")
    assert every_answer_said("Paris", "paris")
    assert not every_answer_said("New York", "newyork")


class _AnswerOnlyEnv(ToolEnv):
    domain = "answer-only"


@pytest.mark.parametrize(
    ("final", "reward"), [("2 and 3", 1.0), ("only 2", 0.0), (None, 0.0)], ids=["both", "one", "none"]
)
def test_base_check_rewards_a_multi_answer_task_only_when_every_answer_is_said(
    final: str | None, reward: float
) -> None:
    task = Task("answer-only", "t", "request", {}, [[Step("noop", {})]], answer="2 | 3")
    env = _AnswerOnlyEnv()
    env.reset(task=task.to_json())
    if final is not None:
        env._record_final_answer(final)
    assert env.get_reward() == reward


def test_spoken_list_joins_with_the_last_word() -> None:
    assert spoken_list(["a"]) == "a"
    assert spoken_list(["a", "b", "c"]) == "a, b and c"
    assert spoken_list(["a", "b"], "or") == "a or b"


def test_build_task_places_mistakes_before_their_step_and_hashes_a_stable_id() -> None:
    read = [Step("read", {"path": "a"}), Step("read", {"path": "b"})]
    write = Step("write", {"path": "c"})
    wrong = Step("write", {"path": "/c"})

    def build(parallel: bool) -> Task:
        return build_task(
            "dom", "merge", [read, [write]], parallel, request="r", answer="x",
            mistakes=[(write, wrong, "No such file", "use the relative path")],
        )  # fmt: skip

    sequential, parallel = build(False), build(True)
    assert [len(turn) for turn in sequential.solution] == [1, 1, 1]
    assert [len(turn) for turn in parallel.solution] == [2, 1]
    assert sequential.difficulty == parallel.difficulty == 3
    assert sequential.mistakes[0].turn == 2 and parallel.mistakes[0].turn == 1
    assert sequential.setup == {} and sequential.task_id.startswith("dom-merge-")
    assert build(False).task_id == sequential.task_id != parallel.task_id


def _problem(buggy: str | tuple[str, str]) -> Problem:
    reference = "def inc(n: int) -> int:\n    return n + 1\n"
    return Problem(
        "inc", "n: int", "int", "adds one", reference, buggy, "off by one", ((1,),), lambda r: (1,)
    )


def test_a_problem_bug_given_as_a_line_edit_becomes_the_full_buggy_draft() -> None:
    assert _problem(("return n + 1", "return n + 2")).buggy == "def inc(n: int) -> int:\n    return n + 2\n"
    assert _problem("def inc(n):\n    return n\n").buggy == "def inc(n):\n    return n\n"
    with pytest.raises(ValueError, match="exactly once"):
        _problem(("return n - 1", "return n"))
    assert _problem(("n + 1", "n")).random_args(random.Random(0)) == (1,)
