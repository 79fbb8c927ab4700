"""Document-search tasks over the stdlib reference: questions whose answer is one quotable line (the env is pipelines/envs/docsearch.py)."""

from __future__ import annotations

import functools
import math
import random
import re
from collections import Counter
from dataclasses import dataclass

from pipelines.envs.docsearch import (
    _STOPWORDS,
    _WEAK_WORDS,
    DOMAIN,
    SEARCH_TOP_K,
    Doc,
    _squash,
    _squashed_lines,
    corpus,
    search,
    tokenize,
)
from pipelines.tasks.building import TaskKind, arrange_turns, sample_from, stable_task_id, turn_of
from pipelines.tasks.records import ANSWER_SEPARATOR, Mistake, Step, Task


# -- task sampling ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pick:
    """One located fact: a line of a topic, a phrase found only on that line, and a query that finds the topic."""

    doc: Doc
    line_no: int
    phrase: str
    query: str

    @property
    def line(self) -> str:
        return self.doc.lines[self.line_no - 1].strip()


@functools.cache
def _line_counts() -> Counter[str]:
    return Counter(_squash(line) for doc in corpus().docs for line in doc.lines if line.strip())


def _quotable(line: str) -> bool:
    """Prose lines only: no code/grammar/table lines (indented, `::=`, `|`, rules), long enough to be specific."""
    text = line.strip()
    return (
        bool(text)
        and not line.startswith((" ", "\t"))
        and len(text) >= 40
        and len(text.split()) >= 6
        and "::=" not in text
        and "|" not in text
        and not set(text) <= set("*=-+~ ")
        and _line_counts()[_squash(text)] == 1
    )


@functools.cache
def _quotable_lines() -> tuple[tuple[str, int], ...]:
    return tuple(
        (doc.doc_id, n)
        for doc in corpus().docs
        for n, line in enumerate(doc.lines, start=1)
        if n > 2 and _quotable(line)
    )


def _phrase_candidates(line: str) -> list[str]:
    """3-word windows of plain words with ≥2 distinctive ones, most distinctive (summed idf) first."""
    idf = corpus().index.idf
    words = [w.strip(".,;:()\"'") for w in line.split()]
    scored = []
    for i in range(len(words) - 2):
        window = words[i : i + 3]
        strong = [w.lower() for w in window if w.lower() not in _WEAK_WORDS and len(w) >= 3]
        if len(strong) >= 2 and all(re.fullmatch(r"[A-Za-z][A-Za-z\-]+", w) for w in window):
            score = sum(idf.get(t, 0.0) for w in strong for t in tokenize(w))
            scored.append((-score, i, " ".join(window)))
    return [phrase for _, _, phrase in sorted(scored)]


@functools.cache
def _corpus_text() -> str:
    """Every line, squashed, one per line: counting a phrase's lines is then a few `str.find` scans."""
    return "\n".join(line for doc in corpus().docs for line in _squashed_lines(doc.doc_id))


def _corpus_hits(phrase: str) -> int:
    """How many lines of the whole corpus contain `phrase` (stops counting at 2: only 'exactly one' matters)."""
    text, wanted, hits, start = _corpus_text(), _squash(phrase), 0, 0
    while hits < 2:
        found = text.find(wanted, start)
        if found < 0:
            break
        hits += 1
        start = text.find("\n", found) + 1 or len(text)
    return hits


def unique_phrases(doc: Doc, line_no: int) -> list[str]:
    """The (up to 3) phrases a task may quote from this line: `find_in_doc` finds each on this line only.

    A window must be literal: "list. For" stripped of its punctuation to "list For" matches no line at all, which
    would make the reference call fail. And it must occur on no other line of the whole corpus, so the answer
    is unambiguous whichever topic the search returns."""
    line = doc.lines[line_no - 1]
    literal = [p for p in _phrase_candidates(line) if _squash(p) in _squash(line)]
    return [p for p in literal if _corpus_hits(p) == 1][:3]


def _pick(rng: random.Random, exclude: set[str], next_line: bool = False) -> _Pick:
    """A random line + unique phrase whose topic BM25 retrieves in the top SEARCH_TOP_K for the phrase query."""
    lines = _quotable_lines()
    for _ in range(200):
        doc_id, line_no = lines[rng.randrange(len(lines))]
        doc = corpus().by_id[doc_id]
        if doc_id in exclude or (next_line and not _has_quotable_next(doc, line_no)):
            continue
        phrases = unique_phrases(doc, line_no)
        if not phrases:
            continue
        phrase = rng.choice(phrases)
        for query in (phrase, f"{phrase} {_title_words(doc)}"):
            if doc in [d for d, _ in search(query, SEARCH_TOP_K)]:
                return _Pick(doc, line_no, phrase, query)
    raise RuntimeError(
        "docsearch: no retrievable line found in 200 draws"
    )  # corpus far smaller than expected


