"""Episodes: a model talks to a live tool environment until it answers, and is scored with the RL rewards.

Shared by the RL stage (held-out before/after, `eval_before_after.json`) and the eval stage (held-out suite), so
both run and score a task the same way. The loop mirrors TRL's tool loop (generate → parse calls → run them in
the env → append the results → generate again, at most `max_iterations` rounds of tools, one token budget for
the whole rollout), but batched over episodes and greedy (or k seeded samples a task: `HeldoutSampling`), so
numbers are repeatable and cheap. As in TRL, a
rollout's tokens are built by concatenation (prompt + generated tokens + the template's tool-result suffix),
never by re-rendering the conversation, and each reply is parsed with TRL's own `parse_response` (the codec's
response template): rollouts come out in TRL's message shape, so `pipelines.rl.rewards` scores them exactly as
it scores training rollouts. Generation is a `pipelines.inference.GenerateFn`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.artifacts import SFTSummary
from pipelines.chat import DEFAULT_SYSTEM_PROMPT, prompt_ids
from pipelines.codecs import Codec, codec_for
from pipelines.envs.base import ToolEnv
from pipelines.eval.results import Z95, wilson_interval
from pipelines.inference import GenerateFn
from pipelines.progress import progress_bar
from pipelines.rl import rewards
from pipelines.tasks.records import Task
from pipelines.tasks.sampling import DomainTask, HeldOut
from pipelines.thought import ThoughtSchema

if TYPE_CHECKING:
    from pipelines.run_config import HeldoutSampling

EVAL_FILE = "eval_before_after.json"


def prompt_messages(task: Task) -> list[dict[str, str]]:
    """The conversation a task starts with (a task file's own messages, after the default system prompt unless
    they bring one); the tools come from the environment, as in TRL."""
    if task.messages:
        opening = [dict(m) for m in task.messages]
        return (
            opening
            if opening[0]["role"] == "system"
            else [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, *opening]
        )
    return [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": task.request}]


# -- the live loop ---------------------------------------------------------------------------------------------
@dataclass
class Episode:
    item: DomainTask
    env: ToolEnv
    tools: list[dict[str, Any]]
    conversation: list[dict[str, Any]]
    completion: list[dict[str, Any]] = field(default_factory=list)
    ids: list[int] = field(
        default_factory=list
    )  # prompt + generated + tool-result tokens, as TRL builds them
    prompt_tokens: int = 0
    mask: list[int] = field(default_factory=list)  # per token after the prompt: 1 generated, 0 tool results
    used_tokens: int = 0  # generated and tool-result tokens so far (TRL's max_completion_length counts both)
    tool_rounds: int = 0
    truncated: bool = False  # the token budget ran out mid-reply
    done: bool = False


def start_episode(item: DomainTask, env_class: type[ToolEnv]) -> Episode:
    env = env_class()
    env.reset(task=item.task.to_json())
    tools = env._task_tools() if hasattr(env, "_task_tools") else env._tool_schemas()
    return Episode(item, env, tools, prompt_messages(item.task))


def assistant_message(
    tokenizer: Any, reply_ids: list[int], prompt_ids: list[int], tools: Any
) -> dict[str, Any]:
    """Reply tokens → TRL-shaped assistant message, through TRL's own `parse_response` (the function GRPO parses
    rollouts with): calls that parse move to `tool_calls`; a reply whose calls do not all parse stays in
    `content` as text, exactly as TRL leaves it, so the `format` reward sees the same thing in training and here.
    """
    from trl.chat_template_utils import parse_response

    return parse_response(tokenizer, list(reply_ids), prefix=list(prompt_ids), tools=tools)


def _until_end(ids: list[int], end_ids: set[int]) -> tuple[list[int], bool]:
    """The reply up to and including its first end-of-turn token, and whether it had one."""
    for i, token in enumerate(ids):
        if token in end_ids:
            return ids[: i + 1], True
    return ids, False


def run_calls(episode: Episode, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Execute each call in the episode's env; an env that raises becomes an error observation, never a crash."""
    results = []
    for call in calls:
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        try:
            observation, _ = episode.env._call_tool(name, arguments)
        except Exception as exc:
            observation = f"Error: {type(exc).__name__}: {exc}"
        results.append({"role": "tool", "name": name, "content": observation})
    return results


