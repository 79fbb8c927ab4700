"""SQL tasks over generated tables: aggregates, group comparisons, inserts, updates (the env is pipelines/envs/sqlite_db.py)."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.envs.sqlite_db import (
    DOMAIN,
)
from pipelines.tasks.building import TaskKind, build_task, sample_from, spoken_list
from pipelines.tasks.records import Step, Task

_FIRST = [
    "Ada", "Bilal", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jamal", "Keiko", "Liam",
    "Maya", "Nikhil", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Yara",
]  # fmt: skip
_LAST = [
    "Garcia", "Okafor", "Novak", "Tanaka", "Silva", "Kowalski", "Haddad", "Lindqvist", "Moreau", "Patel",
    "Rossi", "Nguyen", "Schmidt", "Kaya", "Murphy", "Costa", "Ivanova", "Mensah", "Berg", "Alvarez",
]  # fmt: skip
_ADJECTIVES = [
    "Silent", "Crimson", "Hidden", "Last", "Golden", "Broken", "Distant", "Iron", "Paper", "Midnight",
    "Quiet", "Wild", "Glass", "Hollow", "Northern", "Secret", "Burning", "Frozen",
]  # fmt: skip
_NOUNS = [
    "Garden", "River", "Archive", "Lantern", "Harbor", "Orchard", "Signal", "Kingdom", "Mirror", "Compass",
    "Tide", "Forest", "Engine", "Letter", "Voyage", "Bridge", "Winter", "Atlas",
]  # fmt: skip
_GOODS = [
    "Lamp", "Kettle", "Backpack", "Headphones", "Blender", "Desk", "Chair", "Monitor", "Keyboard", "Tent",
    "Jacket", "Drill", "Mug", "Speaker", "Router", "Stapler", "Bottle", "Scarf",
]  # fmt: skip
_BRANDS = ["Nova", "Apex", "Terra", "Luma", "Orbit", "Pico", "Zen", "Vista", "Ember", "Halo"]


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


@dataclass(frozen=True)
class _Spec:
    """One table template: its columns, the column rows are grouped by, the column naming a row, and wording."""

    table: str
    noun: str  # plural, as in "How many employees …"
    columns: tuple[tuple[str, str], ...]
    group: str
    groups: tuple[str, ...]
    group_word: str  # "department", "category"…
    label: str  # unique per row ("id" when rows have no natural name)
    numeric: str  # the column for sums, maxima and updates
    numeric_words: str
    synonyms: dict[str, str]  # column → a plausible wrong name that the tool rejects
    make_row: Callable[[random.Random, str], dict[str, Any]]


def _employee(rng: random.Random, group: str) -> dict[str, Any]:
    title = rng.choice(["Analyst", "Engineer", "Manager", "Specialist", "Coordinator", "Lead"])
    city = rng.choice(["Lisbon", "Toronto", "Nairobi", "Osaka", "Berlin", "Austin", "Lyon", "Pune"])
    return {
        "name": _person(rng),
        "department": group,
        "title": title,
        "salary": rng.randrange(40_000, 160_000, 500),
        "hire_year": rng.randint(2008, 2024),
        "city": city,
    }


def _product(rng: random.Random, group: str) -> dict[str, Any]:
    return {
        "name": f"{rng.choice(_BRANDS)} {rng.choice(_GOODS)} {rng.randint(1, 99)}",
        "category": group,
        "price": round(rng.uniform(3, 480), 2),
        "stock": rng.randint(0, 120),
        "supplier": rng.choice(_BRANDS),
    }


def _order(rng: random.Random, group: str) -> dict[str, Any]:
    return {
        "customer": rng.choice(_CUSTOMERS),
        "product": rng.choice(_GOODS),
        "quantity": rng.randint(1, 20),
        "status": group,
        "order_date": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
    }


def _book(rng: random.Random, group: str) -> dict[str, Any]:
    return {
        "title": f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}",
        "author": _person(rng),
        "genre": group,
        "year": rng.randint(1950, 2024),
        "pages": rng.randint(90, 900),
        "copies": rng.randint(0, 12),
    }


def _student(rng: random.Random, group: str) -> dict[str, Any]:
    return {
        "name": _person(rng),
        "subject": group,
        "grade": rng.randint(9, 12),
        "score": rng.randint(35, 100),
    }


_CUSTOMERS = [
    "Acme Corp", "Blue Finch", "Cedar Labs", "Delta Foods", "Evergreen", "Fjord Media", "Granite Co",
    "Harbor Inn", "Ionic Ltd", "Juniper Ltd",
]  # fmt: skip
_SPECS = {
    "employees": _Spec(
        "employees",
        "employees",
        (
            ("id", "INTEGER"),
            ("name", "TEXT"),
            ("department", "TEXT"),
            ("title", "TEXT"),
            ("salary", "INTEGER"),
            ("hire_year", "INTEGER"),
            ("city", "TEXT"),
        ),
        "department",
        ("Sales", "Engineering", "Support", "Marketing", "Finance", "Legal", "Operations", "Research"),
        "department",
        "name",
        "salary",
        "salary",
        {"department": "dept", "salary": "wage", "hire_year": "year_hired"},
        _employee,
    ),
    "products": _Spec(
        "products",
        "products",
        (
            ("id", "INTEGER"),
            ("name", "TEXT"),
            ("category", "TEXT"),
            ("price", "REAL"),
            ("stock", "INTEGER"),
            ("supplier", "TEXT"),
        ),
        "category",
        ("Kitchen", "Outdoor", "Office", "Audio", "Garden", "Toys", "Lighting", "Tools"),
        "category",
        "name",
        "stock",
        "units in stock",
        {"category": "type", "stock": "quantity", "price": "cost"},
        _product,
    ),
    "orders": _Spec(
        "orders",
        "orders",
        (
            ("id", "INTEGER"),
            ("customer", "TEXT"),
            ("product", "TEXT"),
            ("quantity", "INTEGER"),
            ("status", "TEXT"),
            ("order_date", "TEXT"),
        ),
        "status",
        ("pending", "shipped", "delivered", "cancelled", "returned", "processing", "on_hold", "refunded"),
        "status",
        "id",
        "quantity",
        "quantity",
        {"status": "state", "quantity": "qty", "customer": "client"},
        _order,
    ),
    "books": _Spec(
        "books",
        "books",
        (
            ("id", "INTEGER"),
            ("title", "TEXT"),
            ("author", "TEXT"),
            ("genre", "TEXT"),
            ("year", "INTEGER"),
            ("pages", "INTEGER"),
            ("copies", "INTEGER"),
        ),
        "genre",
        ("Fantasy", "Mystery", "History", "Science", "Poetry", "Romance", "Travel", "Biography"),
        "genre",
        "title",
        "pages",
        "page count",
        {"genre": "category", "pages": "page_count", "author": "writer"},
        _book,
    ),
    "students": _Spec(
        "students",
        "students",
        (
            ("id", "INTEGER"),
            ("name", "TEXT"),
            ("subject", "TEXT"),
            ("grade", "INTEGER"),
            ("score", "INTEGER"),
        ),
        "subject",
        ("Math", "Physics", "Chemistry", "Biology", "History", "Art", "Music", "Economics"),
        "subject",
        "name",
        "score",
        "score",
        {"subject": "course", "score": "mark", "grade": "year"},
        _student,
    ),
}


def _rows(rng: random.Random, spec: _Spec, counts: dict[str, int], others: int) -> list[dict[str, Any]]:
    """Rows with exactly `counts[g]` rows in each listed group, plus `others` rows in unlisted groups."""
    free = [g for g in spec.groups if g not in counts]
    wanted = [g for g, n in counts.items() for _ in range(n)] + [
        rng.choice(free) for _ in range(others if free else 0)
    ]
    rows, labels = [], set()
    for group in wanted:
        row = spec.make_row(rng, group)
        while spec.label != "id" and row[spec.label] in labels:  # names identify rows: keep them unique
            row = spec.make_row(rng, group)
        labels.add(row.get(spec.label))
        rows.append(row)
    rng.shuffle(rows)
    return [{"id": i, **row} for i, row in enumerate(rows, start=1)]


def _table_setup(spec: _Spec, rows: list[dict[str, Any]]) -> dict[str, Any]:
    names = [c for c, _ in spec.columns]
    return {
        "name": spec.table,
        "columns": [list(c) for c in spec.columns],
        "rows": [[r[c] for c in names] for r in rows],
    }


def _database(rng: random.Random, spec: _Spec, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The task's table plus up to two unrelated ones, so list_tables and describe_table matter."""
    extra = rng.sample([s for s in _SPECS.values() if s is not spec], rng.randint(0, 2))
    tables = [(spec, rows)] + [(s, _rows(rng, s, {}, rng.randint(5, 12))) for s in extra]
    return {"tables": [_table_setup(s, r) for s, r in sorted(tables, key=lambda t: t[0].table)]}


