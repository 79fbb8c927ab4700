"""midtrain's rollout loop for GRPO (TRL's `rollout_func`): chains or trees, reflexion retries, a curriculum.

TRL hands `rollout_func` the generation batch's prompts (each repeated `num_generations` times, one group per
prompt) and trains on whatever token sequences it returns, with an `env_mask` marking the tokens the model did
not generate. So a training *sample* here is a **segment**, not necessarily a whole rollout:

- `shape: chain`: a group is `num_generations` independent rollouts; a sample is a whole rollout.
- `shape: tree` (`branches` K, `depth` D): a rollout is generated to a tool-call boundary, its calls run, then
  K branches continue from that state, each with its own copy of the environment (`ToolEnv._fork`); up to D
  levels. A sample is one segment (one reply + its tool results at a fork, or the rest of the rollout at a leaf)
  with everything before it as its prompt: the shared prefix is generated once and trained once (in its own
  segment), not once per leaf. A group holds `num_generations / (1 + K + ... + K^D)` trees (at least 2). A node
  that finishes before its fork leaves the slots of its subtree empty (one masked token, advantage 0).

**Advantage estimator** (per group; `tree_advantages`): leaves are scored with the run's reward functions
and weights; a node's value V is the mean of its children's values (a leaf's: its reward); a segment's
advantage is V(node) - V(parent), where the roots' parent is the group (the mean of the roots' values). Along
any root-to-leaf path the segment advantages telescope to R(leaf) - V(group), the chain-GRPO advantage of that
rollout, but each segment is credited only with the difference it made against its siblings, which share its
whole prefix and environment state: lower variance, and the same expectation as GRPO. Every sibling set sums
to zero, so the group's advantages do too; all are divided by the group's reward standard deviation (GRPO's
`scale_rewards: group`). A chain is the special case of roots only: (R - mean) / std, exactly TRL's GRPO.
TRL receives the advantages through one reward function (`rollout_advantage`) with `scale_rewards: none`, so
its own group centering changes nothing (the group sums to zero already).

**Reflexion** (`reflexion.retries` R): a leaf that fails verification gets the environment judge's reason
(pipelines/rl/feedback.py) as a user turn and continues, up to R times; its outcome reward is multiplied by
`discount^retries`. Successful retries are written as recovery traces (OpenAI messages + tools).

**Curriculum** (`curriculum.enabled`): a task is drawn by the pass rate of its difficulty (weight p(1 - p),
floored), and groups without GRPO signal are replaced by fresh tasks, up to `max_resamples` rounds (DAPO's
dynamic sampling): with `signal: reward` groups whose leaves all got the same total reward, with `signal:
outcome` groups whose leaves all passed or all failed the environment's check (DAPO's own filter, on accuracy);
tasks solved by every leaf `retire_after` times are not drawn again. Pass rates per difficulty are logged.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import episodes
from pipelines.codecs import Codec
from pipelines.data.converters import drop_nulls
from pipelines.envs.base import ToolEnv
from pipelines.rl import rewards
from pipelines.rl.feedback import verbal_feedback
from pipelines.run_config import RLSection
from pipelines.schema import LOSS_FROM_TURN
from pipelines.tasks.sampling import DomainTask

if TYPE_CHECKING:
    from pipelines.rl.vllm_rollouts import VllmRollouts

log = logging.getLogger("midtrain.rl")
RECOVERY_FILE = "recovery_traces.jsonl"
ADVANTAGE_REWARD = "rollout_advantage"
STD_EPSILON = 1e-4  # as TRL's group scaling


# -- the tree ----------------------------------------------------------------------------------------------------
@dataclass
class Node:
    episode: episodes.Episode
    parent: int | None  # index in Group.nodes; None for a root
    depth: int
    start: int  # len(episode.ids) where this node's segment begins: everything before is its prompt
    end: int = -1  # len(episode.ids) where it ends (set when it forks or finishes)
    children: list[int] = field(default_factory=list)
    retries: int = 0
    retry_from: int | None = (
        None  # len(episode.ids) when the first feedback came: the failed attempt ends here
    )
    reward: float | None = None  # leaves only: the weighted reward of the whole rollout
    components: dict[str, float | None] = field(default_factory=dict)
    value: float = 0.0
    advantage: float = 0.0

    @property
    def leaf(self) -> bool:
        return not self.children


@dataclass
class Group:
    """One prompt's rollouts: `roots` trees (chains: trees of depth 0)."""

    item: DomainTask
    nodes: list[Node] = field(default_factory=list)
    roots: list[int] = field(default_factory=list)
    passed: list[bool] = field(default_factory=list)  # each leaf's verdict, once it is scored

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if n.leaf]


