"""Data-stage throughput: end-to-end `build` vs raw `tokenizers` batch-encode on the same texts, peak RSS.

    python scripts/bench_data.py                 # the 200 MB run reported in the issue
    python scripts/bench_data.py --size-mb 20    # a quick one
    python scripts/bench_data.py --scale --base-mb 10   # 0.1×, 1×, 10×, 30× of 10 MB; then 1 and 2 workers

`--scale` runs every measurement in a fresh process (so each peak RSS is that build's own): per corpus size
the raw tokenizer pass and the build (1 worker), with tokens/s, the build/raw ratio, peak RSS (the driver
and its largest worker) and disk (the corpus, the build's largest scratch footprint, the output); then, on
the 1× corpus, tokens/s against worker count for the local executor and for datatrove's local multi-task
executor (the engine the cluster executors share), each against the raw tokenizer in the same process; where
Ray is installed (`make test-ray`), also datatrove's Ray executor on a one-node Ray cluster (`ray`: one CPU per
worker) and on Ray's own multi-node cluster of this machine (`ray-nodes`: `ray.cluster_utils.Cluster`, a head
without CPUs and one node of one CPU per worker, each node its own raylet and object store, as `ray start
--address` makes them on other machines). Both clusters start inside the measured time, as a user's first build
on a fresh cluster pays it.

    python scripts/bench_data.py --scale --factors '' --executors ray,ray-nodes   # the worker table only

The corpus is synthesised deterministically from the standard library's own text: code documents are random
runs of paragraphs from stdlib `.py` files, text documents random runs of paragraphs from the pydoc topics,
each with a few words swapped for random vocabulary, so exact and near dedup keep (almost) all of it. It is
written once as JSON lines under --corpus-dir and reused while its size matches.

Both sides tokenize exactly the same texts with the same tokenizer. Raw throughput times only the
`Tokenizer.encode_batch` calls over in-memory batches (the tokenizer's best case); build throughput is the
same token count over the whole build's wall time: reading JSONL, conversion, quality filters, exact and
near dedup, decontamination, rendering, the mix and the zstd parquet shards. Target: ratio ≥ 0.6 and peak
RSS < 2 GB (RSS is the process's high-water mark, so it covers both passes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import re
import resource
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.chat import load_tokenizer  # noqa: E402
from pipelines.data.build import build  # noqa: E402
from pipelines.models import DEFAULT_MODEL  # noqa: E402
from pipelines.recipe import Recipe  # noqa: E402

DOC_CHARS = (2_000, 9_000)
SWAPS_PER_DOC = 8


def paragraphs() -> tuple[list[str], list[str]]:
    """(code paragraphs from stdlib .py files, prose paragraphs from pydoc topics), in a fixed order."""
    from pydoc_data.topics import topics

    root = Path(sysconfig.get_paths()["stdlib"])
    code = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        code.extend(p for p in re.split(r"\n\s*\n", text) if 80 <= len(p) <= 3000)
    prose = [p for key in sorted(topics) for p in topics[key].split("\n\n") if 80 <= len(p) <= 3000]
    return code, prose


def synth_docs(pool: list[str], target_bytes: int, seed: int, vocab: list[str]) -> Iterator[str]:
    rng = random.Random(seed)
    written = 0
    while written < target_bytes:
        size = rng.randint(*DOC_CHARS)
        parts: list[str] = []
        while sum(map(len, parts)) < size:
            parts.append(rng.choice(pool))
        words = "\n\n".join(parts).split(" ")
        for _ in range(SWAPS_PER_DOC):  # a few fresh words: variation beyond the paragraph order
            words[rng.randrange(len(words))] = rng.choice(vocab)
        doc = " ".join(words)
        written += len(doc.encode("utf-8"))
        yield doc


def write_corpus(folder: Path, size_mb: float) -> dict[str, Path]:
    """code.jsonl and text.jsonl (half the bytes each), rewritten only when the size changed."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "size_mb.txt"
    files = {"code": folder / "code.jsonl", "text": folder / "text.jsonl"}
    if marker.is_file() and marker.read_text() == str(size_mb) and all(p.is_file() for p in files.values()):
        return files
    code, prose = paragraphs()
    vocab = sorted({w for p in prose[:2000] for w in re.findall(r"[a-z]{4,12}", p)})
    half = int(size_mb * 1_000_000) // 2
    for (name, path), pool in zip(files.items(), (code, prose), strict=True):
        with path.open("w", encoding="utf-8") as fh:
            for i, doc in enumerate(synth_docs(pool, half, seed=len(name), vocab=vocab)):
                fh.write(json.dumps({"id": f"{name}-{i}", "text": doc}) + "\n")
    marker.write_text(str(size_mb))
    return files


