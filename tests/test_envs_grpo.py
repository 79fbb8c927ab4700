"""Every fixed-method environment runs under TRL's `GRPOTrainer(environment_factory=…)` for one CPU step.

The API pool is left out on purpose: its tools come with each task, and TRL only exposes a class's fixed
methods as tools (RL trains on the fixed-method domains).
"""

from __future__ import annotations

import pytest

from pipelines.models import project_chat_template
from pipelines.tasks.domains import DOMAINS
from pipelines.tasks.generate import sample_prompt_rows

FIXED = sorted(d for d, (cls, _) in DOMAINS.items() if cls._tool_methods())


@pytest.fixture
def score_completions_only(monkeypatch):
    """Off Triton devices TRL's fused log-prob scores *every* position (to keep tile shapes fixed for Neuron):
    ~1k prompt tokens × a 49k vocabulary per rollout, which is nearly all of this test's CPU time. Scoring only
    the completion tokens, as TRL does on GPUs, gives the same loss. `raising=False`: if TRL renames the
    helper the test still runs, only slower."""
    import trl.trainer.utils

    monkeypatch.setattr(trl.trainer.utils, "_use_triton", lambda device: True, raising=False)


def test_fixed_method_domains_exclude_the_api_pool():
    assert "api" in DOMAINS and "api" not in FIXED
    assert len(FIXED) >= 1


@pytest.mark.parametrize("domain", FIXED)
def test_one_grpo_step_per_domain(domain, tiny_model_dir, tmp_path, score_completions_only, monkeypatch):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    rows = sample_prompt_rows([domain], 2, seed=0, difficulty=1, fixed_tools_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = project_chat_template()
    seen_tasks: list[str] = []
    env_class = DOMAINS[domain][0]

    class Recording(env_class):  # type: ignore[misc, valid-type]
        def reset(self, **row):
            seen_tasks.append(row["task"])
            return super().reset(**row)

    def calls_made(completions, environments, **kwargs):
        return [float(len(env._calls)) for env in environments]

    args = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        max_tool_calling_iterations=1,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=str(tiny_model_dir),
        processing_class=tokenizer,
        args=args,
        train_dataset=Dataset.from_list(rows),
        reward_funcs=[calls_made],
        environment_factory={domain: Recording},
    )
    tool_names = {getattr(t, "__name__", "") for t in trainer.tools}
    assert tool_names == set(env_class._tool_methods())  # TRL sees exactly the env's public methods
    output = trainer.train()
    assert output.global_step == 1
    assert len(seen_tasks) == 2 and set(seen_tasks) <= {r["task"] for r in rows}
    logged = trainer.state.log_history[0]
    assert f"rewards/{Recording.__name__}/mean" in logged  # the env's own get_reward became a reward