def _has_quotable_next(doc: Doc, line_no: int) -> bool:
    if line_no >= len(doc.lines):
        return False
    following = doc.lines[line_no]
    return len(following.split()) >= 3 and _line_counts()[_squash(following)] == 1


def _title_words(doc: Doc) -> str:
    return " ".join(t for t in tokenize(doc.title) if t not in _STOPWORDS)


def _title_slug(doc: Doc) -> str:
    """A plausible *guessed* id (the title, slugified): never a real id, which is what makes it a mistake."""
    slug = "-".join(tokenize(doc.title)) or "topic"
    return slug if slug not in corpus().by_id else f"{slug}-section"


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


_QUESTIONS = {
    "by_id": (
        'In the Python reference topic `{doc_id}`, find the line that mentions "{phrase}" and quote it.',
        'Quote the line of reference topic `{doc_id}` that contains "{phrase}".',
        'What exactly does the `{doc_id}` topic of the Python reference say in the line with "{phrase}"?',
    ),
    "quote": (
        'Which part of the Python language reference mentions "{phrase}"? Quote the full line.',
        'Find where the Python reference docs talk about "{phrase}" and quote that line exactly.',
        'I remember the Python reference saying something about "{phrase}". Which topic is it in, and what '
        "does the whole line say?",
        'Look up "{phrase}" in the Python language reference and give me the exact line, with its topic.',
    ),
    "next": (
        'In the Python language reference, find the line that mentions "{phrase}". What does the line right '
        "after it say?",
        'Which line follows the one containing "{phrase}" in the Python reference docs? Quote it.',
        'Find "{phrase}" in the Python language reference and quote the line that comes next.',
    ),
}
_MULTI_INTROS = (
    "I have {n} questions about the Python language reference:",
    "Please answer these {n} lookups in the Python reference docs:",
    "Help me check {n} things in the Python language reference:",
)
_SIZE_TO_KIND = {1: "by_id", 2: "quote", 3: "next"}


@dataclass
class _Part:
    """One question of a task: its calls in stage order, answer, final sentence and plan."""

    kind: str
    pick: _Pick
    steps: list[Step]
    question: str
    answer: str
    final: str
    plan: str


def _part(rng: random.Random, kind: str, exclude: set[str]) -> _Part:
    pick = _pick(rng, exclude, next_line=kind == "next")
    doc, phrase = pick.doc, pick.phrase
    find = Step("find_in_doc", {"doc_id": doc.doc_id, "phrase": phrase})
    search_step = Step("search_docs", {"query": pick.query, "top_k": SEARCH_TOP_K})
    question = rng.choice(_QUESTIONS[kind]).format(doc_id=doc.doc_id, phrase=phrase)
    if kind == "by_id":
        plan = f'Look up "{phrase}" in topic `{doc.doc_id}` with find_in_doc and quote the matching line.'
        return _Part(kind, pick, [find], question, pick.line, _said(doc, pick.line), plan)
    if kind == "quote":
        plan = (
            f'Search the reference for "{pick.query}", then run find_in_doc on the matching topic to get the '
            f'exact line with "{phrase}".'
        )
        return _Part(kind, pick, [search_step, find], question, pick.line, _said(doc, pick.line), plan)
    following = doc.lines[pick.line_no].strip()
    read = Step("read_doc", {"doc_id": doc.doc_id, "start_line": pick.line_no + 1, "max_lines": 1})
    plan = (
        f'Search for "{pick.query}", find the line with "{phrase}" in the matching topic, then read the line '
        "right after it with read_doc."
    )
    final = (
        f'In "{doc.doc_id}" ({doc.title}), the line after the one mentioning "{phrase}" reads: {following}'
    )
    return _Part(kind, pick, [search_step, find, read], question, following, final, plan)


def _said(doc: Doc, line: str) -> str:
    return f'The "{doc.doc_id}" topic ({doc.title}) says: {line}'


