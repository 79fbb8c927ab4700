"""Eval stage: results.json of the exact shape for base/sft/routed on the tiny model, adapters really applied
(routed rows equal the adapter the router picked), scoring checked on a stub generator with known-right and
known-wrong replies, skipped targets reported, and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.artifacts import EvalResults
from pipelines.episodes import budget_warnings
from pipelines.errors import BadInput
from pipelines.eval import stage
from pipelines.eval.bfcl import load_category, reference_calls, tool_name
from pipelines.eval.results import HELDOUT_METRICS
from pipelines.router import run as train_router
from pipelines.run_config import EvalSection, RouterSection, RunConfig
from tests.helpers import make_adapter, two_cluster_config, write_shards

METRIC_KEYS = {*HELDOUT_METRICS, "n"}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """The tiny model's ops are too small to split across threads; on a busy 2-core runner one thread is faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A run with two tiny random SFT adapters and a tfidf router bundle over them (no RL)."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    write_shards(run_dir / "data")
    make_adapter(tiny_model_dir, run_dir / "sft" / "tool", seed=1)
    make_adapter(tiny_model_dir, run_dir / "sft" / "plan", seed=2)
    train_router(_config(run_dir, tiny_model_dir, EvalSection()))
    return run_dir


def _config(run_dir: Path, model: Path, section: EvalSection) -> RunConfig:
    router = RouterSection(method="tfidf", threshold=0.0, eval_fraction=0.25, generated_requests=0)
    return two_cluster_config(run_dir, model, router, eval=section)


def _check_metrics(metrics: dict[str, Any], keys: set[str]) -> None:
    assert set(metrics) == keys | {"ci95"}
    for key, value in metrics.items():
        if key not in ("n", "ci95"):
            assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0), (key, value)
    # Every score that is defined has its Wilson interval around it; an undefined one has none.
    for key, interval in metrics["ci95"].items():
        if metrics.get(key) is None:
            assert interval is None, key
        else:
            low, high, n = interval
            assert 0.0 <= low <= metrics[key] <= high <= 1.0 and n >= 1, (key, interval)


def _predictions(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]


def test_run_writes_results_for_every_target(run_dir: Path, tiny_model_dir: Path) -> None:
    section = EvalSection(
        limit=2,
        bfcl_categories=["simple_python", "irrelevance"],
        heldout_domains=["calculator"],  # irrelevance needs two domains: the stub test covers it
        max_new_tokens=8,
        rollout_tokens=24,
        max_tool_rounds=1,
    )
    results = stage.run(_config(run_dir, tiny_model_dir, section))

    assert results.model == str(tiny_model_dir) and results.limit == 2
    assert list(results.targets) == ["base", "sft/plan", "sft/tool", "routed"]
    assert set(results.skipped) == {"rl"} and "does not exist" in results.skipped["rl"]
    assert set(results.seconds) == set(results.targets)
    for suites in results.targets.values():
        assert set(suites) == {"bfcl", "heldout"}
        _check_metrics(suites["bfcl"], {"simple_python", "irrelevance", "overall", "n"})
        _check_metrics(suites["heldout"], METRIC_KEYS)
        assert suites["bfcl"]["n"] == 4 and suites["heldout"]["n"] == 2
    out = run_dir / "eval"
    assert EvalResults.read(out) == results
    assert (out / "results.png").stat().st_size > 5000
    table = (out / "results.md").read_text()
    assert "| sft/tool |" in table and "bfcl_nonlive/mean" in table and "- rl:" in table
    assert "(BFCL: first 2 examples per category;" in table.splitlines()[0]
    assert "bfcl n=4, heldout n=2" in table

    rows = _predictions(run_dir)
    assert len(rows) == 4 * (4 + 2)
    # 8 tokens a reply: the random model's replies are cut off, and the rows say so rather than "wrong answer".
    heldout = [r for r in rows if r["suite"] == "heldout" and not r["irrelevant"]]
    assert heldout and all(r["error"].startswith("cut off by the token budget") for r in heldout)
    bfcl = {(r["target"], r["id"]): r["raw"] for r in rows if r["suite"] == "bfcl"}
    ids = [i for t, i in bfcl if t == "base"]
    assert any(bfcl["base", i] != bfcl["sft/tool", i] for i in ids), "the adapter changed nothing"
    # Each routed row is served by exactly the adapter the router picked for it.
    routes = stage.RouteTable(run_dir / "router")
    examples = {ex.id: ex for c in section.bfcl_categories for ex in load_category(c, 2)}
    texts = [stage.request_text(stage.example_to_trace(examples[i])) for i in ids]
    by_path = {str((run_dir / "sft" / c).resolve()): f"sft/{c}" for c in ("tool", "plan")} | {None: "base"}
    for example_id, adapter in zip(ids, routes.adapters(texts), strict=True):
        assert bfcl["routed", example_id] == bfcl[by_path[adapter], example_id]