def _literal(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'" if isinstance(value, str) else str(value)


_task = functools.partial(build_task, DOMAIN)  # (kind, groups, parallel, **Task fields)


def _column_why(wrong: str, right: str, table: str) -> str:
    return (
        f"There is no column {wrong} in {table}; the column list in the error shows it is called {right}, so "
        "I'll use that name."
    )


_IN_GROUP = {
    "employees": "in the {g} department",
    "products": "in the {g} category",
    "orders": "with status {g}",
    "books": "in the {g} genre",
    "students": "taking {g}",
}


def _in_group(spec: _Spec, group: str) -> str:
    return _IN_GROUP[spec.table].format(g=group)


def _describe(spec: _Spec, row: dict[str, Any]) -> str:
    """A row in words: its name first, then every other column as "column value"."""
    parts = [f"{c.replace('_', ' ')} {row[c]}" for c, _ in spec.columns if c not in ("id", spec.label)]
    return f"{row[spec.label]} ({', '.join(parts)})" if spec.label != "id" else ", ".join(parts)


# -- kind: one aggregate question answered with a SELECT (after discovering the schema at difficulty 2–3) ---------
_QUESTION_FRAMES = {
    1: [
        "{q}",
        "Quick database question: {q}",
        "Can you check the database? {q}",
        "Using the {table} table: {q}",
        "I need a number from our DB. {q}",
        "Look this up for me: {q}",
    ],
    2: [
        "I don't remember the columns of the {table} table. {q}",
        "{q} Check how the {table} table is structured first.",
        "Look at the {table} table's layout, then answer: {q}",
        "I'm new to this database and its {table} table. {q}",
        "First inspect the {table} schema, then tell me: {q}",
    ],
    3: [
        "I don't know which tables this database has. {q}",
        "{q} You'll have to explore the database first.",
        "Find the right table and columns, then answer: {q}",
        "Without knowing the schema: {q}",
        "Explore the database and tell me: {q}",
    ],
}


def _aggregate_question(
    rng: random.Random, spec: _Spec, rows: list[dict[str, Any]]
) -> tuple[str, str, str, str]:
    """(question, sql, answer, the same sql with a wrong column name)."""
    group = rng.choice(sorted({r[spec.group] for r in rows}))
    members = [r for r in rows if r[spec.group] == group]
    where, t, num = f"{{g}} = {_literal(group)}", spec.table, spec.numeric
    kinds = ["count", "sum", "max"] + (["top"] if spec.label != "id" else [])
    kind = rng.choice(kinds)
    if kind == "count":
        question, sql = (
            f"How many {spec.noun} are {_in_group(spec, group)}?",
            f"SELECT COUNT(*) FROM {t} WHERE {where}",
        )
        answer = len(members)
    elif kind == "sum":
        question = f"What is the total {spec.numeric_words} of the {spec.noun} {_in_group(spec, group)}?"
        sql, answer = f"SELECT SUM({num}) FROM {t} WHERE {where}", sum(r[num] for r in members)
    elif kind == "max":
        question = f"What is the highest {spec.numeric_words} among the {spec.noun} {_in_group(spec, group)}?"
        sql, answer = f"SELECT MAX({num}) FROM {t} WHERE {where}", max(r[num] for r in members)
    else:
        top = sorted(members, key=lambda r: r[num], reverse=True)
        if len(top) > 1 and top[0][num] == top[1][num]:
            top[0][num] += 1  # a unique winner keeps the ground truth unambiguous
        question = f"Which of the {spec.noun} {_in_group(spec, group)} has the highest {spec.numeric_words}?"
        sql, answer = (
            f"SELECT {spec.label} FROM {t} WHERE {where} ORDER BY {num} DESC LIMIT 1",
            top[0][spec.label],
        )
    return question, sql.format(g=spec.group), str(answer), sql.format(g=spec.synonyms[spec.group])


def _build_aggregate(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    spec = rng.choice(list(_SPECS.values()))
    rows = _rows(rng, spec, {rng.choice(spec.groups): rng.randint(2, 6)}, rng.randint(6, 16))
    question, sql, answer, wrong_sql = _aggregate_question(rng, spec, rows)
    select = Step("run_select", {"query": sql})
    discovery = [[Step("list_tables", {})], [Step("describe_table", {"table": spec.table})]][3 - difficulty :]
    why = _column_why(spec.synonyms[spec.group], spec.group, spec.table)
    return _task(
        "aggregate",
        [*discovery, [select]],
        parallel,
        request=rng.choice(_QUESTION_FRAMES[difficulty]).format(q=question, table=spec.table),
        setup=_database(rng, spec, rows),
        answer=answer,
        plan=("Find the table and its columns, then " if difficulty > 1 else "")
        + f"run one SELECT on {spec.table}.",
        final_template=rng.choice(
            ["{answer}", "The answer is {answer}.", "According to the database: {answer}."]
        ),
        mistakes=[(select, Step("run_select", {"query": wrong_sql}), "no such column", why)],
    )


# -- kind: which group has the most rows ---------------------------------------------------------------------------
_COMPARE_REQUESTS = [
    "Which {group_word} has the most {noun}: {groups}?",
    "{groups}: which {group_word} counts the most {noun}?",
    "Where are the most {noun}: {groups}?",
    "I need to know which of {groups} has the largest number of {noun}.",
    "Count the {noun} per {group_word} ({groups}) and tell me which is biggest.",
]


def _build_group_compare(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    spec = rng.choice(list(_SPECS.values()))
    chosen = rng.sample(spec.groups, difficulty)
    counts = {g: rng.randint(1, 6) for g in chosen}
    counts[chosen[0]] = max(counts.values()) + rng.randint(1, 2)
    rows = _rows(rng, spec, counts, rng.randint(0, 8))
    shown = sorted(chosen, key=lambda g: rng.random())
    steps = [Step("count_rows", {"table": spec.table, "where": {spec.group: g}}) for g in shown]
    wrong = Step("count_rows", {"table": spec.table, "where": {spec.synonyms[spec.group]: shown[0]}})
    return _task(
        "group_compare",
        [steps],
        parallel,
        request=rng.choice(_COMPARE_REQUESTS).format(
            group_word=spec.group_word, noun=spec.noun, groups=spoken_list(shown, "or")
        ),
        setup=_database(rng, spec, rows),
        answer=chosen[0],
        plan=f"Count the {spec.noun} of each {spec.group_word} with count_rows (independent calls) and compare.",
        final_template=f"{{answer}} has the most {spec.noun} ({counts[chosen[0]]}).",
        mistakes=[
            (
                steps[0],
                wrong,
                "no such column",
                _column_why(spec.synonyms[spec.group], spec.group, spec.table),
            )
        ],
    )


# -- kind: insert several new rows ---------------------------------------------------------------------------------
_INSERT_REQUESTS = [
    "Add these to the {table} table: {rows}.",
    "Please insert the following {noun} into {table}: {rows}.",
    "New {noun} to record: {rows}.",
    "Create {table} entries for {rows}.",
    "Put these into the database ({table}): {rows}.",
]


def _new_rows(
    rng: random.Random, spec: _Spec, rows: list[dict[str, Any]], count: int
) -> list[dict[str, Any]]:
    """Rows unlike any existing one (and unique by name), so "exactly one such row" checks the insert."""
    seen = [{k: v for k, v in r.items() if k != "id"} for r in rows]
    taken = {r[spec.label] for r in rows}
    fresh: list[dict[str, Any]] = []
    while len(fresh) < count:
        candidate = spec.make_row(rng, rng.choice(spec.groups))
        if candidate not in seen and (spec.label == "id" or candidate[spec.label] not in taken):
            seen.append(candidate)
            taken.add(candidate.get(spec.label))
            fresh.append(candidate)
    return fresh


def _build_insert(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    spec = rng.choice(list(_SPECS.values()))
    rows = _rows(rng, spec, {}, rng.randint(5, 14))
    new_rows = _new_rows(rng, spec, rows, difficulty)
    inserts = [Step("insert_row", {"table": spec.table, "values": row}) for row in new_rows]
    bad_column = next(iter(spec.synonyms))
    wrong_values = {(spec.synonyms[k] if k == bad_column else k): v for k, v in new_rows[0].items()}
    return _task(
        "insert",
        [inserts],
        parallel,
        request=rng.choice(_INSERT_REQUESTS).format(
            table=spec.table, noun=spec.noun, rows="; ".join(_describe(spec, r) for r in new_rows)
        ),
        setup=_database(rng, spec, rows),
        expected_state={
            "row_counts": {spec.table: len(rows) + difficulty},
            "rows": [{"table": spec.table, "match": row, "count": 1} for row in new_rows],
        },
        plan=f"Insert each new row into {spec.table} with insert_row (independent calls).",
        final_template=f"Added {difficulty} row(s) to {spec.table}.",
        mistakes=[
            (
                inserts[0],
                Step("insert_row", {"table": spec.table, "values": wrong_values}),
                "no such column",
                _column_why(spec.synonyms[bad_column], bad_column, spec.table),
            )
        ],
    )


# -- kind: read current values, then update each row by id --------------------------------------------------------
_UPDATE_REQUESTS = [
    "Please {action}.",
    "{Action}. Check the current values first, then update each row.",
    "Could you {action} in the database?",
    "Database change needed: {action}.",
    "I'd like you to {action}; update them one by one by id.",
]


def _update_plan(rng: random.Random, spec: _Spec, group: str) -> tuple[str, Callable[[int], int]]:
    """(request wording, old value → new value) for the numeric column of one group."""
    if spec.table == "employees":
        percent = rng.choice([2, 3, 4, 5, 8, 10, 12, 15])
        return f"give everyone {_in_group(spec, group)} a {percent}% raise", lambda v: v + v * percent // 100
    amount = rng.randint(1, 10)
    action = f"increase the {spec.numeric_words} of all {spec.noun} {_in_group(spec, group)} by {amount}"
    return action, lambda v: v + amount


def _update_by_id(spec: _Spec, row_id: int, column: str, value: int) -> Step:
    return Step("update_rows", {"table": spec.table, "values": {column: value}, "where": {"id": row_id}})


def _build_select_update(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    spec = rng.choice(list(_SPECS.values()))
    group = rng.choice(spec.groups)
    rows = _rows(rng, spec, {group: difficulty - 1}, rng.randint(3, 12))
    action, change = _update_plan(rng, spec, group)
    targets = [r for r in rows if r[spec.group] == group]
    query = f"SELECT id, {spec.numeric} FROM {spec.table} WHERE {spec.group} = {_literal(group)}"
    updates = [_update_by_id(spec, r["id"], spec.numeric, change(r[spec.numeric])) for r in targets]
    untouched = [r for r in rows if r[spec.group] != group][:2]
    checks = [{"id": r["id"], spec.numeric: change(r[spec.numeric])} for r in targets]
    checks += [{"id": r["id"], spec.numeric: r[spec.numeric]} for r in untouched]
    wrong_column = spec.synonyms[spec.numeric]
    wrong = _update_by_id(spec, targets[0]["id"], wrong_column, change(targets[0][spec.numeric]))
    return _task(
        "select_update",
        [[Step("run_select", {"query": query})], updates],
        parallel,
        request=rng.choice(_UPDATE_REQUESTS).format(action=action, Action=action[0].upper() + action[1:]),
        setup=_database(rng, spec, rows),
        expected_state={"rows": [{"table": spec.table, "match": c, "count": 1} for c in checks]},
        plan=f"SELECT the ids and current {spec.numeric} of the rows {_in_group(spec, group)}, compute each new "
        "value, then update every row by id (independent calls).",
        final_template=f"Updated {difficulty - 1} row(s) in {spec.table}.",
        mistakes=[(updates[0], wrong, "no such column", _column_why(wrong_column, spec.numeric, spec.table))],
    )


# -- kind: one structured UPDATE over orders (optionally counting them first) ----------------------------------
_STATUS_MOVES = [
    ("pending", "shipped"),
    ("shipped", "delivered"),
    ("processing", "cancelled"),
    ("on_hold", "processing"),
    ("delivered", "returned"),
]
_BULK_REQUESTS = [
    "Mark all {old} orders from {customer} as {new}.",
    "Every {old} order placed by {customer} is now {new}; update the database.",
    "Set the status of {customer}'s {old} orders to {new}.",
    "Please change {customer}'s orders that are {old} to {new}.",
    "{customer}: all their {old} orders should become {new}.",
]
_COUNT_BULK_REQUESTS = [
    "How many {old} orders does {customer} have? Mark them all as {new} afterwards.",
    "Count {customer}'s {old} orders, then set them to {new}.",
    "First tell me how many orders from {customer} are {old}, then change them to {new}.",
    "Check how many {old} orders {customer} has and update all of them to {new}.",
    "I need the number of {old} orders from {customer}; after that, mark them {new}.",
]


def _orders_for(rng: random.Random, customer: str, status: str, count: int) -> list[dict[str, Any]]:
    return [{**_order(rng, status), "customer": customer} for _ in range(count)]


def _numbered(rows: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    rng.shuffle(rows)
    return [{"id": i, **{k: v for k, v in row.items() if k != "id"}} for i, row in enumerate(rows, start=1)]


def _build_bulk_update(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    spec, customer = _SPECS["orders"], rng.choice(_CUSTOMERS)
    old, new = rng.choice(_STATUS_MOVES)
    matching = rng.randint(1, 4)
    rows = _numbered(
        _orders_for(rng, customer, old, matching) + _rows(rng, spec, {}, rng.randint(6, 16)), rng
    )
    matching = sum(1 for r in rows if r["customer"] == customer and r["status"] == old)
    already_new = sum(1 for r in rows if r["customer"] == customer and r["status"] == new)
    where = {"customer": customer, "status": old}
    update = Step("update_rows", {"table": "orders", "values": {"status": new}, "where": where})
    groups = (
        [[update]]
        if difficulty == 1
        else [[Step("count_rows", {"table": "orders", "where": where})], [update]]
    )
    why = "The error lists the tables: it is called orders (plural), so I'll use that name."
    return _task(
        "bulk_update",
        groups,
        parallel,
        request=rng.choice(_BULK_REQUESTS if difficulty == 1 else _COUNT_BULK_REQUESTS).format(
            old=old, new=new, customer=customer
        ),
        setup=_database(rng, spec, rows),
        answer=None if difficulty == 1 else str(matching),
        expected_state={
            "row_counts": {"orders": len(rows)},
            "rows": [
                {"table": "orders", "match": where, "count": 0},
                {
                    "table": "orders",
                    "match": {"customer": customer, "status": new},
                    "count": matching + already_new,
                },
            ],
        },
        plan=("Count the matching orders, then " if difficulty == 2 else "")
        + f"update {customer}'s {old} orders to {new} in one update_rows call.",
        final_template=f"{customer} had {{answer}} {old} order(s); all are now {new}."
        if difficulty == 2
        else f"All of {customer}'s {old} orders are now {new}.",
        mistakes=[
            (update, Step("update_rows", {**update.arguments, "table": "order"}), "no such table", why)
        ],
    )


# -- kind: delete the cancelled orders of several customers ---------------------------------------------------------
_DELETE_REQUESTS = [
    "Delete the cancelled orders of {customers}.",
    "Remove every cancelled order placed by {customers} from the orders table.",
    "Clean up: {customers} have cancelled orders that should be deleted.",
    "Please purge the cancelled orders for {customers}.",
    "Get rid of all cancelled orders from {customers}.",
]


def _build_delete(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    spec, customers = _SPECS["orders"], rng.sample(_CUSTOMERS, difficulty)
    doomed = [row for c in customers for row in _orders_for(rng, c, "cancelled", rng.randint(1, 2))]
    rows = _numbered(doomed + _rows(rng, spec, {}, rng.randint(6, 16)), rng)
    removed = sum(1 for r in rows if r["customer"] in customers and r["status"] == "cancelled")
    deletes = [
        Step("delete_rows", {"table": "orders", "where": {"customer": c, "status": "cancelled"}})
        for c in customers
    ]
    wrong = Step("delete_rows", {"table": "orders", "where": {"client": customers[0], "status": "cancelled"}})
    return _task(
        "delete",
        [deletes],
        parallel,
        request=rng.choice(_DELETE_REQUESTS).format(customers=spoken_list(customers)),
        setup=_database(rng, spec, rows),
        expected_state={
            "row_counts": {"orders": len(rows) - removed},
            "rows": [
                {"table": "orders", "match": {"customer": c, "status": "cancelled"}, "count": 0}
                for c in customers
            ],
        },
        plan="Delete each customer's cancelled orders with delete_rows (independent calls).",
        final_template=f"Deleted the cancelled orders of {len(customers)} customer(s).",
        mistakes=[(deletes[0], wrong, "no such column", _column_why("client", "customer", "orders"))],
    )


# -- kind: look a value up, then use it in a second query ------------------------------------------------------------
_TWO_HOP_REQUESTS = [
    "How many {noun} are in the same {group_word} as {who}?",
    "{who} belongs to some {group_word}. How many {noun} does that {group_word} have in total?",
    "Count the {noun} that share {who}'s {group_word}.",
    "What's the size of {who}'s {group_word}, counted in {noun}?",
    "Find {who}'s {group_word} and tell me how many {noun} belong to it.",
]


def _build_two_hop(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    spec = rng.choice([s for s in _SPECS.values() if s.label != "id"])
    rows = _rows(rng, spec, {}, rng.randint(8, 20))
    who = rng.choice(rows)
    group = who[spec.group]
    lookup = Step(
        "run_select",
        {"query": f"SELECT {spec.group} FROM {spec.table} WHERE {spec.label} = {_literal(who[spec.label])}"},
    )
    count = Step("count_rows", {"table": spec.table, "where": {spec.group: group}})
    wrong = Step("count_rows", {"table": spec.table, "where": {spec.synonyms[spec.group]: group}})
    return _task(
        "two_hop",
        [[lookup], [count]],
        parallel,
        request=rng.choice(_TWO_HOP_REQUESTS).format(
            noun=spec.noun, group_word=spec.group_word, who=who[spec.label]
        ),
        setup=_database(rng, spec, rows),
        answer=str(sum(1 for r in rows if r[spec.group] == group)),
        plan=f"Look up the {spec.group} of {who[spec.label]}, then count the rows with that {spec.group}.",
        final_template=f"{who[spec.label]} is in {group}, which has {{answer}} {spec.noun}.",
        mistakes=[
            (count, wrong, "no such column", _column_why(spec.synonyms[spec.group], spec.group, spec.table))
        ],
    )


TASK_KINDS = [
    TaskKind("aggregate", _build_aggregate, range(1, 4)),
    TaskKind("group_compare", _build_group_compare, range(2, 9), parallel_from=2),
    TaskKind("insert", _build_insert, range(1, 9), parallel_from=2),
    TaskKind("select_update", _build_select_update, range(2, 9), parallel_from=3),
    TaskKind("bulk_update", _build_bulk_update, range(1, 3)),
    TaskKind("delete", _build_delete, range(1, 9), parallel_from=2),
    TaskKind("two_hop", _build_two_hop, range(2, 3)),
]


def sample_task(rng: random.Random, difficulty: int | None = None, parallel: bool = False) -> Task:
    """A verifiable SQLite task needing `difficulty` calls (1–8); `parallel` puts ≥2 calls in one turn."""
    return sample_from(TASK_KINDS, DOMAIN, rng, difficulty, parallel)
