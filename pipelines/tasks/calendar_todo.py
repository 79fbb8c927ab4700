"""Calendar and todo tasks: agendas, bookings, free slots, cancellations, todos (the env is pipelines/envs/calendar_todo.py)."""

from __future__ import annotations

import functools
import random
from datetime import date, timedelta
from typing import Any

from pipelines.envs.calendar_todo import (
    _PRIORITIES,
    DOMAIN,
    _clock,
    _span,
    _todo_order,
    first_free_start,
)
from pipelines.tasks.building import TaskKind, build_task, sample_from, spoken_list
from pipelines.tasks.records import Step, Task

_PEOPLE = [
    "Priya", "Marco", "Aiko", "Lena", "Tomás", "Sam", "Noor", "Kwame", "Ines", "Oliver", "Mei", "Jonas",
]  # fmt: skip
_TITLES = [
    "Team standup", "Design review", "Budget meeting", "Sprint planning", "Dentist", "Yoga class",
    "Client call", "Code review", "Interview", "Product demo",
]  # fmt: skip
_TODO_TITLES = [
    "Renew passport", "Pay electricity bill", "Book flights", "Send invoice", "Call the plumber", "Update CV",
    "Buy a birthday gift", "Back up laptop", "File expense report", "Order printer ink",
    "Schedule car service", "Return library books", "Water the plants", "Cancel old subscription",
]  # fmt: skip
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]
_MONTHS += ["November", "December"]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _spoken(day: date, rng: random.Random) -> str:
    """A date the way people write it; the tools still need ISO, which the model has to produce."""
    month, weekday = _MONTHS[day.month - 1], _WEEKDAYS[day.weekday()]
    return rng.choice(
        [
            day.isoformat(),
            f"{month} {day.day}, {day.year}",
            f"{weekday}, {month} {day.day}, {day.year}",
            f"{day.day} {month} {day.year}",
            f"{weekday[:3]} {day.day} {month[:3]} {day.year}",
        ]
    )


def _english(day: date) -> str:
    return f"{_MONTHS[day.month - 1]} {day.day}, {day.year}"


def _spoken_time(minutes: int, rng: random.Random) -> str:
    hour, minute = divmod(minutes, 60)
    twelve = f"{(hour - 1) % 12 + 1}{f':{minute:02d}' if minute else ''} {'am' if hour < 12 else 'pm'}"
    return rng.choice([_clock(minutes), twelve])


def _unaccepted_time(minutes: int, spoken: str) -> str:
    """How the request's time might be passed on verbatim: "2:30 pm", or "14h30" when it said 14:30."""
    return spoken if spoken != _clock(minutes) else f"{minutes // 60}h{minutes % 60:02d}"


def _day_events(rng: random.Random, day: date, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for _ in range(count * 4):
        if len(events) == count:
            break
        start, duration = rng.randrange(8 * 60, 17 * 60, 30), rng.choice([30, 45, 60, 90])
        candidate: dict[str, Any] = {
            "title": rng.choice(_TITLES),
            "date": day.isoformat(),
            "start_time": _clock(start),
        }
        candidate |= {"duration_minutes": duration, "attendees": rng.sample(_PEOPLE, rng.randint(0, 3))}
        if first_free_start(events, duration, start, start + duration) == start:
            events.append(candidate)
    return events


def _calendar(rng: random.Random, days: int = 10) -> tuple[date, list[dict[str, Any]]]:
    """A window of `days` days from a random Monday-ish start, 0–4 non-overlapping events per day."""
    first = date(2025, 1, 6) + timedelta(days=rng.randint(0, 600))
    events = [e for i in range(days) for e in _day_events(rng, first + timedelta(days=i), rng.randint(0, 4))]
    return first, _numbered(events, "ev")


def _numbered(items: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}{i}", **{k: v for k, v in item.items() if k != "id"}}
        for i, item in enumerate(items, 1)
    ]


def _todos(rng: random.Random, first: date, count: int) -> list[dict[str, Any]]:
    todos = []
    for title in rng.sample(_TODO_TITLES, count):
        due = (first + timedelta(days=rng.randint(0, 20))).isoformat() if rng.random() < 0.8 else None
        todos.append(
            {"title": title, "due_date": due, "priority": rng.choice(_PRIORITIES), "done": rng.random() < 0.2}
        )
    return _numbered(todos, "td")


