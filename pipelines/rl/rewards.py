"""Tool-use rewards for GRPO: one named function per component, each weighted in `rl.reward_weights`.

Every reward has TRL's reward-function signature, `(completions, task, environments=None, **kwargs)`, and
returns one value per rollout. A rollout (`completions[i]`) is TRL's list of messages after the prompt:
assistant turns (calls parsed into `tool_calls` by TRL's `parse_response` with the codec's response template; a
reply TRL could not parse stays as raw text in `content`, call blocks included) and the `tool` results it
appended. The evaluator in `pipelines.rl.evaluate` builds rollouts with the same TRL function, so training and
held-out evaluation score with the same code. The run's codec (`pipelines.codecs`, bound by
`build_reward_funcs`) reads what is left in the content: the call blocks that never ran, the visible answer.

`None` means "does not apply to this rollout" (e.g. `irrelevance` on a task that needs calls): TRL turns it into
NaN, leaves it out of the weighted sum and out of that component's logged mean, so each component's curve
averages only over the rollouts it judges.

Robustness: a reward never raises. A rollout whose scoring hits an unexpected error (an environment that raises
in `get_reward`, a garbage call) gets the component's floor value, and every failure kind is counted: per batch
through TRL's `log_metric` (`failures/<kind>`), and cumulatively in a `FailureCounts` for the run summary. Each
failure kind is counted by exactly one component, so a rollout's malformed call is not counted seven times.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from pipelines.chat import INSTANCE_KEY
from pipelines.codecs import Codec
from pipelines.envs.base import ToolEnv
from pipelines.run_config import RL_REWARD_NAMES
from pipelines.schema import argument_errors, function_spec, parameters_schema
from pipelines.tasks.records import Step, Task
from pipelines.thought import ThoughtSchema

REWARD_NAMES = RL_REWARD_NAMES
# The value a component gives a rollout it could not score (its worst value): a broken rollout never gains.
FLOORS = {
    "format": 0.0,
    "tool_call": -1.0,
    "execution": 0.0,
    "outcome": 0.0,
    "instance": 0.0,
    "irrelevance": -1.0,
    "efficiency": -1.0,
    "answered": -1.0,
}
_TRL_ERROR_PREFIX = "{'error':"


# -- failure counting ------------------------------------------------------------------------------------------
@dataclass
class FailureCounts:
    """Cumulative counts of each failure kind over a run (written into `training_summary.json`)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, n: int = 1) -> None:
        if n:
            self.counts[kind] += n

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def _report(batch: Counter[str], failures: FailureCounts | None, log_metric: Callable | None) -> None:
    """Add a batch's failures to the run totals and log each kind (zeros included, so curves are continuous)."""
    for kind, n in batch.items():
        if failures is not None:
            failures.add(kind, n)
        if log_metric is not None:
            log_metric(f"failures/{kind}", float(n))


# -- reading a rollout -----------------------------------------------------------------------------------------
@dataclass
class Call:
    name: str
    arguments: dict[str, Any]


@dataclass
class Rollout:
    """What a completion did: the calls it made, the ones that never parsed, what came back, how it ended."""

    calls: list[Call]
    malformed: int  # call blocks left as raw text: they never ran
    results: list[tuple[str, str]]  # (tool name, observation text) of each tool message
    final_text: str  # visible content of the last assistant turn, reasoning stripped
    finished: bool  # the episode ended on an assistant turn without pending calls
    truncated: bool = False  # the token budget ran out mid-reply (no end-of-turn token)
    answer_still_reasoning: bool = False  # the final visible text holds a tag of the thought schema

    @property
    def attempted(self) -> int:
        return len(self.calls) + self.malformed


def parse_rollout(completion: Any, codec: Codec, schema: ThoughtSchema | None = None) -> Rollout:
    """Read TRL's message list (or plain text, for non-conversational prompts) into a `Rollout`."""
    messages = (
        completion if isinstance(completion, list) else [{"role": "assistant", "content": str(completion)}]
    )
    calls: list[Call] = []
    malformed = 0
    results: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("role") == "tool":
            results.append((str(message.get("name", "")), _text(message.get("content"))))
        elif message.get("role") == "assistant":
            calls += [_call(c) for c in message.get("tool_calls") or []]
            malformed += codec.count_call_blocks(_text(message.get("content")))
    last = next((m for m in reversed(messages) if isinstance(m, dict)), {})
    finished = last.get("role") == "assistant" and not last.get("tool_calls")
    final_text = codec.parse(_text(last.get("content")), schema).content if finished else ""
    still_reasoning = schema is not None and schema.reserved_tag_in(final_text) is not None
    return Rollout(calls, malformed, results, final_text, finished, answer_still_reasoning=still_reasoning)


