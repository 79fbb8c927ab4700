"""midtrain's rollout loop (pipelines/rl/rollouts.py): tree rollouts, reflexion retries, the curriculum.

The bookkeeping is checked with a scripted policy that plays each task's reference solution (known rewards,
known tokens); the engine's prefix reuse and the GRPO stage run on the 2-layer tiny model.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from pipelines import episodes
from pipelines.codecs import codec_for
from pipelines.data.converters import CONVERTERS, ConversionError, RowContext
from pipelines.envs.base import ForkError, ToolEnv
from pipelines.envs.external import ExternalEnv
from pipelines.rl import rewards
from pipelines.rl.feedback import verbal_feedback
from pipelines.rl.rollouts import (
    Budget,
    Curriculum,
    Group,
    Node,
    RolloutFunction,
    Scorer,
    Shape,
    generated_tokens,
    grow,
    recovery_row,
    segment_mask,
    slot_layout,
    tree_advantages,
)
from pipelines.run_config import DEFAULT_RL_REWARD_WEIGHTS, RLSection
from pipelines.tasks import sampling
from pipelines.tasks.domains import DOMAINS
from pipelines.tasks.records import Task
from pipelines.thought import load_thought_schema
from tests.helpers import ScriptedPolicy, rl_config

SCHEMA = load_thought_schema("think-plan-reflect")


def scorer_for(tokenizer: Any, discount: float = 0.5) -> Scorer:
    codec = codec_for(tokenizer)
    funcs, weights = rewards.build_reward_funcs(dict(DEFAULT_RL_REWARD_WEIGHTS), codec, SCHEMA)
    return Scorer(funcs, weights, codec, SCHEMA, discount)


def calculator_items(n: int, seed: int = 3) -> list[sampling.DomainTask]:
    rng = random.Random(seed)
    return [sampling.DomainTask("calculator", DOMAINS["calculator"][1](rng, 1)) for _ in range(n)]


CLASSES = {name: DOMAINS[name][0] for name in DOMAINS if DOMAINS[name][0]._tool_methods()}


# -- environments fork -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("domain", sorted(CLASSES))
def test_a_forked_environment_is_independent_of_its_original(domain: str) -> None:
    task = DOMAINS[domain][1](random.Random(11), 2)
    env = CLASSES[domain]()
    env.reset(task=task.to_json())
    clone = env._fork()
    for turn in task.solution:
        for step in turn:
            clone._call_tool(step.tool, dict(step.arguments))
    clone._record_final_answer(task.answer or "")
    assert env._calls == [] and len(clone._calls) == task.difficulty
    assert env._final_answer is None
    if task.expected_state is not None:  # the calls changed the clone's state, not the original's
        assert clone._check_state(task.expected_state)
        assert not env._check_state(task.expected_state)
    assert clone.get_reward() == 1.0


def test_an_environment_in_another_process_refuses_to_fork() -> None:
    from pipelines.errors import BadInput
    from pipelines.rl.train import check_forkable

    class Remote(ExternalEnv):
        pass

    with pytest.raises(ForkError, match="another process"):
        Remote()._fork()
    assert ToolEnv._fork_refusal is None
    tree = RLSection(num_generations=6, rollouts={"shape": "tree"}, train={"per_device_train_batch_size": 6})
    with pytest.raises(BadInput, match="environment 'shop' cannot fork: .*use rollouts.shape: chain"):
        check_forkable(tree, {"calculator": CLASSES["calculator"], "shop": Remote})
    check_forkable(tree, {"calculator": CLASSES["calculator"]})
    check_forkable(RLSection(), {"shop": Remote})  # chains never fork


# -- the advantage estimator -----------------------------------------------------------------------------------
def _hand_tree(rewards_by_leaf: list[list[float]]) -> tuple[Group, Shape]:
    """Roots, each with one child per reward (depth 1); an empty list: the root is itself a leaf."""
    group = Group(item=None)  # type: ignore[arg-type]  # the estimator reads only the tree
    for leaf_rewards in rewards_by_leaf:
        root = Node(episode=None, parent=None, depth=0, start=0)  # type: ignore[arg-type]
        group.nodes.append(root)
        group.roots.append(len(group.nodes) - 1)
        index = len(group.nodes) - 1
        if not leaf_rewards:
            root.reward = 0.25
        for value in leaf_rewards:
            group.nodes.append(Node(None, index, 1, 0, reward=value))  # type: ignore[arg-type]
            root.children.append(len(group.nodes) - 1)
    return group, Shape(roots=len(rewards_by_leaf), branches=2, depth=1)


def test_tree_advantages_sum_to_zero_per_sibling_set_and_telescope_to_the_chain_advantage() -> None:
    group, shape = _hand_tree([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    tree_advantages(group, shape)
    leaves = group.leaves()
    values = [leaf.reward for leaf in leaves]
    mean = sum(values) / len(values)  # type: ignore[arg-type]
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5  # type: ignore[operator]
    scale = std + 1e-4
    roots = [group.nodes[r] for r in group.roots]
    assert [r.value for r in roots] == [0.5, 0.0, 1.0]
    assert sum(r.advantage for r in roots) == pytest.approx(0.0)
    assert roots[0].advantage == pytest.approx((0.5 - 0.5) / scale)
    for root in roots:  # each fork's siblings are judged against each other
        assert sum(group.nodes[c].advantage for c in root.children) == pytest.approx(0.0)
    assert sum(n.advantage for n in group.nodes) == pytest.approx(0.0)
    for leaf in leaves:  # root-to-leaf: the chain GRPO advantage of that rollout
        path = leaf.advantage + group.nodes[leaf.parent].advantage  # type: ignore[index]
        assert path == pytest.approx((leaf.reward - mean) / scale)  # type: ignore[operator]


def test_a_chain_group_gets_grpos_advantages_and_equal_rewards_give_none() -> None:
    group, _ = _hand_tree([[], [], []])
    for node, value in zip(group.nodes, [1.0, 0.0, 0.5], strict=True):
        node.reward = value
    tree_advantages(group, Shape(roots=3))
    assert [n.advantage for n in group.nodes] == pytest.approx([0.5 / 0.5001, -0.5 / 0.5001, 0.0])
    flat, _ = _hand_tree([[1.0, 1.0], [1.0, 1.0]])
    tree_advantages(flat, Shape(2, 2, 1))
    assert all(n.advantage == 0.0 for n in flat.nodes)


def test_slots_keep_a_trees_shape_when_a_node_finishes_before_its_fork() -> None:
    group, shape = _hand_tree([[1.0, 0.0], []])
    assert slot_layout(group, shape) == [0, 1, 2, 3, None, None]
    assert shape.slots == 6 and Shape(2, 2, 2).slots == 14


# -- growing trees with a scripted policy ---------------------------------------------------------------------
def test_tree_rollouts_share_the_prefix_fork_the_env_and_cost_fewer_tokens(tokenizer) -> None:
    items = calculator_items(2)
    codec = codec_for(tokenizer)
    budget = Budget(512, 3)
    trees = [Group(item) for item in items]
    grow(
        ScriptedPolicy(tokenizer, items),
        tokenizer,
        codec,
        trees,
        CLASSES,
        Shape(2, 2, 1),
        budget,
        scorer_for(tokenizer),
    )
    chains = [Group(item) for item in items]
    grow(
        ScriptedPolicy(tokenizer, items),
        tokenizer,
        codec,
        chains,
        CLASSES,
        Shape(4),
        budget,
        scorer_for(tokenizer),
    )
    for tree, chain in zip(trees, chains, strict=True):
        assert len(tree.roots) == 2 and len(tree.leaves()) == 4 == len(chain.leaves())
        for root_index in tree.roots:
            root = tree.nodes[root_index]
            assert root.start == root.episode.prompt_tokens and len(root.children) == 2
            assert root.episode.completion[0].get("tool_calls")  # the fork came after the call ran
            kids = [tree.nodes[c] for c in root.children]
            for kid in kids:
                assert kid.start == root.end and kid.episode.ids[: root.end] == root.episode.ids[: root.end]
                assert kid.episode.env is not root.episode.env
                assert kid.episode.completion[-1]["role"] == "assistant" and kid.reward is not None
            assert kids[0].episode.env is not kids[1].episode.env
            # The parent's environment saw only the shared call; each child recorded its own answer.
            assert len(root.episode.env._calls) == 1 and root.episode.env._final_answer is None
        assert [leaf.reward for leaf in tree.leaves()] == [leaf.reward for leaf in chain.leaves()]
        # The shared call is generated once per tree, not once per leaf.
        assert generated_tokens(tree) < generated_tokens(chain)
        call_tokens = sum(tree.nodes[tree.roots[0]].episode.mask)
        assert generated_tokens(chain) - generated_tokens(tree) == 2 * call_tokens


def test_a_depth_two_tree_forks_again_after_its_second_call(tokenizer) -> None:
    rng = random.Random(5)
    items = [sampling.DomainTask("calculator", DOMAINS["calculator"][1](rng, 2)) for _ in range(2)]
    calls_per_turn = [[len(turn) for turn in i.task.solution] for i in items]
    assert calls_per_turn == [[1, 1], [1, 1]]  # two calls, one after the other
    codec = codec_for(tokenizer)
    trees, chains = [Group(item) for item in items], [Group(item) for item in items]
    grow(ScriptedPolicy(tokenizer, items), tokenizer, codec, trees, CLASSES, Shape(1, 2, 2), Budget(768, 4),
         scorer_for(tokenizer))  # fmt: skip
    grow(ScriptedPolicy(tokenizer, items), tokenizer, codec, chains, CLASSES, Shape(4), Budget(768, 4),
         scorer_for(tokenizer))  # fmt: skip
    for tree, chain in zip(trees, chains, strict=True):
        assert [n.depth for n in tree.nodes] == [0, 1, 1, 2, 2, 2, 2] and len(tree.leaves()) == 4
        preorder = [0, 1, 3, 4, 2, 5, 6]  # root, first mid, its two leaves, second mid, its two leaves
        assert slot_layout(tree, Shape(1, 2, 2)) == preorder
        root = tree.nodes[0]
        assert len(root.episode.env._calls) == 1  # the first call only
        for mid_index in root.children:
            mid = tree.nodes[mid_index]
            assert mid.start == root.end and mid.episode.ids[: root.end] == root.episode.ids[: root.end]
            assert len(mid.episode.env._calls) == 2 and mid.episode.env._final_answer is None
            leaves = [tree.nodes[c] for c in mid.children]
            for leaf in leaves:  # each leaf starts after its own parent's second call, in its own environment
                assert leaf.start == mid.end and leaf.episode.ids[: mid.end] == mid.episode.ids[: mid.end]
                assert leaf.episode.env not in (mid.episode.env, root.episode.env)
                assert leaf.episode.env._final_answer is not None and leaf.reward is not None
            assert leaves[0].episode.env is not leaves[1].episode.env
        assert [leaf.reward for leaf in tree.leaves()] == [leaf.reward for leaf in chain.leaves()]
        # Generated once per tree: the first call (instead of 4 times), each second call (instead of twice).
        first = sum(root.episode.mask)
        second = sum(sum(tree.nodes[m].episode.mask) - first for m in root.children)
        assert generated_tokens(chain) - generated_tokens(tree) == 3 * first + second
        # The estimator on two levels: siblings sum to zero at each fork; a root-to-leaf path sums to the leaf's
        # chain advantage (reward − group mean over the scale).
        for leaf in tree.leaves():
            leaf.reward = float(tree.nodes.index(leaf) % 2)  # siblings disagree
        tree_advantages(tree, Shape(1, 2, 2))
        values = [leaf.reward for leaf in tree.leaves()]
        mean = sum(values) / 4
        scale = (sum((v - mean) ** 2 for v in values) / 3) ** 0.5 + 1e-4
        for node in tree.nodes:
            if node.children:
                assert sum(tree.nodes[c].advantage for c in node.children) == pytest.approx(0.0)
        for leaf in tree.leaves():
            mid = tree.nodes[leaf.parent]  # type: ignore[index]
            path = leaf.advantage + mid.advantage + root.advantage
            assert path == pytest.approx((leaf.reward - mean) / scale)


class WrongEveryOther(ScriptedPolicy):
    """Plays the reference calls; every other final answer it writes is wrong (siblings disagree)."""

    answers = 0

    def _reply(self, prompt: str) -> str:
        reply = super()._reply(prompt)
        if "<tool_call>" in reply:
            return reply
        self.answers += 1
        return (
            reply if self.answers % 2 else "<think><verify>done</verify></think>\nIt is 12345678.<|im_end|>"
        )


def test_the_rollout_function_returns_segments_that_rebuild_each_leaf(tokenizer) -> None:
    items = calculator_items(2)
    rows = [{"prompt": episodes.prompt_messages(i.task), "task": i.task.to_json(), "environment": "calculator"}
            for i in items]  # fmt: skip
    rl = RLSection(num_generations=6, rollouts={"shape": "tree"}, reflexion={"recovery_traces": False},
                   train={"per_device_train_batch_size": 6})  # fmt: skip
    function = RolloutFunction(rl, items, rows, CLASSES, scorer_for(tokenizer), Path("unused"), seed=0)
    groups = function._grow(WrongEveryOther(tokenizer, items), tokenizer, items)
    out = function._output(groups, tokenizer)
    assert len(out["prompt_ids"]) == 12 == len(out["completion_ids"]) == len(out["env_mask"])
    assert out["task"] == [g.item.task.to_json() for g in groups for _ in range(6)]
    for g, group in enumerate(
        groups
    ):  # siblings disagree, so segments carry signal that sums to zero per group
        share = out["rollout_advantage"][6 * g : 6 * g + 6]
        assert any(abs(a) > 0.1 for a in share) and sum(share) == pytest.approx(0.0, abs=1e-9)
        assert sorted(leaf.components["outcome"] for leaf in group.leaves()) == [0.0, 0.0, 1.0, 1.0]
    for group in groups:
        layout = slot_layout(group, function.shape)
        for slot, index in enumerate(layout):
            node = group.nodes[index]  # type: ignore[index]  # a scripted policy always forks
            at = groups.index(group) * 6 + slot
            assert out["prompt_ids"][at] + out["completion_ids"][at] == node.episode.ids[: node.end]
            offset = node.episode.prompt_tokens
            assert out["env_mask"][at] == node.episode.mask[node.start - offset : node.end - offset]
            assert out["rollout_advantage"][at] == node.advantage
        mask = out["env_mask"][groups.index(group) * 6]
        assert mask[0] == 1 and mask[-1] == 0  # the call is trained, its tool result is not
    assert function.stats["generated_tokens"] == sum(generated_tokens(g) for g in groups)


def test_tasks_sharing_a_request_stay_apart_in_the_prompts_trl_hands_back(tokenizer) -> None:
    from dataclasses import replace

    from pipelines.rl.rollouts import keyed_prompts, prompt_key

    first = calculator_items(1)[0]
    twin = sampling.DomainTask("calculator", replace(first.task, task_id="twin", setup={"memory": {"x": 1}}))
    items = [first, twin, first]
    rows = [{"prompt": episodes.prompt_messages(i.task), "task": i.task.to_json(), "environment": "calculator"}
            for i in items]  # fmt: skip
    kept, keyed = keyed_prompts(items, rows)
    assert [i.task.task_id for i in kept] == [first.task.task_id, "twin"]  # the repeated task once
    assert prompt_key(keyed[0]["prompt"]) != prompt_key(keyed[1]["prompt"])
    rl = RLSection(num_generations=2, rollouts={"loop": "midtrain"}, reflexion={"recovery_traces": False})
    function = RolloutFunction(rl, kept, keyed, CLASSES, scorer_for(tokenizer), Path("unused"), seed=0)
    as_trl_gives_them = [dict(m, name=None) for m in keyed[1]["prompt"]]  # Arrow adds absent keys as None
    assert function.items[prompt_key(as_trl_gives_them)] is twin
    # The key is bookkeeping only: the rollout renders the task's own messages.
    assert episodes.start_episode(twin, CLASSES["calculator"]).conversation == episodes.prompt_messages(
        twin.task
    )


# -- reflexion -------------------------------------------------------------------------------------------------
class WrongFirst(ScriptedPolicy):
    """Plays the reference calls but gives a wrong final answer until the judge's feedback is in its prompt."""

    def _reply(self, prompt: str) -> str:
        reply = super()._reply(prompt)
        if "<tool_call>" in reply or "failed the check" in prompt:
            return reply
        return "<think><verify>done</verify></think>\nThe answer is 12345678.<|im_end|>"


