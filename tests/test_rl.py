"""RL stage: task sampling, the live evaluation loop, and 2 GRPO steps over every fixed-method domain.

Training runs on the 2-layer tiny model (`tiny_model_dir`), full precision (NF4 blocks need wider layers).
The evaluation loop is also driven by a scripted policy that answers correctly, so its bookkeeping (calls run
in the env, results fed back, scores) is checked against known right answers, not just "it ran".
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from pipelines import episodes
from pipelines.artifacts import UnitState
from pipelines.codecs import hermes
from pipelines.envs.base import ToolEnv, guarded
from pipelines.errors import BadInput
from pipelines.run_config import HeldoutSampling, RunConfig
from pipelines.tasks import sampling
from pipelines.tasks.domains import DOMAINS
from pipelines.tasks.records import Step, Task
from pipelines.thought import load_thought_schema
from tests.helpers import CrashAt, ScriptedPolicy, rl_config

SCHEMA = load_thought_schema("think-plan-reflect")


def save_sft_adapter(config: RunConfig, model_dir: Path, cluster: str) -> Path:
    """Stand-in for the SFT stage's output: a LoRA adapter + tokenizer in runs/<name>/sft/<cluster>/."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = config.run_dir / "sft" / cluster
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


# -- tasks -----------------------------------------------------------------------------------------------------
def test_domains_are_the_fixed_method_ones() -> None:
    fixed = sampling.fixed_method_domains(["all"])
    assert "api" not in fixed and {"calculator", "filesystem"} <= set(fixed)
    assert all(env._tool_methods() for env, _ in fixed.values())
    with pytest.raises(BadInput, match="no fixed tool methods"):
        sampling.fixed_method_domains(["api"])
    with pytest.raises(BadInput, match="unknown domain 'calc'"):
        sampling.fixed_method_domains(["calc"])


def test_training_tasks_are_seeded_bounded_and_disjoint_from_heldout() -> None:
    domains = sampling.fixed_method_domains(["all"])
    held = sampling.heldout_tasks(domains, 2, 1_000_003, 3, decontaminated_n=300)
    assert sorted({i.domain for i in held.items}) == sorted(domains) and len(held.items) == 2 * len(domains)
    assert held.decontaminated and all(i.task.difficulty <= 3 for i in held.items)
    held_ids = {i.task.task_id for i in held.items}
    first = sampling.sample_tasks(domains, 24, 7, 2, irrelevance_fraction=0.5, exclude_ids=held_ids)
    again = sampling.sample_tasks(domains, 24, 7, 2, irrelevance_fraction=0.5, exclude_ids=held_ids)
    assert [i.task.task_id for i in first] == [i.task.task_id for i in again]
    assert not held_ids & {i.task.task_id for i in first}
    irrelevant = [i for i in first if not i.task.solution]
    assert irrelevant and all(i.task.task_id.startswith(f"{i.domain}-irrelevant-") for i in irrelevant)
    assert all(1 <= i.task.difficulty <= 2 for i in first if i.task.solution)


def test_heldout_tasks_beyond_the_decontaminated_pool_are_counted_and_the_fix_named() -> None:
    calculator = sampling.fixed_method_domains(["calculator"])
    # The first 300 tasks of the shared sampler hold 4 single-call calculator tasks; the 20th is task 1,009.
    held = sampling.heldout_tasks(calculator, 20, 1_000_003, 1, decontaminated_n=300)
    assert not held.decontaminated and (held.outside, held.needed_n) == (16, 1010)
    warning = held.contamination_warning()
    assert warning is not None and warning.startswith("16 of 20 held-out tasks lie outside the first 300")
    assert warning.endswith(
        f"set the recipe's decontamination.heldout_n to at least {held.needed_n} and rebuild the data"
    )
    covered = sampling.heldout_tasks(calculator, 20, 1_000_003, 1, decontaminated_n=held.needed_n)
    assert covered.decontaminated and covered.outside == 0 and covered.contamination_warning() is None
    assert [i.task.task_id for i in covered.items] == [i.task.task_id for i in held.items]
    other_seed = sampling.heldout_tasks(calculator, 2, 5, 1, decontaminated_n=0)
    assert (
        "seed 5 is not the decontamination.heldout_seed the mix was built with"
        in other_seed.contamination_warning()
    )


