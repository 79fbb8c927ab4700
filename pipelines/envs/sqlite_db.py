"""A real in-memory SQLite database per task (employees, products, orders, books, students), and its sampler.

Reads go through `run_select`, guarded three ways: the text must be one SELECT/WITH statement, an authorizer
denies every action but reading (so `DROP`, `PRAGMA`, `ATTACH`, writes inside a CTE… fail inside SQLite
itself), and a progress handler plus length limits stop runaway queries. Writes go through structured tools
whose table and column names are checked against the schema and whose values are bound as parameters, so
no model-written text is ever spliced into SQL.
"""

from __future__ import annotations

import copy
import json
import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from pipelines.envs.base import ToolEnv, ToolError
from pipelines.errors import BadInput

DOMAIN = "sqlite"
MAX_RESULT_ROWS = 100
MAX_QUERY_SECONDS = 2.0
MAX_VM_STEPS = 20_000_000
MAX_VALUE_CHARS = 1_000_000
MAX_SQL_CHARS = 10_000
_IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_SELECT_RE = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)
_READ_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}
_DENIED_FUNCTIONS = {"load_extension", "randomblob", "zeroblob"}
_NOT_ALLOWED = (
    "only SELECT queries are allowed in run_select; use insert_row, update_rows or delete_rows to change data"
)