def test_heldout_tasks_the_mix_was_not_checked_against_are_named(run_dir: Path, tiny_model_dir: Path) -> None:
    section = EvalSection(heldout_domains=["calculator"], heldout_limit=20, heldout_max_difficulty=1)
    config = _config(run_dir, tiny_model_dir, section)
    for heldout_n, warning in ((300, "16 of 20 held-out tasks lie outside the first 300"), (1010, "")):
        config.data.recipe.decontamination.heldout_n = heldout_n
        got = stage.load_heldout(config, section).warning
        assert got.startswith(warning) and bool(got) == bool(warning)


def test_budget_warnings_compare_a_budget_with_the_trained_turns_it_must_hold() -> None:
    lengths = {
        "replies": {"n": 40, "p50": 141, "p90": 240, "max": 384},
        "episodes": {
            "1": {"n": 38, "p50": 252, "p90": 335, "max": 419},
            "3": {"n": 70, "p50": 400, "p90": 932, "max": 1146},
        },
    }
    short = budget_warnings(
        lengths, "sft/tool", 1, ("eval.rollout_tokens", 256), ("eval.max_new_tokens", 128)
    )
    assert len(short) == 2
    assert (
        short[0].startswith("eval.rollout_tokens=256 cuts off 1 in 10 or more") and "`sft/tool`" in short[0]
    )
    assert (
        "episodes `sft/tool` was trained on, those of 1-1 tool call(s) (median 252, p90 335, max 419 tokens, n = 38;"
        in short[0]
    )
    assert short[0].endswith("Set eval.rollout_tokens to at least 335")
    assert short[1].startswith("eval.max_new_tokens=128") and short[1].endswith("at least 240")
    # Tasks of up to 4 calls: the largest cumulative group within them (rows of 1-3 calls) sets the bar; a
    # task file's tasks (calls unknown) are held to every tool-calling row.
    assert budget_warnings(lengths, "sft/tool", 4, ("k", 512))[0].endswith("at least 932")
    assert budget_warnings(lengths, "sft/tool", None, ("k", 512))[0].endswith("at least 932")
    assert budget_warnings(lengths, "sft/tool", 1, ("k", 335), ("m", 240)) == []
    assert budget_warnings(lengths, "sft/tool", 1, reply_budget=("m", 100)) == [
        budget_warnings(lengths, "sft/tool", 1, ("k", 999), ("m", 100))[0]
    ]
    assert budget_warnings({}, "base", 1, ("k", 1), ("m", 1)) == []


# -- scoring on a stub generator ----------------------------------------------------------------------------------
def _call_text(calls: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls)


class StubPolicy:
    """Known replies: BFCL per question; held-out tasks by scenario (oracle, error→recover, no call, decline)."""

    def __init__(self, tokenizer: Any, bfcl: dict[str, str], tasks: dict[str, tuple[Any, str]]) -> None:
        self.tokenizer, self.bfcl, self.tasks = tokenizer, bfcl, tasks
        self.adapters_seen: set[str | None] = set()

    def __call__(self, prompts: list[list[int]], adapters: list[str | None], max_new: int) -> list[list[int]]:
        self.adapters_seen.update(adapters)
        replies = [self.reply(self.tokenizer.decode(ids)) for ids in prompts]
        encode = self.tokenizer
        return [encode(r + self.tokenizer.eos_token, add_special_tokens=False)["input_ids"] for r in replies]

    def reply(self, prompt: str) -> str:
        for question, reply in self.bfcl.items():
            if question in prompt:
                return reply
        request = next(r for r in self.tasks if r in prompt)
        task, scenario = self.tasks[request]
        results = prompt[prompt.index(request) :].count("<tool_response>")
        if scenario == "decline":
            return "Sorry, none of my tools can do that."
        if scenario == "no_call":
            return "I think it is 42."
        if scenario == "recover":
            if results == 0:
                return _call_text([("no_such_tool", {"x": 1})])
            results -= 1
        return _oracle_turn(task, results)