def test_the_decontaminated_pool_is_the_built_mixs_not_the_recipe_edited_since(tmp_path: Path) -> None:
    """A mix built when the recipe checked 300 held-out tasks stays checked against 300 after the recipe says 1,600:
    RL and eval read the manifest's recipe as built (a warning that believed the recipe hid 27 unchecked tasks)."""
    from pipelines.data.manifest import recipe_record
    from pipelines.rl.train import heldout_spec
    from pipelines.run_config import load_run_config

    config = load_run_config("configs/smollm2-135m-demo.yaml", [f"output_dir={tmp_path}"])
    assert heldout_spec(config) == (1_000_003, 1600)  # no mix built yet: the recipe's word
    data_dir = config.run_dir / "data"
    data_dir.mkdir(parents=True)
    built = config.data.recipe.model_copy(
        update={"decontamination": config.data.recipe.decontamination.model_copy(update={"heldout_n": 300})}
    )
    manifest = {"format": "x", **recipe_record(built)}
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    assert heldout_spec(config) == (1_000_003, 300)
    manifest["recipe"]["decontamination"]["heldout_seed"] = 5  # built against another seed's tasks
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    assert heldout_spec(config) == (1_000_003, 0)
    without_heldout = built.decontamination.model_copy(update={"sets": ["bfcl"]})
    manifest["recipe"]["decontamination"] = without_heldout.model_dump(mode="json")
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    assert heldout_spec(config) == (1_000_003, 0)
    manifest["recipe"]["decontamination"]["heldout_n"] = "many"
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInput, match=r"manifest.json: recipe.decontamination.*heldout_n"):
        heldout_spec(config)
    (data_dir / "manifest.json").write_text(json.dumps({"recipe": {"name": "hand-made"}}))
    assert heldout_spec(config) == (1_000_003, 1600)  # a mix folder that records no decontamination


def test_task_seed_must_differ_from_sft_and_heldout_seeds(tmp_path: Path) -> None:
    from pipelines.rl.train import check_seeds, heldout_spec
    from pipelines.run_config import load_run_config

    config = load_run_config("configs/smollm2-135m-demo.yaml", ["rl.task_seed=0"])
    with pytest.raises(BadInput, match="rl.task_seed=0 is also the seed of .*generated-tools"):
        check_seeds(config, heldout_spec(config)[0])
    config = load_run_config("configs/smollm2-135m-demo.yaml", ["rl.task_seed=1000003"])
    with pytest.raises(BadInput, match="equals the held-out seed"):
        check_seeds(config, heldout_spec(config)[0])


# -- the live evaluation loop ----------------------------------------------------------------------------------
def test_assistant_message_is_trls_own_parse(tokenizer) -> None:
    """The loop reads replies with TRL's `parse_response`, as GRPO does: valid calls move to `tool_calls`; a reply
    with one unparsable call stays raw text as a whole (TRL's fallback), and the rewards count both blocks as
    never run."""
    from pipelines.chat import prompt_ids
    from pipelines.codecs import codec_for
    from pipelines.rl.rewards import parse_rollout

    prompt = prompt_ids(tokenizer, [{"role": "user", "content": "go"}], None)
    good = '<think><plan>go</plan></think>\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'

    def reply(text: str) -> dict[str, Any]:
        ids = tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
        return episodes.assistant_message(tokenizer, ids, prompt, None)

    message = reply(good)
    assert message["tool_calls"] == [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]
    assert message["thinking"] == "<plan>go</plan>"  # the field name `transformers serve` returns
    mixed = reply(good + '\n<tool_call>{"name": "g", "arguments": {oops}</tool_call>')
    assert "tool_calls" not in mixed and mixed["content"].count("<tool_call>") == 2
    rollout = parse_rollout([mixed], codec_for(tokenizer))
    assert (rollout.calls, rollout.malformed) == ([], 2)