_task = functools.partial(build_task, DOMAIN)  # (kind, groups, parallel, **Task fields)


_ISO_WHY = "The calendar only accepts ISO dates, so {spoken} has to be written as {iso}."
_TIME_WHY = "Times must be 24-hour HH:MM, so I'll write {time} instead."


def _date_slip(step: Step, argument: str, spoken: str) -> tuple[Step, Step, str, str]:
    """Mistake: the request's spoken date passed on verbatim as `argument` of `step`, refused as not ISO."""
    wrong = Step(step.tool, {**step.arguments, argument: spoken})
    return step, wrong, "expected YYYY-MM-DD", _ISO_WHY.format(spoken=spoken, iso=step.arguments[argument])


def _time_slip(step: Step, argument: str, start: int, spoken_time: str) -> tuple[Step, Step, str, str]:
    """Mistake: the request's time (`start` minutes) passed on as said, in `argument`, refused as not HH:MM."""
    wrong = Step(step.tool, {**step.arguments, argument: _unaccepted_time(start, spoken_time)})
    return step, wrong, "expected HH:MM", _TIME_WHY.format(time=_clock(start))


# -- kind: a question about one day's agenda ---------------------------------------------------------------------
_AGENDA_REQUESTS = {
    "count": [
        "How many events do I have on {day}?",
        "How busy am I on {day}? Just the number of meetings, please.",
        "Count my appointments for {day}.",
    ],
    "first": [
        "What's my first appointment on {day}?",
        "What do I start with on {day}?",
        "Which event comes first on {day}?",
    ],
    "when": [
        "What time is my {title} on {day}?",
        "When does the {title} start on {day}?",
        "I have a {title} on {day}. At what time?",
    ],
}