@dataclass(frozen=True)
class Shape:
    roots: int
    branches: int = 1
    depth: int = 0

    def subtree_slots(self, depth: int) -> int:
        """Samples a node at `depth` fills with its subtree (itself included)."""
        return sum(self.branches**level for level in range(self.depth - depth + 1))

    @property
    def slots(self) -> int:
        return self.roots * self.subtree_slots(0)


def shape_for(rl: RLSection) -> Shape:
    if rl.rollouts.shape == "chain":
        return Shape(roots=rl.num_generations)
    tree = rl.rollouts.tree
    return Shape(rl.num_generations // tree.segments(), tree.branches, tree.depth)


def fork_episode(episode: episodes.Episode) -> episodes.Episode:
    """The episode at a fork: same tokens and messages, its own environment copy."""
    return episodes.Episode(
        item=episode.item,
        env=episode.env._fork(),
        tools=episode.tools,
        conversation=list(episode.conversation),
        completion=list(episode.completion),
        ids=list(episode.ids),
        prompt_tokens=episode.prompt_tokens,
        mask=list(episode.mask),
        used_tokens=episode.used_tokens,
        tool_rounds=episode.tool_rounds,
    )


def tree_advantages(group: Group, shape: Shape) -> None:
    """Fill each node's `value` and `advantage` (see the module docstring); leaves need their `reward`."""

    def value(index: int) -> float:
        node = group.nodes[index]
        if node.leaf:
            assert node.reward is not None, "score the leaves first"
            node.value = node.reward
        else:
            node.value = sum(value(c) for c in node.children) / len(node.children)
        return node.value

    root_values = [value(r) for r in group.roots]
    group_value = sum(root_values) / len(root_values)
    rewards_ = [leaf.reward for leaf in group.leaves() if leaf.reward is not None]
    scale = _std(rewards_) + STD_EPSILON
    for node in group.nodes:
        baseline = group_value if node.parent is None else group.nodes[node.parent].value
        node.advantage = (node.value - baseline) / scale


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (torch.std's, which TRL's group scaling uses); 0 for fewer than 2 values."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def slot_layout(group: Group, shape: Shape) -> list[int | None]:
    """Node index per training sample, trees in preorder; None where a node finished before its fork."""
    out: list[int | None] = []

    def visit(index: int, depth: int) -> None:
        out.append(index)
        if depth == shape.depth:
            return
        children = group.nodes[index].children
        for k in range(shape.branches):
            if k < len(children):
                visit(children[k], depth + 1)
            else:
                out.extend([None] * shape.subtree_slots(depth + 1))

    for root in group.roots:
        visit(root, 0)
    assert len(out) == shape.slots
    return out


# -- growing ---------------------------------------------------------------------------------------------------
@dataclass
class Budget:
    """Token limits of one rollout (root to leaf): `max_completion_length` for generated + tool + feedback
    tokens, as TRL counts them; at most `max_iterations` tool rounds."""

    max_completion_length: int
    max_iterations: int
    batch_size: int = 8


@dataclass
class Scorer:
    """The run's reward functions and weights applied to finished rollouts; the judge for reflexion."""

    funcs: list[Callable[..., list]]
    weights: list[float]
    codec: Codec
    schema: Any = None
    discount: float = 1.0

    def score(self, leaves: list[Node]) -> None:
        """Each leaf's `components` and weighted `reward`; a retried leaf's outcome discounted."""
        if not leaves:
            return
        kwargs = {
            "completions": [n.episode.completion for n in leaves],
            "task": [n.episode.item.task.to_json() for n in leaves],
            "environments": [n.episode.env for n in leaves],
            "truncated": [n.episode.truncated for n in leaves],
        }
        columns = {rewards.reward_name(f): f(**kwargs) for f in self.funcs}
        for i, node in enumerate(leaves):
            node.components = {name: values[i] for name, values in columns.items()}
            outcome = node.components.get("outcome")
            if node.retries and outcome is not None:
                node.components["outcome"] = outcome * self.discount**node.retries
            node.reward = sum(
                w * v for w, v in zip(self.weights, node.components.values(), strict=True) if v is not None
            )

    def rollout(self, node: Node) -> rewards.Rollout:
        """What the node's whole episode did, read as the rewards read it."""
        rollout = rewards.parse_rollout(node.episode.completion, self.codec, self.schema)
        rollout.truncated = node.episode.truncated
        return rollout

    def passed(self, node: Node, rollout: rewards.Rollout | None = None) -> bool:
        """The environment's verdict on a finished rollout (the `outcome` reward is 1)."""
        rollout = rollout or self.rollout(node)
        value, _ = rewards.outcome_score(rollout, node.episode.item.task, node.episode.env)
        return value >= 1.0 - 1e-9

    def retry_feedback(self, node: Node) -> str | None:
        """The judge's reason for a finished rollout worth a retry, else None: it passed, was cut off, or can no
        longer pass (a request no tool fits is failed for good once a tool was called)."""
        rollout, task = self.rollout(node), node.episode.item.task
        if rollout.truncated or self.passed(node, rollout):
            return None
        if rewards.is_irrelevant(task) and rollout.attempted > 0:
            return None
        return verbal_feedback(rollout, task, node.episode.env)


def grow(
    generate: episodes.GenerateFn,
    tokenizer: Any,
    codec: Codec,
    groups: list[Group],
    env_classes: dict[str, type[ToolEnv]],
    shape: Shape,
    budget: Budget,
    scorer: Scorer,
    retries: int = 0,
) -> None:
    """Generate every group's trees (all groups' live nodes decode together), retrying failed leaves with the
    judge's feedback up to `retries` times, then score the leaves."""
    live: list[tuple[Group, int]] = []
    for group in groups:
        for _ in range(shape.roots):
            episode = episodes.start_episode(group.item, env_classes[group.item.env_key])
            group.nodes.append(Node(episode, None, 0, start=0))
            group.roots.append(len(group.nodes) - 1)
            live.append((group, len(group.nodes) - 1))
    while live:
        for begin in range(0, len(live), budget.batch_size):
            batch = live[begin : begin + budget.batch_size]
            eps = [g.nodes[i].episode for g, i in batch]
            # Rows share their fork point with their siblings; roots share the whole prompt with their group.
            starts = {id(g.nodes[i].episode): g.nodes[i].start for g, i in batch}

            # One key per prefix: the fork point minus one token (a row always prefills at least its last token,
            # and on a branch's first step the row *is* the prefix).
            def shared(ep: episodes.Episode, starts: dict[int, int] = starts) -> int:
                return (starts[id(ep)] or len(ep.ids)) - 1

            episodes.step(
                generate, tokenizer, codec, eps, budget.max_completion_length, budget.max_iterations,
                None, None, shared_prefix=shared,
            )  # fmt: skip
        still: list[tuple[Group, int]] = []
        for group, index in live:
            node = group.nodes[index]
            episode = node.episode
            if node.start == 0:
                node.start = episode.prompt_tokens
            if not episode.done:
                room = budget.max_completion_length - (len(episode.ids) - episode.prompt_tokens)
                if node.depth < shape.depth and not node.retries and room > 0:
                    node.end = len(episode.ids)
                    for _ in range(shape.branches):
                        child = Node(fork_episode(episode), index, node.depth + 1, start=node.end)
                        group.nodes.append(child)
                        node.children.append(len(group.nodes) - 1)
                        still.append((group, len(group.nodes) - 1))
                else:
                    still.append((group, index))
                continue
            feedback = scorer.retry_feedback(node) if node.retries < retries else None
            if feedback is not None and _retry(node, tokenizer, codec, feedback, budget):
                still.append((group, index))
                continue
            node.end = len(episode.ids)
        live = still
    for group in groups:
        scorer.score(group.leaves())


def _retry(node: Node, tokenizer: Any, codec: Codec, feedback: str, budget: Budget) -> bool:
    """Append the judge's feedback as a user turn (masked) and reopen the episode; False when it would not fit
    the rollout's token budget."""
    episode = node.episode
    suffix = tokenizer(codec.user_suffix(tokenizer, feedback), add_special_tokens=False)["input_ids"]
    if len(episode.ids) + len(suffix) - episode.prompt_tokens >= budget.max_completion_length:
        return False
    message = {"role": "user", "content": feedback}
    if node.retry_from is None:
        node.retry_from = len(episode.ids)
    episode.completion.append(message)
    episode.conversation.append(message)
    episode.ids = episode.ids + suffix
    episode.mask = episode.mask + [0] * len(suffix)
    episode.done = False
    node.retries += 1
    return True


def generated_tokens(group: Group) -> int:
    """Model tokens the group's rollouts generated (each shared prefix once)."""
    total = 0
    for node in group.nodes:
        offset = node.episode.prompt_tokens
        total += sum(node.episode.mask[node.start - offset : node.end - offset])
    return total


# -- the curriculum --------------------------------------------------------------------------------------------
class Curriculum:
    """Pass rates per difficulty, and which task to train on next (see the module docstring)."""

    def __init__(self, pool: list[DomainTask], floor: float, retire_after: int, seed: int) -> None:
        self.pool = pool
        self.floor = floor
        self.retire_after = retire_after
        self.random = random.Random(seed)
        self.groups: Counter[int] = Counter()  # difficulty → groups seen
        self.passes: dict[int, float] = {}  # difficulty → sum of group pass rates
        self.solved: Counter[str] = Counter()  # task id → groups where every leaf passed
        self.replaced = 0  # tasks drawn in place of the sampler's (by weight) or of a zero-signal group
        self.zero_signal = 0

    def pass_rate(self, difficulty: int) -> float:
        """Mean of the groups' pass rates (each group's share of passing leaves) at this difficulty, Laplace-
        smoothed so that an unseen difficulty reads 0.5 and a few groups do not pin it at 0 or 1."""
        return (self.passes.get(difficulty, 0.0) + 1) / (self.groups[difficulty] + 2)

    def weight(self, difficulty: int) -> float:
        rate = self.pass_rate(difficulty)
        return max(self.floor, rate * (1 - rate))

    def record(self, task_id: str, difficulty: int, pass_rate: float) -> None:
        self.groups[difficulty] += 1
        self.passes[difficulty] = self.passes.get(difficulty, 0.0) + pass_rate
        if pass_rate >= 1.0:
            self.solved[task_id] += 1

    def choose(self, item: DomainTask) -> DomainTask:
        """Keep the sampler's task with probability weight(its difficulty) / max weight, else draw another
        from the pool by difficulty weight; a retired task is always replaced when another is available."""
        weights = {d: self.weight(d) for d in {i.task.difficulty for i in self.pool}}
        retired = self.solved[item.task.task_id] >= self.retire_after
        if not retired and self.random.random() < self.weight(item.task.difficulty) / max(weights.values()):
            return item
        return self.draw(exclude={item.task.task_id}) or item

    def draw(self, exclude: set[str]) -> DomainTask | None:
        candidates = [
            i for i in self.pool
            if i.task.task_id not in exclude and self.solved[i.task.task_id] < self.retire_after
        ]  # fmt: skip
        if not candidates:
            return None
        self.replaced += 1
        return self.random.choices(candidates, weights=[self.weight(i.task.difficulty) for i in candidates])[
            0
        ]

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to draw as this one would have (JSON: saved with checkpoints)."""
        version, internal, gauss = self.random.getstate()
        return {
            "groups": {str(d): n for d, n in self.groups.items()},
            "passes": {str(d): v for d, v in self.passes.items()},
            "solved": dict(self.solved),
            "replaced": self.replaced,
            "zero_signal": self.zero_signal,
            "random": [version, list(internal), gauss],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.groups = Counter({int(d): n for d, n in state["groups"].items()})
        self.passes = {int(d): float(v) for d, v in state["passes"].items()}
        self.solved = Counter(state["solved"])
        self.replaced, self.zero_signal = state["replaced"], state["zero_signal"]
        version, internal, gauss = state["random"]
        self.random.setstate((version, tuple(internal), gauss))

    def metrics(self) -> dict[str, float]:
        out = {f"curriculum/pass_rate/d{d}": round(self.pass_rate(d), 4) for d in sorted(self.groups)}
        retired = sum(1 for n in self.solved.values() if n >= self.retire_after)
        return out | {
            "curriculum/replaced": float(self.replaced),
            "curriculum/zero_signal_groups": float(self.zero_signal),
            "curriculum/retired_tasks": float(retired),
        }


# -- TRL's rollout_func ----------------------------------------------------------------------------------------
def prompt_key(prompt: Any) -> str:
    """A prompt's identity, as TRL hands it back: Arrow gives every message every key, absent ones as None."""
    return json.dumps(drop_nulls(prompt), sort_keys=True, ensure_ascii=False)


TASK_KEY = "midtrain_task"  # set on a row's first prompt message; never rendered (episodes render the task)


def keyed_prompts(
    items: list[DomainTask], rows: list[dict[str, Any]]
) -> tuple[list[DomainTask], list[dict[str, Any]]]:
    """TRL gives `rollout_func` the prompts, not the rows, and two tasks may share a request (same words, other
    environment setup): each row's first message carries its task id, so its prompt names exactly one task.
    The rollouts render prompts from the task itself, so the key never reaches the model. A repeated task id
    (the same task twice) is kept once."""
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        seen.setdefault(item.task.task_id, index)
    kept = sorted(seen.values())
    keyed = []
    for index in kept:
        row = rows[index]
        first, *rest = row["prompt"]
        keyed.append({**row, "prompt": [{**first, TASK_KEY: items[index].task.task_id}, *rest]})
    return [items[i] for i in kept], keyed


@dataclass(frozen=True)
class Sampling:
    """The cuts GRPOConfig applies to TRL's own sampling (`rl.train.extra: {top_p, top_k, min_p}`), applied by
    this loop too; temperature is `rl.temperature`. Without this they were silently ignored here."""

    top_p: float = 1.0
    top_k: int = 0
    min_p: float | None = None

    @classmethod
    def from_args(cls, args: Any) -> Sampling:
        """GRPOConfig's values (the config refuses the sampling settings this loop does not implement)."""
        return cls(float(args.top_p), int(args.top_k or 0), args.min_p)


class RolloutFunction:
    """`GRPOTrainer(rollout_func=...)`: grows each group, scores it, returns segments with their advantages.

    Totals over the run (generated tokens, segments, retries, recoveries, the curriculum's state) are kept in
    `stats` and written by the stage to `rollouts.json`."""

    def __init__(
        self,
        rl: RLSection,
        items: list[DomainTask],
        rows: list[dict[str, Any]],
        env_classes: dict[str, type[ToolEnv]],
        scorer: Scorer,
        out_dir: Path,
        seed: int,
    ) -> None:
        self.rl = rl
        self.items = {prompt_key(r["prompt"]): item for item, r in zip(items, rows, strict=True)}
        self.env_classes = env_classes
        self.scorer = scorer
        self.shape = shape_for(rl)
        self.budget = Budget(rl.max_completion_length, rl.max_tool_calling_iterations, rl.rollouts.batch_size)
        self.recovery_path = out_dir / RECOVERY_FILE if rl.reflexion.recovery_traces else None
        self.seed = seed
        self.curriculum = (
            Curriculum(items, rl.curriculum.floor, rl.curriculum.retire_after, seed)
            if rl.curriculum.enabled
            else None
        )
        self.sampling = Sampling()  # the trainer's top_p/top_k/min_p, set by the stage from GRPOConfig
        self.vllm: VllmRollouts | None = None  # `generation.backend: vllm`: set by the stage
        self.stats: Counter[str] = Counter()
        self.seconds = 0.0
        self.step = 0  # the optimizer step these rollouts train (recovery rows are tagged with it)

    @property
    def generated_tokens(self) -> int:
        return self.stats["generated_tokens"]

    def state(self) -> dict[str, Any]:
        """Totals and the curriculum's state, saved with each checkpoint (`restore` on resume)."""
        out: dict[str, Any] = {"totals": dict(self.stats)}
        if self.curriculum is not None:
            out["curriculum"] = self.curriculum.state()
        return out

    def restore(self, state: dict[str, Any], step: int) -> None:
        """Continue from a checkpoint taken after `step` optimizer steps: its totals and curriculum; recovery
        rows written by the steps after it (they run again) are dropped."""
        self.stats = Counter(state.get("totals", {}))
        if self.curriculum is not None and "curriculum" in state:
            self.curriculum.restore(state["curriculum"])
        if self.recovery_path is not None and self.recovery_path.is_file():
            lines = self.recovery_path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if json.loads(line)["meta"].get("step", 0) < step]
            self.recovery_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        from pipelines.inference import Engine, sampler

        n = self.rl.num_generations
        if len(prompts) % n:
            raise ValueError(f"rollout_func got {len(prompts)} prompts, not whole groups of {n}")
        chosen = [self.items[prompt_key(prompts[i])] for i in range(0, len(prompts), n)]
        if self.curriculum is not None:
            chosen = [self.curriculum.choose(item) for item in chosen]
        model, tokenizer = trainer.model, trainer.processing_class
        was_training = model.training
        model.eval()
        try:
            # The call count lives in `stats` (saved with checkpoints), so a resumed run does not replay seeds.
            seed = self.seed + self.stats["calls"]
            self.stats["calls"] += 1
            cut = self.sampling
            # Timed from here: with vLLM, saving and loading this step's LoRA is part of every rollout call (its
            # engine's one start is reported apart, `vllm_engine_start_s`).
            started = time.perf_counter()
            if self.vllm is not None:
                unwrapped = trainer.accelerator.unwrap_model(model)
                generate = self.vllm.generate_fn(
                    unwrapped, self.rl.temperature, seed, cut.top_p, top_k=cut.top_k, min_p=cut.min_p
                )
            else:
                # A fresh engine per call: its prefix cache holds KV computed with the current weights.
                engine = Engine.for_tokenizer(model, tokenizer)
                pick = sampler(self.rl.temperature, cut.top_p, seed, top_k=cut.top_k, min_p=cut.min_p)

                def generate(
                    prompt_ids: Any, adapters: Any, max_new: int, shared_prefixes: Any = None
                ) -> Any:
                    return engine(prompt_ids, adapters, max_new, pick=pick, shared_prefixes=shared_prefixes)

            self.step = int(getattr(trainer.state, "global_step", 0))
            groups = self._grow(generate, tokenizer, chosen)
            self.seconds = time.perf_counter() - started
            self.stats["rollout_ms"] += round(1000 * self.seconds)
        finally:
            model.train(was_training)
        return self._output(groups, tokenizer)

    def _grow(self, generate: Any, tokenizer: Any, items: list[DomainTask]) -> list[Group]:
        groups = [Group(item) for item in items]
        pending = groups
        for round_ in range(1 + (self.rl.curriculum.max_resamples if self.curriculum else 0)):
            grow(
                generate, tokenizer, self.scorer.codec, pending, self.env_classes, self.shape, self.budget,
                self.scorer, self.rl.reflexion.retries,
            )  # fmt: skip
            for group in pending:
                self._account(group)
            if self.curriculum is None:
                break
            self.curriculum.zero_signal += sum(1 for g in pending if self._zero_signal(g))
            flat = [i for i, g in enumerate(groups) if self._zero_signal(g)]
            if not flat or round_ == self.rl.curriculum.max_resamples:
                break
            used = {g.item.task.task_id for g in groups}
            pending = []
            for i in flat:
                item = self.curriculum.draw(exclude=used)
                if item is None:
                    continue
                used.add(item.task.task_id)
                groups[i] = Group(item)
                pending.append(groups[i])
            if not pending:
                break
        for group in groups:
            tree_advantages(group, self.shape)
        return groups

    def _zero_signal(self, group: Group) -> bool:
        """No GRPO signal under `curriculum.signal`: tied total rewards, or every leaf passed or every one failed."""
        if self.rl.curriculum.signal == "reward":
            values = [n.reward for n in group.leaves() if n.reward is not None]
            return len(values) > 1 and max(values) - min(values) < 1e-9
        return len(group.passed) > 1 and len(set(group.passed)) < 2

    def _account(self, group: Group) -> None:
        leaves = group.leaves()
        self.stats["groups"] += 1
        self.stats["segments"] += len(group.nodes)
        self.stats["leaves"] += len(leaves)
        self.stats["generated_tokens"] += generated_tokens(group)
        self.stats["retries"] += sum(n.retries for n in leaves)
        passed = group.passed = [self.scorer.passed(n) for n in leaves]
        self.stats["passed_leaves"] += sum(passed)
        recovered = [n for n, ok in zip(leaves, passed, strict=True) if ok and n.retries]
        self.stats["recovered"] += len(recovered)
        if recovered and self.recovery_path is not None:
            self._write_recoveries(group, recovered)
        if self.curriculum is not None:
            task = group.item.task
            self.curriculum.record(task.task_id, task.difficulty, sum(passed) / len(passed))

    def _write_recoveries(self, group: Group, nodes: list[Node]) -> None:
        assert self.recovery_path is not None
        self.recovery_path.parent.mkdir(parents=True, exist_ok=True)
        with self.recovery_path.open("a", encoding="utf-8") as out:
            for node in nodes:
                row = recovery_row(group, node)
                row["meta"]["step"] = self.step
                out.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")

    def _output(self, groups: list[Group], tokenizer: Any) -> dict[str, Any]:
        prompt_ids: list[list[int]] = []
        completion_ids: list[list[int]] = []
        env_mask: list[list[int]] = []
        advantages: list[float] = []
        tasks: list[str] = []
        environments: list[str] = []
        end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        for group in groups:
            for index in slot_layout(group, self.shape):
                node = group.nodes[index] if index is not None else None
                if node is None or node.end <= node.start:  # an empty slot: one masked token, no signal
                    root = group.nodes[group.roots[0]].episode
                    prompt_ids.append(root.ids[: root.prompt_tokens])
                    completion_ids.append([end])
                    env_mask.append([0])
                    advantages.append(0.0)
                else:
                    prompt_ids.append(node.episode.ids[: node.start])
                    completion_ids.append(node.episode.ids[node.start : node.end])
                    env_mask.append(segment_mask(node))
                    advantages.append(node.advantage)
                # TRL's inputs name the sampler's task; a curriculum may have swapped it: log the real one.
                tasks.append(group.item.task.to_json())
                environments.append(group.item.env_key)
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completion_ids,
            "logprobs": None,
            "env_mask": env_mask,
            ADVANTAGE_REWARD: advantages,
            "task": tasks,
            "environment": environments,
            "rollout_metrics": self._metrics(groups),
        }

    def _metrics(self, groups: list[Group]) -> dict[str, float]:
        leaves = [leaf for g in groups for leaf in g.leaves()]
        out: dict[str, float] = {
            "rollout/reward": _mean([n.reward for n in leaves]),
            "rollout/generated_tokens_total": float(self.generated_tokens),
            "rollout/segments": float(sum(len(g.nodes) for g in groups)),
            "rollout/retries": float(sum(n.retries for n in leaves)),
            "rollout/seconds": round(self.seconds, 3),  # generation, tools and scoring of this batch
        }
        names = sorted({name for n in leaves for name in n.components})
        for name in names:
            values = [n.components.get(name) for n in leaves]
            present = [v for v in values if v is not None]
            if present:
                out[f"rollout/rewards/{name}/mean"] = _mean(present)
        if self.curriculum is not None:
            out |= self.curriculum.metrics()
        return out

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "shape": self.rl.rollouts.shape,
            "tree": self.rl.rollouts.tree.model_dump() if self.rl.rollouts.shape == "tree" else None,
            "totals": dict(self.stats),
            "reflexion": self.rl.reflexion.model_dump() if self.rl.reflexion.retries else None,
            "backend": self.rl.generation.backend,
        }
        if self.vllm is not None:
            out["vllm_adapter_syncs"] = self.vllm.syncs
            out["vllm_engine_start_s"] = round(self.vllm.engine_start_s, 3)
        if self.curriculum is not None:
            out["curriculum"] = self.curriculum.metrics()
        return out