def _oracle_turn(task: Any, results: int) -> str:
    """The reference solution's next turn after `results` tool results, then the final answer."""
    done = 0
    for turn in task.solution:
        if done == results:
            return _call_text([(step.tool, step.arguments) for step in turn])
        done += len(turn)
    return task.final_template.format(answer=task.answer) if task.answer else "Done."


def _bfcl_replies() -> tuple[dict[str, str], dict[str, bool]]:
    """Question → reply for the first 3 examples of two categories, and the verdict each must get."""
    simple = load_category("simple_python", 3)
    irrelevance = load_category("irrelevance", 3)
    wrong = {n: {k: "definitely wrong" for k in a} for n, a in reference_calls(simple[1])[0].items()}
    calls = {
        simple[0].id: [(n, a) for c in reference_calls(simple[0]) for n, a in c.items()],
        simple[1].id: list(wrong.items()),
        simple[2].id: [(n, a) for c in reference_calls(simple[2]) for n, a in c.items()],
        irrelevance[1].id: [(irrelevance[1].functions[0]["name"], {})],
    }
    replies = {
        ex.messages[-1]["content"]: _call_text([(tool_name(n), a) for n, a in calls[ex.id]])
        if ex.id in calls
        else "I cannot answer that with these tools."
        for ex in simple + irrelevance
    }
    verdicts = {ex.id: ex.id not in (simple[1].id, irrelevance[1].id) for ex in simple + irrelevance}
    return replies, verdicts


def _stub(tokenizer: Any, config: RunConfig) -> StubPolicy:
    heldout = stage.load_heldout(config, config.eval)
    relevant = [it.task for it in heldout.items if it.task.solution]
    scenarios = ["oracle", "recover", "no_call"] + ["oracle"] * (len(relevant) - 3)
    tasks = {t.request: (t, s) for t, s in zip(relevant, scenarios, strict=True)}
    tasks |= {it.task.request: (it.task, "decline") for it in heldout.items if not it.task.solution}
    return StubPolicy(tokenizer, _bfcl_replies()[0], tasks)


def test_scoring_on_stub_generator(run_dir: Path, tiny_model_dir: Path, tokenizer: Any) -> None:
    section = EvalSection(
        limit=3,
        bfcl_categories=["simple_python", "irrelevance"],
        heldout_domains=["calculator", "filesystem"],
        heldout_irrelevance_fraction=0.3,  # ceil(0.9): one irrelevant task per domain
        targets=["base", "sft"],
    )
    config = _config(run_dir, tiny_model_dir, section)
    stub = _stub(tokenizer, config)
    results = stage.run(config, stub)

    base = results.targets["base"]
    two_thirds = round(2 / 3, 6)
    assert base["bfcl"] == {
        "simple_python": two_thirds,
        "irrelevance": two_thirds,
        "overall": two_thirds,
        "n": 6,
        # 2 of 3 correct per category: Wilson's 95% interval, [0.2077, 0.9385] (as tabulated for k=2, n=3).
        "ci95": {"simple_python": [0.2077, 0.9385, 3], "irrelevance": [0.2077, 0.9385, 3]},
    }
    heldout = base["heldout"]
    assert heldout["n"] == 3 * 2 + 2
    assert heldout["outcome"] == pytest.approx(5 / 6)  # every scenario but "no_call" succeeds
    assert heldout["call_accuracy"] == pytest.approx(4 / 6)  # the recovery's extra call is not exact
    assert heldout["recovery_rate"] == 1.0 and heldout["irrelevance_accuracy"] == 1.0
    assert 0.5 < heldout["format_rate"] < 1.0  # no_call scores 0, the unknown tool costs the recovery a share
    assert results.targets["sft/tool"] == base  # same stub replies whatever the adapter
    assert stub.adapters_seen == {None, *(str((run_dir / "sft" / c).resolve()) for c in ("tool", "plan"))}

    rows = [r for r in _predictions(run_dir) if r["target"] == "base"]
    _, verdicts = _bfcl_replies()
    assert {r["id"]: r["ok"] for r in rows if r["suite"] == "bfcl" and r["id"] in verdicts} == verdicts
    errors = {r["error"] for r in rows if r["suite"] == "heldout" and not r["ok"]}
    assert errors == {"answered without calling a tool"}
    simple_wrong = next(r for r in rows if r["id"] == "simple_python_1")
    assert simple_wrong["error"].startswith("type_error") and simple_wrong["calls"]  # the checker's reason