def _text(content: Any) -> str:
    if isinstance(content, list):  # multimodal content blocks
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _call(raw: Any) -> Call:
    function = raw.get("function", raw) if isinstance(raw, dict) else None
    function = function if isinstance(function, dict) else {}
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):  # some parsers leave JSON text
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            arguments = {"__unparsed__": arguments}
    return Call(str(function.get("name", "")), arguments if isinstance(arguments, dict) else {})


@lru_cache(maxsize=4096)
def _task(task_json: str) -> Task:
    data = json.loads(task_json)
    if isinstance(data, dict) and "instances" in data and "solution" not in data:
        return _instanced_task(data["instances"])
    return Task.from_json(data)


def _instanced_task(instances: dict[str, Any]) -> Task:
    """An instanced row's `{"instances": {id: task}}` as one Task: every reference call tagged with its
    instance, `setup["instances"]` naming them, difficulty the sum (see `pipelines.envs.instanced`)."""
    tasks = {str(k): Task.from_json(v) for k, v in sorted(instances.items())}
    solution = [
        [Step(s.tool, {**s.arguments, INSTANCE_KEY: k}) for s in turn]
        for k, t in tasks.items()
        for turn in t.solution
    ]
    first = next(iter(tasks.values()))
    return Task(
        domain=first.domain,
        task_id="+".join(t.task_id for t in tasks.values()),
        request="\n".join(t.request for t in tasks.values()),
        setup={"instances": {k: t.setup for k, t in tasks.items()}},
        solution=solution,
        difficulty=sum(t.difficulty for t in tasks.values()),
    )


def load_task(task: Any) -> Task:
    """A `task` column value (Task JSON, instanced JSON, or a dict of either) as a Task."""
    if isinstance(task, Task):
        return task
    return _task(task if isinstance(task, str) else json.dumps(task, sort_keys=True))


def reference_calls(task: Task) -> list[Call]:
    return [Call(step.tool, dict(step.arguments)) for turn in task.solution for step in turn]


def is_irrelevant(task: Task) -> bool:
    """A request no available tool fits: the reference solution makes no call. A task-file task is one only when
    it says so (`expected_calls: []`); without expected calls it is judged by its answer, state or verifier."""
    if task.judge is not None:
        return task.judge.get("calls") == []
    return not any(task.solution)


@lru_cache(maxsize=256)
def _class_tools(env_class: type[ToolEnv]) -> dict[str, dict[str, Any]]:
    return {function_spec(t)["name"]: t for t in env_class._tool_schemas()}


def tool_specs(environment: Any, tools: Any) -> dict[str, dict[str, Any]] | None:
    """Tool name → spec: the env's own methods (what TRL showed the model), else the row's `tools` column."""
    if isinstance(environment, ToolEnv):
        return _class_tools(type(environment))  # type: ignore[arg-type]  # classes are hashable: mypy#11470
    if isinstance(tools, str):  # the generator's prompt rows carry the specs as JSON text
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            return None
    if isinstance(tools, list):
        return {function_spec(t).get("name", ""): t for t in tools if isinstance(t, dict)}
    return None


# -- the per-rollout scores (pure functions of one rollout) ----------------------------------------------------
def format_score(
    rollout: Rollout, specs: dict[str, dict[str, Any]] | None, irrelevant: bool
) -> tuple[float, Counter]:
    """Share of attempted calls that parsed, name a real tool and validate against its schema.

    No call at all is right (1.0) only when the task needs none; otherwise the expected format was a call (0.0).
    """
    failures: Counter[str] = Counter(malformed_call=rollout.malformed)
    if rollout.attempted == 0:
        return (1.0 if irrelevant else 0.0), failures
    valid = 0
    for call in rollout.calls:
        if specs is not None and call.name not in specs:
            failures["unknown_tool"] += 1
        elif specs is not None and _schema_errors(specs[call.name], call.arguments):
            failures["schema_error"] += 1
        else:
            valid += 1
    return valid / rollout.attempted, failures