def test_reflexion_retries_with_the_judges_reason_and_keeps_the_recovery(tokenizer, tmp_path: Path) -> None:
    items = calculator_items(1, seed=5)
    group = Group(items[0])
    scorer = scorer_for(tokenizer, discount=0.5)
    grow(WrongFirst(tokenizer, items), tokenizer, codec_for(tokenizer), [group], CLASSES, Shape(1), Budget(768, 3),
         scorer, retries=2)  # fmt: skip
    (leaf,) = group.leaves()
    roles = [m["role"] for m in leaf.episode.completion]
    assert roles == ["assistant", "tool", "assistant", "user", "assistant"] and leaf.retries == 1
    feedback = leaf.episode.completion[3]["content"]
    assert "final answer does not state" in feedback and items[0].task.answer not in feedback
    assert leaf.components["outcome"] == 0.5 and scorer.passed(leaf)  # passed, at half the outcome reward
    # The tool result and the feedback are context, not trained: exactly their tokens are masked.
    codec = codec_for(tokenizer)
    tool_turn = [m for m in leaf.episode.completion if m["role"] == "tool"]
    context = codec.tool_suffix(tokenizer, tool_turn), codec.user_suffix(tokenizer, feedback)
    masked = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in context)
    assert leaf.episode.mask.count(0) == masked
    # Trained: only the fix. The failed attempt is context, not reinforced with the fix's advantage.
    trained = segment_mask(leaf)
    failed = leaf.retry_from - leaf.start  # type: ignore[operator]
    assert trained[:failed] == [0] * failed and sum(trained) > 0
    assert trained[failed:] == leaf.episode.mask[failed + leaf.start - leaf.episode.prompt_tokens :]
    row = recovery_row(group, leaf)
    trace = CONVERTERS["openai"](row, RowContext(source="recoveries", cluster="tool"))
    assert [m.role for m in trace.messages][-3:] == ["assistant", "user", "assistant"]
    assert trace.tools and row["meta"]["pattern"] == "recovery"
    # Mixed in for SFT, it trains the fix alone, as RL does: the failed attempt's two turns are context.
    assert trace.meta["loss_from_turn"] == 2
    from pipelines.chat import render_trace
    from pipelines.thought import load_thought_schema

    schema = load_thought_schema("think-plan-reflect")
    trained = render_trace(trace, tokenizer, schema)
    everything = render_trace(trace.model_copy(update={"meta": {}}), tokenizer, schema)
    assert 0 < sum(trained.assistant_masks) < sum(everything.assistant_masks)
    bad = {**row, "meta": {**row["meta"], "loss_from_turn": 3}}  # there is no fourth assistant turn
    with pytest.raises(ConversionError, match="loss_from_turn"):
        CONVERTERS["openai"](bad, RowContext(source="recoveries", cluster="tool"))