def test_skipped_targets_and_nothing_to_run(tmp_path: Path, tiny_model_dir: Path, tokenizer: Any) -> None:
    run_dir = tmp_path / "empty"
    broken = run_dir / "sft" / "broken"
    broken.mkdir(parents=True)
    (broken / "adapter_config.json").write_text("{}")
    section = EvalSection(
        limit=1, bfcl_categories=["irrelevance"], heldout_domains=[], targets=["sft", "rl", "routed"]
    )
    with pytest.raises(BadInput, match=r"none can run.*sft/broken: .*missing adapter_model\.safetensors"):
        stage.run(_config(run_dir, tiny_model_dir, section))

    section = section.model_copy(update={"targets": ["base", "sft", "rl", "routed"]})
    stub = StubPolicy(tokenizer, {}, {})
    stub.reply = lambda prompt: "No tool fits."  # type: ignore[method-assign]
    results = stage.run(_config(run_dir, tiny_model_dir, section), stub)
    assert list(results.targets) == ["base"]
    assert set(results.skipped) == {"sft/broken", "rl", "routed", "heldout"}
    assert "router.json does not exist" in results.skipped["routed"]
    assert results.targets["base"] == {
        "bfcl": {"irrelevance": 1.0, "overall": 1.0, "n": 1, "ci95": {"irrelevance": [0.2065, 1.0, 1]}}
    }