def iter_texts(files: dict[str, Path]) -> Iterator[str]:
    for path in files.values():
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)["text"]


def raw_tokenize(files: dict[str, Path], model: str, batch: int) -> tuple[int, float, float]:
    """Tokens, wall seconds and CPU seconds (all threads) of `encode_batch` alone, in batches of `batch`."""
    backend = load_tokenizer(model).backend_tokenizer
    totals = [0.0, 0.0, 0.0]
    texts: list[str] = []
    for text in iter_texts(files):
        texts.append(text)
        if len(texts) == batch:
            _encode(backend, texts, totals)
            texts = []
    if texts:
        _encode(backend, texts, totals)
    return int(totals[0]), totals[1], totals[2]


def _encode(backend: Any, texts: list[str], totals: list[float]) -> None:
    start, cpu = time.perf_counter(), time.process_time()
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    ids = [e.ids for e in encodings]  # materialise the ids, as any consumer must
    totals[1] += time.perf_counter() - start
    totals[2] += time.process_time() - cpu
    totals[0] += sum(map(len, ids))


def bench_recipe(files: dict[str, Path]) -> Recipe:
    """Everything in, once: allow_shortfall + max_epochs 1 + a huge budget selects every clean row."""
    return Recipe.model_validate(
        {
            "name": "bench-data",
            "total_tokens": 10**12,
            "allow_shortfall": True,
            "max_epochs": 1,
            "max_seq_len": 4096,
            "eval_fraction": 0.01,
            "categories": {
                cat: {
                    "share": 0.5,
                    "sources": [{"name": f"synth-{cat}", "type": "local", "path": str(p), "format": "text"}],
                }
                for cat, p in files.items()
            },
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=float, default=200)
    parser.add_argument("--scale", action="store_true", help="--factors × --base-mb, then 1..N workers")
    parser.add_argument(
        "--factors", default="0.1,1,10,30", help="corpus sizes for --scale, as multiples of --base-mb"
    )
    parser.add_argument("--base-mb", type=float, default=10)
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--unit-mb", type=float, default=2, help="work unit size (--scale)")
    parser.add_argument(
        "--executor", default="local", help="local, datatrove, ray or ray-nodes (with --json)"
    )
    parser.add_argument(
        "--executors", default="local,datatrove,ray,ray-nodes", help="the worker table's arms (--scale)"
    )
    parser.add_argument("--json", action="store_true", help="one measurement, printed as a JSON line")
    parser.add_argument("--corpus-dir", type=Path, default=REPO / "runs" / "bench_data" / "corpus")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_data" / "data")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument(
        "--tasks",
        default="units",
        choices=("units", "workers"),
        help="datatrove/Ray tasks: 'units' (one per work unit, the default) or 'workers' (one per worker)",
    )
    args = parser.parse_args()
    if args.scale:
        scale(args)
        return
    if args.json:
        print(json.dumps(measure(args)))
        return

    start = time.perf_counter()
    files = write_corpus(args.corpus_dir, args.size_mb)
    corpus_bytes = sum(p.stat().st_size for p in files.values())
    print(f"corpus: {corpus_bytes / 1e6:.1f} MB in {time.perf_counter() - start:.1f}s ({args.corpus_dir})")

    raw_tokens, raw_seconds, raw_cpu = raw_tokenize(files, args.model, batch=256)
    raw_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    raw_rate = raw_tokens / raw_seconds
    print(
        f"raw tokenizers: {raw_tokens:,} tokens in {raw_seconds:.1f}s = {raw_rate:,.0f} tok/s ({raw_cpu:.1f} CPU-s)"
    )

    start, cpu = time.perf_counter(), time.process_time()
    result = build(bench_recipe(files), args.out, num_proc=args.num_proc)
    build_seconds, build_cpu = time.perf_counter() - start, time.process_time() - cpu
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report(result, raw_tokens, raw_rate, build_seconds)
    print(f"ratio build/raw: {raw_tokens / build_seconds / raw_rate:.2f} (target ≥ 0.6)")
    # On a shared machine wall time depends on the neighbours; CPU time (this process's threads) does not.
    print(f"CPU-time ratio raw/build: {raw_cpu / build_cpu:.2f} ({raw_cpu:.1f} vs {build_cpu:.1f} CPU-s)")
    print(f"peak RSS: {peak_rss:,.0f} MB (after the raw pass: {raw_rss:,.0f} MB; target < 2048 MB)")


