"""Hub sources are pinned by commit: `data build` resolves each `hf` source's revision to the commit sha it names,
reads the rows there and records it in manifest.json; `data verify` rebuilds at that commit after the branch has
moved; offline, a revision that is not a sha is a clear exit 2, a sha builds from the cache.

huggingface_hub's and datasets' real code paths run against tests/hub_standin.py, a local stand-in for the Hub's
HTTP API (no Hub here); HF_HUB_OFFLINE=1 is set for real, in the CLI's own process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants
from huggingface_hub.hf_api import DatasetInfo

from pipelines.data.manifest import hub_commits
from pipelines.data.sources import hub_commit, resolve_hub_commits
from pipelines.errors import BadInput
from pipelines.recipe import HFSource
from pipelines.run_config import load_recipe
from tests.hub_standin import DatasetRepo, HubStandIn

REPO_ROOT = Path(__file__).resolve().parents[1]
FORMATS = Path(__file__).parent / "fixtures"
SHA_A = hashlib.sha1(b"first commit").hexdigest()
SHA_B = hashlib.sha1(b"second commit").hexdigest()

RECIPE = """\
name: hub-mini
total_tokens: 3000
eval_fraction: 0.0
decontamination: {{sets: []}}
categories:
  tool:
    share: 1.0
    sources:
      - {{name: xlam, type: hf, dataset: acme/xlam-mini, revision: {revision}, format: xlam}}
"""


def hf(dataset: str, revision: str) -> HFSource:
    return HFSource(type="hf", name="xlam", dataset=dataset, revision=revision, format="xlam")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    """The stand-in, with acme/xlam-mini at SHA_A on `main` and tag `v1.0`; HfApi() in this process points at it."""
    with HubStandIn() as hub:
        repo = DatasetRepo()
        rows = (FORMATS / "real_rows" / "xlam.jsonl").read_bytes() + (
            FORMATS / "formats" / "xlam.jsonl"
        ).read_bytes()
        repo.commit(
            SHA_A, {"train.jsonl": rows, "README.md": b"---\nlicense: cc-by-4.0\n---\n"}, "main", "v1.0"
        )
        hub.repos["acme/xlam-mini"] = repo
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        yield hub


@pytest.mark.integration
def test_a_branch_or_tag_resolves_to_its_commit_and_a_sha_needs_no_network(hub: HubStandIn, tmp_path) -> None:
    assert hub_commit(hf("acme/xlam-mini", "main")) == SHA_A
    assert hub_commit(hf("acme/xlam-mini", "v1.0")) == SHA_A
    assert hub.paths_asked("/api/datasets") == [
        "/api/datasets/acme/xlam-mini/revision/main",
        "/api/datasets/acme/xlam-mini/revision/v1.0",
    ]
    hub.requests.clear()
    assert hub_commit(hf("acme/xlam-mini", SHA_B)) == SHA_B and hub.paths_asked("/api/datasets") == []
    folder = tmp_path / "xlam-mini"  # a local dataset folder: `datasets` reads it without a revision
    folder.mkdir()
    assert hub_commit(hf(str(folder), "main")) is None and hub.paths_asked("/api/datasets") == []


@pytest.mark.integration
def test_hub_problems_are_bad_input_naming_the_source(
    hub: HubStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BadInput, match="xlam.*revision 'v9': no such branch, tag or commit"):
        hub_commit(hf("acme/xlam-mini", "v9"))
    with pytest.raises(BadInput, match="'acme/nope'.*dataset repo not found on the Hub"):
        hub_commit(hf("acme/nope", "main"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(BadInput, match="cannot reach the Hub.*ConnectError") as info:
        hub_commit(hf("acme/xlam-mini", "main"))
    assert "HF_HUB_OFFLINE=1" in str(info.value)


def test_an_answer_without_a_sha_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = DatasetInfo(
        id="acme/xlam-mini", sha=None, siblings=[]
    )  # the real class, as huggingface_hub builds it
    monkeypatch.setattr(HfApi, "dataset_info", lambda self, repo_id, revision=None, **kw: answer)
    with pytest.raises(BadInput, match="the Hub answered no commit sha"):
        hub_commit(hf("acme/xlam-mini", "main"))


@pytest.mark.integration
def test_a_lockfiles_commits_win_over_resolving(hub: HubStandIn, tmp_path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(revision="main"))
    recipe = load_recipe(path)
    assert resolve_hub_commits(recipe) == {"xlam": SHA_A}
    hub.repos["acme/xlam-mini"].commit(SHA_B, {"train.jsonl": b"{}\n"}, "main")  # the branch moves on
    assert resolve_hub_commits(recipe) == {"xlam": SHA_B}
    hub.requests.clear()
    assert resolve_hub_commits(recipe, {"xlam": SHA_A}) == {"xlam": SHA_A}
    assert hub.paths_asked("/api/datasets") == []


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=600,
        check=False,
    )


def test_build_records_the_commit_and_verify_rebuilds_there_after_the_branch_moves(
    hub: HubStandIn, tmp_path: Path, embedded_model_dir: Path
) -> None:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(revision="main"))
    built = cli("data", "build", str(recipe), "--out", str(tmp_path / "out"), env=env)
    assert built.returncode == 0, built.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (source,) = manifest["sources"]
    assert source["revision"]["revision"] == "main" and source["revision"]["commit"] == SHA_A
    assert (
        manifest["recipe"]["categories"]["tool"]["sources"][0]["revision"] == "main"
    )  # the recipe as written
    assert hub_commits(manifest) == {"xlam": SHA_A}
    assert f"/datasets/acme/xlam-mini/resolve/{SHA_A}/train.jsonl" in hub.paths_asked()

    hub.repos["acme/xlam-mini"].commit(SHA_B, {"train.jsonl": b'{"query": "moved"}\n'}, "main")
    hub.requests.clear()
    verified = cli("data", "verify", str(tmp_path / "out"), env=env)
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    assert "identical" in verified.stdout
    assert not any(
        "/revision/main" in p or "/resolve/main/" in p for p in hub.paths_asked()
    )  # main not asked

    offline = {**env, "HF_HUB_OFFLINE": "1"}
    verified = cli(
        "data", "verify", str(tmp_path / "out"), env=offline
    )  # the recorded commit is in the cache
    assert verified.returncode == 0 and "identical" in verified.stdout, verified.stderr[-2000:]

    refused = cli("data", "build", str(recipe), "--out", str(tmp_path / "offline"), env=offline)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    message = " ".join(refused.stderr.split())
    assert "hf source 'xlam': dataset 'acme/xlam-mini' revision 'main' is not a commit sha" in message
    assert "HF_HUB_OFFLINE is set" in message and "revision: <40-hex sha>" in message
    assert not (tmp_path / "offline").exists()

    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(RECIPE.format(revision=SHA_A))
    built = cli("data", "build", str(pinned), "--out", str(tmp_path / "pinned"), env=offline)
    assert built.returncode == 0, built.stderr[-2000:]
    shards = sorted(p.name for p in (tmp_path / "out").glob("*.parquet"))
    for name in shards:
        assert (tmp_path / "pinned" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()
