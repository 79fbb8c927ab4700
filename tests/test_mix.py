"""Mixing by tokens: targets, shortfall handling, capped upsampling, split and order (no tokenizer needed)."""

from __future__ import annotations

import random

import pytest

from pipelines.data.mix import (
    SourcePool,
    TrainPairs,
    is_eval_id,
    order_train,
    plan_mix,
    sample_source,
    water_fill,
)
from pipelines.errors import BadInput
from pipelines.recipe import Recipe


def _pool(
    name: str,
    category: str,
    sizes: list[int],
    weight: float = 1.0,
    max_epochs: float = 4.0,
    eval_every: int = 0,
) -> SourcePool:
    pool = SourcePool(name, category, weight, max_epochs)
    for i, n in enumerate(sizes):
        pool.rows.append(len(pool.rows) + 1000 * (ord(name[0]) - 96))
        pool.tokens.append(n)
        pool.eval_mask.append(bool(eval_every) and i % eval_every == 0)
    return pool


def _recipe(total: int, allow_shortfall: bool = False, **shares: float) -> Recipe:
    sources = {"tool": ["a"], "code": ["c"], "text": ["t", "u"]}
    return Recipe.model_validate(
        {
            "name": "r",
            "total_tokens": total,
            "allow_shortfall": allow_shortfall,
            "categories": {
                cat: {"share": share, "sources": [{"name": n, "type": "pydoc_text"} for n in sources[cat]]}
                for cat, share in shares.items()
            },
        }
    )


def _sizes(n: int, seed: int, low: int = 50, high: int = 400) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(n)]


def test_water_fill_gives_the_slack_of_capped_keys_to_the_others() -> None:
    alloc = water_fill(100.0, {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 20.0, "b": 1e9, "c": 1e9})
    assert alloc["a"] == 20.0
    assert alloc["b"] == pytest.approx(48.0) and alloc["c"] == pytest.approx(32.0)  # 80 split 3:2
    assert sum(alloc.values()) == pytest.approx(100.0)


def test_targets_are_shares_of_tokens_split_by_weight() -> None:
    recipe = _recipe(10_000, tool=0.5, code=0.2, text=0.3)
    pools = {
        "a": _pool("a", "tool", _sizes(200, 1)),
        "c": _pool("c", "code", _sizes(200, 2)),
        "t": _pool("t", "text", _sizes(200, 3), weight=2.0),
        "u": _pool("u", "text", _sizes(200, 4), weight=1.0),
    }
    recipe.categories["text"].sources[0].weight = 2.0
    plan = plan_mix(recipe, pools)
    assert plan.category_targets == {"tool": 5000, "code": 2000, "text": 3000}
    assert plan.source_targets["t"] == pytest.approx(2000) and plan.source_targets["u"] == pytest.approx(1000)
    assert not plan.rebalanced


def test_shortfall_is_bad_input_with_needed_and_available_per_source() -> None:
    recipe = _recipe(100_000, tool=0.5, code=0.2, text=0.3)
    pools = {
        "a": _pool("a", "tool", [100] * 50, max_epochs=2),  # 10,000 available, 50,000 needed
        "c": _pool("c", "code", [100] * 500),
        "t": _pool("t", "text", [100] * 500),
        "u": _pool("u", "text", [100] * 500),
    }
    with pytest.raises(BadInput) as err:
        plan_mix(recipe, pools)
    msg = str(err.value)
    assert "category 'tool' (share 0.5) needs 50,000 tokens, its sources can supply 10,000" in msg
    assert "source 'a': needs 50,000, available 5,000 train tokens × max_epochs 2" in msg
    assert "'code'" not in msg and "allow_shortfall: true" in msg


