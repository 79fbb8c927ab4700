"""RL rewards on crafted rollouts: every component's exact value for each kind of right and wrong behaviour.

A tiny environment of our own keeps these tests independent of the shipped domains; rollouts are executed
against it the way TRL does (`method(**arguments)`, any exception → an `{'error': …}` tool message).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from pipelines.chat import chat_encoding
from pipelines.codecs import hermes
from pipelines.envs.base import ToolEnv, ToolError
from pipelines.episodes import episode_error
from pipelines.rl import rewards
from pipelines.rl.rewards import FailureCounts, build_reward_funcs, parse_rollout
from pipelines.run_config import RLSection
from pipelines.tasks.records import Step, Task
from pipelines.thought import load_thought_schema

HERMES = hermes()  # the embedded model's format, which these rollouts are written in


class ToyEnv(ToolEnv):
    domain = "toy"

    def _setup(self, setup: dict[str, Any]) -> None:
        self._memory: dict[str, int] = {}

    def _check_state(self, expected: dict[str, Any]) -> bool:
        return self._memory == expected

    def add(self, a: int, b: int) -> str:
        """Add two integers.

        Args:
            a: First addend.
            b: Second addend.
        """
        return str(a + b)

    def store(self, name: str, value: int) -> str:
        """Store a value under a name.

        Args:
            name: Where to store it.
            value: The value.
        """
        if not name:
            raise ToolError("empty name")
        self._memory[name] = value
        return f"stored {name}"


class BrokenEnv(ToyEnv):
    """An environment whose own code is buggy: a tool and the reward both raise unexpected exceptions."""

    def explode(self) -> str:
        """Always fails."""
        raise RuntimeError("boom")

    def get_reward(self) -> float:
        raise KeyError("state lost")


ADD_TASK = Task("toy", "add-1", "What is 2 + 3?", {}, [[Step("add", {"a": 2, "b": 3})]], answer="5")
IRRELEVANT_TASK = Task("toy", "irr-1", "Write me a poem about the sea.", {}, [], answer=None)
INSTANCED_TASK = Task(
    "toy",
    "inst-1",
    "[instance=a] store x=1 [instance=b] store x=2",
    {"instances": {"a": {}, "b": {}}},
    [
        [
            Step("store", {"name": "x", "value": 1, "_instance": "a"}),
            Step("store", {"name": "x", "value": 2, "_instance": "b"}),
        ]
    ],
    difficulty=2,
)


def call(tool: str, /, **arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": tool, "arguments": arguments}}


def turn(content: str = "", *calls: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = list(calls)
    return message


def store_x_per_instance(values: dict[str, int]) -> dict[str, Any]:
    """One assistant turn storing x = value in each named instance, in the given order."""
    return turn("", *(call("store", name="x", value=v, _instance=i) for i, v in values.items()))


def play(env: ToolEnv, task: Task, *turns: dict[str, Any]) -> list[dict[str, Any]]:
    """Reset `env` for `task` and run each turn's calls as TRL's tool loop does; return the completion."""
    env.reset(task=task.to_json())
    completion: list[dict[str, Any]] = []
    for message in turns:
        completion.append(message)
        for c in message.get("tool_calls", []):
            name, arguments = c["function"]["name"], c["function"]["arguments"]
            try:
                if name.startswith("_") or not hasattr(env, name):
                    raise ValueError(f"Tool {name} not found.")
                result: Any = getattr(env, name)(**arguments)
            except Exception as exc:
                result = {"error": str(exc)}
            completion.append({"role": "tool", "name": name, "content": str(result)})
    return completion


def score_all(task: Task, completion: Any, env: ToolEnv | None, **extra: Any) -> dict[str, float | None]:
    funcs, _ = build_reward_funcs(
        dict.fromkeys(rewards.REWARD_NAMES, 1.0), HERMES, load_thought_schema("think-plan-reflect")
    )
    envs = [env] if env is not None else None
    return {
        rewards.reward_name(f): f(
            completions=[completion], task=[task.to_json()], environments=envs, **extra
        )[0]
        for f in funcs
    }


def test_correct_call_and_answer_scores_full_marks() -> None:
    env = ToyEnv()
    completion = play(
        env,
        ADD_TASK,
        turn("<think><plan>Add them.</plan></think>", call("add", a=2, b=3)),
        turn("<think><verify>5 it is.</verify></think>\nThe sum is 5."),
    )
    assert score_all(ADD_TASK, completion, env) == {
        "outcome": 1.0,
        "format": 1.0,
        "tool_call": 1.0,
        "execution": 1.0,
        "instance": None,
        "irrelevance": None,
        "efficiency": 0.0,
        "answered": 0.0,
    }


def test_answered_penalises_an_end_without_an_answer_and_nothing_else() -> None:
    """`answered` (opt-in): -1 for a rollout cut off, out of tool rounds or still reasoning at its end; 0 for any
    rollout that ends on an answer, right or wrong, with calls or without (so skipping calls cannot earn it)."""
    first = turn("<think><plan>Add them.</plan></think>", call("add", a=2, b=3))
    loop = (
        "<think><observe>Got 5.</observe></think>\n"
        + "<verify>The tool output shows 5.</verify></think>\n" * 3
    )
    cases = {
        "clean and right": ((first, turn("<think><verify>5.</verify></think>\nThe sum is 5.")), {}, 0.0),
        "clean and wrong": ((first, turn("The sum is 6.")), {}, 0.0),
        "no call, clean": ((turn("The sum is 5."),), {}, 0.0),
        "still reasoning": ((first, turn(loop)), {}, -1.0),
        "empty answer": ((first, turn("<think><verify>Got 5.</verify></think>")), {}, -1.0),
        "no call, empty": ((turn("<think><plan>Add them.</plan></think>"),), {}, -1.0),
        "out of tool rounds": ((first,), {}, -1.0),
        "cut off": (
            (first, turn("The sum is 5")),
            {"completion_ids": [[11, 12]], "eos_token_ids": (2,)},
            -1.0,
        ),
    }
    for name, (turns, extra, expected) in cases.items():
        env = ToyEnv()
        assert score_all(ADD_TASK, play(env, ADD_TASK, *turns), env, **extra)["answered"] == expected, name
    assert "answered" not in RLSection().reward_weights  # off unless named
    assert RLSection(reward_weights={"answered": 1.0}).reward_weights["answered"] == 1.0


def test_answer_only_in_thinking_earns_no_outcome() -> None:
    env = ToyEnv()
    completion = play(env, ADD_TASK, turn("", call("add", a=2, b=3)), turn("<think>It is 5.</think>\nDone."))
    assert score_all(ADD_TASK, completion, env)["outcome"] == 0.0


def test_only_an_answer_earns_outcome() -> None:
    """The right value in text that is still reasoning (`</think>` closed, then `<verify>` sections again) or in
    a reply the token budget cut off is no answer; the toy check, like the shipped ones, finds "5" anywhere."""
    schema = load_thought_schema("think-plan-reflect")
    first = turn("<think><plan>Add them.</plan></think>", call("add", a=2, b=3))
    loop = (
        "<think><observe>Got 5.</observe></think>\n"
        + "<verify>The tool output shows 5.</verify></think>\n" * 3
    )
    still = ("reasoning_in_answer", "its answer is still reasoning")
    answers = {
        "<think><verify>5 it is.</verify></think>\nThe sum is 5.": (1.0, None, "final answer"),
        loop: (0.0, *still),
        "<think><verify>5 it is.</verify></think>\n<plan>The sum is 5.</plan>": (0.0, *still),
        "<think><verify>The sum is 5.</verify></think>": (0.0, "empty_answer", "its answer is empty"),
    }
    for last, (expected, failure, error) in answers.items():
        env, failures = ToyEnv(), FailureCounts()
        completion = play(env, ADD_TASK, first, turn(last))
        value = rewards.outcome(
            codec=HERMES,
            thought_schema=schema,
            completions=[completion],
            task=[ADD_TASK.to_json()],
            environments=[env],
            failures=failures,
        )
        assert value == [expected], last
        assert failures.as_dict() == ({failure: 1} if failure else {})
        rollout = parse_rollout(completion, HERMES, schema)
        assert episode_error(rollout, irrelevant=False).startswith(error)
    # The clean answer, cut off by the budget after its value (TRL's ids end without an end-of-turn token).
    env = ToyEnv()
    clean = play(env, ADD_TASK, first, turn("<think><verify>5 it is.</verify></think>\nThe sum is 5"))
    kwargs = {"completion_ids": [[11, 12]], "eos_token_ids": (2,), "thought_schema": schema}
    assert rewards.outcome(
        codec=HERMES, completions=[clean], task=[ADD_TASK.to_json()], environments=[env], **kwargs
    ) == [0.0]


def test_wrong_tool() -> None:
    env = ToyEnv()
    completion = play(env, ADD_TASK, turn("", call("store", name="a", value=2)), turn("Stored."))
    scores = score_all(ADD_TASK, completion, env)
    assert scores["format"] == 1.0  # a valid call, just the wrong one
    assert scores["tool_call"] == -1.0  # no name overlap, no matched pair
    assert scores["execution"] == 1.0
    assert scores["outcome"] == 0.0


def test_wrong_argument_value() -> None:
    env = ToyEnv()
    completion = play(env, ADD_TASK, turn("", call("add", a=2, b=4)), turn("The sum is 6."))
    scores = score_all(ADD_TASK, completion, env)
    # name 1 + keys 1 + one of two values = 3 of max 4 → 2*0.75 - 1
    assert scores["tool_call"] == pytest.approx(0.5)
    assert (scores["format"], scores["execution"], scores["outcome"]) == (1.0, 1.0, 0.0)


def test_missing_argument() -> None:
    env = ToyEnv()
    completion = play(env, ADD_TASK, turn("", call("add", a=2)), turn("I could not add."))
    scores = score_all(ADD_TASK, completion, env)
    assert scores["format"] == 0.0  # `b` is required by the schema
    assert scores["execution"] == 0.0  # the method raised TypeError
    # name 1 + keys 1/2 + values 1 = 2.5 of 4
    assert scores["tool_call"] == pytest.approx(0.25)


def test_extra_argument() -> None:
    env = ToyEnv()
    completion = play(env, ADD_TASK, turn("", call("add", a=2, b=3, c=1)), turn("5"))
    scores = score_all(ADD_TASK, completion, env)
    assert scores["format"] == 0.0  # `c` is not a parameter of add
    assert scores["execution"] == 0.0
    # name 1 + keys 2/3 + values 2 = 11/3 of 4
    assert scores["tool_call"] == pytest.approx(2 * (11 / 3) / 4 - 1)


def test_malformed_json_scores_low_and_is_counted() -> None:
    env = ToyEnv()
    raw = '<tool_call>\n{"name": "add", "arguments": {"a": 2,}\n</tool_call>'
    completion = play(env, ADD_TASK, turn(raw))
    logged: dict[str, list[float]] = {}
    failures = FailureCounts()
    funcs, _ = build_reward_funcs(dict.fromkeys(rewards.REWARD_NAMES, 1.0), HERMES, failures=failures)
    scores = {
        rewards.reward_name(f): f(
            completions=[completion],
            task=[ADD_TASK.to_json()],
            environments=[env],
            log_metric=lambda k, v: logged.setdefault(k, []).append(v),
        )[0]
        for f in funcs
    }
    assert scores["format"] == 0.0
    assert scores["tool_call"] == -1.0
    assert scores["execution"] == 0.0
    assert scores["outcome"] == 0.0
    assert scores["efficiency"] == 0.0  # one attempt, difficulty 1
    assert failures.as_dict()["malformed_call"] == 1
    assert logged["failures/malformed_call"] == [1.0]


def test_parse_rollout_reads_calls_results_and_final_answer() -> None:
    completion = play(
        ToyEnv(),
        ADD_TASK,
        turn("<tool_call>{bad</tool_call>", call("add", a=2, b=3)),
        turn("<think>x</think>\n5"),
    )
    rollout = parse_rollout(completion, HERMES, load_thought_schema("think-plan-reflect"))
    assert [(c.name, c.arguments) for c in rollout.calls] == [("add", {"a": 2, "b": 3})]
    assert rollout.malformed == 1
    assert rollout.results == [("add", "5")]
    assert (rollout.final_text, rollout.finished, rollout.attempted) == ("5", True, 2)


def test_parallel_calls_are_matched_optimally_whatever_the_order() -> None:
    task = Task(
        "toy",
        "add-2",
        "2+3 and 4+5",
        {},
        [[Step("add", {"a": 2, "b": 3}), Step("add", {"a": 4, "b": 5})]],
        difficulty=2,
    )
    completion = play(ToyEnv(), task, turn("", call("add", a=4, b=5), call("add", a=2, b=3)), turn("5 and 9"))
    assert score_all(task, completion, ToyEnv())["tool_call"] == 1.0


CROSS_INSTANCE_CASES = {
    "swapped": ({"a": 2, "b": 1}, 0.0),
    "right": ({"a": 1, "b": 2}, 1.0),
    "unknown_instance": ({"a": 1, "c": 2}, 0.5),
}


def test_cross_instance_call() -> None:
    """Scored as one batch, as TRL calls a reward: each rollout gets its own value, in order."""
    completions = [
        [store_x_per_instance(values), turn("Stored both.")] for values, _ in CROSS_INSTANCE_CASES.values()
    ]
    expected = [value for _, value in CROSS_INSTANCE_CASES.values()]
    tasks = [INSTANCED_TASK.to_json()] * len(completions)
    assert rewards.instance(codec=HERMES, completions=completions, task=tasks) == expected
    # Instances do not exist outside instanced tasks.
    right = [store_x_per_instance({"a": 1, "b": 2}), turn("Stored both.")]
    assert rewards.instance(codec=HERMES, completions=[right], task=[ADD_TASK.to_json()]) == [None]


def test_call_on_irrelevant_request() -> None:
    env = ToyEnv()
    called = play(env, IRRELEVANT_TASK, turn("", call("add", a=1, b=1)), turn("2"))
    scores = score_all(IRRELEVANT_TASK, called, env)
    assert scores == {
        "outcome": 0.0,
        "format": 1.0,
        "tool_call": None,
        "execution": None,
        "instance": None,
        "irrelevance": -1.0,
        "efficiency": None,
        "answered": 0.0,
    }
    declined = play(env, IRRELEVANT_TASK, turn("None of my tools can write poems, sorry."))
    scores = score_all(IRRELEVANT_TASK, declined, env)
    assert (scores["irrelevance"], scores["outcome"], scores["format"]) == (1.0, 1.0, 1.0)


def test_redundant_calls_cost_efficiency() -> None:
    env = ToyEnv()
    completion = play(env, ADD_TASK, turn("", call("add", a=2, b=3), call("add", a=2, b=3)), turn("5"))
    scores = score_all(ADD_TASK, completion, env)
    assert scores["efficiency"] == -1.0  # one extra call on a 1-call task
    assert scores["outcome"] == 1.0
    assert scores["tool_call"] == pytest.approx(2 * (0.5 + 3) / 4 - 1)  # name Jaccard 1/2, one matched pair


def test_environment_that_raises_scores_low_and_never_crashes() -> None:
    env = BrokenEnv()
    failures = FailureCounts()
    completion = play(env, ADD_TASK, turn("", call("explode")), turn("5"))
    funcs, _ = build_reward_funcs(dict.fromkeys(rewards.REWARD_NAMES, 1.0), HERMES, failures=failures)
    scores = {
        rewards.reward_name(f): f(completions=[completion], task=[ADD_TASK.to_json()], environments=[env])[0]
        for f in funcs
    }
    assert scores["outcome"] == 0.0  # get_reward raised
    assert scores["execution"] == 0.0  # the tool raised RuntimeError
    assert failures.as_dict() == {"env_error": 1, "tool_error": 1}


def test_garbage_rollouts_never_raise() -> None:
    garbage: list[Any] = [
        None,
        42,
        [None, "x", {"role": "assistant", "tool_calls": [{"function": None}]}],
        [],
    ]
    for name, func in rewards.REWARD_FUNCS.items():
        values = func(
            completions=garbage,
            task=[ADD_TASK.to_json()] * len(garbage),
            environments=[None] * 4,
            codec=HERMES,
        )
        assert len(values) == 4, name
        assert all(v is None or math.isfinite(v) for v in values), name


def test_runaway_episode_is_counted_and_scores_no_outcome() -> None:
    env = ToyEnv()
    failures = FailureCounts()
    # The tool-call budget ran out: the last assistant turn still asks for a call.
    completion = play(env, ADD_TASK, turn("", call("add", a=2, b=3)))
    completion.append(turn("", call("add", a=2, b=3)))
    value = rewards.outcome(
        codec=HERMES,
        completions=[completion],
        task=[ADD_TASK.to_json()],
        environments=[env],
        failures=failures,
    )
    assert value == [0.0]
    assert failures.as_dict() == {"runaway": 1}
    # Cut off by the token budget: TRL's completion ids end without an end-of-turn token.
    cut = [turn("The sum is")]
    kwargs = {"completion_ids": [[11, 12], [11, 2]], "eos_token_ids": (2,), "failures": failures}
    rewards.outcome(
        codec=HERMES, completions=[cut, cut], task=[ADD_TASK.to_json()] * 2, environments=[env, env], **kwargs
    )
    assert failures.as_dict() == {"runaway": 1, "truncated": 1}


def test_build_reward_funcs_puts_outcome_first_and_drops_zero_weights() -> None:
    funcs, weights = build_reward_funcs(
        {"format": 0.5, "efficiency": 0.0, "outcome": 2.0, "tool_call": 1.0}, HERMES
    )
    assert [rewards.reward_name(f) for f in funcs] == ["outcome", "format", "tool_call"]
    assert weights == [2.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="unknown reward"):
        build_reward_funcs({"fromat": 1.0}, HERMES)


@pytest.mark.parametrize("parser", ["codec", "trl"])
def test_trl_parsed_completions_read_as_calls_and_raw_text(tokenizer, parser: str) -> None:
    """The contract with TRL: what its `parse_response` makes of our chat template's replies is what the rewards
    read (a valid call → `tool_calls`; a broken one → raw text counted as malformed), with the codec's response
    template (what `load_tokenizer` sets, so what GRPO uses) and with TRL's own for this template."""
    from trl.chat_template_utils import add_response_schema, parse_response

    from pipelines.envs.calculator import CalculatorEnv

    tok = copy.deepcopy(tokenizer)  # the fixture is shared: leave it untouched
    assert tok.response_template == HERMES.response_template
    if parser == "trl":
        add_response_schema(tok)
        assert tok.response_template != HERMES.response_template  # TRL recognised the project's template
    env = CalculatorEnv()
    tools = [getattr(env, name) for name in env._tool_methods()]
    prefix = chat_encoding(
        tok, [{"role": "user", "content": "2+3?"}], tools=tools, add_generation_prompt=True
    )
    prefix = prefix["input_ids"]

    def parsed(text: str) -> dict[str, Any]:
        return parse_response(
            tok, tok(text, add_special_tokens=False)["input_ids"], prefix=prefix, tools=tools
        )

    good = parsed(
        '<tool_call>\n{"name": "evaluate_expression", "arguments": {"expression": "2+3"}}\n</tool_call><|im_end|>'
    )
    rollout = parse_rollout([good], HERMES)
    assert [(c.name, c.arguments) for c in rollout.calls] == [("evaluate_expression", {"expression": "2+3"})]
    assert rollout.malformed == 0
    broken = parsed(
        '<tool_call>\n{"name": "evaluate_expression", "arguments": {"expression": }\n</tool_call><|im_end|>'
    )
    rollout = parse_rollout([broken], HERMES)
    assert (rollout.calls, rollout.malformed) == ([], 1)
    # The loop GRPO taught the 80-step adapter (session 18) reads as reasoning, not as an answer.
    schema = load_thought_schema("think-plan-reflect")
    verify = "<verify>The tool output shows 5.</verify></think>\n"
    looping = parsed("<think><observe>Got 5.</observe></think>\n" + verify * 2 + "<|im_end|>")
    answered = parsed("<think><observe>Got 5.</observe></think>\nThe sum is 5.<|im_end|>")
    assert parse_rollout([looping], HERMES, schema).answer_still_reasoning
    rollout = parse_rollout([answered], HERMES, schema)
    assert (rollout.answer_still_reasoning, rollout.final_text) == (False, "The sum is 5.")


def test_instanced_rows_in_the_generators_format() -> None:
    """`{"instances": {id: task}}` (pipelines.envs.instanced): each instance's reference calls get its tag."""
    from pipelines.envs.instanced import instanced_task_json

    one = Task("toy", "s1", "store x=1", {}, [[Step("store", {"name": "x", "value": 1})]])
    two = Task("toy", "s2", "store x=2", {}, [[Step("store", {"name": "x", "value": 2})]])
    row = instanced_task_json({"t1": one, "t2": two})
    task = rewards.load_task(row)
    assert rewards.declared_instances(task) == ["t1", "t2"] and task.difficulty == 2
    right = [store_x_per_instance({"t1": 1, "t2": 2})]
    crossed = [store_x_per_instance({"t1": 2, "t2": 1})]
    assert rewards.instance(codec=HERMES, completions=[right, crossed], task=[row, row]) == [1.0, 0.0]
    assert rewards.tool_call(codec=HERMES, completions=[right, crossed], task=[row, row]) == [
        1.0,
        pytest.approx(2 * (1 + 2 + 4) / 9 - 1),
    ]
