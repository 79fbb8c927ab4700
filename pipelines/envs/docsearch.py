"""Document search over the Python language reference shipped with the interpreter, and its task sampler.

The corpus is `pydoc_data.topics.topics` (~80 reference texts: statements, operators, data model…). Ranking is
a small BM25 (k1=1.2, b=0.75, title terms counted three times) built once per process: 80 documents index in
milliseconds, and a hand-written ranker keeps results deterministic across library versions.

Ground truth comes from the corpus itself: a task picks a line that occurs once in the whole corpus and a short
phrase that occurs in no other line, so "quote the line that mentions …" has exactly one right answer, and the
sampler keeps only queries whose BM25 results actually contain the topic. The corpus differs between Python
versions, so every task records the corpus hash and an environment on another version refuses it loudly.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pipelines.envs.base import ToolEnv, ToolError
from pipelines.errors import BadInput

DOMAIN = "docsearch"
MAX_TOP_K = 20
MAX_READ_LINES = 200
MAX_MATCHES = 20
SNIPPET_CHARS = 200
SEARCH_TOP_K = 5  # what the reference solutions ask for; tasks are kept only if the topic ranks within it
_TOKEN_RE = re.compile(r"[a-z0-9_]+")
_STOPWORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "if", "in", "into", "is", "it",
    "its", "of", "on", "or", "that", "the", "their", "then", "there", "these", "this", "to", "was", "were", "which",
    "will", "with",
))  # fmt: skip
# Words too common to make a phrase distinctive (on top of the search stopwords).
_WEAK_WORDS = _STOPWORDS | frozenset((
    "not", "neither", "nor", "when", "also", "can", "may", "must", "only", "such", "than", "other", "any", "all",
    "some", "each", "used", "use", "note", "following", "see", "more", "most", "but", "so", "do", "does", "been",
    "being", "they", "them", "what", "where", "how", "who", "whose", "would", "should", "could", "one", "two",
    "first", "same", "because", "however", "even", "otherwise", "therefore", "thus", "between", "about", "after",
    "before", "over", "under", "within", "without", "like", "just", "both", "either", "no", "we", "you", "your",
    "our", "given", "case", "way", "new", "value", "name", "returned", "called",
))  # fmt: skip


def tokenize(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


# -- corpus and index (built once per process) --------------------------------------------------------------
@dataclass(frozen=True)
class Doc:
    doc_id: str
    title: str
    lines: tuple[str, ...]


class Bm25:
    """Okapi BM25 over token lists; ties are broken by document order, so rankings are deterministic."""

    def __init__(self, documents: list[list[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.term_counts = [Counter(tokens) for tokens in documents]
        self.lengths = [len(tokens) for tokens in documents]
        self.average_length = sum(self.lengths) / max(len(documents), 1)
        document_freq = Counter(term for counts in self.term_counts for term in counts)
        n = len(documents)
        self.idf = {term: math.log(1 + (n - df + 0.5) / (df + 0.5)) for term, df in document_freq.items()}

    def score(self, terms: list[str], index: int) -> float:
        counts, length = self.term_counts[index], self.lengths[index]
        norm = self.k1 * (1 - self.b + self.b * length / self.average_length)
        return sum(
            self.idf.get(term, 0.0) * counts[term] * (self.k1 + 1) / (counts[term] + norm)
            for term in terms
            if counts[term]
        )

    def top(self, terms: list[str], k: int) -> list[tuple[int, float]]:
        scored = [(i, self.score(terms, i)) for i in range(len(self.lengths))]
        ranked = sorted((pair for pair in scored if pair[1] > 0), key=lambda pair: (-pair[1], pair[0]))
        return ranked[:k]


@dataclass(frozen=True)
class Corpus:
    docs: tuple[Doc, ...]
    by_id: dict[str, Doc]
    index: Bm25
    sha256: str


@functools.cache
def corpus() -> Corpus:
    from pydoc_data.topics import topics

    docs = tuple(_make_doc(doc_id, topics[doc_id]) for doc_id in sorted(topics))
    index = Bm25([tokenize(doc.title) * 3 + tokenize("\n".join(doc.lines)) for doc in docs])
    digest = hashlib.sha256(json.dumps(topics, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return Corpus(docs=docs, by_id={d.doc_id: d for d in docs}, index=index, sha256=digest)


def _make_doc(doc_id: str, text: str) -> Doc:
    lines = tuple(line.rstrip() for line in text.splitlines())
    title = next((line.strip() for line in lines if line.strip()), doc_id)
    return Doc(doc_id=doc_id, title=title, lines=lines)


def query_terms(query: str) -> list[str]:
    """Unique query tokens without stopwords (all of them if the query is nothing but stopwords)."""
    tokens = list(dict.fromkeys(tokenize(query)))
    content = [t for t in tokens if t not in _STOPWORDS]
    return content or tokens


def search(query: str, top_k: int) -> list[tuple[Doc, float]]:
    c = corpus()
    return [(c.docs[i], score) for i, score in c.index.top(query_terms(query), top_k)]


def best_line(doc: Doc, terms: list[str]) -> str:
    """The line sharing the most (idf-weighted) query terms: the snippet shown next to a search result."""
    idf = corpus().index.idf
    best, best_score = "", 0.0
    for line in doc.lines[1:]:
        line_terms = set(tokenize(line))
        score = sum(idf.get(t, 0.0) for t in terms if t in line_terms)
        if score > best_score:
            best, best_score = line.strip(), score
    return best[:SNIPPET_CHARS]


def _squash(text: str) -> str:
    return " ".join(text.lower().split())


@functools.cache
def _squashed_lines(doc_id: str) -> tuple[str, ...]:
    return tuple(_squash(line) for line in corpus().by_id[doc_id].lines)


def matching_lines(doc: Doc, phrase: str) -> list[int]:
    """1-based numbers of the lines containing `phrase` (case- and whitespace-insensitive)."""
    wanted = _squash(phrase)
    return [n for n, line in enumerate(_squashed_lines(doc.doc_id), start=1) if wanted in line]


# -- the environment ----------------------------------------------------------------------------------------
class DocSearchEnv(ToolEnv):
    """Search and read the Python language reference (the interpreter's own pydoc topics)."""

    domain = DOMAIN

    def search_docs(self, query: str, top_k: int = 5) -> str:
        """Search the Python language reference and list the best-matching topics (BM25 ranking).

        Args:
            query: Words to look for, e.g. "assert statement debugging".
            top_k: How many topics to return, from 1 to 20.
        """
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            raise ToolError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}")
        terms = query_terms(str(query))
        if not terms:
            raise ToolError("the query has no words to search for")
        results = search(str(query), top_k)
        if not results:
            raise ToolError(f"no topic matches {query!r}; try other or fewer words")
        return json.dumps(
            [
                {
                    "doc_id": doc.doc_id,
                    "title": doc.title,
                    "score": round(score, 3),
                    "snippet": best_line(doc, terms),
                }
                for doc, score in results
            ],
            ensure_ascii=False,
        )

    def read_doc(self, doc_id: str, start_line: int = 1, max_lines: int = 40) -> str:
        """Read numbered lines of one reference topic.

        Args:
            doc_id: The topic id, as returned by search_docs (e.g. "assert").
            start_line: The first line to show (1-based).
            max_lines: How many lines to show, from 1 to 200.
        """
        doc = _doc(doc_id)
        total = len(doc.lines)
        if not isinstance(start_line, int) or not 1 <= start_line <= total:
            raise ToolError(f"start_line must be from 1 to {total} for {doc_id!r}, got {start_line!r}")
        if not isinstance(max_lines, int) or not 1 <= max_lines <= MAX_READ_LINES:
            raise ToolError(f"max_lines must be from 1 to {MAX_READ_LINES}, got {max_lines!r}")
        end = min(start_line + max_lines - 1, total)
        body = "\n".join(f"{n}: {doc.lines[n - 1]}" for n in range(start_line, end + 1))
        return f"{doc.doc_id} — {doc.title} (lines {start_line}-{end} of {total})\n{body}"

    def find_in_doc(self, doc_id: str, phrase: str) -> str:
        """List the lines of one reference topic that contain a phrase (case-insensitive), with line numbers.

        Args:
            doc_id: The topic id, as returned by search_docs (e.g. "assert").
            phrase: The words to find, e.g. "equivalent to".
        """
        doc = _doc(doc_id)
        if len(_squash(str(phrase))) < 2:
            raise ToolError("phrase must have at least 2 characters")
        numbers = matching_lines(doc, str(phrase))
        if not numbers:
            raise ToolError(f"no line in {doc_id!r} contains {phrase!r}")
        shown = [{"line": n, "text": doc.lines[n - 1].strip()} for n in numbers[:MAX_MATCHES]]
        return json.dumps({"doc_id": doc.doc_id, "matches": len(numbers), "lines": shown}, ensure_ascii=False)

    # -- private --------------------------------------------------------------------------------------------
    def _setup(self, setup: dict[str, Any]) -> None:
        expected = setup.get("corpus_sha256")
        if expected is not None and expected != corpus().sha256:
            raise BadInput(
                f"docsearch task: corpus_sha256 {expected} does not match this interpreter's pydoc_data topics "
                f"({corpus().sha256}); the task was generated on another Python version: regenerate it here"
            )


def _doc(doc_id: str) -> Doc:
    doc = corpus().by_id.get(str(doc_id))
    if doc is None:
        close = difflib.get_close_matches(str(doc_id).lower(), list(corpus().by_id), n=3)
        hint = (
            f"; did you mean {', '.join(repr(c) for c in close)}?"
            if close
            else "; use search_docs to find ids"
        )
        raise ToolError(f"unknown doc_id {doc_id!r}{hint}")
    return doc