def step(
    generate: GenerateFn,
    tokenizer: Any,
    codec: Codec,
    batch: list[Episode],
    budget: int,
    limit: int,
    adapter: str | None,
    max_reply_tokens: int | None,
    shared_prefix: Callable[[Episode], int] | None = None,
) -> None:
    """One round for a batch of live episodes: generate, parse, run the calls, append the results.
    `shared_prefix(episode)`: how many of its tokens other episodes share (tree rollouts: the fork point), passed
    to `generate` as `shared_prefixes` for KV reuse."""
    for ep in batch:
        if not ep.ids:
            ep.ids = prompt_ids(tokenizer, ep.conversation, ep.tools or None)
            ep.prompt_tokens = len(ep.ids)
    room = [budget - (len(ep.ids) - ep.prompt_tokens) for ep in batch]
    end_ids = set(codec.end_of_turn_ids(tokenizer))
    # One reply is capped at `max_reply_tokens`: the loop asks for the whole episode's remaining budget, and
    # one rambling row would otherwise hold its batch for all of it. A capped reply has no end-of-turn token,
    # so the episode ends as out of tokens, exactly as when the budget runs out.
    asked = max(1, max(room))
    asked = min(asked, max_reply_tokens) if max_reply_tokens else asked
    rows, adapters = [ep.ids for ep in batch], [adapter] * len(batch)
    if shared_prefix is None:
        outputs = generate(rows, adapters, asked)
    else:
        outputs = generate(rows, adapters, asked, shared_prefixes=[shared_prefix(ep) for ep in batch])  # type: ignore[call-arg]  # the rollout engine's GenerateFn takes them
    for ep, new_ids, left in zip(batch, outputs, room, strict=True):
        reply, ended = _until_end(new_ids[: max(0, left)], end_ids)
        message = assistant_message(tokenizer, reply, ep.ids, ep.tools or None)
        ep.completion.append(message)
        ep.conversation.append(message)
        ep.ids = ep.ids + reply
        ep.mask = ep.mask + [1] * len(reply)
        calls = message.get("tool_calls") or []
        ep.truncated = not ended
        if not ended or not calls or ep.tool_rounds >= limit:
            ep.done = True  # answered, out of tokens, or out of tool rounds (a runaway: calls left pending)
            continue
        results = run_calls(ep, calls)
        suffix = tokenizer(codec.tool_suffix(tokenizer, results), add_special_tokens=False)["input_ids"]
        if len(ep.ids) + len(suffix) - ep.prompt_tokens > budget:
            ep.done = True  # as TRL: results that would overrun the budget are dropped and the rollout ends
            continue
        ep.completion.extend(results)
        ep.conversation.extend(results)
        ep.ids = ep.ids + suffix
        ep.mask = ep.mask + [0] * len(suffix)
        ep.tool_rounds += 1


