"""Config system: every shipped YAML validates; bad input fails with file, line, key and a fix."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import apply_overrides
from pipelines.errors import BadInput
from pipelines.recipe import Recipe
from pipelines.run_config import REPO_ROOT, RunConfig, load_any, load_recipe, load_run_config
from pipelines.thought import ThoughtSchema, load_thought_schema

SHIPPED = sorted(
    p
    for d in ("configs", "data_recipes", "pipelines/thought_schemas")
    for p in (REPO_ROOT / d).rglob("*.yaml")
    if "accelerate" not in p.parts
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_yaml_validates(path: Path) -> None:
    if "thought_schemas" in path.parts:
        assert isinstance(load_thought_schema(str(path)), ThoughtSchema)
    elif "envs" in path.parts:  # env blocks (configs/envs/*.yaml): validated, not started
        from pipelines.envs.spec import resolve_env

        assert resolve_env(str(path)).name == path.stem
    else:
        assert isinstance(load_any(path), RunConfig | Recipe)


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_recipe_that_only_overrides_its_base_loads_as_a_recipe(tmp_path: Path) -> None:
    """`base:` without `categories` (they are inherited) is a recipe, not a run config missing `data`."""
    shutil.copy(REPO_ROOT / "data_recipes" / "agentic-v1.yaml", tmp_path / "agentic-v1.yaml")
    path = _write(tmp_path, "base: agentic-v1.yaml\nname: child\ndecontamination: {heldout_n: 3300}\n")
    recipe = load_any(path)
    assert isinstance(recipe, Recipe) and recipe.name == "child"
    assert recipe.decontamination.heldout_n == 3300 and set(recipe.categories) == {"tool", "code", "text"}


RECIPE = """\
name: r
total_tokens: 1000
categories:
  tool: {share: 0.5, sources: [{name: g, type: generated, n: 10}]}
  text: {share: 0.5, sources: [{name: p, type: pydoc_text}]}