def _build_agenda(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    first, events = _calendar(rng)
    while not events:
        first, events = _calendar(rng)
    day = rng.choice(sorted({e["date"] for e in events}))
    todays = sorted((e for e in events if e["date"] == day), key=lambda e: e["start_time"])
    unique = [e for e in todays if sum(x["title"] == e["title"] for x in todays) == 1]
    question = rng.choice(["count", "first"] + (["when"] if unique else []))
    target = rng.choice(unique) if question == "when" else todays[0]
    answer = {"count": str(len(todays)), "first": todays[0]["title"], "when": target["start_time"]}[question]
    step = Step("list_events", {"start_date": day})
    spoken = _english(date.fromisoformat(day))
    return _task(
        "agenda",
        [[step]],
        parallel,
        request=rng.choice(_AGENDA_REQUESTS[question]).format(
            day=_spoken(date.fromisoformat(day), rng), title=target["title"]
        ),
        setup={"events": events, "todos": _todos(rng, first, rng.randint(0, 6))},
        answer=answer,
        plan=f"List the events on {day} and read off the answer.",
        final_template={
            "count": "You have {answer} event(s) that day.",
            "first": "Your first event is {answer}.",
            "when": f"Your {target['title']} starts at {{answer}}.",
        }[question],
        mistakes=[_date_slip(step, "start_date", spoken)],
    )


# -- kind: book one event at a given free time --------------------------------------------------------------------
_BOOK_REQUESTS = [
    "Schedule '{title}' on {day} at {time} for {duration} minutes{with_people}.",
    "Put a {duration}-minute {title} in my calendar on {day}, starting {time}{with_people}.",
    "Book {title} for {day} at {time} ({duration} min){with_people}.",
    "Add an event: {title}, {day}, {time}, {duration} minutes{with_people}.",
    "Can you create a {title} on {day} from {time}, lasting {duration} minutes{with_people}?",
]


def _free_start(rng: random.Random, events: list[dict[str, Any]], day: str, duration: int) -> int | None:
    todays = [e for e in events if e["date"] == day]
    options = [
        s for s in range(8 * 60, 18 * 60, 30) if first_free_start(todays, duration, s, s + duration) == s
    ]
    return rng.choice(options) if options else None


def _build_book(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    first, events = _calendar(rng)
    day = (first + timedelta(days=rng.randint(0, 9))).isoformat()
    duration = rng.choice([30, 45, 60, 90])
    start = _free_start(rng, events, day, duration)
    while start is None:
        day = (first + timedelta(days=rng.randint(0, 9))).isoformat()
        start = _free_start(rng, events, day, duration)
    title, people = rng.choice(_TITLES), rng.sample(_PEOPLE, rng.randint(0, 3))
    arguments = {"title": title, "date": day, "start_time": _clock(start), "duration_minutes": duration}
    step = Step("add_calendar_event", arguments | ({"attendees": people} if people else {}))
    spoken_time = _spoken_time(start, rng)
    with_people = f" with {spoken_list(people)}" if people else ""
    return _task(
        "book",
        [[step]],
        parallel,
        request=rng.choice(_BOOK_REQUESTS).format(
            title=title,
            day=_spoken(date.fromisoformat(day), rng),
            time=spoken_time,
            duration=duration,
            with_people=with_people,
        ),
        setup={"events": events, "todos": _todos(rng, first, rng.randint(0, 6))},
        expected_state={
            "event_count": len(events) + 1,
            "events": [dict(step.arguments)],
        },
        plan=f"Create the event on {day} at {_clock(start)} for {duration} minutes.",
        final_template=f"Booked {title} on {day} at {_clock(start)}.",
        mistakes=[_time_slip(step, "start_time", start, spoken_time)],
    )


# -- kind: find a free slot, then book it --------------------------------------------------------------------------
_SLOT_REQUESTS = [
    "Find me a free {duration}-minute slot on {day} for '{title}' and book it.",
    "When am I free for {duration} minutes on {day}? Put {title} there.",
    "Book {title} ({duration} min) at the earliest free time on {day}, between 9 and 5.",
    "I need {duration} minutes for {title} on {day}. Take the first opening and schedule it.",
    "Squeeze a {duration}-minute {title} into {day} wherever the first gap is.",
]


def _build_find_and_book(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    start = None
    while start is None:
        first, events = _calendar(rng)
        day, duration = (first + timedelta(days=rng.randint(0, 9))).isoformat(), rng.choice([30, 45, 60, 90])
        start = first_free_start([e for e in events if e["date"] == day], duration, 9 * 60, 17 * 60)
    title = rng.choice(_TITLES)
    find = Step("find_free_slot", {"date": day, "duration_minutes": duration})
    create = Step(
        "add_calendar_event",
        {"title": title, "date": day, "start_time": _clock(start), "duration_minutes": duration},
    )
    spoken = _english(date.fromisoformat(day))
    mistake = _date_slip(find, "date", spoken)
    if start != 9 * 60:  # 09:00 is taken: booking it blindly is the natural slip
        why = "09:00 is already taken; find_free_slot said the first free time is " + _clock(start) + "."
        mistake = (
            create,
            Step("add_calendar_event", {**create.arguments, "start_time": "09:00"}),
            "conflicts with",
            why,
        )
    return _task(
        "find_and_book",
        [[find], [create]],
        parallel,
        request=rng.choice(_SLOT_REQUESTS).format(
            duration=duration, day=_spoken(date.fromisoformat(day), rng), title=title
        ),
        setup={"events": events, "todos": _todos(rng, first, rng.randint(0, 6))},
        answer=_clock(start),
        expected_state={"event_count": len(events) + 1, "events": [dict(create.arguments)]},
        plan=f"Ask find_free_slot for {duration} minutes on {day}, then create the event at that time.",
        final_template=f"Booked {title} on {day} at {{answer}}.",
        mistakes=[mistake],
    )


# -- kind: cancel every occurrence of a meeting in a date range ---------------------------------------------------
_CANCEL_REQUESTS = [
    "Cancel all my {title} events between {start} and {end}.",
    "Clear every {title} from my calendar from {start} to {end}.",
    "I'm off from {start} to {end}; delete the {title} entries in that period.",
    "Remove each {title} scheduled between {start} and {end}.",
    "Please drop all {title} meetings from {start} through {end}.",
]


def _recurring(rng: random.Random, first: date, title: str, days: list[int]) -> list[dict[str, Any]]:
    start, duration = rng.choice([8 * 60, 8 * 60 + 30, 12 * 60, 18 * 60]), rng.choice([15, 30])
    return [
        {
            "title": title,
            "date": (first + timedelta(days=d)).isoformat(),
            "start_time": _clock(start),
            "duration_minutes": duration,
            "attendees": [],
        }
        for d in days
    ]


def _without_clashes(events: list[dict[str, Any]], fixed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop random events that overlap the planted ones, so the setup itself has no conflicts."""
    kept = []
    for event in events:
        begin, end = _span(event)
        if not any(f["date"] == event["date"] and begin < _span(f)[1] and _span(f)[0] < end for f in fixed):
            kept.append(event)
    return kept


def _build_cancel(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    first, events = _calendar(rng, days=12)
    title = rng.choice(["Weekly sync", "Morning run", "Piano lesson", "Status call", "Lunch walk"])
    inside = sorted(rng.sample(range(1, 11), difficulty - 1))
    planted = _recurring(rng, first, title, [*inside, 11])  # day 11 lies outside the range and must survive
    events = _numbered(
        _without_clashes([{k: v for k, v in e.items() if k != "id"} for e in events], planted) + planted, "ev"
    )
    start, end = first + timedelta(days=inside[0]), first + timedelta(days=10)
    targets = [e for e in events if e["title"] == title and e["date"] <= end.isoformat()]
    listing = Step("list_events", {"start_date": start.isoformat(), "end_date": end.isoformat()})
    deletes = [Step("delete_event", {"event_id": e["id"]}) for e in targets]
    why = "delete_event needs the event's id from list_events (like 'ev3'), not its title."
    return _task(
        "cancel",
        [[listing], deletes],
        parallel,
        request=rng.choice(_CANCEL_REQUESTS).format(
            title=title, start=_spoken(start, rng), end=_spoken(end, rng)
        ),
        setup={"events": events, "todos": _todos(rng, first, rng.randint(0, 5))},
        expected_state={
            "event_count": len(events) - len(targets),
            "events": [{"title": title, "date": e["date"], "present": False} for e in targets]
            + [{"title": title, "date": planted[-1]["date"], "present": True}],
        },
        plan=f"List the events from {start} to {end}, then delete each {title} by id (independent calls).",
        final_template=f"Cancelled {len(targets)} {title} event(s).",
        mistakes=[(deletes[0], Step("delete_event", {"event_id": title}), "no event with id", why)],
    )


# -- kind: add several todos ----------------------------------------------------------------------------------------
_ADD_TODO_REQUESTS = [
    "Add to my todo list: {items}.",
    "Please note these tasks: {items}.",
    "New todos for me: {items}.",
    "Remind me of the following: {items}.",
    "Put these on my list: {items}.",
]


def _todo_words(todo: dict[str, Any], rng: random.Random) -> str:
    due = f", due {_spoken(date.fromisoformat(todo['due_date']), rng)}" if todo["due_date"] else ""
    return f"{todo['title'].lower()} ({todo['priority']} priority{due})"


def _build_add_todos(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    first, events = _calendar(rng)
    existing = _todos(rng, first, rng.randint(0, 5))
    titles = rng.sample([t for t in _TODO_TITLES if t not in {x["title"] for x in existing}], difficulty)
    new: list[dict[str, Any]] = [
        {
            "title": t,
            "due_date": (first + timedelta(days=rng.randint(0, 20))).isoformat()
            if rng.random() < 0.75
            else None,
            "priority": rng.choice(_PRIORITIES),
        }
        for t in titles
    ]
    adds = [Step("add_todo", {k: v for k, v in todo.items() if v is not None}) for todo in new]
    dated = next((i for i, t in enumerate(new) if t["due_date"]), None)
    mistakes = []
    if dated is not None:
        spoken = _english(date.fromisoformat(new[dated]["due_date"]))
        mistakes.append(_date_slip(adds[dated], "due_date", spoken))
    return _task(
        "add_todos",
        [adds],
        parallel,
        request=rng.choice(_ADD_TODO_REQUESTS).format(items="; ".join(_todo_words(t, rng) for t in new)),
        setup={"events": events, "todos": existing},
        expected_state={
            "todo_count": len(existing) + difficulty,
            "todos": [{**t, "done": False} for t in new],
        },
        plan="Add each item with add_todo, with its due date in ISO form and its priority (independent calls).",
        final_template=f"Added {difficulty} item(s) to your todo list.",
        mistakes=mistakes,
    )


# -- kind: tick off several todos -----------------------------------------------------------------------------------
_COMPLETE_REQUESTS = [
    "I finished {items}. Tick them off my list.",
    "Mark {items} as done.",
    "Done with {items} — please complete them in my todos.",
    "You can check off {items}.",
    "Close these todos, they're finished: {items}.",
]


def _build_complete_todos(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    first, events = _calendar(rng)
    todos = _todos(rng, first, min(len(_TODO_TITLES), difficulty - 1 + rng.randint(1, 4)))
    for todo in todos:
        todo["done"] = False
    chosen = rng.sample(todos, difficulty - 1)
    listing = Step("list_todos", {})
    completes = [Step("complete_todo", {"todo_id": t["id"]}) for t in chosen]
    why = "complete_todo needs the item's id from list_todos (like 'td2'), not its title."
    others = [t for t in todos if t not in chosen]
    return _task(
        "complete_todos",
        [[listing], completes],
        parallel,
        request=rng.choice(_COMPLETE_REQUESTS).format(
            items=spoken_list([f"'{t['title'].lower()}'" for t in chosen])
        ),
        setup={"events": events, "todos": todos},
        expected_state={
            "todo_count": len(todos),
            "todos": [{"id": t["id"], "done": True} for t in chosen]
            + [{"id": t["id"], "done": False} for t in others],
        },
        plan="List the todos to find the ids, then complete each finished item (independent calls).",
        final_template=f"Marked {len(chosen)} item(s) as done.",
        mistakes=[
            (completes[0], Step("complete_todo", {"todo_id": chosen[0]["title"]}), "no todo with id", why)
        ],
    )


# -- kind: which open todo is most urgent ----------------------------------------------------------------------------
_TOP_TODO_REQUESTS = [
    "What should I work on first from my todo list?",
    "Which open todo is due soonest?",
    "What's the most urgent thing on my list?",
    "Looking at my todos, which one comes first?",
    "Tell me the next item I need to handle on my todo list.",
]


def _build_top_todo(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    while True:
        first, events = _calendar(rng)
        todos = _todos(rng, first, rng.randint(2, 8))
        open_items = sorted((t for t in todos if not t["done"]), key=_todo_order)
        if len(open_items) == 1 or (
            len(open_items) > 1 and _todo_order(open_items[0])[:3] != _todo_order(open_items[1])[:3]
        ):
            break
    top = open_items[0]
    return _task(
        "top_todo",
        [[Step("list_todos", {})]],
        parallel,
        request=rng.choice(_TOP_TODO_REQUESTS),
        setup={"events": events, "todos": todos},
        answer=top["title"],
        plan="List the open todos (sorted by due date, then priority) and name the first one.",
        final_template="Start with: {answer}"
        + (f" (due {top['due_date']}, {top['priority']} priority)." if top["due_date"] else "."),
    )


# -- kind: move one event ----------------------------------------------------------------------------------------------
_RESCHEDULE_REQUESTS = [
    "Move my {title} on {day} to {new_day} at {time}.",
    "Reschedule the {title} from {day} to {new_day}, {time}.",
    "The {title} on {day} needs to happen on {new_day} at {time} instead.",
    "Can you shift {day}'s {title} to {time} on {new_day}?",
    "Push the {title} ({day}) to {new_day} at {time}.",
]


def _pick_move(rng: random.Random) -> tuple[date, list[dict[str, Any]], dict[str, Any], str, int]:
    """(window start, events, an event unique by title on its day, new day, new start free for it)."""
    while True:
        first, events = _calendar(rng)
        unique = [
            e for e in events if sum(x["title"] == e["title"] and x["date"] == e["date"] for x in events) == 1
        ]
        if not unique:
            continue
        event = rng.choice(unique)
        new_day = (first + timedelta(days=rng.randint(0, 9))).isoformat()
        others = [e for e in events if e["id"] != event["id"]]
        start = _free_start(rng, others, new_day, event["duration_minutes"])
        if start is not None and (new_day, _clock(start)) != (event["date"], event["start_time"]):
            return first, events, event, new_day, start


def _build_reschedule(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    first, events, event, new_day, start = _pick_move(rng)
    listing = Step("list_events", {"start_date": event["date"]})
    move = Step(
        "reschedule_event", {"event_id": event["id"], "new_date": new_day, "new_start_time": _clock(start)}
    )
    spoken_time = _spoken_time(start, rng)
    day_text, new_text = (
        _spoken(date.fromisoformat(event["date"]), rng),
        _spoken(date.fromisoformat(new_day), rng),
    )
    return _task(
        "reschedule",
        [[listing], [move]],
        parallel,
        request=rng.choice(_RESCHEDULE_REQUESTS).format(
            title=event["title"], day=day_text, new_day=new_text, time=spoken_time
        ),
        setup={"events": events, "todos": _todos(rng, first, rng.randint(0, 5))},
        expected_state={
            "event_count": len(events),
            "events": [
                {"id": event["id"], "date": new_day, "start_time": _clock(start)},
                {
                    "title": event["title"],
                    "date": event["date"],
                    "start_time": event["start_time"],
                    "present": False,
                },
            ],
        },
        plan=f"List {event['date']} to find the event's id, then reschedule it to {new_day} {_clock(start)}.",
        final_template=f"Moved {event['title']} to {new_day} at {_clock(start)}.",
        mistakes=[_time_slip(move, "new_start_time", start, spoken_time)],
    )


# -- kind: book the same event on several days, each at that day's first free time ----------------------------------
_BOOK_MANY_REQUESTS = [
    "Book a {duration}-minute '{title}' on each of {days}, at the earliest free time each day (9:00-17:00).",
    "For {days}: find the first free {duration} minutes between 9 and 5 and schedule {title} there.",
    "I want a {title} of {duration} minutes on {days}, each at the first opening of the working day.",
    "Please put {title} ({duration} min) on {days}, wherever each day's first gap after 9:00 is.",
    "Schedule {title} on {days} — {duration} minutes, as early as possible between 09:00 and 17:00.",
]


def _build_book_many(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    count = difficulty // 2
    while True:
        first, events = _calendar(rng)
        days = sorted(rng.sample(range(10), count))
        duration = rng.choice([30, 45, 60])
        dates = [(first + timedelta(days=d)).isoformat() for d in days]
        starts = [
            first_free_start([e for e in events if e["date"] == d], duration, 9 * 60, 17 * 60) for d in dates
        ]
        if None not in starts:
            break
    title = rng.choice(["Focus time", "Standup", "Inbox zero", "Planning block", "Walk"])
    finds = [Step("find_free_slot", {"date": d, "duration_minutes": duration}) for d in dates]
    creates = [
        Step(
            "add_calendar_event",
            {"title": title, "date": d, "start_time": _clock(s), "duration_minutes": duration},
        )
        for d, s in zip(dates, starts, strict=True)
        if s is not None  # always: the loop above ends only once every day has a free slot
    ]
    spoken = _english(date.fromisoformat(dates[0]))
    return _task(
        "book_many",
        [finds, creates],
        parallel,
        request=rng.choice(_BOOK_MANY_REQUESTS).format(
            duration=duration,
            title=title,
            days=spoken_list([_spoken(date.fromisoformat(d), rng) for d in dates]),
        ),
        setup={"events": events, "todos": _todos(rng, first, rng.randint(0, 5))},
        expected_state={"event_count": len(events) + count, "events": [dict(c.arguments) for c in creates]},
        plan="Find the first free slot on each day (independent calls), then book each one (independent calls).",
        final_template=f"Booked {title} on {count} day(s).",
        mistakes=[_date_slip(finds[0], "date", spoken)],
    )


TASK_KINDS = [
    TaskKind("agenda", _build_agenda, range(1, 2)),
    TaskKind("book", _build_book, range(1, 2)),
    TaskKind("top_todo", _build_top_todo, range(1, 2)),
    TaskKind("find_and_book", _build_find_and_book, range(2, 3)),
    TaskKind("reschedule", _build_reschedule, range(2, 3)),
    TaskKind("cancel", _build_cancel, range(2, 9), parallel_from=3),
    TaskKind("add_todos", _build_add_todos, range(1, 9), parallel_from=2),
    TaskKind("complete_todos", _build_complete_todos, range(2, 9), parallel_from=3),
    TaskKind("book_many", _build_book_many, range(2, 9, 2), parallel_from=4),
]


def sample_task(rng: random.Random, difficulty: int | None = None, parallel: bool = False) -> Task:
    """A verifiable calendar/todo task needing `difficulty` calls (1–8); `parallel` puts ≥2 calls in one turn."""
    return sample_from(TASK_KINDS, DOMAIN, rng, difficulty, parallel)