def test_the_judge_names_the_wrong_argument_but_not_its_value() -> None:
    task = DOMAINS["calculator"][1](random.Random(7), 1)
    ref = rewards.reference_calls(task)[0]
    key = sorted(ref.arguments)[0]
    wrong = rewards.Call(ref.name, {**ref.arguments, key: "999.125"})
    rollout = rewards.Rollout([wrong], 0, [], "done", True)
    text = verbal_feedback(rollout, task, None)
    assert f"`{key}`" in text and str(ref.arguments[key]) not in text.replace("999.125", "")
    missing = verbal_feedback(rewards.Rollout([], 0, [], "done", True), task, None)
    assert f"`{ref.name}`" in missing and "No tool was called" in missing
    right = rewards.Call(ref.name, dict(ref.arguments))
    looping = rewards.Rollout(
        [right], 0, [], "<verify>done</verify></think>", True, answer_still_reasoning=True
    )
    assert verbal_feedback(looping, task, None).startswith(
        "Your previous attempt failed the check. After its reasoning closed, the reply went on reasoning"
    )
    irrelevant = Task("calculator", "x", "hi", {}, [], answer=None)
    assert "without calling a tool" in verbal_feedback(
        rewards.Rollout([wrong], 0, [], "", True), irrelevant, None
    )