def _select_only(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    """SQLite authorizer for run_select: reading is fine, anything else is refused while preparing."""
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def _sql_type_error(column: str, kind: str, value: Any) -> str | None:
    if kind == "INTEGER" and not (isinstance(value, int) and not isinstance(value, bool)):
        return f"column {column} expects an integer, got {value!r}"
    if kind == "REAL" and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return f"column {column} expects a number, got {value!r}"
    if kind == "TEXT" and not isinstance(value, str):
        return f"column {column} expects text, got {value!r}"
    return None


class SqliteEnv(ToolEnv):
    """A small relational database: inspect tables, run SELECT queries, insert, update and delete rows."""

    domain = DOMAIN

    def __init__(self) -> None:
        super().__init__()
        self._db = self._connect()
        self._schema: dict[str, list[tuple[str, str]]] = {}

    @staticmethod
    def _connect() -> sqlite3.Connection:
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_CHARS)
        db.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_CHARS)
        db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        return db

    # -- state ------------------------------------------------------------------------------------------------
    def _fork(self) -> SqliteEnv:
        """A deep copy with its own in-memory database, copied page by page (`Connection.backup`)."""
        db, self._db = self._db, None  # type: ignore[assignment]  # a connection cannot be deep-copied
        try:
            clone = copy.deepcopy(self)
        finally:
            self._db = db
        clone._db = self._connect()
        db.backup(clone._db)
        return clone

    def _setup(self, setup: dict[str, Any]) -> None:
        self._db.close()
        self._db, self._schema = self._connect(), {}
        for table in setup.get("tables", []):
            self._create_table(table["name"], [tuple(c) for c in table["columns"]], table.get("rows", []))

    def _create_table(self, name: str, columns: list[tuple[str, str]], rows: list[list[Any]]) -> None:
        for identifier in [name, *(c for c, _ in columns)]:
            if not _IDENTIFIER_RE.match(identifier):
                raise BadInput(f"sqlite task setup: invalid table or column name {identifier!r}")
        if columns[0] != ("id", "INTEGER"):
            raise BadInput(f"sqlite task setup: table {name!r} must start with an ('id', 'INTEGER') column")
        definitions = ", ".join(
            '"id" INTEGER PRIMARY KEY' if c == "id" else f'"{c}" {kind} NOT NULL' for c, kind in columns
        )
        self._db.execute(f'CREATE TABLE "{name}" ({definitions})')
        marks = ", ".join("?" for _ in columns)
        self._db.executemany(f'INSERT INTO "{name}" VALUES ({marks})', rows)
        self._schema[name] = columns

    def _check_state(self, expected: dict[str, Any]) -> bool:
        """`row_counts`: table → rows; `rows`: [{table, match: {column: value}, count}] (equality matches)."""
        for table, count in expected.get("row_counts", {}).items():
            if table not in self._schema or self._count(table, {}) != count:
                return False
        return all(self._count(c["table"], c["match"]) == c["count"] for c in expected.get("rows", []))

    def _count(self, table: str, where: dict[str, Any]) -> int:
        clause, params = self._where_clause(table, where)
        return self._db.execute(f'SELECT COUNT(*) FROM "{table}"{clause}', params).fetchone()[0]

    # -- validation of structured arguments -------------------------------------------------------------------
    def _table(self, table: str) -> list[tuple[str, str]]:
        if not isinstance(table, str) or table not in self._schema:
            raise ToolError(f"no such table: {table} (tables: {', '.join(sorted(self._schema)) or 'none'})")
        return self._schema[table]

    def _typed_values(self, table: str, values: Any, what: str) -> dict[str, Any]:
        """Check column names and value types against the schema; ToolError names the first problem."""
        if not isinstance(values, dict):
            raise ToolError(f"{what} must be an object mapping column names to values")
        columns = dict(self._table(table))
        for column, value in values.items():
            if column not in columns:
                raise ToolError(f"no such column: {column} in table {table} (columns: {', '.join(columns)})")
            problem = _sql_type_error(column, columns[column], value)
            if problem:
                raise ToolError(f"{what}: {problem}")
        return values

    def _where_clause(self, table: str, where: dict[str, Any]) -> tuple[str, list[Any]]:
        conditions = self._typed_values(table, where, "where")
        if not conditions:
            return "", []
        return " WHERE " + " AND ".join(f'"{c}" = ?' for c in conditions), list(conditions.values())

    def _schema_hint(self, message: str, query: str) -> str:
        """What does exist, after SQLite's bare "no such table/column": the same names the structured tools' errors
        list, so a model's correction is grounded in what it observed instead of a guess."""
        if message.startswith("no such table"):
            return f" (tables: {', '.join(sorted(self._schema)) or 'none'})"
        if not message.startswith("no such column"):
            return ""
        words = set(re.findall(r"[a-z_][a-z0-9_]*", query.lower()))
        named = [t for t in sorted(self._schema) if t in words] or sorted(self._schema)
        listed = "; ".join(f"{t}: {', '.join(c for c, _ in self._schema[t])}" for t in named)
        return f" (columns of {listed})" if listed else ""

    def _write(self, sql: str, params: list[Any]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise ToolError(f"SQL error: {exc}") from None

    # -- tools ------------------------------------------------------------------------------------------------
    def list_tables(self) -> str:
        """List the database's tables with their row counts."""
        return json.dumps([{"table": t, "rows": self._count(t, {})} for t in sorted(self._schema)])

    def describe_table(self, table: str) -> str:
        """Show a table's columns with their types, and its row count.

        Args:
            table: Table name, e.g. "employees".
        """
        columns = [{"name": c, "type": kind} for c, kind in self._table(table)]
        return json.dumps({"table": table, "columns": columns, "rows": self._count(table, {})})

    def run_select(self, query: str, limit: int = 20) -> str:
        """Run one read-only SQL SELECT query and return its columns and rows.

        Args:
            query: A single SELECT (or WITH … SELECT) statement, e.g. "SELECT name FROM employees WHERE salary > 50000".
            limit: Maximum number of rows to return (1-100).
        """
        if not isinstance(query, str) or not _SELECT_RE.match(query):
            raise ToolError(_NOT_ALLOWED)
        if not isinstance(limit, int) or not 1 <= limit <= MAX_RESULT_ROWS:
            raise ToolError(f"limit must be an integer from 1 to {MAX_RESULT_ROWS}")
        self._db.set_authorizer(_select_only)
        self._db.set_progress_handler(_query_budget(), 1000)
        try:
            cursor = self._db.execute(query)
            rows = cursor.fetchmany(limit + 1)
        except (sqlite3.Error, sqlite3.Warning) as exc:
            raise ToolError(_explain_sql_error(exc) + self._schema_hint(str(exc), query)) from None
        finally:
            self._db.set_authorizer(None)
            self._db.set_progress_handler(None, 0)
        columns = [d[0] for d in cursor.description or []]
        return json.dumps(
            {"columns": columns, "rows": [list(r) for r in rows[:limit]], "truncated": len(rows) > limit}
        )

    def count_rows(self, table: str, where: dict[str, Any] | None = None) -> str:
        """Count the rows of a table, optionally only those whose columns equal the given values.

        Args:
            table: Table name.
            where: Column → value conditions that must all hold, e.g. {"department": "Sales"}. Omit to count all rows.
        """
        self._table(table)
        return str(self._count(table, where or {}))

    def insert_row(self, table: str, values: dict[str, Any]) -> str:
        """Insert one row. Give a value for every column except id, which is assigned automatically.

        Args:
            table: Table name.
            values: Column → value for the new row, e.g. {"name": "Ada", "department": "Engineering", ...}.
        """
        row = self._typed_values(table, values, "values")
        missing = [c for c, _ in self._schema[table] if c != "id" and c not in row]
        if missing:
            raise ToolError(f"missing values for columns: {', '.join(missing)}")
        names = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join("?" for _ in row)
        cursor = self._write(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', list(row.values()))
        return f"inserted row with id {cursor.lastrowid} into {table}"

    def update_rows(self, table: str, values: dict[str, Any], where: dict[str, Any]) -> str:
        """Set new values on every row matching all the `where` conditions.

        Args:
            table: Table name.
            values: Column → new value, e.g. {"status": "shipped"}. The id column cannot be changed.
            where: Column → value conditions that must all hold (at least one), e.g. {"id": 7}.
        """
        changes = self._typed_values(table, values, "values")
        if not changes or "id" in changes:
            raise ToolError("values must set at least one column, and never id")
        clause, params = self._where_clause(table, where)
        if not clause:
            raise ToolError("where needs at least one condition (refusing to update every row)")
        assignments = ", ".join(f'"{c}" = ?' for c in changes)
        count = self._write(
            f'UPDATE "{table}" SET {assignments}{clause}', [*changes.values(), *params]
        ).rowcount
        return f"updated {count} row(s) in {table}"

    def delete_rows(self, table: str, where: dict[str, Any]) -> str:
        """Delete every row matching all the `where` conditions.

        Args:
            table: Table name.
            where: Column → value conditions that must all hold (at least one), e.g. {"status": "cancelled"}.
        """
        clause, params = self._where_clause(table, where)
        if not clause:
            raise ToolError("where needs at least one condition (refusing to delete every row)")
        count = self._write(f'DELETE FROM "{table}"{clause}', params).rowcount
        return f"deleted {count} row(s) from {table}"


def _query_budget() -> Callable[[], int]:
    """Progress handler: a non-zero return aborts the query (runaway recursive CTEs, huge cross joins)."""
    deadline = time.monotonic() + MAX_QUERY_SECONDS
    calls = {"n": 0}

    def handler() -> int:
        calls["n"] += 1
        return int(calls["n"] * 1000 > MAX_VM_STEPS or time.monotonic() > deadline)

    return handler


def _explain_sql_error(exc: Exception) -> str:
    message = str(exc)
    if "not authorized" in message or "prohibited" in message:
        return _NOT_ALLOWED
    if "interrupted" in message:
        return f"query stopped: it needed more than {MAX_QUERY_SECONDS:g}s or {MAX_VM_STEPS} steps"
    if "one statement at a time" in message:
        return "run_select takes exactly one SELECT statement"
    return f"SQL error: {message}"


# == task sampler ==============================================================================================
