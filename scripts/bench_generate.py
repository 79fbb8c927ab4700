"""Benchmark the verified trace generator: traces per second per core for each domain, rejects by reason.

Each domain runs alone in this one process (one core: generation, execution and replay verification are
single-threaded; the code runner's sandboxed child processes are counted in the wall time they take).

    .venv/bin/python scripts/bench_generate.py --n 200 --seed 0 [--domains api,calculator] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.envs.api_pool import build_pool
from pipelines.tasks.domains import DOMAINS
from pipelines.tasks.generate import class_tools_json, generate_traces


def warm_up(domain: str, seed: int) -> None:
    """One-time costs are not throughput: tool schemas (imports transformers), the API pool, corpora."""
    for env_class, _ in DOMAINS.values():
        class_tools_json(env_class)
    build_pool()
    generate_traces([domain], 3, seed + 1_000_000)


def bench_domain(domain: str, n: int, seed: int) -> dict[str, object]:
    warm_up(domain, seed)
    result = generate_traces([domain], n, seed)
    rate = len(result.traces) / result.seconds if result.seconds else 0.0
    return {
        "domain": domain,
        "traces": len(result.traces),
        "attempts": result.attempts,
        "seconds": round(result.seconds, 2),
        "traces_per_second_per_core": round(rate, 1),
        "reject_rate": round(1 - result.pass_rate, 4),
        "rejects_by_reason": {
            k: round(v / result.attempts, 4) for k, v in sorted(result.reject_reasons.items())
        },
        "patterns": dict(sorted(result.by_pattern.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="verified traces per domain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domains", default=",".join(sorted(DOMAINS)))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = [bench_domain(d.strip(), args.n, args.seed) for d in args.domains.split(",") if d.strip()]
    header = f"{'domain':<12}{'traces':>8}{'attempts':>10}{'seconds':>9}{'traces/s/core':>15}{'reject':>8}  by reason"
    print(f"cpu cores visible: {os.cpu_count()} (each domain runs in this single process)")
    print(header)
    for row in rows:
        reasons = ", ".join(f"{k} {v:.1%}" for k, v in row["rejects_by_reason"].items()) or "-"  # type: ignore[union-attr]
        print(
            f"{row['domain']:<12}{row['traces']:>8}{row['attempts']:>10}{row['seconds']:>9}"
            f"{row['traces_per_second_per_core']:>15}{row['reject_rate']:>8.1%}  {reasons}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
