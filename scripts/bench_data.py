"""Data-stage throughput: end-to-end `build` vs raw `tokenizers` batch-encode on the same texts, peak RSS.

    python scripts/bench_data.py                 # the 200 MB run reported in the issue
    python scripts/bench_data.py --size-mb 20    # a quick one

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
import json
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


def write_corpus(folder: Path, size_mb: int) -> dict[str, Path]:
    """code.jsonl and text.jsonl (half the bytes each), rewritten only when the size changed."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "size_mb.txt"
    files = {"code": folder / "code.jsonl", "text": folder / "text.jsonl"}
    if marker.is_file() and marker.read_text() == str(size_mb) and all(p.is_file() for p in files.values()):
        return files
    code, prose = paragraphs()
    vocab = sorted({w for p in prose[:2000] for w in re.findall(r"[a-z]{4,12}", p)})
    half = size_mb * 1_000_000 // 2
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
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--corpus-dir", type=Path, default=REPO / "runs" / "bench_data" / "corpus")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_data" / "data")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--num-proc", type=int, default=1)
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