def run_episodes(
    generate: GenerateFn,
    tokenizer: Any,
    items: Sequence[DomainTask],
    env_classes: dict[str, type[ToolEnv]],
    max_iterations: int,
    max_completion_length: int,
    batch_size: int = 8,
    adapter: str | None = None,
    max_reply_tokens: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[Episode]:
    """Greedy live rollouts of every task, every reply from `generate` with `adapter`; `on_progress(finished)`
    after each batch of turns."""
    codec = codec_for(tokenizer)
    episodes = [start_episode(item, env_classes[item.env_key]) for item in items]
    while live := [ep for ep in episodes if not ep.done]:
        for start in range(0, len(live), batch_size):
            step(
                generate, tokenizer, codec, live[start : start + batch_size], max_completion_length,
                max_iterations, adapter, max_reply_tokens,
            )  # fmt: skip
            if on_progress is not None:
                on_progress(sum(ep.done for ep in episodes))
    return episodes


def policies(generate: GenerateFn, sampling: HeldoutSampling | None) -> list[GenerateFn]:
    """The decoders of a held-out evaluation: `generate` once (greedy), or one seeded sampler per sample (from
    the GenerateFn's `sampling(temperature, seed)`: the engine's and vLLM's)."""
    if sampling is None or sampling.greedy:
        return [generate]
    make = getattr(generate, "sampling", None)
    if make is None:
        raise TypeError(
            f"{type(generate).__name__} decodes greedily only; it cannot sample held-out episodes"
        )
    return [make(sampling.temperature, sampling.seed + s) for s in range(sampling.samples)]


def task_means(values: Sequence[float | None], samples: int) -> list[float | None]:
    """Per task, the mean of its samples' values; `values` are sample-major (sample s's tasks in order, then
    sample s + 1's). A task none of whose samples has a value (the metric does not apply) stays None."""
    if samples == 1:
        return list(values)
    if len(values) % samples:
        raise ValueError(f"{len(values)} values are not {samples} samples of the same tasks")
    n = len(values) // samples
    means: list[float | None] = []
    for task in range(n):
        present = [v for v in values[task::n] if v is not None]
        means.append(sum(present) / len(present) if present else None)
    return means


# -- budgets ---------------------------------------------------------------------------------------------------
def trained_lengths(adapter_dir: Path) -> dict[str, Any]:
    """The turn and episode lengths an SFT adapter was trained on (`pipelines.sft.data.generation_lengths`, in
    its training summary); {} for a folder without them (an adapter from elsewhere, or an older run)."""
    summary = SFTSummary.read_if_present(adapter_dir)
    return dict(summary.data.get("generation_lengths") or {}) if summary else {}


def budget_warnings(
    lengths: dict[str, Any],
    adapter: str,
    calls: int | None,
    episode_budget: tuple[str, int] | None = None,
    reply_budget: tuple[str, int] | None = None,
) -> list[str]:
    """What a generation budget cuts off of the turns the adapter learned to write: an episode budget (RL's
    `max_completion_length`, eval's `rollout_tokens`) below the 90th percentile of its training episodes of at
    most `calls` tool calls (None: any number), or a reply budget below that of its training replies. Such a
    budget scores an episode that answers as the traces do as truncated, and no reward or metric says why
    (measured: the demo's 256-token held-out budget was below 47% of its single-call traces; raising it took an
    80-step adapter's held-out outcome from 1/40 to 7/40)."""
    episodes = lengths.get("episodes") or {}
    within = [int(k) for k in episodes if calls is None or int(k) <= calls]
    checks = [
        (
            episode_budget,
            episodes[str(max(within))] if within else None,
            f"episodes `{adapter}` was trained on, those of 1-{max(within, default=0)} tool call(s)",
            "tool results included; an episode that answers as they do scores as truncated",
        ),
        (
            reply_budget,
            lengths.get("replies"),
            f"replies `{adapter}` was trained to write",
            "a reply cut there has no end of turn and ends its episode",
        ),
    ]
    warnings = []
    for given, stats, what, why in checks:
        if given is None or not stats or given[1] >= stats["p90"]:
            continue
        key, budget = given
        warnings.append(
            f"{key}={budget} cuts off 1 in 10 or more of the {what} (median {stats['p50']}, p90 {stats['p90']}, "
            f"max {stats['max']} tokens, n = {stats['n']}; {why}). Set {key} to at least {stats['p90']}"
        )
    return warnings


# -- scores ----------------------------------------------------------------------------------------------------
def score_episodes(
    episodes: Sequence[Episode],
    schema: ThoughtSchema,
    codec: Codec,
    tool_call_scale: float = 1.0,
    samples: int = 1,
) -> dict[str, Any]:
    """Mean outcome reward, format rate, call accuracy (every reference call made exactly, nothing else), each
    reward's mean, outcome per domain, and failure counts. With `samples` > 1, `episodes` are that many passes
    over the same tasks (sample-major): per-task values are each task's mean and intervals are over tasks (its
    samples are not independent draws of the task pool); failures count every episode."""
    failures = rewards.FailureCounts()
    funcs, _ = rewards.build_reward_funcs(
        dict.fromkeys(rewards.REWARD_NAMES, 1.0), codec, schema, failures, tool_call_scale
    )
    completions = [ep.completion for ep in episodes]
    tasks = [ep.item.task.to_json() for ep in episodes]
    envs = [ep.env for ep in episodes]
    truncated = [ep.truncated for ep in episodes]
    per_reward = {
        rewards.reward_name(f): f(completions=completions, task=tasks, environments=envs, truncated=truncated)
        for f in funcs
    }
    exact = [
        _exact_calls(ep, codec, per_reward["tool_call"][i], tool_call_scale) for i, ep in enumerate(episodes)
    ]
    by_domain: dict[str, list[float]] = {}
    for ep, value in zip(episodes, per_reward["outcome"], strict=True):
        by_domain.setdefault(ep.item.domain, []).append(value or 0.0)
    per_task = {
        name: task_means(values, samples)
        for name, values in (
            ("outcome", per_reward["outcome"]),
            ("format_rate", per_reward["format"]),
            ("call_accuracy", exact),
        )
    }
    return {
        "n_tasks": len(episodes) // samples,
        **({"samples": samples} if samples > 1 else {}),
        "outcome": _mean(per_reward["outcome"]),
        "format_rate": _mean(per_reward["format"]),
        "call_accuracy": _mean(exact),
        "ci95": {
            name: wilson_interval([v for v in values if v is not None]) for name, values in per_task.items()
        },
        "outcome_per_task": per_task["outcome"],
        "rewards": {name: _mean(values) for name, values in per_reward.items()},
        "outcome_by_domain": {d: _mean(v) for d, v in sorted(by_domain.items())},
        "mean_tool_calls": _mean(
            [float(rewards.parse_rollout(ep.completion, codec).attempted) for ep in episodes]
        ),
        "failures": failures.as_dict(),
    }


def _exact_calls(episode: Episode, codec: Codec, tool_call_value: float | None, scale: float) -> float:
    if tool_call_value is None:  # no reference calls: exact means no call at all
        return 1.0 if rewards.parse_rollout(episode.completion, codec).attempted == 0 else 0.0
    return 1.0 if tool_call_value >= scale - 1e-9 else 0.0


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 6) if present else None