def report(result: Any, raw_tokens: int, raw_rate: float, build_seconds: float) -> None:
    manifest = result.manifest
    tokenized = sum(s["tokens_in"] for s in manifest["sources"])
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"build: {build_seconds:.1f}s ({phases})")
    print(
        f"  clean rows tokenized: {tokenized:,} tokens; mix: {manifest['mix']['total_tokens']:,} tokens; "
        f"rejects: {manifest['rejects']['by_reason']}"
    )
    print(f"end-to-end: {raw_tokens / build_seconds:,.0f} tok/s over the same {raw_tokens:,} corpus tokens")


# -- --scale ---------------------------------------------------------------------------------------------------
def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One build in this (fresh) process: raw tokenizer pass, then the build, with RSS and disk."""
    from pipelines.data.plan import ExecutorSettings

    files = write_corpus(args.corpus_dir, args.size_mb)
    raw_tokens, raw_seconds, _ = raw_tokenize(files, args.model, batch=256)
    kind = "ray" if args.executor == "ray-nodes" else args.executor
    tasks = args.num_proc if args.tasks == "workers" and kind != "local" else None
    executor = ExecutorSettings(kind=kind, unit_mb=args.unit_mb, workers=args.num_proc, tasks=tasks)
    watcher = _DiskWatcher(args.out.parent)
    watcher.start()
    children = _ChildRSS()
    children.start()
    start = time.perf_counter()
    # Ray: a new cluster of this machine, one CPU per worker (the multi-node path, one node), started inside the
    # measured time as a user's `--executor ray` without a running cluster starts one; `ray-nodes`: Ray's own
    # multi-node cluster of this machine (a head without CPUs, one 1-CPU node per worker).
    small = {"include_dashboard": False, "object_store_memory": 100 * 2**20}
    cluster = None
    if args.executor == "ray":
        import ray

        ray.init(address="local", num_cpus=args.num_proc, **small)
    if args.executor == "ray-nodes":
        import ray
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **small})
        for _ in range(args.num_proc):
            cluster.add_node(num_cpus=1, **small)
        ray.init(address=cluster.address)
    try:
        result = build(bench_recipe(files), args.out, num_proc=args.num_proc, executor=executor)
    finally:
        seconds = time.perf_counter() - start
        watcher.stop()
        children.stop()
        if cluster is not None:  # its nodes are processes of their own: stop them before this process ends
            ray.shutdown()
            cluster.shutdown()
    return {
        "corpus_mb": sum(p.stat().st_size for p in files.values()) / 1e6,
        "tokens": raw_tokens,
        "raw_tok_s": raw_tokens / raw_seconds,
        "build_s": seconds,
        "build_tok_s": raw_tokens / seconds,
        "units": len(list(Path(args.out).glob("*.parquet"))),
        "rss_driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_worker_mb": children.peak / 2**20,
        "scratch_peak_mb": watcher.peak / 1e6,
        "output_mb": _folder_bytes(args.out) / 1e6,
        "timings": result.timings,
    }


class _Peak:
    """The largest value `_read()` gives, polled every `interval` seconds from a thread while the build runs."""

    interval = 1.0

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._read())

    def _read(self) -> int:
        raise NotImplementedError


class _DiskWatcher(_Peak):
    """The largest size of a folder tree seen (the build's scratch folder lives next to its output and is gone
    when the build returns)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def _read(self) -> int:
        return _folder_bytes(self.folder)