# -- the curriculum --------------------------------------------------------------------------------------------
def test_curriculum_weights_difficulties_by_pass_rate_and_retires_solved_tasks() -> None:
    rng = random.Random(1)
    pool = [sampling.DomainTask("calculator", DOMAINS["calculator"][1](rng, d)) for d in (1, 1, 2, 2, 3, 3)]
    curriculum = Curriculum(pool, floor=0.05, retire_after=2, seed=0)
    for _ in range(10):
        curriculum.record(pool[0].task.task_id, 1, 1.0)  # difficulty 1: always solved
        curriculum.record(pool[2].task.task_id, 2, 0.5)
        curriculum.record(pool[4].task.task_id, 3, 0.0)
    assert curriculum.weight(2) > curriculum.weight(1) and curriculum.weight(2) > curriculum.weight(3)
    assert curriculum.weight(1) >= 0.05
    drawn = [curriculum.draw(exclude=set()) for _ in range(200)]
    assert all(d is not None and d.task.task_id != pool[0].task.task_id for d in drawn)  # retired
    counts = {d: sum(1 for x in drawn if x and x.task.difficulty == d) for d in (1, 2, 3)}
    assert counts[2] > counts[1] and counts[2] > counts[3]
    assert curriculum.choose(pool[0]) is not pool[0]  # a retired task is replaced
    assert curriculum.metrics()["curriculum/retired_tasks"] == 1