def test_live_loop_runs_calls_in_the_env_and_scores_a_correct_policy_full(tokenizer) -> None:
    rng = random.Random(3)
    items = [
        sampling.DomainTask("calculator", DOMAINS["calculator"][1](rng, 1)),
        sampling.DomainTask(
            "calculator", DOMAINS["calculator"][1](rng, 2, True)
        ),  # two parallel calls in one turn
        sampling.DomainTask("filesystem", DOMAINS["filesystem"][1](rng, 2)),
    ]
    classes = {name: DOMAINS[name][0] for name in ("calculator", "filesystem")}
    result = episodes.evaluate_policy(
        ScriptedPolicy(tokenizer, items), tokenizer, items, classes, SCHEMA, 4, 1024
    )
    assert (result["outcome"], result["format_rate"], result["call_accuracy"]) == (1.0, 1.0, 1.0)
    assert result["rewards"]["execution"] == 1.0 and result["failures"] == {}
    episode = result["episodes"][1]["completion"]
    assert len(episode[0]["tool_calls"]) == 2 and [m["role"] for m in episode[1:3]] == ["tool", "tool"]
    assert result["mean_tool_calls"] == pytest.approx(sum(i.task.difficulty for i in items) / 3)


def test_live_loop_stops_a_runaway_policy_at_the_iteration_limit(tokenizer) -> None:
    task = DOMAINS["calculator"][1](random.Random(5), 1)
    items = [sampling.DomainTask("calculator", task)]

    class Looping(ScriptedPolicy):
        def _reply(self, prompt: str) -> str:
            step = task.solution[0][0]
            return f"<tool_call>{json.dumps({'name': step.tool, 'arguments': step.arguments})}</tool_call><|im_end|>"

    classes = {"calculator": DOMAINS["calculator"][0]}
    result = episodes.evaluate_policy(Looping(tokenizer, items), tokenizer, items, classes, SCHEMA, 2, 4096)
    completion = result["episodes"][0]["completion"]
    assert [m["role"] for m in completion] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert result["outcome"] == 0.0 and result["failures"]["runaway"] == 1
    # A token budget smaller than one reply: the rollout is cut off, counted as truncated.
    result = episodes.evaluate_policy(
        ScriptedPolicy(tokenizer, items), tokenizer, items, classes, SCHEMA, 2, 8
    )
    assert result["failures"] == {"malformed_call": 1, "truncated": 1}
    assert result["episodes"][0]["completion"][0]["content"].startswith("<tool_call>")