class _ChildRSS(_Peak):
    """The largest RSS of any descendant process: the workers. (`RUSAGE_CHILDREN` misses them: a pool's workers
    are children of the forkserver, which is never waited for.)"""

    interval = 0.05

    def __init__(self) -> None:
        import psutil

        super().__init__()
        self.me = psutil.Process()

    def _read(self) -> int:
        import psutil

        largest = 0
        for child in self.me.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # gone while we looked
                largest = max(largest, child.memory_info().rss)
        return largest


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in Path(folder).rglob("*"):
        with contextlib.suppress(OSError):  # removed while we looked
            total += path.stat().st_size if path.is_file() else 0
    return total


def _child(args: argparse.Namespace, size_mb: float, num_proc: int, executor: str) -> dict[str, Any]:
    import shutil
    import subprocess

    root = REPO / "runs" / "bench_data_scale"
    shutil.rmtree(
        root / f"out-{executor}", ignore_errors=True
    )  # the bench's own folder: disk peaks start at 0
    cmd = [
        sys.executable, __file__, "--json", "--size-mb", str(size_mb), "--num-proc", str(num_proc),
        "--tasks", args.tasks,
        "--executor", executor, "--unit-mb", str(args.unit_mb), "--model", args.model,
        "--corpus-dir", str(root / f"corpus-{size_mb:g}mb"), "--out", str(root / f"out-{executor}" / "data"),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measurement failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scale(args: argparse.Namespace) -> None:
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared machines: compare ratios)"
    )
    print(f"work units of {args.unit_mb:g} MB; every line is a fresh process")
    print(f"{'size':>6} {'corpus MB':>9} {'tokens':>11} {'raw tok/s':>10} {'build tok/s':>11} {'ratio':>5} "
          f"{'RSS driver MB':>13} {'RSS worker MB':>13} {'scratch MB':>10} {'output MB':>9}")  # fmt: skip
    for factor in (float(f) for f in args.factors.split(",") if f):
        m = _child(args, args.base_mb * factor, 1, "local")
        print(f"{factor:>5g}× {m['corpus_mb']:>9.1f} {m['tokens']:>11,} {m['raw_tok_s']:>10,.0f} "
              f"{m['build_tok_s']:>11,.0f} {m['build_tok_s'] / m['raw_tok_s']:>5.2f} {m['rss_driver_mb']:>13,.0f} "
              f"{m['rss_worker_mb']:>13,.0f} {m['scratch_peak_mb']:>10,.1f} {m['output_mb']:>9,.1f}")  # fmt: skip
    print(
        f"\nworkers on the 1× corpus ({args.base_mb:g} MB): tokens/s, and against the raw tokenizer (1 core)"
    )
    print(
        f"{'executor':>10} {'workers':>7} {'build tok/s':>11} {'per worker':>10} {'ratio':>5} {'speed-up':>8} {'RSS driver MB':>13} {'RSS worker MB':>13}"
    )
    # Ray's arms need Ray (`make test-ray` installs it in .venv-ray).
    executors = args.executors.split(",")
    unknown = set(executors) - {"local", "datatrove", "ray", "ray-nodes"}
    if unknown:
        raise SystemExit(f"--executors: unknown {sorted(unknown)} (local, datatrove, ray, ray-nodes)")
    if not importlib.util.find_spec("ray") and any(e.startswith("ray") for e in executors):
        print("(ray is not installed: its arms are skipped)")
        executors = [e for e in executors if not e.startswith("ray")]
    for executor in executors:
        first = None
        for workers in range(1, args.max_workers + 1):
            m = _child(args, args.base_mb, workers, executor)
            first = first or m["build_tok_s"]
            print(f"{executor:>10} {workers:>7} {m['build_tok_s']:>11,.0f} {m['build_tok_s'] / workers:>10,.0f} "
                  f"{m['build_tok_s'] / m['raw_tok_s']:>5.2f} {m['build_tok_s'] / first:>8.2f} {m['rss_driver_mb']:>13,.0f} {m['rss_worker_mb']:>13,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