"""


def test_unknown_key_names_file_line_and_suggests(tmp_path: Path) -> None:
    path = _write(tmp_path, RECIPE + "near_dedup:\n  treshold: 0.9\n")
    with pytest.raises(BadInput) as err:
        load_recipe(path)
    msg = str(err.value)
    assert f"{path}:7: near_dedup.treshold: unknown key (did you mean 'threshold'?)" in msg


def test_wrong_type_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, RECIPE.replace("total_tokens: 1000", "total_tokens: lots"))
    with pytest.raises(BadInput, match=rf"{path}:2: total_tokens: Input should be a valid integer"):
        load_recipe(path)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: r\ncategories: [\n  tool: 1\n")
    with pytest.raises(BadInput, match=rf"{path}:\d+: malformed YAML"):
        load_recipe(path)


def test_missing_file() -> None:
    with pytest.raises(BadInput, match="nope.yaml: file not found"):
        load_recipe("nope.yaml")


def test_shares_must_sum_to_one(tmp_path: Path) -> None:
    path = _write(
        tmp_path, RECIPE.replace("share: 0.5, sources: [{name: p", "share: 0.4, sources: [{name: p")
    )
    with pytest.raises(BadInput, match="shares must sum to 1, got 0.9000"):
        load_recipe(path)


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    path = _write(tmp_path, RECIPE)
    recipe = load_recipe(path, ["seed=7", "near_dedup.threshold=0.9", "filters.min_chars=10"])
    assert (recipe.seed, recipe.near_dedup.threshold, recipe.filters.min_chars) == (7, 0.9, 10)
    with pytest.raises(BadInput, match="near_dedup.bogus: unknown key"):
        load_recipe(path, ["near_dedup.bogus=1"])
    assert apply_overrides({"a": 1}, ["b.c=[1, 2]"]) == {"a": 1, "b": {"c": [1, 2]}}


def test_exponent_floats_without_a_dot_are_numbers_in_files_and_overrides(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads `3e-4` as text; a learning rate typed that way must not fail validation.
    _write(tmp_path, RECIPE, "recipe.yaml")
    path = _write(
        tmp_path,
        f"name: demo\ndata:\n  recipe: {tmp_path / 'recipe.yaml'}\nsft:\n  train: {{learning_rate: 3e-4}}\n",
    )
    assert load_run_config(path).sft.train.learning_rate == 3e-4
    assert load_run_config(path, ["sft.train.learning_rate=1E-5"]).sft.train.learning_rate == 1e-5
    assert apply_overrides({}, ["a=1e3", "b=e3", "c=1.5"]) == {"a": 1000.0, "b": "e3", "c": 1.5}


def test_run_config_loads_its_recipe(tmp_path: Path) -> None:
    _write(tmp_path, RECIPE, "recipe.yaml")
    path = _write(
        tmp_path, f"name: demo\ndata:\n  recipe: {tmp_path / 'recipe.yaml'}\nsft:\n  lora: {{r: 8}}\n"
    )
    config = load_run_config(path, ["sft.lora.alpha=16"])
    assert isinstance(config.data.recipe, Recipe)
    assert (config.sft.lora.r, config.sft.lora.alpha) == (8, 16)


def test_a_recipe_names_its_base_and_writes_only_what_differs(tmp_path: Path) -> None:
    """`base:` lays the file over the recipe it names: mappings key by key, sources by `name` (a new name is
    appended), anything else replaced; an error in the variant names the variant's own line."""
    (tmp_path / "shared").mkdir()
    _write(tmp_path / "shared", RECIPE + "seed: 3\n", "base.yaml")
    variant = (
        "base: shared/base.yaml\nname: v\ntotal_tokens: 2000\ncategories:\n  tool:\n    sources:\n"
        "      - {name: g, n: 20, patterns: {single: 1.0}}\n"
    )
    recipe = load_recipe(_write(tmp_path, variant, "v.yaml"))
    base = load_recipe(tmp_path / "shared" / "base.yaml")
    assert (recipe.name, recipe.total_tokens, recipe.seed) == ("v", 2000, 3)
    tool = recipe.categories["tool"].sources
    assert len(tool) == 1 and (tool[0].n, tool[0].patterns, tool[0].type) == (
        20,
        {"single": 1.0},
        "generated",
    )
    assert recipe.categories["text"] == base.categories["text"]
    added = variant + "      - {name: g2, type: generated, n: 5}\n"
    assert [s.name for s in load_recipe(_write(tmp_path, added, "v.yaml")).categories["tool"].sources] == [
        "g", "g2"
    ]  # fmt: skip
    typo = variant.replace("n: 20,", "nn: 20,")
    with pytest.raises(BadInput, match=r"v.yaml:7: categories.tool.sources.0.generated.nn: unknown key"):
        load_recipe(_write(tmp_path, typo, "v.yaml"))
    # Chains: a variant of a variant; a loop, a missing base and a base that is not a path are each refused.
    _write(tmp_path, variant, "v.yaml")
    _write(tmp_path, "base: v.yaml\nname: w\nseed: 9\n", "w.yaml")
    assert (load_recipe(tmp_path / "w.yaml").total_tokens, load_recipe(tmp_path / "w.yaml").seed) == (2000, 9)
    _write(tmp_path, "base: w.yaml\nname: v\n", "v.yaml")
    with pytest.raises(
        BadInput, match=r"v.yaml:1: base: 'w.yaml' leads back to a recipe already in this chain"
    ):
        load_recipe(tmp_path / "w.yaml")
    with pytest.raises(BadInput, match=r"v.yaml:1: base: 'nope.yaml' not found"):
        load_recipe(_write(tmp_path, "base: nope.yaml\nname: v\n", "v.yaml"))
    with pytest.raises(BadInput, match=r"v.yaml:1: base: expected the path of the recipe"):
        load_recipe(_write(tmp_path, "base: [a]\nname: v\n", "v.yaml"))


def test_one_tool_share_without_task_offers_is_refused(tmp_path: Path) -> None:
    variant = (
        f"base: {tmp_path / 'recipe.yaml'}\nname: v\ncategories:\n  tool:\n    sources:\n"
        "      - {name: g, offered_tools: all, one_tool_share: 0.5}\n"
    )
    _write(tmp_path, RECIPE, "recipe.yaml")
    with pytest.raises(BadInput, match=r"v.yaml.*one_tool_share needs offered_tools: task"):
        load_recipe(_write(tmp_path, variant, "v.yaml"))
    ok = variant.replace("offered_tools: all", "offered_tools: task")
    (source,) = load_recipe(_write(tmp_path, ok, "v.yaml")).categories["tool"].sources
    assert source.tool_offer().one_tool_share == 0.5