def test_a_resumed_loop_draws_as_the_uninterrupted_one_and_drops_replayed_recoveries(tmp_path: Path) -> None:
    rng = random.Random(2)
    pool = [sampling.DomainTask("calculator", DOMAINS["calculator"][1](rng, d)) for d in (1, 2, 3, 1, 2, 3)]
    rl = RLSection(num_generations=2, curriculum={"enabled": True})
    first = RolloutFunction(rl, pool, [{"prompt": []}] * 6, CLASSES, None, tmp_path, seed=0)  # type: ignore[arg-type]
    assert first.curriculum is not None
    first.curriculum.record(pool[0].task.task_id, 1, 1.0)
    first.curriculum.record(pool[1].task.task_id, 2, 0.5)
    first.curriculum.draw(exclude=set())
    first.stats["generated_tokens"] = 123
    saved = json.loads(json.dumps(first.state()))  # as the checkpoint stores it
    rows = [{"messages": [], "meta": {"step": step}} for step in (0, 1, 2, 2)]
    (tmp_path / "recovery_traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    resumed = RolloutFunction(rl, pool, [{"prompt": []}] * 6, CLASSES, None, tmp_path, seed=0)  # type: ignore[arg-type]
    resumed.restore(saved, step=2)
    assert resumed.generated_tokens == 123 and resumed.curriculum is not None
    assert resumed.curriculum.metrics() == first.curriculum.metrics()
    draws = [(first.curriculum.draw(set()), resumed.curriculum.draw(set())) for _ in range(20)]
    assert all(a is b for a, b in draws)  # same weights, same random state
    kept = [
        json.loads(line)["meta"]["step"]
        for line in (tmp_path / "recovery_traces.jsonl").read_text().splitlines()
    ]
    assert kept == [0, 1]  # step 2 runs again after the resume


def test_zero_signal_groups_are_replaced_by_other_tasks(tokenizer) -> None:
    items = calculator_items(4, seed=9)
    rows = [{"prompt": episodes.prompt_messages(i.task), "task": i.task.to_json(), "environment": "calculator"}
            for i in items]  # fmt: skip
    rl = RLSection(num_generations=2, curriculum={"enabled": True, "max_resamples": 1},
                   reflexion={"recovery_traces": False})  # fmt: skip
    function = RolloutFunction(rl, items, rows, CLASSES, scorer_for(tokenizer), Path("unused"), seed=0)
    groups = function._grow(ScriptedPolicy(tokenizer, items), tokenizer, items[:1])
    # A scripted policy solves every task: the group has no signal, so one other task was tried in its place.
    assert function.curriculum is not None and function.curriculum.zero_signal == 2
    assert function.curriculum.replaced == 1 and groups[0].item.task.task_id != items[0].task.task_id
    assert function.stats["groups"] == 2


class WrongAnswers(ScriptedPolicy):
    """Even rows of a batch play the reference calls, odd rows answer at once; every final answer is wrong. The
    leaves' total rewards differ (calls vs none), and the environment fails them all."""

    def __call__(
        self, prompts: list[list[int]], adapters: list, max_new_tokens: int, shared_prefixes: Any = None
    ) -> list[list[int]]:
        replies = []
        for row, ids in enumerate(prompts):
            reply = self._reply(self.tokenizer.decode(ids)) if row % 2 == 0 else ""
            if "<tool_call>" not in reply:
                reply = "<think><verify>done</verify></think>\nI could not work it out.<|im_end|>"
            replies.append(self.tokenizer(reply, add_special_tokens=False)["input_ids"][:max_new_tokens])
        return replies


@pytest.mark.parametrize(("signal", "replaced"), [("reward", 0), ("outcome", 1)])
def test_an_outcome_signal_replaces_groups_that_all_fail_despite_their_reward_spread(
    tokenizer, signal: str, replaced: int
) -> None:
    items = calculator_items(4, seed=9)
    rows = [{"prompt": episodes.prompt_messages(i.task), "task": i.task.to_json(), "environment": "calculator"}
            for i in items]  # fmt: skip
    rl = RLSection(num_generations=2, curriculum={"enabled": True, "max_resamples": 1, "signal": signal},
                   reflexion={"recovery_traces": False})  # fmt: skip
    function = RolloutFunction(rl, items, rows, CLASSES, scorer_for(tokenizer), Path("unused"), seed=0)
    groups = function._grow(WrongAnswers(tokenizer, items), tokenizer, items[:1])
    leaves = groups[0].leaves()
    assert not any(function.scorer.passed(n) for n in leaves)
    assert len({n.reward for n in leaves}) == 2  # the shaped rewards tell the two leaves apart
    assert function.curriculum is not None and function.curriculum.replaced == replaced
    assert function.stats["groups"] == 1 + replaced


def test_the_curriculum_signal_is_left_out_of_dumps_at_its_default() -> None:
    assert "signal" not in RLSection(curriculum={"enabled": True}).model_dump()["curriculum"]
    assert (
        RLSection(curriculum={"enabled": True, "signal": "outcome"}).model_dump()["curriculum"]["signal"]
        == "outcome"
    )


# -- configuration ---------------------------------------------------------------------------------------------
def test_rollout_settings_are_validated_with_the_fix_named() -> None:
    with pytest.raises(ValueError, match="multiple of 3 and at least 6"):
        RLSection(num_generations=4, rollouts={"shape": "tree"})
    with pytest.raises(ValueError, match="need rollouts.loop: midtrain"):
        RLSection(rollouts={"loop": "trl"}, reflexion={"retries": 1})
    midtrain_loop = {"shape": "chain", "loop": "midtrain"}
    RLSection(rollouts=midtrain_loop, generation={"backend": "vllm"})  # each step's LoRA into its own engine
    with pytest.raises(ValueError, match="vllm_mode: colocate.*use rollouts.loop: trl"):
        RLSection(rollouts=midtrain_loop, generation={"backend": "vllm", "vllm_mode": "server"})
    with pytest.raises(ValueError, match="enable_sleep_mode"):
        RLSection(rollouts=midtrain_loop, generation={"backend": "vllm", "enable_sleep_mode": True})
    with pytest.raises(
        ValueError, match=r"train.extra \{'repetition_penalty': 1.2\}: midtrain's rollout loop"
    ):
        RLSection(reflexion={"retries": 1}, train={"extra": {"repetition_penalty": 1.2}})
    RLSection(rollouts={"loop": "trl"}, train={"extra": {"repetition_penalty": 1.2}})  # TRL's loop applies it
    RLSection(
        reflexion={"retries": 1}, train={"extra": {"generation_kwargs": "{}", "top_k": 0, "min_p": None}}
    )
    for cut, message in (
        ({"top_p": 0}, r"top_p: 0 is not a number in \(0, 1\]"),
        ({"top_p": None}, "top_p: None"),
        ({"min_p": 1.5}, r"min_p: 1.5 is not"),
        ({"top_k": -1}, r"top_k: -1 is not a whole"),
    ):
        with pytest.raises(ValueError, match=message):
            RLSection(train={"extra": cut})  # fmt: skip
    assert not RLSection().rollouts.uses_midtrain_loop(RLSection().reflexion, RLSection().curriculum)
    rl = RLSection(num_generations=6, rollouts={"shape": "tree"}, train={"per_device_train_batch_size": 6})
    assert rl.rollouts.uses_midtrain_loop(rl.reflexion, rl.curriculum)


# -- the engine's prefix reuse and the stage on the tiny model -------------------------------------------------
def test_shared_prefix_reuse_does_not_change_the_generated_tokens(tokenizer, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from pipelines.inference import Engine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prefix = tokenizer("the shared beginning of two branches " * 6, add_special_tokens=False)["input_ids"]
    rows = [prefix + tokenizer(" left", add_special_tokens=False)["input_ids"],
            prefix + tokenizer(" and the right one", add_special_tokens=False)["input_ids"]]  # fmt: skip
    rows.append(tokenizer("an unrelated row of a different length", add_special_tokens=False)["input_ids"])
    rows.append(list(prefix))  # a branch on its first step: the whole row is the shared prefix
    plain = Engine(model, tokenizer.pad_token_id, [tokenizer.eos_token_id])(rows, [None] * 4, 12)
    engine = Engine(model, tokenizer.pad_token_id, [tokenizer.eos_token_id])
    names = ["__base__"] * 4
    # A prefix as long as its row is cut one token short (a row always prefills a token), so that row's key
    # differs from its siblings' and nothing is shared: callers pass the fork point minus one.
    assert engine._prefix_lengths(rows, names, [len(prefix)] * 2 + [0, len(prefix)]) == [len(prefix)] * 2 + [
        0,
        0,
    ]
    hints = [len(prefix) - 1] * 2 + [0, len(prefix) - 1]
    assert engine._prefix_lengths(rows, names, hints) == hints
    reused = engine(rows, [None] * 4, 12, shared_prefixes=hints)
    assert reused == plain and len(engine._prefix_cache) == 1


@pytest.mark.timeout(600)
def test_grpo_with_tree_rollouts_reflexion_and_curriculum_on_the_tiny_model(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines import inference
    from pipelines.artifacts import RLSummary
    from pipelines.inference import sampler
    from pipelines.rl.train import ROLLOUTS_FILE, run
    from tests.test_rl import save_sft_adapter

    config = rl_config(
        tmp_path, tiny_model_dir, domains=["calculator", "sqlite"], n_tasks=4, num_generations=6,
        max_completion_length=24, rollouts={"shape": "tree", "max_generated_tokens": 1},
        reflexion={"retries": 1}, curriculum={"enabled": True},
        train={"max_steps": 3, "per_device_train_batch_size": 6, "learning_rate": 1e-3,
               "gradient_checkpointing": False, "extra": {"top_p": 0.9, "top_k": 7, "min_p": 0.05}},
    )  # fmt: skip
    save_sft_adapter(config, tiny_model_dir, "tool")
    cuts: list[tuple[float, int, float | None]] = []

    def recording_sampler(
        temperature: float, top_p: float, seed: int, top_k: int, min_p: float | None
    ) -> Any:
        cuts.append((top_p, top_k, min_p))
        return sampler(temperature, top_p, seed, top_k=top_k, min_p=min_p)

    monkeypatch.setattr(inference, "sampler", recording_sampler)  # the loop imports it when it samples
    summary = run(config).clusters["tool"]
    assert cuts and set(cuts) == {(0.9, 7, 0.05)}  # GRPOConfig's sampling cuts reach midtrain's loop
    out = config.run_dir / "rl" / "tool"
    assert summary.steps == 1  # the token budget stopped it after the first step
    assert summary.reward_weights == {"rollout_advantage": 1.0}
    assert summary.rollouts is not None and summary.rollouts["shape"] == "tree"
    assert json.loads((out / ROLLOUTS_FILE).read_text()) == RLSummary.read(out).rollouts
    totals = summary.rollouts["totals"]
    assert totals["groups"] >= 1 and totals["generated_tokens"] >= 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {k for row in rows for k in row}
    assert {"rollout/reward", "rollout/rewards/format/mean", "curriculum/zero_signal_groups"} <= logged
    rates = {k: v for row in rows for k, v in row.items() if k.startswith("curriculum/pass_rate/")}
    assert rates and all(
        re.fullmatch(r"curriculum/pass_rate/d[0-9]", k) and 0 < v < 1 for k, v in rates.items()
    )
    assert (out / "rewards.png").is_file() and (out / "eval_before_after.json").is_file()


def test_sampler_cuts_like_transformers_top_k_top_p_min_p() -> None:
    """top_k keeps the k most likely tokens, top_p the smallest set reaching p, min_p those at least min_p x
    the top token's probability; greedy at temperature 0; the same seed draws the same tokens."""
    import torch

    from pipelines.inference import sampler

    logits = torch.log(torch.tensor([[0.40, 0.25, 0.15, 0.10, 0.06, 0.04]])).repeat(400, 1)

    def drawn(**cuts: Any) -> set[int]:
        pick = sampler(1.0, seed=0, **cuts)
        assert pick is not None
        return set(pick(logits).tolist())

    assert drawn() == set(range(6))
    assert drawn(top_k=2) == {0, 1}
    assert drawn(top_p=0.7) == {0, 1, 2}  # 0.40 + 0.25 < 0.7: the third token is needed
    assert drawn(min_p=0.3) == {0, 1, 2}  # >= 0.12
    assert drawn(top_k=3, min_p=0.5) == {0, 1}
    assert sampler(0.0) is None
    first, again = sampler(1.0, seed=3), sampler(1.0, seed=3)
    assert first is not None and again is not None and first(logits).tolist() == again(logits).tolist()


def test_a_killed_grpo_run_on_midtrains_loop_resumes_with_its_rollout_totals_and_curriculum(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """midtrain's rollout loop (here for the curriculum) keeps its own state (call count = sampling seeds, totals,
    the curriculum) in each checkpoint: a run killed after step 1 resumes there and ends with the totals of two
    steps, not one step's or three's."""
    from pipelines.rl.train import restored_rollout_state, run
    from tests.helpers import CrashAt
    from tests.test_rl import StepsRun, save_sft_adapter

    config = rl_config(
        tmp_path, tiny_model_dir, domains=["calculator"], n_tasks=2, num_generations=2, eval_tasks_per_domain=0,
        max_completion_length=8, curriculum={"enabled": True, "max_resamples": 0},
        train={"max_steps": 2, "save_steps": 1, "save_total_limit": 1, "per_device_train_batch_size": 2,
               "learning_rate": 1e-3, "gradient_checkpointing": False},
    )  # fmt: skip
    save_sft_adapter(config, tiny_model_dir, "tool")
    with pytest.raises(KeyboardInterrupt):
        run(config, callbacks=[CrashAt(1)])
    out = config.run_dir / "rl" / "tool"
    saved = restored_rollout_state(out / "checkpoint-1")
    assert saved is not None and saved["totals"]["calls"] == 1 and saved["totals"]["groups"] == 1
    assert sum(saved["curriculum"]["groups"].values()) == 1

    steps = StepsRun()
    summary = run(config, callbacks=[steps]).clusters["tool"]
    assert (steps.start, steps.ran) == (1, [2])
    assert summary.rollouts is not None
    totals = summary.rollouts["totals"]
    assert totals["calls"] == 2 and totals["groups"] == 2
    assert totals["generated_tokens"] > saved["totals"]["generated_tokens"]
    # The curriculum went on from its saved counts: step 2's group is added to step 1's, not counted alone.
    zero_signal = summary.rollouts["curriculum"]["curriculum/zero_signal_groups"]
    assert saved["curriculum"]["zero_signal"] <= zero_signal <= saved["curriculum"]["zero_signal"] + 1
