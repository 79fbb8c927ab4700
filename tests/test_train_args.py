"""`train.extra` passes any other trainer-config field through to TRL's SFTConfig / GRPOConfig, checked when the
config loads (unknown field or one midtrain sets: bad input naming it, with file:line); `tracking.report_to` takes
any integration transformers knows, and one that is not installed is bad input before training."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import BadInput
from pipelines.rl.train import grpo_args, grpo_keywords
from pipelines.run_config import RunConfig, TrackingSection, TrainSection, load_run_config
from pipelines.sft.stage import trainer_args, trainer_keywords
from pipelines.tracking import report_to
from pipelines.train_args import SHARED_KEYS, owner_of, training_kwargs
from tests.helpers import rl_config


def _sft_config(tmp_path: Path, model: Path, **train: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "extra",
            "output_dir": str(tmp_path / "runs"),
            "model": {"name_or_path": str(model)},
            "data": {"recipe": "data_recipes/agentic-v1.yaml"},
            "sft": {"clusters": ["tool"], "train": train},
            "tracking": {"report_to": ["none"]},
        }
    )


def _yaml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text("name: extra\ndata:\n  recipe: data_recipes/agentic-v1.yaml\n" + body)
    return path


def test_extra_reaches_sft_config(tmp_path: Path, tiny_model_dir: Path) -> None:
    extra = {"torch_compile": True, "dataloader_num_workers": 2, "neftune_noise_alpha": 5.0}
    args = trainer_args(_sft_config(tmp_path, tiny_model_dir, extra=extra), "tool", tmp_path, has_eval=False)
    assert (args.torch_compile, args.dataloader_num_workers, args.neftune_noise_alpha) == (True, 2, 5.0)
    assert args.learning_rate == TrainSection().learning_rate  # midtrain's own keys still set


def test_extra_reaches_grpo_config(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = rl_config(tmp_path, tiny_model_dir)
    config.rl.train.extra = {"epsilon_high": 0.28, "dataloader_num_workers": 3}
    args = grpo_args(config, "tool", tmp_path / "out", [1.0], {})
    assert (args.epsilon_high, args.dataloader_num_workers) == (0.28, 3)


def test_every_key_midtrain_sets_is_refused_in_extra(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The lists config validation checks against hold every keyword the stages pass, so a clash is found when
    the config loads, not minutes later when the trainer config is built."""
    assert set(training_kwargs(TrainSection(), tmp_path, "r", TrackingSection(report_to=["none"]))) == set(
        SHARED_KEYS
    )
    sft = trainer_keywords(_sft_config(tmp_path, tiny_model_dir), "tool", tmp_path, has_eval=True)
    assert [k for k in sft if owner_of(k, "sft") is None] == []
    server = {"backend": "vllm", "vllm_mode": "server", "server_host": "10.0.0.2"}
    rl = grpo_keywords(rl_config(tmp_path, tiny_model_dir, generation=server), "tool", tmp_path, [1.0], {})
    assert [k for k in rl if owner_of(k, "rl") is None] == []
    assert owner_of("vllm_server_port", "rl") == "rl.generation" and owner_of("torch_compile", "sft") is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "sft:\n  train:\n    extra:\n      torch_compiel: true\n",
            "torch_compiel: not a field of SFTConfig (did you mean torch_compile",
        ),
        (
            "sft:\n  train:\n    extra:\n      learning_rate: 0.1\n",
            "learning_rate: midtrain sets it from train.learning_rate; set that instead",
        ),
        (
            "rl:\n  train:\n    extra:\n      vllm_mode: server\n",
            "vllm_mode: midtrain sets it from rl.generation",
        ),
        ("sft:\n  train:\n    extra:\n      report_to: [trackio]\n", "from tracking.report_to"),
        ("tracking:\n  report_to: [trackoi]\n", "unknown integration(s) ['trackoi']"),
        ("tracking:\n  report_to: [all]\n", "`all` is refused"),
        ("tracking:\n  report_to: [wandb, none]\n", "`none` with other integrations"),
    ],
)
def test_bad_trainer_settings_are_refused_when_the_config_loads(
    tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(BadInput) as caught:
        load_run_config(_yaml(tmp_path, body))
    assert message in str(caught.value) and "run.yaml:" in str(caught.value)


def test_extra_value_the_config_class_refuses_is_bad_input(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = _sft_config(tmp_path, tiny_model_dir, extra={"load_best_model_at_end": True})
    with pytest.raises(BadInput, match="sft.train.extra: SFTConfig refuses it: .*load_best_model_at_end"):
        trainer_args(config, "tool", tmp_path, has_eval=False)


def test_report_to_takes_any_integration_transformers_knows(tmp_path: Path) -> None:
    config = load_run_config(_yaml(tmp_path, "tracking:\n  report_to: [trackio, tensorboard]\n"))
    assert config.tracking.report_to == ["trackio", "tensorboard"]
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    missing = [n for n in ("trackio", "tensorboard") if n not in get_available_reporting_integrations()]
    if missing:  # this machine's lock has neither: the stage says so before training, not the Trainer later
        with pytest.raises(BadInput, match=f"{missing[0]}.*not installed"):
            report_to(config.tracking)
    else:
        assert report_to(config.tracking) == ["trackio", "tensorboard"]
    assert report_to(TrackingSection(report_to=["wandb"], wandb_mode="disabled")) == ["none"]
    assert report_to(TrackingSection(report_to=["wandb"])) == ["wandb"]