def test_set_reaches_into_a_recipe_given_by_path(tmp_path: Path) -> None:
    """`--set data.recipe.total_tokens=…` changes one key of the file's recipe instead of replacing it; an inline
    recipe can start from a `base:` too."""
    _write(tmp_path, RECIPE, "recipe.yaml")
    path = _write(tmp_path, f"name: demo\ndata:\n  recipe: {tmp_path / 'recipe.yaml'}\n")
    config = load_run_config(path, ["data.recipe.total_tokens=5000", "data.recipe.categories.tool.share=0.6",
                                    "data.recipe.categories.text.share=0.4"])  # fmt: skip
    assert (config.data.recipe.name, config.data.recipe.total_tokens) == ("r", 5000)
    assert config.data.recipe.categories["tool"].share == 0.6
    with pytest.raises(
        BadInput, match=r"--set data.recipe.total_tokens: data.recipe.total_tokens: Input should"
    ):
        load_run_config(path, ["data.recipe.total_tokens=lots"])
    inline = _write(
        tmp_path, f"name: demo\ndata:\n  recipe: {{base: {tmp_path / 'recipe.yaml'}, seed: 4}}\n", "i.yaml"
    )
    assert (load_run_config(inline).data.recipe.seed, load_run_config(inline).data.recipe.name) == (4, "r")


