"""A calendar of events plus a todo list, and its task sampler.

Dates are ISO `YYYY-MM-DD` and times 24-hour `HH:MM`; anything else is refused with the expected format in
the message (people and models both write "March 4" or "3pm"). Events may not overlap, which is what makes
`find_free_slot` meaningful and gives the error→recovery pattern a real conflict to recover from. Ids are
sequential (`ev7`, `td3`), so a sampler that knows the setup knows every id in advance.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any, Literal

from pipelines.envs.base import ToolEnv, ToolError
from pipelines.errors import BadInput

DOMAIN = "calendar"
MAX_RANGE_DAYS = 366
MAX_ITEMS = 500
MAX_ATTENDEES = 20
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_PRIORITIES = ("low", "medium", "high")
_EVENT_FIELDS = frozenset({"id", "title", "date", "start_time", "duration_minutes", "attendees"})
_TODO_FIELDS = frozenset({"id", "title", "due_date", "priority", "done"})


def _parse_date(text: Any, field: str) -> date:
    if not isinstance(text, str) or not _DATE_RE.match(text.strip()):
        raise ToolError(f"invalid {field} {text!r}: expected YYYY-MM-DD, e.g. 2025-03-04")
    try:
        return date.fromisoformat(text.strip())
    except ValueError as exc:
        raise ToolError(f"invalid {field} {text!r}: {exc} (expected YYYY-MM-DD)") from None


def _parse_time(text: Any, field: str) -> int:
    """Minutes after midnight of an HH:MM time."""
    match = _TIME_RE.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ToolError(f"invalid {field} {text!r}: expected HH:MM in 24-hour time, e.g. 14:30")
    return int(match.group(1)) * 60 + int(match.group(2))


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _span(event: dict[str, Any]) -> tuple[int, int]:
    start = _parse_time(event["start_time"], "start_time")
    return start, start + event["duration_minutes"]


def first_free_start(events: list[dict[str, Any]], duration: int, earliest: int, latest: int) -> int | None:
    """Earliest start ≥ `earliest` where `duration` minutes fit before `latest` without touching any event."""
    spans = sorted(_span(e) for e in events)
    for start in sorted({earliest, *(end for _, end in spans)}):
        if start < earliest or start + duration > latest:
            continue
        if all(start >= end or start + duration <= begin for begin, end in spans):
            return start
    return None


class CalendarEnv(ToolEnv):
    """A personal calendar (events without overlaps) and a todo list with due dates and priorities."""

    domain = DOMAIN

    def __init__(self) -> None:
        super().__init__()
        self._events: dict[str, dict[str, Any]] = {}
        self._todos: dict[str, dict[str, Any]] = {}

    # -- state ------------------------------------------------------------------------------------------------
    def _setup(self, setup: dict[str, Any]) -> None:
        for key, required in (("events", _EVENT_FIELDS), ("todos", _TODO_FIELDS)):
            for index, item in enumerate(setup.get(key, [])):
                missing = sorted(required - set(item))
                if missing:
                    raise BadInput(f"calendar task setup: {key}[{index}] lacks {', '.join(missing)}")
        self._events = {e["id"]: dict(e) for e in setup.get("events", [])}
        self._todos = {t["id"]: dict(t) for t in setup.get("todos", [])}

    def _check_state(self, expected: dict[str, Any]) -> bool:
        """`events`/`todos`: [{fields…, present}] matched on the given fields; `*_count`: totals."""
        if "event_count" in expected and len(self._events) != expected["event_count"]:
            return False
        if "todo_count" in expected and len(self._todos) != expected["todo_count"]:
            return False
        return all(_present(self._events, spec) for spec in expected.get("events", [])) and all(
            _present(self._todos, spec) for spec in expected.get("todos", [])
        )

    def _next_id(self, items: dict[str, Any], prefix: str) -> str:
        numbers = [
            int(k[len(prefix) :]) for k in items if k.startswith(prefix) and k[len(prefix) :].isdigit()
        ]
        return f"{prefix}{max(numbers, default=0) + 1}"

    def _conflict(self, day: str, start: int, end: int, ignore: str | None = None) -> dict[str, Any] | None:
        for event in self._events.values():
            begin, finish = _span(event)
            if event["id"] != ignore and event["date"] == day and start < finish and begin < end:
                return event
        return None

    def _slot(self, day: str, start_time: str, duration: int, ignore: str | None = None) -> tuple[int, int]:
        """Validated (start, end) minutes of a new placement; ToolError when it is malformed or clashes."""
        start = _parse_time(start_time, "start_time")
        if not isinstance(duration, int) or isinstance(duration, bool) or not 5 <= duration <= 720:
            raise ToolError(f"duration_minutes must be a whole number from 5 to 720, got {duration!r}")
        if start + duration > 24 * 60:
            raise ToolError(
                f"an event starting at {start_time} for {duration} minutes would run past midnight"
            )
        clash = self._conflict(day, start, start + duration, ignore)
        if clash:
            begin, finish = _span(clash)
            raise ToolError(
                f"conflicts with {clash['id']} '{clash['title']}' on {day} {_clock(begin)}-{_clock(finish)}; "
                "use find_free_slot to pick a free time"
            )
        return start, start + duration

    def _event(self, event_id: str) -> dict[str, Any]:
        if not isinstance(event_id, str) or event_id not in self._events:
            raise ToolError(f"no event with id {event_id!r}; list_events shows the ids (like 'ev3')")
        return self._events[event_id]

    # -- tools ------------------------------------------------------------------------------------------------
    def list_events(self, start_date: str, end_date: str | None = None) -> str:
        """List the events from start_date to end_date (inclusive), ordered by date and time.

        Args:
            start_date: First day, YYYY-MM-DD.
            end_date: Last day, YYYY-MM-DD (default: the same as start_date).
        """
        first = _parse_date(start_date, "start_date")
        last = _parse_date(end_date, "end_date") if end_date is not None else first
        if last < first:
            raise ToolError(f"end_date {end_date} is before start_date {start_date}")
        if (last - first).days >= MAX_RANGE_DAYS:
            raise ToolError(f"date range too long: at most {MAX_RANGE_DAYS} days")
        chosen = [e for e in self._events.values() if first.isoformat() <= e["date"] <= last.isoformat()]
        chosen.sort(key=lambda e: (e["date"], e["start_time"], e["id"]))
        return json.dumps([_shown_event(e) for e in chosen], ensure_ascii=False, sort_keys=True)

    def add_calendar_event(
        self,
        title: str,
        date: str,
        start_time: str,
        duration_minutes: int = 60,
        attendees: list[str] | None = None,
    ) -> str:
        """Add an event to the calendar. It may not overlap another event.

        Args:
            title: What the event is, e.g. "Design review".
            date: Day of the event, YYYY-MM-DD.
            start_time: Start time, HH:MM (24-hour).
            duration_minutes: Length in minutes (5-720).
            attendees: Names of the other people invited.
        """
        day = _parse_date(date, "date").isoformat()
        title, people = _clean_title(title), _clean_attendees(attendees)
        start, end = self._slot(day, start_time, duration_minutes)
        if len(self._events) >= MAX_ITEMS:
            raise ToolError(f"the calendar is full ({MAX_ITEMS} events)")
        event_id = self._next_id(self._events, "ev")
        self._events[event_id] = {
            "id": event_id,
            "title": title,
            "date": day,
            "start_time": _clock(start),
            "duration_minutes": duration_minutes,
            "attendees": people,
        }
        return f"created {event_id} '{title}' on {day} {_clock(start)}-{_clock(end)}"

    def delete_event(self, event_id: str) -> str:
        """Remove an event from the calendar.

        Args:
            event_id: The event's id as shown by list_events, e.g. "ev3".
        """
        event = self._events.pop(self._event(event_id)["id"])
        return f"deleted {event['id']} '{event['title']}' on {event['date']} {event['start_time']}"

    def reschedule_event(self, event_id: str, new_date: str, new_start_time: str) -> str:
        """Move an event to another day and/or time, keeping its length. The new time must be free.

        Args:
            event_id: The event's id as shown by list_events, e.g. "ev3".
            new_date: New day, YYYY-MM-DD.
            new_start_time: New start time, HH:MM (24-hour).
        """
        event = self._event(event_id)
        day = _parse_date(new_date, "new_date").isoformat()
        start, end = self._slot(day, new_start_time, event["duration_minutes"], ignore=event["id"])
        event.update(date=day, start_time=_clock(start))
        return f"moved {event['id']} '{event['title']}' to {day} {_clock(start)}-{_clock(end)}"

    def find_free_slot(
        self, date: str, duration_minutes: int, earliest: str = "09:00", latest: str = "17:00"
    ) -> str:
        """Find the earliest free time on a day for an event of the given length.

        Args:
            date: The day to search, YYYY-MM-DD.
            duration_minutes: How long the slot must be, in minutes.
            earliest: Do not start before this time, HH:MM (default 09:00).
            latest: The slot must end by this time, HH:MM (default 17:00).
        """
        day = _parse_date(date, "date").isoformat()
        low, high = _parse_time(earliest, "earliest"), _parse_time(latest, "latest")
        if (
            not isinstance(duration_minutes, int)
            or isinstance(duration_minutes, bool)
            or duration_minutes < 5
        ):
            raise ToolError(
                f"duration_minutes must be a whole number of at least 5, got {duration_minutes!r}"
            )
        events = [e for e in self._events.values() if e["date"] == day]
        start = first_free_start(events, duration_minutes, low, high)
        if start is None:
            return f"no free {duration_minutes}-minute slot on {day} between {earliest} and {latest}"
        return f"{day} {_clock(start)}-{_clock(start + duration_minutes)} is free"

    def add_todo(
        self, title: str, due_date: str | None = None, priority: Literal["low", "medium", "high"] = "medium"
    ) -> str:
        """Add an item to the todo list.

        Args:
            title: What needs doing.
            due_date: When it is due, YYYY-MM-DD (optional).
            priority: How important it is.
        """
        title = _clean_title(title)
        due = _parse_date(due_date, "due_date").isoformat() if due_date is not None else None
        if priority not in _PRIORITIES:
            raise ToolError(f"invalid priority {priority!r}: use low, medium or high")
        if len(self._todos) >= MAX_ITEMS:
            raise ToolError(f"the todo list is full ({MAX_ITEMS} items)")
        todo_id = self._next_id(self._todos, "td")
        self._todos[todo_id] = {
            "id": todo_id,
            "title": title,
            "due_date": due,
            "priority": priority,
            "done": False,
        }
        return f"added {todo_id} '{title}'" + (f" due {due}" if due else "") + f" ({priority} priority)"

    def complete_todo(self, todo_id: str) -> str:
        """Mark a todo item as done.

        Args:
            todo_id: The item's id as shown by list_todos, e.g. "td2".
        """
        if not isinstance(todo_id, str) or todo_id not in self._todos:
            raise ToolError(f"no todo with id {todo_id!r}; list_todos shows the ids (like 'td2')")
        todo = self._todos[todo_id]
        if todo["done"]:
            raise ToolError(f"{todo_id} '{todo['title']}' is already completed")
        todo["done"] = True
        return f"completed {todo_id} '{todo['title']}'"

    def list_todos(self, include_done: bool = False) -> str:
        """List todo items: by due date (undated last), then priority (high first).

        Args:
            include_done: Also list items that are already completed.
        """
        chosen = [t for t in self._todos.values() if include_done or not t["done"]]
        return json.dumps(sorted(chosen, key=_todo_order), ensure_ascii=False, sort_keys=True)


def _todo_order(todo: dict[str, Any]) -> tuple[Any, ...]:
    return (todo["done"], todo["due_date"] or "9999-12-31", -_PRIORITIES.index(todo["priority"]), todo["id"])


def _shown_event(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "end_time": _clock(_span(event)[1])}


def _present(items: dict[str, dict[str, Any]], spec: dict[str, Any]) -> bool:
    fields = {k: v for k, v in spec.items() if k != "present"}
    found = any(all(_same(item.get(k), v) for k, v in fields.items()) for item in items.values())
    return found == spec.get("present", True)


def _same(actual: Any, expected: Any) -> bool:
    """Titles typed by a model may differ in case or outer spaces from the request: that is still the item."""
    if isinstance(actual, str) and isinstance(expected, str):
        return actual.strip().casefold() == expected.strip().casefold()
    return actual == expected


def _clean_title(title: Any) -> str:
    if not isinstance(title, str) or not title.strip() or len(title) > 200:
        raise ToolError("title must be non-empty text of at most 200 characters")
    return title.strip()


def _clean_attendees(attendees: Any) -> list[str]:
    if attendees is None:
        return []
    if not isinstance(attendees, list) or not all(isinstance(a, str) and a.strip() for a in attendees):
        raise ToolError("attendees must be a list of names")
    if len(attendees) > MAX_ATTENDEES:
        raise ToolError(f"too many attendees (max {MAX_ATTENDEES})")
    return [a.strip() for a in attendees]


# == task sampler ==============================================================================================