def _part_mistakes(part: _Part, solution: list[list[Step]]) -> list[Mistake]:
    """Plausible wrong calls: a guessed or mistyped topic id, or the phrase looked up in the wrong topic."""
    doc, phrase = part.pick.doc, part.pick.phrase
    if part.kind == "by_id":
        wrong_id = doc.doc_id.capitalize() if doc.doc_id.capitalize() != doc.doc_id else doc.doc_id + "s"
        reflection = (
            f"Topic ids are case-sensitive; the request wrote `{doc.doc_id}`, so I'll use exactly that."
        )
        step = Step("find_in_doc", {"doc_id": wrong_id, "phrase": phrase})
        return [Mistake(turn_of(solution, part.steps[0]), step, "unknown doc_id", reflection)]
    guess = Step("find_in_doc", {"doc_id": _title_slug(doc), "phrase": phrase})
    mistakes = [
        Mistake(
            turn_of(solution, part.steps[0]),
            guess,
            "unknown doc_id",
            "I guessed a topic id instead of looking it up; ids come from search_docs, so I'll search first.",
        )
    ]
    runner_up = next((d for d, _ in search(part.pick.query, SEARCH_TOP_K) if d.doc_id != doc.doc_id), None)
    if runner_up is not None:
        wrong = Step("find_in_doc", {"doc_id": runner_up.doc_id, "phrase": phrase})
        reflection = (
            f'"{phrase}" is not in `{runner_up.doc_id}`; that was another search hit. The line must be in '
            f"`{doc.doc_id}` ({doc.title}), which the search also returned."
        )
        mistakes.append(Mistake(turn_of(solution, part.steps[1]), wrong, "no line in", reflection))
    return mistakes


def _build(rng: random.Random, kind_name: str, part_kinds: list[str], parallel: bool) -> Task:
    parts: list[_Part] = []
    for part_kind in part_kinds:
        parts.append(_part(rng, part_kind, {p.pick.doc.doc_id for p in parts}))
    stages = max(len(p.steps) for p in parts)
    groups = [[p.steps[i] for p in parts if i < len(p.steps)] for i in range(stages)]
    solution = arrange_turns(groups, parallel)
    if len(parts) == 1:
        request, plan, final = parts[0].question, parts[0].plan, parts[0].final
    else:
        numbered = "\n".join(f"{i}. {p.question}" for i, p in enumerate(parts, start=1))
        request = rng.choice(_MULTI_INTROS).format(n=len(parts)) + "\n" + numbered
        lead = (
            "These lookups are independent, so I'll run them side by side: "
            if parallel
            else "One at a time: "
        )
        plan = lead + " ".join(f"({i}) {p.plan}" for i, p in enumerate(parts, start=1))
        final = "\n".join(f"{i}. {p.final}" for i, p in enumerate(parts, start=1))
    answer = ANSWER_SEPARATOR.join(p.answer for p in parts)
    return Task(
        domain=DOMAIN,
        task_id=stable_task_id(DOMAIN, kind_name, [request, answer, parallel]),
        request=request,
        setup={"corpus_sha256": corpus().sha256},
        solution=solution,
        answer=answer,
        difficulty=sum(len(p.steps) for p in parts),
        mistakes=[m for p in parts for m in _part_mistakes(p, solution)],
        plan=plan,
        final_template=_escape(final),
    )


def _part_sizes(rng: random.Random, difficulty: int) -> list[int]:
    """Split `difficulty` calls over ≥2 questions of 1-3 calls each, as evenly as possible."""
    k = max(2, math.ceil(difficulty / 3))
    sizes = [difficulty // k + (1 if i < difficulty % k else 0) for i in range(k)]
    rng.shuffle(sizes)
    return sizes


def _build_single(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    return _build(rng, _SIZE_TO_KIND[difficulty], [_SIZE_TO_KIND[difficulty]], parallel)


def _build_multi(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    return _build(rng, "multi", [_SIZE_TO_KIND[s] for s in _part_sizes(rng, difficulty)], parallel)


TASK_KINDS = [
    TaskKind("quote_by_id", _build_single, range(1, 2)),
    TaskKind("quote", _build_single, range(2, 3)),
    TaskKind("next_line", _build_single, range(3, 4)),
    TaskKind("multi", _build_multi, range(2, 9), parallel_from=2),
]


def sample_task(rng: random.Random, difficulty: int | None = None, parallel: bool = False) -> Task:
    """A verifiable lookup task needing `difficulty` calls (1–8); `parallel` asks ≥2 questions side by side."""
    return sample_from(TASK_KINDS, DOMAIN, rng, difficulty, parallel)