def segment_mask(node: Node) -> list[int]:
    """Which of the segment's tokens are trained: the model's own (not tool results or feedback), and of a
    retried rollout only what follows the first feedback. The failed attempt is context for the fix, not
    something to reinforce with the fix's (positive) advantage."""
    offset = node.episode.prompt_tokens
    mask = node.episode.mask[node.start - offset : node.end - offset]
    if node.retry_from is not None:
        failed = max(0, node.retry_from - node.start)
        mask = [0] * failed + mask[failed:]
    return mask


def _mean(values: Sequence[float | None]) -> float:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else 0.0


def recovery_row(group: Group, node: Node) -> dict[str, Any]:
    """A successful retry as an OpenAI-format row: the opening turns, the failed attempt, the judge's feedback
    as a user turn, the fix; the offered tools; where it came from in `meta`."""
    episode = node.episode
    prompt = episodes.prompt_messages(episode.item.task)
    messages = [_openai_message(m) for m in [*prompt, *episode.completion]]
    # Trained when mixed in: only the fix after the last feedback; the failed attempts are context.
    last_feedback = max(i for i, m in enumerate(messages) if m["role"] == "user")
    failed_turns = sum(m["role"] == "assistant" for m in messages[:last_feedback])
    return {
        "messages": messages,
        "tools": episode.tools,
        "meta": {"task_id": episode.item.task.task_id, "domain": episode.item.domain, "retries": node.retries,
                 "pattern": "recovery", "source": "rl_reflexion", LOSS_FROM_TURN: failed_turns},
    }  # fmt: skip


def _openai_message(message: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in message.items() if k in ("role", "content", "name")}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {"type": "function", "function": {"name": c["function"]["name"],
                                              "arguments": json.dumps(c["function"]["arguments"], sort_keys=True)}}
            for c in message["tool_calls"]
        ]  # fmt: skip
    if out.get("content") is None:
        out["content"] = ""
    return out


def advantage_reward(
    completions: list[Any], rollout_advantage: list[float], rollout_metrics: list[dict[str, float]] | None = None,
    log_metric: Callable[[str, float], None] | None = None, **_: Any,
) -> list[float | None]:  # fmt: skip
    """The one reward TRL sees under the midtrain loop: each segment's advantage (its group sums to zero, so
    TRL's centering is a no-op with `scale_rewards: none`); logs the rollouts' own reward components."""
    if log_metric is not None and rollout_metrics:
        for name, value in rollout_metrics[0].items():
            log_metric(name, value)
    return [float(a) for a in rollout_advantage]


advantage_reward.__name__ = ADVANTAGE_REWARD