def test_allow_shortfall_rebalances_other_categories_by_share() -> None:
    recipe = _recipe(100_000, allow_shortfall=True, tool=0.5, code=0.2, text=0.3)
    pools = {
        "a": _pool("a", "tool", [100] * 50, max_epochs=2),
        "c": _pool("c", "code", [100] * 1000),
        "t": _pool("t", "text", [100] * 1000),
        "u": _pool("u", "text", [100] * 1000),
    }
    plan = plan_mix(recipe, pools)
    assert plan.rebalanced
    assert plan.category_targets["tool"] == pytest.approx(10_000)
    assert plan.category_targets["code"] == pytest.approx(90_000 * 0.2 / 0.5)
    assert plan.category_targets["text"] == pytest.approx(90_000 * 0.3 / 0.5)
    assert any("'tool': target 50,000 → 10,000" in note for note in plan.notes)


def test_allow_shortfall_reports_a_smaller_total_when_everything_is_capped() -> None:
    recipe = _recipe(100_000, allow_shortfall=True, tool=0.5, code=0.5)
    pools = {
        "a": _pool("a", "tool", [100] * 10, max_epochs=1),
        "c": _pool("c", "code", [100] * 20, max_epochs=1),
    }
    plan = plan_mix(recipe, pools)
    assert sum(plan.category_targets.values()) == pytest.approx(3000)
    assert any(note.startswith("total: 100,000 → 3,000") for note in plan.notes)


@pytest.mark.parametrize("target", [1234, 20_000, 75_000])
def test_sampling_lands_within_half_a_row_of_the_target(target: int) -> None:
    pool = _pool("a", "tool", _sizes(100, 5), eval_every=10)  # ~22k tokens: the 75k target upsamples
    sel = sample_source(pool, target, seed=0)
    assert abs(sel.tokens - target) <= max(pool.tokens) / 2
    again = sample_source(pool, target, seed=0)
    assert again.train == sel.train and again.eval == sel.eval
    assert sample_source(pool, target, seed=1).train != sel.train


def test_upsampled_repeats_are_tagged_and_capped() -> None:
    pool = _pool("a", "tool", [100] * 30, max_epochs=2.5, eval_every=10)  # 3 eval rows, 27 train rows
    sel = sample_source(pool, 1e9, seed=0)  # asks for more than the cap
    epochs = [e for _, e in sel.train]
    assert set(epochs) == {0, 1, 2} and sel.epochs == 3
    assert len(sel.train) == len(set(sel.train))  # a (row, epoch) pair is used once
    assert sum(100 for _ in sel.train) <= 2.5 * 27 * 100
    assert len(sel.eval) == 3  # eval rows once, never repeated
    assert not {r for r, _ in sel.train} & set(sel.eval)


def test_eval_split_is_a_function_of_the_id() -> None:
    ids = [f"trace-{i}" for i in range(20_000)]
    chosen = [i for i in ids if is_eval_id(i, seed=0, fraction=0.05)]
    assert 0.04 < len(chosen) / len(ids) < 0.06
    assert chosen == [i for i in ids if is_eval_id(i, seed=0, fraction=0.05)]
    assert not any(is_eval_id(i, seed=0, fraction=0.0) for i in ids[:100])


def test_order_shuffles_deterministically_and_curriculum_sorts_by_difficulty() -> None:
    rows = [(i, 0) for i in range(50)] + [(i, 1) for i in range(10)]
    difficulty = {i: i % 4 for i in range(50)}
    shuffled = order_train(TrainPairs.of(rows), difficulty, seed=0, curriculum="none")
    assert sorted(shuffled) == sorted(rows) and list(shuffled) != sorted(rows)
    assert order_train(TrainPairs.of(reversed(rows)), difficulty, seed=0, curriculum="none") == shuffled
    # The order shuffling the sorted list of tuples gives (the rule before TrainPairs; same shards).
    as_list = sorted(rows)
    random.Random("0:train-order").shuffle(as_list)
    assert list(shuffled) == as_list
    curriculum = order_train(TrainPairs.of(rows), difficulty, seed=0, curriculum="difficulty")
    assert list(curriculum) == sorted(as_list, key=lambda pair: difficulty[pair[0]])
    by_array = order_train(TrainPairs.of(rows), [i % 4 for i in range(50)], seed=0, curriculum="difficulty")
    assert by_array == curriculum
    assert [difficulty[r] for r, _ in curriculum] == sorted(difficulty[r] for r, _ in rows)