# -- the stage on the tiny model -------------------------------------------------------------------------------
def test_two_grpo_steps_over_all_domains_write_servable_outputs(tmp_path: Path, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipelines.rl.train import run
    from pipelines.sft.outputs import check_vllm_compatible

    domains = sorted(sampling.fixed_method_domains(["all"]))
    config = rl_config(tmp_path, tiny_model_dir, n_tasks=len(domains))
    save_sft_adapter(config, tiny_model_dir, "tool")
    summary = run(config).clusters["tool"]

    out = config.run_dir / "rl" / "tool"
    assert summary.steps == 2 and summary.start == "sft/tool"
    assert summary.tasks["by_domain"] == dict.fromkeys(domains, 1)
    # The env classes' own get_reward columns are logged but weigh nothing (outcome already counts them).
    assert {k: v for k, v in summary.reward_weights.items() if k.endswith("Env")} == {
        DOMAINS[d][0].__name__: 0.0 for d in domains
    }
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {k for row in rows for k in row}
    for name in ("format", "tool_call", "execution", "outcome", "efficiency"):
        assert f"rewards/{name}/mean" in logged
    assert "failures/malformed_call" in logged
    for name in ("rewards.png", "loss.png", "training_summary.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert check_vllm_compatible(out) == []
    comparison = json.loads((out / "eval_before_after.json").read_text())
    assert comparison["before"]["n_tasks"] == comparison["after"]["n_tasks"] == len(domains)
    assert comparison["heldout"]["decontaminated"] is True
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    assert any("lora_A" in name for name, _ in loaded.named_parameters())


def test_missing_sft_adapter_is_bad_input_before_training(tmp_path: Path, tiny_model_dir: Path) -> None:
    from pipelines.rl.train import run

    with pytest.raises(BadInput, match=r"no SFT adapter for cluster 'tool'.*midtrain sft"):
        run(rl_config(tmp_path, tiny_model_dir))
    with pytest.raises(BadInput, match="not in rl.clusters"):
        run(rl_config(tmp_path, tiny_model_dir), clusters=["plan"])


class BrokenEnv(ToolEnv):
    """Everything fails: reset, the only tool, and the reward."""

    domain = "broken"

    def reset(self, **row: Any) -> str | None:
        raise OSError("disk on fire")

    def poke(self) -> str:
        """Poke the environment."""
        raise RuntimeError("ouch")

    def get_reward(self) -> float:
        raise KeyError("no state")


def broken_task(rng: random.Random, difficulty: int | None = None, parallel: bool = False) -> Task:
    n = rng.randint(0, 10**6)
    return Task("broken", f"broken-{n}", f"Poke it {n} times.", {}, [[Step("poke", {})]], answer="poked")


def test_guarded_env_never_raises_and_scores_zero() -> None:
    from pipelines.rl import rewards

    env = guarded(BrokenEnv)()
    assert guarded(BrokenEnv) is guarded(BrokenEnv) and type(env).__name__ == "BrokenEnv"
    task = broken_task(random.Random(0))
    assert env.reset(task=task.to_json()) is None and "disk on fire" in env._reset_error
    assert env.get_reward() == 0.0
    failures = rewards.FailureCounts()
    done = [{"role": "assistant", "content": "poked"}]
    assert rewards.outcome(
        completions=[done], task=[task.to_json()], environments=[env], failures=failures, codec=hermes()
    ) == [0.0]
    assert failures.as_dict() == {"env_error": 1}


def test_grpo_goes_on_when_an_environment_raises(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    from pipelines.rl.train import run

    monkeypatch.setitem(DOMAINS, "broken", (BrokenEnv, broken_task))
    config = rl_config(
        tmp_path, tiny_model_dir, domains=["broken"], from_base=True, n_tasks=2, eval_tasks_per_domain=0,
        train={"max_steps": 1, "per_device_train_batch_size": 2, "gradient_checkpointing": False},
    )  # fmt: skip
    summary = run(config).clusters["tool"]
    assert summary.steps == 1 and summary.start == "base"
    assert summary.failures["env_error"] == 2  # both rollouts: reset raised, scored 0
    assert summary.final_rewards["outcome"] == 0.0
    assert not (config.run_dir / "rl" / "tool" / "eval_before_after.json").exists()


# -- checkpoints and resume ------------------------------------------------------------------------------------
class StepsRun(TrainerCallback):
    """The global step a session starts at, and each optimizer step it runs."""

    def __init__(self) -> None:
        self.start: int | None = None
        self.ran: list[int] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self.ran.append(state.global_step)


def _logged(out: Path, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if key in row]
    assert len(steps) == len(set(steps)), f"{key} logged twice for a step: {steps}"
    return {row["step"]: row[key] for row in rows if key in row}


def test_killed_grpo_run_resumes_from_its_last_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    from pipelines.rl.train import BEFORE_FILE, FAILURES_FILE, run
    from pipelines.sft.outputs import check_vllm_compatible

    train = {"max_steps": 3, "save_steps": 1, "save_total_limit": 1, "per_device_train_batch_size": 2,
             "learning_rate": 1e-3, "gradient_checkpointing": False}  # fmt: skip
    config = rl_config(
        tmp_path, tiny_model_dir, domains=["calculator"], n_tasks=3, eval_tasks_per_domain=1, train=train
    )
    save_sft_adapter(config, tiny_model_dir, "tool")
    with pytest.raises(KeyboardInterrupt):
        run(config, callbacks=[CrashAt(2)])
    out = config.run_dir / "rl" / "tool"
    # save_steps=1 wrote checkpoint-1 and -2; save_total_limit=1 rotated the first out.
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert (out / "checkpoint-2" / FAILURES_FILE).is_file() and not (out / "training_summary.json").exists()
    failures_at_2 = json.loads((out / "checkpoint-2" / FAILURES_FILE).read_text())
    fingerprint = UnitState.read(out).config_fingerprint
    # Mark the first session's evaluation of the starting policy: the resumed run must report it, not a new one.
    stored = json.loads((out / BEFORE_FILE).read_text())
    stored["before"]["session"] = "first"
    (out / BEFORE_FILE).write_text(json.dumps(stored))

    steps = StepsRun()
    summary = run(config, callbacks=[steps]).clusters["tool"]
    assert (steps.start, steps.ran) == (2, [3])  # resumed at step 2 and ran only step 3
    assert summary.steps == 3 and summary.resumed_from_step == 2
    assert summary.config_fingerprint == fingerprint
    assert all(summary.failures.get(kind, 0) >= n for kind, n in failures_at_2.items())
    assert sum(summary.failures.values()) > sum(failures_at_2.values())  # step 3's rollouts added theirs
    for key in ("loss", "reward", "rewards/outcome/mean"):
        assert sorted(_logged(out, key)) == [1, 2, 3], key  # one clean history: steps 1-2 kept, 3 added
    assert json.loads((out / "eval_before_after.json").read_text())["before"]["session"] == "first"
    assert not list(out.glob("checkpoint-*")) and not (out / BEFORE_FILE).exists()
    assert check_vllm_compatible(out) == []
    # Finished with this config: the next run keeps it.
    assert run(config).clusters["tool"] == summary


def _checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    from pipelines.rl.train import FAILURES_FILE

    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / FAILURES_FILE).write_text(json.dumps({"malformed_call": step}))
    return path


def test_resume_takes_the_last_complete_checkpoint_and_a_changed_config_starts_over(
    tmp_path: Path, caplog
) -> None:
    from pipelines.rl.train import prepare_output_dir, restored_failures

    out = tmp_path / "rl" / "tool"
    assert prepare_output_dir(out, "tool", "f1", restart=False).action == "start"  # fresh
    assert UnitState.read(out).config_fingerprint == "f1"  # the folder records the fingerprint
    _checkpoint(out, 2)
    _checkpoint(out, 10)
    _checkpoint(out, 11, complete=False)  # killed mid-save: its failure totals never got written
    plan = prepare_output_dir(out, "tool", "f1", restart=False)
    assert (plan.action, plan.checkpoint) == ("resume", out / "checkpoint-10")
    assert restored_failures(plan.checkpoint).as_dict() == {"malformed_call": 10}
    assert restored_failures(None).as_dict() == {}

    with caplog.at_level("WARNING", logger="midtrain"):
        assert prepare_output_dir(out, "tool", "f2-changed", restart=False).action == "start"
    assert "rl config or its inputs changed" in caplog.text and "starting it over" in caplog.text
    assert not list(out.glob("checkpoint-*"))
    assert UnitState.read(out).config_fingerprint == "f2-changed"
    _checkpoint(out, 3)
    assert prepare_output_dir(out, "tool", "f2-changed", restart=True).action == "start"  # --restart
    assert not (out / "checkpoint-3").exists()


def test_a_unit_folder_midtrain_did_not_write_is_never_cleared(tmp_path: Path) -> None:
    from pipelines.rl.train import prepare_output_dir

    out = tmp_path / "rl" / "tool"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="was not written by midtrain"):
        prepare_output_dir(out, "tool", "f1", restart=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_rl_fingerprint_follows_what_shapes_the_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    from pipelines.rl.train import rl_fingerprint

    config = rl_config(tmp_path, tiny_model_dir)
    adapter = save_sft_adapter(config, tiny_model_dir, "tool")
    base = rl_fingerprint(config, "tool")

    def changed(path: str, value: Any) -> str:
        edited = config.model_copy(deep=True)
        *parents, key = path.split(".")
        target = edited
        for name in parents:
            target = getattr(target, name)
        setattr(target, key, value)
        return rl_fingerprint(edited, "tool")

    # Recording settings and the cluster list leave checkpoints valid ...
    assert changed("rl.train.save_steps", 7) == changed("rl.train.logging_steps", 5) == base
    assert changed("rl.clusters", ["tool", "plan"]) == base
    # ... what the run learns from does not.
    for path, value in (("rl.train.learning_rate", 5e-4), ("rl.task_seed", 11), ("rl.eval_seed", 5),
                        ("rl.train.max_steps", 9), ("model.thought_schema", "reflection70b")):  # fmt: skip
        assert changed(path, value) != base, path
    # The before/after evaluation's decoding is left out of the fingerprint at its default (greedy), so runs
    # fingerprinted before it existed stay valid; sampled, the stored evaluation no longer answers the config.
    assert "eval_sampling" not in config.rl.model_dump()
    assert changed("rl.eval_sampling", HeldoutSampling(samples=2, temperature=0.8)) != base
    # A retrained SFT adapter (other weights) invalidates the RL checkpoints taken from the old one.
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    assert rl_fingerprint(config, "tool") != base
    assert changed("rl.from_base", True) != rl_fingerprint(config, "tool")


# -- tool views (`rl.offered_tools: task`) ---------------------------------------------------------------------
def test_a_tool_view_lists_only_the_offered_tools_and_refuses_the_others() -> None:
    from pipelines.rl.tool_views import tool_view

    env_class = DOMAINS["calculator"][0]
    view = tool_view(env_class, frozenset({"convert_units", "percent_change"}))
    assert view is tool_view(env_class, frozenset({"percent_change", "convert_units"}))  # one class per view
    assert view._tool_methods() == ["convert_units", "percent_change"]
    assert [s["function"]["name"] for s in view._tool_schemas()] == ["convert_units", "percent_change"]
    env = view()
    env.reset(task=DOMAINS["calculator"][1](random.Random(0), 1).to_json())
    observation, is_error = env._call_tool("evaluate_expression", {"expression": "1+1"})
    assert is_error and "unknown tool" in observation
    assert env.evaluate_expression("1+1").strip() == "2"  # hidden from the model, not from the env itself
    with pytest.raises(ValueError, match="no tool"):
        tool_view(env_class, frozenset({"fly"}))


def test_offered_tools_are_the_task_tools_plus_distractors_shared_by_tasks_needing_the_same() -> None:
    from pipelines.rl.tool_views import offered_tools

    env_class = DOMAINS["calculator"][0]
    rng = random.Random(7)
    tasks = [DOMAINS["calculator"][1](rng, 1) for _ in range(30)]
    for task in tasks:
        needed = {step.tool for turn in task.solution for step in turn}
        offered = offered_tools(env_class, task, 2)
        assert needed <= offered and len(offered) == len(needed) + 2
        assert offered_tools(env_class, task, 0) == needed
    by_needed: dict[frozenset[str], set[frozenset[str]]] = {}
    for task in tasks:
        needed = frozenset(step.tool for turn in task.solution for step in turn)
        by_needed.setdefault(needed, set()).add(offered_tools(env_class, task, 2))
    assert all(len(views) == 1 for views in by_needed.values())
    no_fit = sampling.irrelevant_task("calculator", DOMAINS["docsearch"][1](rng, 1))
    assert len(offered_tools(env_class, no_fit, 2)) == 3  # something to decline
    assert len(offered_tools(env_class, tasks[0], 99)) == len(env_class._tool_methods())


def test_live_loop_with_tool_views_runs_a_correct_policy_in_each_view(tokenizer) -> None:
    from pipelines.rl.tool_views import with_tool_views

    rng = random.Random(3)
    items = [sampling.DomainTask("calculator", DOMAINS["calculator"][1](rng, 1)) for _ in range(3)]
    items.append(sampling.DomainTask("filesystem", DOMAINS["filesystem"][1](rng, 2)))
    bound, views = with_tool_views(items, {d: DOMAINS[d][0] for d in ("calculator", "filesystem")}, 1)
    assert [b.domain for b in bound] == [i.domain for i in items]
    assert all(b.environment in views and b.environment.startswith(f"{b.domain}:") for b in bound)
    result = episodes.evaluate_policy(
        ScriptedPolicy(tokenizer, bound), tokenizer, bound, views, SCHEMA, 4, 1024
    )
    assert (result["outcome"], result["format_rate"], result["call_accuracy"]) == (1.0, 1.0, 1.0)


def test_grpo_with_tool_views_shows_each_prompt_only_its_view(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch
) -> None:
    import pipelines.rl.train as rl_train

    config = rl_config(
        tmp_path, tiny_model_dir, domains=["calculator", "docsearch"], offered_tools="task", max_difficulty=1,
        distractor_tools=1, n_tasks=2, irrelevance_fraction=0.0,
        train={"max_steps": 1, "per_device_train_batch_size": 2, "gradient_checkpointing": False},
    )  # fmt: skip
    save_sft_adapter(config, tiny_model_dir, "tool")
    trainers = []
    build = rl_train.build_trainer
    monkeypatch.setattr(
        rl_train, "build_trainer", lambda *a, **k: trainers.append(build(*a, **k)) or trainers[-1]
    )
    summary = rl_train.run(config).clusters["tool"]

    assert summary.steps == 1
    shown = {key: sorted(m.__name__ for m in methods) for key, methods in trainers[0]._env_tools.items()}
    assert {key.split(":")[0] for key in shown} == {"calculator", "docsearch"}
    # TRL renders each prompt with its view's tools: the task's own plus one distractor.
    for key, names in shown.items():
        assert names == sorted(key.split(":")[1].split("+")) and len(names) == 2
    comparison = json.loads((config.run_dir / "rl" / "tool" / "eval_before_after.json").read_text())
    assert comparison["before"]["n_tasks"] == 2


def test_sampled_held_out_evaluation_scores_each_task_by_the_mean_of_its_samples(tokenizer) -> None:
    """`rl.eval_sampling`: k seeded passes over the same tasks; a task's outcome is its samples' mean, the
    interval is over tasks (not k x tasks episodes), failures count every episode."""
    rng = random.Random(3)
    items = [sampling.DomainTask("calculator", DOMAINS["calculator"][1](rng, 1)) for _ in range(3)]
    classes = {"calculator": DOMAINS["calculator"][0]}

    class Sampled(ScriptedPolicy):
        """Even seeds play the reference solution; odd seeds answer at once without a call."""

        def __init__(self, tokenizer: Any, items: list[Any]) -> None:
            super().__init__(tokenizer, items)
            self.seeds: list[tuple[float, int]] = []

        def sampling(self, temperature: float, seed: int) -> ScriptedPolicy:
            self.seeds.append((temperature, seed))
            if seed % 2 == 0:
                return self
            guessing = ScriptedPolicy(self.tokenizer, self.items)
            guessing._reply = lambda prompt: "It is 42.<|im_end|>"  # type: ignore[method-assign]
            return guessing

    policy = Sampled(tokenizer, items)
    four = HeldoutSampling(samples=4, temperature=0.8, seed=10)
    result = episodes.evaluate_policy(policy, tokenizer, items, classes, SCHEMA, 4, 1024, sampling=four)
    assert policy.seeds == [(0.8, 10), (0.8, 11), (0.8, 12), (0.8, 13)]
    assert result["outcome"] == 0.5 and result["outcome_per_task"] == [0.5, 0.5, 0.5]
    assert (result["n_tasks"], result["samples"], result["ci95"]["outcome"][2]) == (3, 4, 3)
    assert [e["sample"] for e in result["episodes"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert result["mean_tool_calls"] == 0.5  # over every episode: six solved with one call, six guessed
    assert result["sampling"] == {"samples": 4, "temperature": 0.8, "seed": 10}
    # Greedy is the policy as given, once; a GenerateFn that cannot sample says so.
    assert episodes.policies(policy, HeldoutSampling()) == [policy]
    with pytest.raises(TypeError, match="ScriptedPolicy decodes greedily only"):
        episodes.policies(ScriptedPolicy(tokenizer, items), four)
    assert episodes.task_means([1.0, 0.0, None, 1.0, 1.0, None], 2) == [1.0, 0.5, None]
    with pytest.raises(ValueError, match="not 2 samples"):
        episodes.task_means([1.0, 0.0, 1.0], 2)


def test_an_sft_adapter_vllm_would_refuse_fails_before_rl_on_vllm_starts(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """midtrain's loop on vLLM loads the SFT adapter into vLLM at its first rollout; one vLLM would refuse is
    named before the evaluation and training that come first, and only on that path. Under a multi-process
    launch it is refused (every rank would start an engine of its own)."""
    from pipelines.rl.train import check_vllm_policy, vllm_rollouts

    on_vllm = {"rollouts": {"loop": "midtrain"}, "generation": {"backend": "vllm"}}
    config = rl_config(tmp_path, tiny_model_dir, **on_vllm)
    adapter = save_sft_adapter(config, tiny_model_dir, "tool")
    check_vllm_policy(config, "tool")  # servable: nothing to say
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(BadInput, match=r"adapters vLLM would refuse:\n  sft/tool: .*no adapter weights"):
        check_vllm_policy(config, "tool")
    on_hf = rl_config(tmp_path, tiny_model_dir, rollouts={"loop": "midtrain"})
    check_vllm_policy(on_hf, "tool")  # no vLLM on this path: nothing to check
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(BadInput, match="runs in one process"):
        vllm_rollouts(config, tokenizer=None)