def _schema_errors(spec: dict[str, Any], arguments: dict[str, Any]) -> list[str]:
    """Schema errors, plus parameters the tool does not declare: schemas built from Python signatures leave
    `additionalProperties` open, yet the method would refuse the extra keyword."""
    # `_instance` is the project's routing key, not a tool parameter: validate the tool's own arguments.
    own = {k: v for k, v in arguments.items() if k != INSTANCE_KEY}
    params = parameters_schema(spec)
    declared = params.get("properties") or {}
    extra = [] if params.get("additionalProperties") is True else sorted(set(own) - set(declared))
    return argument_errors(spec, own) + [f"unknown parameter {k!r}" for k in extra]


def tool_call_score(rollout: Rollout, task: Task, scale: float = 1.0) -> float | None:
    """ToolRL-style graded match of the calls against the reference solution, in [-scale, scale].

    R = name multiset-Jaccard + Σ over optimally matched pairs (parameter-key Jaccard + exact values), divided by
    its maximum 1 + |G| + Σ|keys(g)| and mapped linearly from [0, 1] onto [-scale, scale].
    """
    reference = reference_calls(task)
    if not reference:
        return None
    predicted = rollout.calls
    names_ref, names_pred = Counter(c.name for c in reference), Counter(c.name for c in predicted)
    union = sum((names_ref | names_pred).values())
    name_score = sum((names_ref & names_pred).values()) / union if union else 0.0
    matched = _best_matching(predicted, reference)
    total = name_score + matched
    maximum = 1 + len(reference) + sum(len(c.arguments) for c in reference)
    return scale * (2 * total / maximum - 1)


def _pair_score(pred: Call, ref: Call) -> float:
    """Key Jaccard + number of reference values matched exactly (after normalisation); 0 across tools."""
    if pred.name != ref.name:
        return 0.0
    keys_pred, keys_ref = set(pred.arguments), set(ref.arguments)
    union = keys_pred | keys_ref
    key_score = len(keys_pred & keys_ref) / len(union) if union else 1.0
    values = sum(
        1
        for k in keys_ref
        if k in pred.arguments and normalise_value(pred.arguments[k]) == normalise_value(ref.arguments[k])
    )
    return key_score + values


def _best_matching(predicted: list[Call], reference: list[Call]) -> float:
    """Sum of pair scores under the optimal one-to-one assignment (Hungarian), so call order does not matter."""
    if not predicted or not reference:
        return 0.0
    from scipy.optimize import linear_sum_assignment

    scores = [[_pair_score(p, r) for r in reference] for p in predicted]
    rows, cols = linear_sum_assignment(scores, maximize=True)
    return float(sum(scores[i][j] for i, j in zip(rows, cols, strict=True)))