def test_targets_by_adapter_name(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`sft/tool` picks one adapter of its group (once, even beside `sft`); a named adapter that is not there
    is skipped with the command that makes it."""
    run_dir = tmp_path / "run"
    for cluster, seed in (("tool", 1), ("plan", 2)):
        make_adapter(tiny_model_dir, run_dir / "sft" / cluster, seed)
    config = _config(run_dir, tiny_model_dir, EvalSection())
    targets, skipped = stage.discover_targets(config, ["base", "sft/tool", "rl/tool"])
    assert [t.key for t in targets] == ["base", "sft/tool"] and targets[1].adapter
    assert set(skipped) == {"rl/tool"} and "midtrain rl CONFIG" in skipped["rl/tool"]
    targets, skipped = stage.discover_targets(config, ["sft/tool", "sft", "sft/code"])
    assert [t.key for t in targets] == ["sft/tool", "sft/plan"]
    assert "midtrain sft CONFIG" in skipped["sft/code"]
    # A kept checkpoint (`sft.keep_checkpoints`) is a target of its own; it is not one of `sft`'s adapters.
    make_adapter(tiny_model_dir, run_dir / "sft" / "tool" / "checkpoint-4", 3)
    targets, skipped = stage.discover_targets(
        config, ["sft/tool/checkpoint-4", "sft/tool/checkpoint-8", "sft"]
    )
    assert [t.key for t in targets] == ["sft/tool/checkpoint-4", "sft/plan", "sft/tool"]
    assert targets[0].adapter == str((run_dir / "sft" / "tool" / "checkpoint-4").resolve())
    assert "checkpoint-8 is missing adapter_config.json" in skipped["sft/tool/checkpoint-8"]


def test_bad_heldout_domain_names_the_key(tmp_path: Path, tiny_model_dir: Path) -> None:
    section = EvalSection(heldout_domains=["nope"], targets=["base"])
    with pytest.raises(BadInput, match=r"eval\.heldout_domains: unknown domain 'nope'"):
        stage.run(_config(tmp_path / "r", tiny_model_dir, section), lambda p, a, n: [[] for _ in p])


def test_vllm_backend_without_vllm_is_bad_input(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Here (no vLLM in the project's venv) the backend is refused before any model loads, the key named; the
    backend itself runs in `make test-vllm` (tests/test_vllm.py)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: tests/test_vllm.py runs the backend")
    section = EvalSection(backend="vllm", targets=["base"], bfcl_categories=["simple_python"], limit=1,
                          heldout_domains=[])  # fmt: skip
    with pytest.raises(BadInput, match=r"eval\.backend: vllm needs vLLM"):
        stage.run(_config(tmp_path / "r", tiny_model_dir, section))
    with pytest.raises(ValueError, match="vllm_engine_args is set but eval.backend is not vllm"):
        EvalSection(vllm_engine_args={"max_model_len": 4096})


def test_cli_eval_limit_and_targets(run_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    config = {
        "name": run_dir.name,
        "output_dir": str(run_dir.parent),
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"recipe": "data_recipes/agentic-v1.yaml"},
        "eval": {"bfcl_categories": ["irrelevance"], "heldout_domains": [], "max_new_tokens": 4},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["eval", str(path), "--limit", "1", "--targets", "base,sft"])
    assert result.exit_code == 0, result.output
    saved = EvalResults.read(run_dir / "eval")
    assert saved.limit == 1 and list(saved.targets) == ["base", "sft/plan", "sft/tool"]
    assert re.search(r"\| base \|", result.output)

    bad = CliRunner().invoke(app, ["eval", str(path), "--targets", "base,nope"])
    assert isinstance(bad.exception, BadInput) and "eval.targets" in str(bad.exception)


def test_remembered_generate_answers_repeats_from_memory(tmp_path: Path) -> None:
    """The routed target's requests that another target already asked (same prompt, adapter folder, budget) are
    not generated again; a different adapter, budget or prompt is."""
    asked: list[tuple[list[int], str | None, int]] = []

    def generate(prompts: list[list[int]], adapters: list[str | None], budget: int) -> list[list[int]]:
        asked.extend(zip(prompts, adapters, [budget] * len(prompts), strict=True))
        return [[len(asked), *p] for p in prompts]

    adapter = tmp_path / "sft" / "tool"
    adapter.mkdir(parents=True)
    memo = stage.remembered(generate)
    first = memo([[1, 2], [3]], [str(adapter), None], 8)
    assert len(asked) == 2
    again = memo([[3], [1, 2], [1, 2]], [None, str(tmp_path / "sft" / ".." / "sft" / "tool"), None], 8)
    assert again[:2] == [first[1], first[0]] and memo.hits == 2
    assert asked[2:] == [([1, 2], None, 8)]
    memo([[1, 2]], [str(adapter)], 16)
    assert len(asked) == 4 and memo.hits == 2


def test_heldout_prompts_offer_the_tasks_tools_and_distractors_when_asked(
    run_dir: Path, tiny_model_dir: Path
) -> None:
    from pipelines.rl.rewards import reference_calls

    domains = ["calculator", "filesystem"]
    every = EvalSection(limit=4, heldout_domains=domains, heldout_irrelevance_fraction=0.5)
    config = _config(run_dir, tiny_model_dir, every)
    full = stage.load_heldout(config, every)
    assert {it.env_key for it in full.items} == set(domains)

    views = every.model_copy(update={"heldout_offered_tools": "task", "heldout_distractor_tools": 2})
    suite = stage.load_heldout(config, views)
    # The same tasks, each in a view of its own tools plus two others; an irrelevant one gets three to decline.
    assert [it.task for it in suite.items] == [it.task for it in full.items]
    for item in suite.items:
        domain_tools = set(full.env_classes[item.domain]._tool_methods())
        offered = set(suite.env_classes[item.env_key]._tool_methods())
        needed = {c.name for c in reference_calls(item.task)}
        assert needed <= offered < domain_tools and len(offered) == len(needed) + 2 + (0 if needed else 1)
    assert any(not it.task.solution for it in suite.items)
    # `heldout_limit` sets the held-out count apart from BFCL's `limit`: 6 tasks per domain, and half as many
    # irrelevance tasks again, while BFCL keeps 4.
    more = stage.load_heldout(config, every.model_copy(update={"heldout_limit": 6}))
    assert len(more.items) == len(domains) * (6 + 3) and len(full.items) == len(domains) * (4 + 2)
    assert "heldout_limit" not in every.model_dump()  # earlier runs keep their eval fingerprints


def test_the_held_out_tool_offer_is_left_out_of_dumps_at_its_defaults_and_refused_with_a_task_file() -> None:
    from pydantic import ValidationError

    assert "heldout_offered_tools" not in EvalSection().model_dump()  # old runs keep their eval fingerprints
    dumped = EvalSection(heldout_offered_tools="task").model_dump()
    assert dumped["heldout_offered_tools"] == "task" and "heldout_distractor_tools" not in dumped
    assert EvalSection.model_validate(dumped).heldout_distractor_tools == 2
    assert (
        EvalSection(heldout_offered_tools="task", heldout_distractor_tools=3).model_dump()[
            "heldout_distractor_tools"
        ]
        == 3
    )
    with pytest.raises(ValidationError, match="task file's rows say which tools"):
        EvalSection(heldout_offered_tools="task", tasks="configs/tasks/shop.jsonl")


def test_the_plot_keeps_every_label_inside_its_axes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An undefined metric gets an "n/a" label, not a bar; in the last column the bars' extent alone left it
    outside the axes (drawn beyond the frame)."""
    import matplotlib.figure

    from pipelines.eval.results import plot_results

    saved: list[Any] = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    heldout = {"outcome": 0.0, "format_rate": 0.4, "irrelevance_accuracy": None, "n": 20}
    results = EvalResults(
        model="m",
        limit=20,
        targets={"base": {"heldout": {**heldout, "format_rate": 0.0}}, "sft/tool": {"heldout": heldout}},
        skipped={},
        seconds={},
    )
    plot_results(results, tmp_path / "results.png")
    (ax,) = saved[0].axes
    low, high = ax.get_xlim()
    labels = [t for t in ax.texts if t.get_text() == "n/a"]
    assert len(labels) == 2 and all(low < t.get_position()[0] < high for t in labels)


class SampledStub:
    """Held-out replies by sample: `rl/tool` solves every task in every sample, other adapters only in the
    sample of seed 100; greedy it cannot (a sampled eval must not fall back to greedy)."""

    def __init__(self, tokenizer: Any, tasks: dict[str, Any]) -> None:
        self.tokenizer, self.tasks = tokenizer, tasks
        self.draws: list[tuple[float, int]] = []

    def __call__(self, prompts: list[list[int]], adapters: list[str | None], max_new: int) -> list[list[int]]:
        raise AssertionError("a sampled held-out eval asked for greedy replies")

    def sampling(self, temperature: float, seed: int) -> Any:
        self.draws.append((temperature, seed))

        def sample(prompts: list[list[int]], adapters: list[str | None], max_new: int) -> list[list[int]]:
            replies = []
            for ids, adapter in zip(prompts, adapters, strict=True):
                prompt = self.tokenizer.decode(ids)
                request = next(r for r in self.tasks if r in prompt)
                solves = seed == 100 or Path(adapter or "").parts[-2:] == ("rl", "tool")
                results = prompt[prompt.index(request) :].count("<tool_response>")
                reply = _oracle_turn(self.tasks[request], results) if solves else "I think it is 42."
                replies.append(reply + self.tokenizer.eos_token)
            return [self.tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies]

        return sample


def test_sampled_heldout_scores_tasks_by_their_samples_and_pairs_rl_with_its_sft_adapter(
    tmp_path: Path, tiny_model_dir: Path, tokenizer: Any
) -> None:
    run_dir = tmp_path / "run"
    write_shards(run_dir / "data")
    make_adapter(tiny_model_dir, run_dir / "sft" / "tool", seed=1)
    make_adapter(tiny_model_dir, run_dir / "rl" / "tool", seed=3)
    section = EvalSection(
        bfcl_categories=[],
        heldout_domains=["calculator"],
        heldout_limit=4,
        heldout_irrelevance_fraction=0.0,
        targets=["sft/tool", "rl/tool"],
        heldout_sampling={"samples": 2, "temperature": 0.7, "seed": 100},
    )
    config = _config(run_dir, tiny_model_dir, section)
    heldout = stage.load_heldout(config, section)
    stub = SampledStub(tokenizer, {it.task.request: it.task for it in heldout.items})
    results = stage.run(config, stub)

    assert stub.draws == [(0.7, 100), (0.7, 101)] * 2  # two samples per target
    sft, rl = results.targets["sft/tool"]["heldout"], results.targets["rl/tool"]["heldout"]
    assert (sft["n"], sft["samples"], sft["outcome"], rl["outcome"]) == (4, 2, 0.5, 1.0)
    assert sft["ci95"]["outcome"][2] == 4  # over tasks, not 8 episodes
    assert "outcome_per_task" not in sft  # an input of the paired change, not a metric
    assert results.changes == {
        "rl/tool": {"from": "sft/tool", "metric": "heldout/outcome", "change": 0.5, "ci95": [0.5, 0.5, 4]}
    }
    rows = [r for r in _predictions(run_dir) if r["target"] == "sft/tool"]
    assert [(r["sample"], r["ok"]) for r in rows] == [(0, True)] * 4 + [(1, False)] * 4
    table = (run_dir / "eval" / "results.md").read_text()
    assert (
        "sampled, 2 a task" in table
        and "rl/tool − sft/tool: +0.500 [+0.500, +0.500] n=4 (excludes 0)" in table
    )
