"""Router benchmark: held-out accuracy and p50/p99 routing latency per method, and adapter switch time.

    python scripts/bench_router.py --run-dir runs/smollm2-135m-demo          # a real run's mix and adapters
    python scripts/bench_router.py --run-dir runs/x --methods tfidf,embedding --switches 200

Targets (issue 7): accuracy ≥ 0.9 on the default mix; p50 ≤ 20 ms (embedding), ≤ 2 ms (tfidf); switch ≤ 5 ms.
Latency is single-request (batch of one), which is what a server pays per incoming request.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pipelines.router import (
    RequestRouter,
    benchmark_latency,
    find_adapters,
    load_examples,
    split_examples,
    train_router,
)


def bench_method(method: str, train: list, held_out: list) -> dict[str, float]:
    start = time.perf_counter()
    featurizer, weight, bias, labels = train_router([t for t, _ in train], [c for _, c in train], method)
    fit_s = time.perf_counter() - start
    router = RequestRouter(method, labels, featurizer, weight, bias, 0.0, "__base__", {})
    texts = [t for t, _ in held_out]
    predicted = [r.cluster for r in router.route(texts)]
    accuracy = float(np.mean([p == c for p, (_, c) in zip(predicted, held_out, strict=True)]))
    router.route(texts[:5])  # warm caches before timing
    return {"accuracy": accuracy, "fit_s": fit_s, **benchmark_latency(router, texts[:200])}


def bench_switch(run_dir: Path, clusters: list[str], switches: int) -> dict[str, float] | None:
    """Time `set_adapter` between preloaded adapters (what per-request switching costs)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipelines.models import resolve_model

    adapters = find_adapters(run_dir, clusters)
    if len(adapters) < 2:
        return None
    import json

    base_ref = json.loads((next(iter(adapters.values())) / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(
        resolve_model(base_ref["base_model_name_or_path"]), dtype=torch.float32
    )
    names = list(adapters)
    model = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    timings = []
    for i in range(switches):
        start = time.perf_counter()
        model.set_adapter(names[i % len(names)])
        timings.append((time.perf_counter() - start) * 1000)
    return {
        "switch_p50_ms": float(np.percentile(timings, 50)),
        "switch_p99_ms": float(np.percentile(timings, 99)),
        "adapters": len(names),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--clusters", default="tool,plan,reflect,code")
    parser.add_argument("--methods", default="tfidf,embedding")
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--switches", type=int, default=200)
    args = parser.parse_args()
    clusters = args.clusters.split(",")
    examples = load_examples(args.run_dir / "data", clusters)
    train, held_out = split_examples(examples, args.eval_fraction)
    print(f"requests: {len(train)} train, {len(held_out)} held out, clusters {sorted({c for _, c in train})}")
    targets = {"tfidf": 2.0, "embedding": 20.0}
    for method in args.methods.split(","):
        result = bench_method(method, train, held_out)
        print(
            f"{method:10s} accuracy {result['accuracy']:.3f} (target ≥ 0.9)  "
            f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
            f"(p50 target ≤ {targets.get(method, float('nan'))} ms, ratio {result['p50_ms'] / targets[method]:.2f})"
            f"  fit {result['fit_s']:.1f} s"
        )
    switch = bench_switch(args.run_dir, clusters, args.switches)
    if switch:
        print(
            f"adapter switch ({switch['adapters']} preloaded): p50 {switch['switch_p50_ms']:.3f} ms  "
            f"p99 {switch['switch_p99_ms']:.3f} ms (target ≤ 5 ms)"
        )
    else:
        print("adapter switch: skipped (fewer than 2 trained adapters in the run dir)")


if __name__ == "__main__":
    main()
