"""`rl.generation`: the YAML section maps onto TRL's GRPOConfig vLLM options, settings of the other backend or
mode are refused with the key named, and a vLLM backend without vLLM installed fails before any training.
GRPO with colocated vLLM rollouts on the CPU build runs in `make test-vllm` (tests/test_vllm.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.errors import BadInput
from pipelines.rl.train import grpo_args, run
from tests.helpers import rl_config as make_config


def test_default_is_hf_generate(tmp_path: Path, tiny_model_dir: Path) -> None:
    args = grpo_args(make_config(tmp_path, tiny_model_dir), "tool", tmp_path / "out", [1.0], {})
    assert args.use_vllm is False


def test_colocate_and_server_map_onto_grpo_config(tmp_path: Path, tiny_model_dir: Path) -> None:
    colocate = {"backend": "vllm", "gpu_memory_utilization": 0.5, "max_model_length": 4096,
                "tensor_parallel_size": 2, "enable_sleep_mode": True}  # fmt: skip
    args = grpo_args(make_config(tmp_path, tiny_model_dir, generation=colocate), "tool", tmp_path, [1.0], {})
    assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization) == (True, "colocate", 0.5)
    assert (args.vllm_max_model_length, args.vllm_tensor_parallel_size, args.vllm_enable_sleep_mode) == (
        4096, 2, True)  # fmt: skip
    server = {"backend": "vllm", "vllm_mode": "server", "server_host": "10.0.0.2", "server_port": 8011,
              "server_timeout": 30}  # fmt: skip
    args = grpo_args(make_config(tmp_path, tiny_model_dir, generation=server), "tool", tmp_path, [1.0], {})
    assert (args.vllm_mode, args.vllm_server_host, args.vllm_server_port, args.vllm_server_timeout) == (
        "server", "10.0.0.2", 8011, 30)  # fmt: skip
    assert args.vllm_server_base_url is None


@pytest.mark.integration
@pytest.mark.parametrize(
    ("generation", "message"),
    [
        ({"gpu_memory_utilization": 0.5}, "['gpu_memory_utilization'] apply to backend: vllm"),
        ({"vllm_mode": "server"}, "['vllm_mode'] apply to backend: vllm"),
        ({"backend": "vllm", "server_port": 9000}, "['server_port'] do not apply to vllm_mode: colocate"),
        ({"backend": "vllm", "vllm_mode": "server", "enable_sleep_mode": True},
         "['enable_sleep_mode'] do not apply to vllm_mode: server"),
        ({"backend": "sglang"}, "rl.generation.backend"),
        ({"backend": "vllm", "vllm_mod": "server"}, "vllm_mode"),  # a typo gets the suggestion
    ],
)  # fmt: skip
def test_misplaced_settings_are_bad_input_with_the_key(
    tmp_path: Path, generation: dict, message: str
) -> None:
    config = {
        "name": "x",
        "data": {"recipe": "data_recipes/agentic-v1.yaml"},
        "rl": {"generation": generation},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "config", "show", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_fails_before_training(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = make_config(tmp_path, tiny_model_dir, generation={"backend": "vllm"})
    with pytest.raises(BadInput, match="rl.generation.backend: vllm needs the vllm package"):
        run(config)
    assert not (config.run_dir / "rl").exists()