def normalise_value(value: Any) -> Any:
    """Compare values as a person would: 3 == 3.0 == "3", case and spacing of strings ignored."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return round(float(value), 6) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        text = " ".join(value.split()).casefold()
        try:
            number = float(text)
        except ValueError:
            return text
        return round(number, 6) if math.isfinite(number) else text
    if isinstance(value, (list, tuple)):
        return [normalise_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): normalise_value(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return value


def execution_score(rollout: Rollout, environment: Any, irrelevant: bool) -> tuple[float | None, Counter]:
    """Share of attempted calls that ran without a tool error (raw, unparsed calls count as not run).

    With a live env, what ran is read from `env._calls` (every tool records itself, whoever calls it); without
    one, from the tool messages.
    """
    failures: Counter[str] = Counter()
    if irrelevant:
        return None, failures
    if rollout.attempted == 0:
        return 0.0, failures
    if isinstance(environment, ToolEnv):
        ok = sum(1 for _, _, raised in environment._calls if not raised)
    else:
        ok = sum(1 for _, text in rollout.results if not is_error_result(text))
    ok = min(ok, len(rollout.calls))
    # Every parsed call that did not run cleanly: it raised, or TRL refused it before the env (unknown tool).
    failures["tool_error"] = len(rollout.calls) - ok
    return ok / rollout.attempted, failures


def is_error_result(text: str) -> bool:
    """TRL writes a raised tool as `{'error': …}`; our own loop writes `Error: …` (ToolEnv._call_tool)."""
    return text.startswith(_TRL_ERROR_PREFIX) or text.startswith("Error:")


def outcome_score(rollout: Rollout, task: Task, environment: Any) -> tuple[float, Counter]:
    """1.0 when the env says the final answer/state matches the ground truth (irrelevant: declined), else 0.0.

    Records the final answer into the env first: `ToolEnv.get_reward` compares the answer it was given.
    Only an answer counts: a reply cut off by the token budget never gave one, and visible text that still
    holds the thought schema's tags (`</think>` closed, then `<verify>…</verify></think>` again until the budget
    ran out) is reasoning, not an answer. The environments' checks find the expected value anywhere in the text,
    so both used to score: GRPO then rewarded the loop along with the value, and after 12 steps 44 of 60
    greedy held-out episodes ended in it (session 18; 3 of the SFT adapter's 9 held-out wins were such loops).
    """
    # A runaway episode: still calling when the tool rounds ran out, or cut off by the token budget.
    failures: Counter[str] = Counter(runaway=0 if rollout.finished else 1, truncated=int(rollout.truncated))
    failures["reasoning_in_answer"] += rollout.answer_still_reasoning
    answered = not rollout.truncated and not rollout.answer_still_reasoning
    if is_irrelevant(task):
        return (1.0 if rollout.attempted == 0 and rollout.finished and answered else 0.0), failures
    if not hasattr(environment, "get_reward") or not hasattr(environment, "_record_final_answer"):
        failures["no_environment"] += 1
        return 0.0, failures
    if getattr(environment, "_reset_error", None):  # see pipelines.rl.train.guarded: the task never started
        failures["env_error"] += 1
        return 0.0, failures
    if getattr(environment, "_env_failure", None):  # the environment died mid-rollout (an MCP server crash)
        failures["env_crash"] += 1
        return 0.0, failures
    if not answered:
        return 0.0, failures
    failures["empty_answer"] += rollout.finished and not rollout.final_text.strip()  # a task that needs one
    try:
        environment._record_final_answer(rollout.final_text)
        value = float(environment.get_reward())
    except Exception:  # an environment that raises scores the rollout low; training goes on
        failures["env_error"] += 1
        return 0.0, failures
    return (value if math.isfinite(value) else 0.0), failures


def answered_score(rollout: Rollout) -> float:
    """0.0 when the rollout ends with an answer, -1.0 when it gives none: cut off by the token budget, still
    calling when the tool rounds ran out, or its visible text still reasoning after the wrapper closed.

    `outcome` already scores such a rollout 0, but so it scores a clean wrong answer, and the rewards for calling
    (`format`, `tool_call`) do not look past the calls: after 12 GRPO steps the greedy policy wrote `<verify>`
    after `</think>` in 47 of 60 held-out episodes (31 before) and its sampled answers were still reasoning in
    258 of 480 (SFT: 151). A per-turn format reward was gamed (a rollout without calls has one clean turn); this
    term reads only the end, so a rollout that skips its calls gains nothing by it.

    An empty answer (the last turn all reasoning, nothing after `</think>`) is no answer either: when it counted,
    GRPO found it within 12 steps, and 58 of 60 greedy held-out episodes ended that way (2 before; at least 25
    in session 20's run)."""
    ended_on_answer = (
        rollout.finished
        and not rollout.truncated
        and not rollout.answer_still_reasoning
        and bool(rollout.final_text.strip())
    )
    return 0.0 if ended_on_answer else -1.0


def declared_instances(task: Task) -> list[str]:
    """Instance ids of an instanced task: keys of `setup["instances"]` and the `_instance` of reference steps."""
    instances = task.setup.get("instances") if isinstance(task.setup, dict) else None
    declared = set(instances) if isinstance(instances, dict) else set()
    declared |= {str(c.arguments[INSTANCE_KEY]) for c in reference_calls(task) if INSTANCE_KEY in c.arguments}
    return sorted(declared)


def _call_key(call: Call) -> tuple[str, Any]:
    arguments = {k: v for k, v in call.arguments.items() if k != INSTANCE_KEY}
    return call.name, json.dumps(normalise_value(arguments), sort_keys=True)


def cross_instance_calls(rollout: Rollout, task: Task) -> int:
    """Calls tagged with one instance that carry exactly another instance's reference call (and none of their
    own): that call acts on the wrong instance's state, e.g. writes B's value into A's memory."""
    own: dict[str, set[tuple[str, Any]]] = {}
    for ref in reference_calls(task):
        own.setdefault(str(ref.arguments.get(INSTANCE_KEY)), set()).add(_call_key(ref))
    crossed = 0
    for call in rollout.calls:
        tag, key = str(call.arguments.get(INSTANCE_KEY)), _call_key(call)
        if tag in own and key not in own[tag] and any(key in keys for i, keys in own.items() if i != tag):
            crossed += 1
    return crossed


def instance_score(rollout: Rollout, task: Task) -> tuple[float | None, Counter]:
    """Instanced tasks only: share of calls that name a declared `_instance`; 0.0 if any call crossed over
    into another instance (isolation is all-or-nothing: one leak corrupts an instance's result)."""
    failures: Counter[str] = Counter()
    instances = declared_instances(task)
    if not instances:
        return None, failures
    if rollout.attempted == 0:
        return 0.0, failures
    targeted = sum(1 for c in rollout.calls if str(c.arguments.get(INSTANCE_KEY)) in instances)
    failures["bad_instance"] = rollout.attempted - targeted
    failures["cross_instance"] = cross_instance_calls(rollout, task)
    return (0.0 if failures["cross_instance"] else targeted / rollout.attempted), failures


def irrelevance_score(rollout: Rollout, task: Task) -> float | None:
    """Tasks no tool fits: +1 for answering without a call, -1 for calling anyway."""
    if not is_irrelevant(task):
        return None
    return 1.0 if rollout.attempted == 0 else -1.0


def efficiency_score(rollout: Rollout, task: Task) -> float | None:
    """0 up to the task's minimum number of calls, then -1/difficulty per extra call, down to -1."""
    if is_irrelevant(task):
        return None
    minimum = max(1, task.difficulty)
    extra = max(0, rollout.attempted - minimum)
    return -min(1.0, extra / minimum)


# -- the TRL reward functions ----------------------------------------------------------------------------------
def _score_batch(
    name: str,
    score: Callable[[Rollout, Task, Any, Any], tuple[float | None, Counter] | float | None],
    completions: list[Any],
    task: list[Any],
    environments: list[Any] | None,
    kwargs: dict[str, Any],
) -> list[float | None]:
    """Run `score` on each rollout, turning any unexpected error into the floor value and a counted failure."""
    schema, codec = kwargs.get("thought_schema"), kwargs["codec"]
    tools = kwargs.get("tools") or [None] * len(completions)
    failures: Counter[str] = Counter()
    values: list[float | None] = []
    truncated = _truncated(kwargs, len(completions))
    for i, completion in enumerate(completions):
        env = environments[i] if environments is not None and i < len(environments) else None
        try:
            rollout = parse_rollout(completion, codec, schema)
            rollout.truncated = truncated[i]
            result = score(rollout, load_task(task[i]), env, tools[i])
        except Exception:
            failures[f"reward_error/{name}"] += 1
            result = FLOORS[name] * (
                float(kwargs.get("tool_call_scale", 1.0)) if name == "tool_call" else 1.0
            )
        value, found = result if isinstance(result, tuple) else (result, Counter())
        failures.update(found)
        values.append(value)
    _report(failures, kwargs.get("failures"), kwargs.get("log_metric"))
    return values


def _truncated(kwargs: dict[str, Any], n: int) -> list[bool]:
    """Which rollouts ran out of tokens: given directly (`truncated`, the evaluator), or read from TRL's
    `completion_ids` (last token not an end-of-turn id; the ids are bound by `build_reward_funcs`)."""
    if kwargs.get("truncated") is not None:
        return [bool(t) for t in kwargs["truncated"]]
    ids, eos = kwargs.get("completion_ids"), set(kwargs.get("eos_token_ids") or ())
    if ids is None or not eos:
        return [False] * n
    return [bool(row) and int(row[-1]) not in eos for row in ids]


def format(
    completions: list[Any], task: list[Any], environments: list[Any] | None = None, **kwargs: Any
) -> list:
    """Every call parses and validates against its tool's JSON schema."""

    def score(r: Rollout, t: Task, env: Any, tools: Any) -> tuple[float, Counter]:
        return format_score(r, tool_specs(env, tools), is_irrelevant(t))

    return _score_batch("format", score, completions, task, environments, kwargs)


def tool_call(
    completions: list[Any], task: list[Any], environments: list[Any] | None = None, **kwargs: Any
) -> list:
    """Graded name/keys/values match against the reference calls (ToolRL), in [-scale, scale]."""
    scale = float(kwargs.get("tool_call_scale", 1.0))
    return _score_batch(
        "tool_call",
        lambda r, t, env, tools: tool_call_score(r, t, scale),
        completions,
        task,
        environments,
        kwargs,
    )


def execution(
    completions: list[Any], task: list[Any], environments: list[Any] | None = None, **kwargs: Any
) -> list:
    """Calls ran without tool errors."""
    return _score_batch(
        "execution",
        lambda r, t, env, tools: execution_score(r, env, is_irrelevant(t)),
        completions,
        task,
        environments,
        kwargs,
    )


def outcome(
    completions: list[Any], task: list[Any], environments: list[Any] | None = None, **kwargs: Any
) -> list:
    """Final answer / environment state matches the task's ground truth (judged by the environment)."""
    return _score_batch(
        "outcome", lambda r, t, env, tools: outcome_score(r, t, env), completions, task, environments, kwargs
    )


def instance(
    completions: list[Any], task: list[Any], environments: list[Any] | None = None, **kwargs: Any
) -> list:
    """Instanced tasks: every call targets a declared `_instance`; no cross-instance state changes."""
    return _score_batch(
        "instance", lambda r, t, env, tools: instance_score(r, t), completions, task, environments, kwargs
    )


def irrelevance(
    completions: list[Any], task: list[Any], environments: list[Any] | None = None, **kwargs: Any
) -> list:
    """No call when no tool fits."""
    return _score_batch(
        "irrelevance",
        lambda r, t, env, tools: irrelevance_score(r, t),
        completions,
        task,
        environments,
        kwargs,
    )


def efficiency(
    completions: list[Any], task: list[Any], environments: list[Any] | None = None, **kwargs: Any
) -> list:
    """Penalty for calls beyond the task's minimum (`Task.difficulty`)."""
    return _score_batch(
        "efficiency", lambda r, t, env, tools: efficiency_score(r, t), completions, task, environments, kwargs
    )


def answered(
    completions: list[Any], task: list[Any], environments: list[Any] | None = None, **kwargs: Any
) -> list:
    """-1 for a rollout that ends without an answer (cut off, out of tool rounds, still reasoning), else 0."""
    return _score_batch(
        "answered", lambda r, t, env, tools: answered_score(r), completions, task, environments, kwargs
    )


REWARD_FUNCS: dict[str, Callable[..., list]] = {
    "format": format,
    "tool_call": tool_call,
    "execution": execution,
    "outcome": outcome,
    "instance": instance,
    "irrelevance": irrelevance,
    "efficiency": efficiency,
    "answered": answered,
}


def reward_name(func: Callable[..., Any]) -> str:
    """The name TRL logs a reward under (`functools.partial` unwrapped)."""
    while isinstance(func, partial):
        func = func.func
    return func.__name__


def build_reward_funcs(
    weights: dict[str, float],
    codec: Codec,
    thought_schema: ThoughtSchema | None = None,
    failures: FailureCounts | None = None,
    tool_call_scale: float = 1.0,
    eos_token_ids: tuple[int, ...] = (),
) -> tuple[list[Callable[..., list]], list[float]]:
    """The reward functions with a non-zero weight, bound to the run's codec, thought schema and failure counter.

    `functools.partial` keeps each function's name for TRL's per-reward logging (`rewards/<name>/mean`).
    `outcome` goes first whatever the weights' order: it records the final answer in each environment, which the
    environment's own `get_reward` (appended by TRL after our functions) reads.
    """
    unknown = sorted(set(weights) - set(REWARD_FUNCS))
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; known: {list(REWARD_FUNCS)}")
    names = sorted(
        (n for n, w in weights.items() if w != 0), key=lambda n: (n != "outcome", REWARD_NAMES.index(n))
    )
    bound = {
        "codec": codec,
        "thought_schema": thought_schema,
        "failures": failures,
        "tool_call_scale": tool_call_scale,
        "eos_token_ids": tuple(eos_token_ids),
    }
    return [partial(REWARD_FUNCS[n], **bound) for n in names], [float(weights[n]) for n in names]