def evaluate_policy(
    generate: GenerateFn,
    tokenizer: Any,
    items: Sequence[DomainTask],
    env_classes: dict[str, type[ToolEnv]],
    schema: ThoughtSchema,
    max_iterations: int,
    max_completion_length: int,
    tool_call_scale: float = 1.0,
    batch_size: int = 8,
    description: str = "held-out episodes",
    sampling: HeldoutSampling | None = None,
) -> dict[str, Any]:
    """Run and score `items` with the policy `generate`, greedy or as `sampling` says; also returns each
    episode's task id, sample, outcome and rollout."""
    decoders = policies(generate, sampling)
    episodes: list[Episode] = []
    with progress_bar(description, total=len(items) * len(decoders), unit="episodes") as update:
        for policy in decoders:

            def progress(finished: int, before: int = len(episodes)) -> None:
                update(completed=before + finished)

            episodes += run_episodes(
                policy, tokenizer, items, env_classes, max_iterations, max_completion_length, batch_size,
                on_progress=progress,
            )  # fmt: skip
    metrics = score_episodes(episodes, schema, codec_for(tokenizer), tool_call_scale, len(decoders))
    metrics["episodes"] = [
        {
            "task_id": ep.item.task.task_id,
            "domain": ep.item.domain,
            **({"sample": i // len(items)} if len(decoders) > 1 else {}),
            "completion": ep.completion,
        }
        for i, ep in enumerate(episodes)
    ]
    if sampling is not None and not sampling.greedy:
        metrics["sampling"] = sampling.model_dump(mode="json")
    return metrics


def before_after(before: dict[str, Any], after: dict[str, Any], held_out: HeldOut) -> dict[str, Any]:
    """The `eval_before_after.json` payload: which tasks, both evaluations (rollouts included), each change."""
    keys = ("outcome", "format_rate", "call_accuracy", "mean_tool_calls")
    delta: dict[str, Any] = {k: _diff(after.get(k), before.get(k)) for k in keys}
    delta["rewards"] = {k: _diff(after["rewards"].get(k), v) for k, v in before["rewards"].items()}
    delta["outcome_ci95"] = paired_interval(before.get("outcome_per_task"), after.get("outcome_per_task"))
    tasks = {
        "seed": held_out.seed,
        "pool_size": held_out.pool_size,
        "decontaminated": held_out.decontaminated,
        "task_ids": [item.task.task_id for item in held_out.items],
    }
    return {"heldout": tasks, "before": before, "after": after, "delta": delta}


def paired_interval(
    before: Sequence[float | None] | None, after: Sequence[float | None] | None
) -> list[float] | None:
    """[low, high, n]: the 95% interval of the mean per-task change after − before on the same tasks (normal
    approximation of the paired differences; a change is real where the interval excludes 0). None when the two
    runs did not score the same tasks."""
    if not before or not after or len(before) != len(after):
        return None
    diffs = [(a or 0.0) - (b or 0.0) for b, a in zip(before, after, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    half = Z95 * sd / math.sqrt(n)
    return [round(mean - half, 4), round(mean + half, 4), n]


def _diff(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else round(after - before, 6)


# -- held-out suite metrics (the eval stage's columns) ---------------------------------------------------------
def episode_outcomes(episodes: Sequence[Episode], schema: ThoughtSchema, codec: Codec) -> list[float]:
    """Each episode's outcome (1.0 = the environment's ground truth met; irrelevant: declined without a call)."""
    outcomes = []
    for ep in episodes:
        rollout = rewards.parse_rollout(ep.completion, codec, schema)
        value, _ = rewards.outcome_score(rollout, ep.item.task, ep.env)
        outcomes.append(value)
    return outcomes


def had_tool_error(episode: Episode) -> bool:
    return any(
        rewards.is_error_result(str(m.get("content", "")))
        for m in episode.completion
        if isinstance(m, dict) and m.get("role") == "tool"
    )


def recovery_rate(episodes: Sequence[Episode], outcomes: Sequence[float]) -> float | None:
    """Of the episodes where a tool returned an error, the share that still succeeded (None: no errors)."""
    after_error = [o for ep, o in zip(episodes, outcomes, strict=True) if had_tool_error(ep)]
    return round(sum(after_error) / len(after_error), 6) if after_error else None


def irrelevance_accuracy(episodes: Sequence[Episode], outcomes: Sequence[float]) -> float | None:
    """Of the irrelevant-request tasks, the share answered without any call (None: there were none)."""
    values = [o for ep, o in zip(episodes, outcomes, strict=True) if rewards.is_irrelevant(ep.item.task)]
    return round(sum(values) / len(values), 6) if values else None


def heldout_metrics(
    episodes: Sequence[Episode],
    outcomes: Sequence[float],
    schema: ThoughtSchema,
    codec: Codec,
    samples: int = 1,
) -> dict[str, Any]:
    """Outcome, format rate and call accuracy on tasks that need calls (as the RL stage reports them), recovery
    rate after a tool error, irrelevance accuracy, and n = every task; with `samples` > 1 (sample-major
    episodes, `score_episodes`) each task's values are its samples' means and intervals are over tasks."""
    relevant = [i for i, ep in enumerate(episodes) if not rewards.is_irrelevant(ep.item.task)]
    scored = (
        score_episodes([episodes[i] for i in relevant], schema, codec, samples=samples) if relevant else {}
    )
    irrelevant = [
        o if rewards.is_irrelevant(ep.item.task) else None for ep, o in zip(episodes, outcomes, strict=True)
    ]
    return {
        "outcome": scored.get("outcome"),
        "format_rate": scored.get("format_rate"),
        "call_accuracy": scored.get("call_accuracy"),
        "recovery_rate": recovery_rate([episodes[i] for i in relevant], [outcomes[i] for i in relevant]),
        "irrelevance_accuracy": irrelevance_accuracy(episodes, outcomes),
        "n": len(episodes) // samples,
        **({"samples": samples} if samples > 1 else {}),
        "ci95": {
            **scored.get("ci95", {}),
            "irrelevance_accuracy": wilson_interval(
                [v for v in task_means(irrelevant, samples) if v is not None]
            ),
        },
        "outcome_per_task": scored.get("outcome_per_task", []),
    }


def heldout_prediction(
    target: str, episode: Episode, outcome: float, schema: ThoughtSchema, codec: Codec
) -> dict[str, Any]:
    rollout = rewards.parse_rollout(episode.completion, codec, schema)
    irrelevant, cut = rewards.is_irrelevant(episode.item.task), episode.truncated
    return {
        "target": target,
        "suite": "heldout",
        "domain": episode.item.domain,
        "id": episode.item.task.task_id,
        "irrelevant": irrelevant,
        "raw": episode.completion,
        "calls": [{"name": c.name, "arguments": c.arguments} for c in rollout.calls],
        "ok": outcome >= 1.0,
        "error": "" if outcome >= 1.0 else _failed_env(episode) or episode_error(rollout, irrelevant, cut),
    }


def _failed_env(episode: Episode) -> str:
    """An environment that died mid-episode (an MCP server crash or timeout) is the reason, whatever the model did."""
    failure = getattr(episode.env, "_env_failure", None) or getattr(episode.env, "_reset_error", None)
    return f"environment failed: {failure}" if failure else ""


def episode_error(rollout: rewards.Rollout, irrelevant: bool, truncated: bool = False) -> str:
    """Why an episode failed, in the words a person inspecting predictions.jsonl needs first. A reply cut off by
    the token budget is named as such: its last turn looks finished (no pending call), and reading it as a wrong
    answer hides a budget shorter than the model's own turns."""
    if irrelevant:
        return "called a tool on a request no tool fits" if rollout.attempted else "did not finish its answer"
    if truncated:
        return "cut off by the token budget before its turn ended (eval.max_new_tokens, eval.rollout_tokens)"
    if not rollout.finished:
        return "did not finish (tool rounds ran out, or a tool result would overrun the token budget)"
    if rollout.answer_still_reasoning:
        return "its answer is still reasoning (thought-schema tags after the reasoning closed)"
    if not rollout.final_text.strip():
        return "its answer is empty (the last turn is all reasoning)"
    if rollout.attempted == 0:
        return "answered without calling a tool"
    if rollout.malformed:
        return f"{rollout.malformed} malformed tool call(s)"
    errors = [text for _, text in rollout.results if rewards.is_error_result(text)]
    suffix = f" after {len(errors)} tool error(s), last: {errors[-1][:120]}" if errors else ""
    return "final answer or state does not match the ground truth" + suffix
