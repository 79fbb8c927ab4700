"""Typed artifacts: what each stage writes and the next one reads, as pydantic models.

Writers dump them, readers validate them, tests build fixtures from them. A field renamed on one side and not
the other fails at the reader with the file named (exit 2), instead of a KeyError three stages later.
`extra="forbid"`: an artifact holding a key its model does not know was written by other code than this.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from pipelines.config import load_json_model

A = TypeVar("A", bound="Artifact")


class Artifact(BaseModel):
    """A JSON file in a stage's folder. `FILE` is its name there."""

    model_config = ConfigDict(extra="forbid")
    FILE: ClassVar[str]

    @classmethod
    def path_in(cls, folder: Path) -> Path:
        return Path(folder) / cls.FILE

    @classmethod
    def read(cls: type[A], folder: Path) -> A:
        """The artifact in `folder`; a missing, unreadable or malformed file is bad input naming the file."""
        return load_json_model(cls, cls.path_in(folder), f"midtrain's {cls.FILE}")

    @classmethod
    def read_if_present(cls: type[A], folder: Path) -> A | None:
        return cls.read(folder) if cls.path_in(folder).is_file() else None

    def write(self, folder: Path) -> Path:
        """Atomic: a reader never sees half a file, and a killed writer leaves the old one."""
        path = self.path_in(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.model_dump_json(indent=2, by_alias=True) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path


class StageMarker(Artifact):
    """`runs/<name>/<stage>/.midtrain-stage.json`: the stage finished with this fingerprint."""

    FILE: ClassVar[str] = ".midtrain-stage.json"
    stage: str = ""  # markers written before the stage registry have none
    fingerprint: str
    wall_s: float
    peak_rss_mb: float
    resumed: bool = False  # the stage found work of an interrupted earlier run and continued it


class UnitState(Artifact):
    """A unit of work's folder (one SFT adapter, one RL cluster): the fingerprint its checkpoints belong to.
    Written when the unit starts, so a killed run's checkpoints can be matched to the config that made them;
    its presence also marks the folder as midtrain's to clear."""

    FILE: ClassVar[str] = "unit_state.json"
    stage: str
    unit: str
    config_fingerprint: str


class SFTSummary(Artifact):
    """`sft/<adapter>/training_summary.json`."""

    FILE: ClassVar[str] = "training_summary.json"
    adapter: str
    config_fingerprint: str
    base_model: str
    data_manifest_sha256: str
    steps: int
    resumed_from_step: int
    tokens_seen: int
    wall_time_s: float
    peak_memory_bytes: int
    peak_memory_kind: str
    final_train_loss: float | None
    mean_train_loss_this_session: float | None
    final_eval_loss: float | None
    world_size: int
    device: str
    quantized: bool
    data: dict[str, Any]
    versions: dict[str, str]


class RLSummary(Artifact):
    """`rl/<cluster>/training_summary.json`. Time, loss and peak memory are the last session's; rewards,
    failures and history cover the whole run."""

    FILE: ClassVar[str] = "training_summary.json"
    cluster: str
    start: str
    base_model: str
    config_fingerprint: str
    steps: int
    resumed_from_step: int
    wall_time_s: float
    seconds_per_step: float
    mean_train_loss_this_session: float | None
    final_reward: float | None
    final_rewards: dict[str, float | None]  # None: the reward did not apply to any rollout of that step
    tool_call_frequency: float | None
    tool_failure_frequency: float | None
    failures: dict[str, int]
    reward_weights: dict[str, float]
    tasks: dict[str, Any]
    peak_memory_bytes: int
    peak_memory_kind: str
    device: str
    quantized: bool
    versions: dict[str, str]
    heldout: dict[str, Any] | None = None  # held-out outcome before/after and deltas, when there were tasks
    sandbox: dict[str, Any] | None = None  # the isolation model-written code ran under, when any ran
    rollouts: dict[str, Any] | None = (
        None  # midtrain's rollout loop: shape, totals, curriculum (rollouts.json)
    )


class ClusterMetrics(BaseModel):
    """One label's row of scikit-learn's classification report (its key `f1-score` kept on disk)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    precision: float
    recall: float
    f1: float = Field(alias="f1-score")
    support: float


class RouterAccuracy(Artifact):
    """`router/accuracy.json`: held-out routing accuracy against the routed labels (after `label_map`)."""

    FILE: ClassVar[str] = "accuracy.json"
    accuracy: float
    n: int
    labels: list[str]
    label_map: dict[str, str]
    confusion: list[list[int]]
    per_cluster: dict[str, ClusterMetrics]
    by_source: dict[str, dict[str, int]]


class RouterBundle(Artifact):
    """`router/router.json`: how to rebuild the router (weights in `router.safetensors`) and which adapter
    serves each label. Adapters are paths relative to the bundle, or Hub repo ids in a published bundle."""

    FILE: ClassVar[str] = "router.json"
    version: int
    method: Literal["embedding", "tfidf", "arrow"]
    labels: list[str]
    threshold: float
    fallback: str
    base_model: str
    adapters: dict[str, str]
    label_map: dict[str, str] = Field(default_factory=dict)  # bundles from before `router.merge` have none
    featurizer: dict[str, Any] = Field(default_factory=dict)
    train_examples: int | None = None
    generated_examples: int | None = None
    arrow: dict[str, Any] | None = None


class RouterResult(BaseModel):
    """What the router stage returns: the bundle, and its held-out accuracy (none for Arrow: nothing fitted)."""

    bundle: RouterBundle
    accuracy: RouterAccuracy | None = None


class EvalResults(Artifact):
    """`eval/results.json`: target → suite → metric. Metric values are scores in [0, 1] or counts (`n`)."""

    FILE: ClassVar[str] = "results.json"
    model: str
    limit: int | None
    targets: dict[str, dict[str, dict[str, Any]]]
    skipped: dict[str, str]
    seconds: dict[str, float]
    sandbox: dict[str, Any] | None = None  # the isolation model-written code ran under, when any ran
    backend: Literal["hf", "vllm"] = "hf"  # who decoded (eval.backend)
    # eval.adapters: per `adapter:<ref>` target, its card's BFCL scores beside the reproduced ones
    published: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # per `rl/<cluster>` target: its held-out outcome change over `sft/<cluster>`, paired per task, with ci95
    changes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # held-out tasks the mix was not decontaminated against; budgets shorter than the targets' trained turns
    warnings: list[str] = Field(default_factory=list)

    def metric(self, target: str, suite: str, metric: str) -> Any:
        return self.targets.get(target, {}).get(suite, {}).get(metric)


class PublishPlan(BaseModel):
    """`plan.json` inside the staging folder: what was (or would be) pushed where."""

    model_config = ConfigDict(extra="forbid")
    dry_run: bool
    private: bool
    repos: list[str]  # model repos: adapters and the router bundle
    datasets: list[str] = Field(default_factory=list)  # the data mix, as a dataset repo
    skipped: dict[str, str] = Field(default_factory=dict)  # what was not published, and why
    collection: str
    staging: str
    urls: list[str] | None = None


class MergedModel(Artifact):
    """`midtrain-export.json` in a `midtrain export` folder: which adapter was merged into which base, how."""

    FILE: ClassVar[str] = "midtrain-export.json"
    adapter: str  # the adapter folder merged in
    base_model: str  # what the base weights were loaded from (a local folder or a Hub id)
    public_base_model: str  # what the card names
    dtype: str  # of the written weights
    tokenizer_from: Literal["adapter", "base"]


class ReportIndex(Artifact):
    """`report.json` in the run folder: the report's files and the images it references."""

    FILE: ClassVar[str] = "report.json"
    report: str
    html: str
    images: list[str]


class SFTResult(BaseModel):
    """What `sft.run` returns: each trained (or kept) adapter's summary."""

    adapters: dict[str, SFTSummary]


class RLResult(BaseModel):
    clusters: dict[str, RLSummary]