def test_lora_rank_above_vllm_limit_is_rejected(tmp_path: Path) -> None:
    _write(tmp_path, RECIPE, "recipe.yaml")
    path = _write(
        tmp_path, f"name: demo\ndata:\n  recipe: {tmp_path / 'recipe.yaml'}\nsft:\n  lora: {{r: 128}}\n"
    )
    with pytest.raises(BadInput, match=r"c.yaml:5: sft.lora.r: Input should be less than or equal to 64"):
        load_run_config(path)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "expected", "code"),
    [
        (["config", "show", "data_recipes/agentic-v1.yaml"], "name: agentic-v1", 0),
        (
            ["config", "show", "data_recipes/agentic-v1.yaml", "--set", "seed=oops"],
            "seed: Input should be",
            2,
        ),
        (["config", "show", "missing.yaml"], "missing.yaml: file not found", 2),
        (["model", "fetch", "not a model"], "unknown model 'not a model'", 2),
        (["model", "fetch", "embedded:gpt-5"], "unknown embedded model 'gpt-5'", 2),
        (["config", "show"], "Missing argument", 2),
    ],
)
def test_cli_exit_codes(args: list[str], expected: str, code: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    out = result.stdout + result.stderr
    assert expected in out
    assert result.returncode == code


def test_cluster_train_and_eval_targets_are_checked(tmp_path: Path) -> None:
    """Per-adapter train keys apply on top of `sft.train`; an unknown adapter, an unknown key, `max_length`
    and an unknown eval target are refused with the key and a suggestion."""
    _write(tmp_path, RECIPE, "recipe.yaml")
    head = f"name: demo\ndata:\n  recipe: {tmp_path / 'recipe.yaml'}\nsft:\n  clusters: [tool, plan]\n"
    path = _write(tmp_path, head + "  train: {max_steps: 20}\n  cluster_train:\n    plan: {max_steps: 4}\n")
    sft = load_run_config(path).sft
    assert sft is not None
    assert (sft.train_for("tool").max_steps, sft.train_for("plan").max_steps) == (20, 4)
    assert sft.for_adapter("plan").train.max_steps == 4 and sft.for_adapter("plan").cluster_train == {}
    for body, message in (
        ("    plann: {max_steps: 4}\n", r"sft.cluster_train.plann: not an adapter.*did you mean 'plan'"),
        (
            "    plan: {max_stepz: 4}\n",
            r"sft.cluster_train.plan.max_stepz: Extra inputs are not permitted; did you mean 'max_steps'",
        ),
        ("    plan: {max_length: 512}\n", r"sft.cluster_train.plan.max_length: one max_length"),
    ):
        with pytest.raises(BadInput, match=message):
            load_run_config(_write(tmp_path, head + "  cluster_train:\n" + body))
    merged = load_run_config(
        _write(
            tmp_path,
            head + "  train: {extra: {neftune_noise_alpha: 5, dataloader_num_workers: 0}}\n"
            "  cluster_train:\n    plan: {extra: {neftune_noise_alpha: 1}}\n",
        )
    ).sft
    assert merged is not None  # an adapter's extras merge key by key with the shared ones
    assert merged.train_for("plan").extra == {"neftune_noise_alpha": 1, "dataloader_num_workers": 0}
    untrained = load_run_config(_write(tmp_path, head + "  cluster_train:\n    code: {max_steps: 2}\n")).sft
    assert untrained is not None and untrained.train_for("tool").max_steps == 50  # kept for when code trains
    eval_path = _write(tmp_path, head + "eval:\n  targets: [base, sft/tool, rl/tool, routed]\n")
    assert load_run_config(eval_path).eval.targets == ["base", "sft/tool", "rl/tool", "routed"]
    with pytest.raises(BadInput, match=r"eval.targets: 'sfts' is none of .*did you mean 'sft'"):
        load_run_config(_write(tmp_path, head + "eval:\n  targets: [base, sfts]\n"))
    with pytest.raises(BadInput, match=r"eval.targets: 'sft/\.\.' is none of"):
        load_run_config(_write(tmp_path, head + "eval:\n  targets: [sft/..]\n"))
    kept = _write(tmp_path, head + "eval:\n  targets: [sft/tool/checkpoint-40]\n")
    assert load_run_config(kept).eval.targets == ["sft/tool/checkpoint-40"]
    # A checkpoint target is a pattern, not a path: nothing else under (or above) the run folder is named.
    for bad in ("sft/tool/../../x", "rl/tool/checkpoint-4", "sft/tool/checkpoint-", "sft/tool/optimizer.pt"):
        with pytest.raises(BadInput, match="sft/<adapter>/checkpoint-<step>"):
            load_run_config(_write(tmp_path, head + f"eval:\n  targets: ['{bad}']\n"))


def test_keys_omitted_at_default_are_dumped_once_set_and_must_name_fields_with_defaults() -> None:
    from pydantic import Field

    from pipelines.config import OmitsNewKeysAtDefault

    class Section(OmitsNewKeysAtDefault):
        omitted_at_default = ("added",)
        kept: int = 1
        added: dict[str, int] = Field(default_factory=dict)

    assert Section().model_dump() == {"kept": 1} and Section(added={"a": 1}).model_dump()["added"] == {"a": 1}
    assert Section().model_dump_json() == '{"kept":1}'
    for listed in ("misspelt", "required"):
        with pytest.raises(TypeError, match=f"{listed!r} is not a field with a default"):
            type(
                "Broken",
                (OmitsNewKeysAtDefault,),
                {"__annotations__": {"required": "int"}, "omitted_at_default": (listed,)},
            )


def test_an_unset_cluster_train_leaves_the_stage_fingerprints_as_they_were(tmp_path: Path) -> None:
    """Upgrading to a midtrain with `sft.cluster_train` must not re-run the finished stages of a run."""
    from pipelines.hashing import fingerprint
    from pipelines.run import fingerprints
    from pipelines.stages import BY_NAME

    _write(tmp_path, RECIPE, "recipe.yaml")
    config = load_run_config(
        _write(tmp_path, f"name: demo\ndata:\n  recipe: {tmp_path / 'recipe.yaml'}\nsft: {{}}\n")
    )
    dumped = config.model_dump(mode="json")
    dumped["sft"].pop("cluster_train", None)  # the section as a midtrain without the key dumped it
    sections = {k: dumped.get(k) for k in BY_NAME["sft"].sections}
    before = fingerprint(
        {"sections": sections, "upstream": {s: fingerprints(config).get(s) for s in BY_NAME["sft"].consumes}}
    )
    assert fingerprints(config)["sft"] == before[:16]
    assert config.sft is not None
    config.sft.cluster_train = {"plan": {"max_steps": 3}}
    assert fingerprints(config)["sft"] != before[:16]


def test_held_out_sampling_is_set_per_stage_and_refuses_copies_of_greedy() -> None:
    """`rl.eval_sampling` and `eval.heldout_sampling` (one type): k samples need a temperature; set from the
    command line like any key."""
    demo = REPO_ROOT / "configs" / "smollm2-135m-demo.yaml"
    config = load_run_config(
        demo,
        ["rl.eval_sampling.samples=4", "rl.eval_sampling.temperature=0.8", "eval.heldout_sampling.samples=2",
         "eval.heldout_sampling.temperature=0.8", "eval.heldout_sampling.seed=7"],
    )  # fmt: skip
    assert (config.rl.eval_sampling.samples, config.rl.eval_sampling.temperature) == (4, 0.8)
    assert config.eval.heldout_sampling.model_dump() == {"samples": 2, "temperature": 0.8, "seed": 7}
    for section in ("rl.eval_sampling", "eval.heldout_sampling"):
        with pytest.raises(BadInput, match=rf"{section}.*4 copies of the greedy episode; set temperature"):
            load_run_config(demo, [f"{section}.samples=4"])
    assert load_run_config(demo).eval.heldout_sampling.greedy
