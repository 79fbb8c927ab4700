"""Filesystem tasks over a generated workspace: config lookups, grep, counts, writes, renames, moves (the env is pipelines/envs/filesystem.py)."""

from __future__ import annotations

import functools
import random
from typing import Any

from pipelines.envs.filesystem import (
    DOMAIN,
    _count_lines,
)
from pipelines.tasks.building import TaskKind, build_task, sample_from, spoken_list
from pipelines.tasks.records import Step, Task

_PEOPLE = [
    "Priya", "Marco", "Aiko", "Lena", "Tomás", "Sam", "Noor", "Kwame", "Ines", "Oliver", "Mei", "Jonas",
]  # fmt: skip
_TOPICS = ["roadmap", "budget", "hiring", "launch", "design", "security", "onboarding", "pricing", "support"]
_ACTIONS = [
    "update the roadmap", "send the budget draft", "book the venue", "review the API docs",
    "fix the login bug", "call the supplier", "prepare the demo", "write the release notes",
    "clean up the backlog", "check the invoices",
]  # fmt: skip
_LOG_MESSAGES = [
    ("INFO", "request served in {n}ms"),
    ("INFO", "user {user} logged in"),
    ("INFO", "cache hit ratio {n}%"),
    ("WARN", "disk usage at {n}%"),
    ("WARN", "slow query took {n}ms"),
    ("INFO", "job {n} finished"),
]
_ERROR_MESSAGES = ["payment gateway timeout", "database connection refused", "invalid token", "upstream 502"]
_SERVICES = {
    "settings": "web server",
    "database": "database",
    "cache": "cache",
    "mail": "mail relay",
    "queue": "job queue",
}
_CONFIG_KEYS = {
    "port": "port",
    "host": "host name",
    "timeout_seconds": "timeout (in seconds)",
    "log_level": "log level",
    "max_connections": "maximum number of connections",
}
_CSV_FILES = {
    "sales_q1.csv": "rep,units,revenue",
    "inventory.csv": "supplier,quantity,reorder_level",
    "team_sizes.csv": "lead,members,open_tickets",
    "expenses.csv": "owner,amount,receipts",
}


def _config_file(rng: random.Random, name: str) -> tuple[str, dict[str, str]]:
    values = {
        "host": rng.choice(["localhost", "10.0.0.", "db.internal", "cache-01", "mail.example.org"]),
        "port": str(
            rng.choice([80, 443, 3306, 5432, 6379, 8080, 8443, 9000, 25, 587]) + rng.choice([0, 0, 1, 10])
        ),
        "timeout_seconds": str(rng.choice([5, 10, 15, 30, 45, 60, 90, 120])),
        "log_level": rng.choice(["debug", "info", "warning", "error"]),
        "max_connections": str(rng.choice([10, 25, 50, 100, 200, 500])),
    }
    if values["host"].endswith("."):
        values["host"] += str(rng.randint(2, 254))
    body = "".join(f"{key} = {value}\n" for key, value in values.items())
    return f"[{name}]\n{body}", values


def _log_file(rng: random.Random, day: str, codes: list[str]) -> str:
    lines = []
    for _ in range(rng.randint(4, 11)):
        level, message = rng.choice(_LOG_MESSAGES)
        lines.append((level, message.format(n=rng.randint(1, 999), user=rng.choice(_PEOPLE).lower())))
    for code in codes:
        lines.insert(rng.randint(0, len(lines)), ("ERROR", f"{code} {rng.choice(_ERROR_MESSAGES)}"))
    clock = sorted(
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}" for _ in lines
    )
    return "".join(f"{day} {t} {level} {msg}\n" for t, (level, msg) in zip(clock, lines, strict=True))


def _note_file(rng: random.Random, day: str) -> str:
    topic = rng.choice(_TOPICS)
    people = rng.sample(_PEOPLE, rng.randint(2, 4))
    lines = [f"# {topic.title()} sync {day}", f"Attendees: {', '.join(people)}", ""]
    for _ in range(rng.randint(1, 5)):
        lines.append(f"- Action: {rng.choice(people)} to {rng.choice(_ACTIONS)}")
    return "\n".join(lines) + "\n"


def _csv_file(rng: random.Random, header: str) -> str:
    rows = [header]
    for _ in range(rng.randint(2, 12)):
        rows.append(",".join(str(rng.randint(1, 999)) if i else rng.choice(_PEOPLE) for i in range(3)))
    return "\n".join(rows) + "\n"


def _source_file(rng: random.Random, module: str, todos: int) -> str:
    functions = rng.randint(max(2, todos), 4)
    with_todo = set(rng.sample(range(functions), todos))
    lines = [f'"""{module} helpers."""', ""]
    for index in range(functions):
        lines.append(f"def {module}_step_{index}(value):")
        if index in with_todo:
            lines.append(f"    # TODO: {rng.choice(_ACTIONS)}")
        lines += [f"    return value * {rng.randint(2, 9)}", ""]
    return "\n".join(lines)


def _workspace(rng: random.Random) -> tuple[dict[str, str], dict[str, Any]]:
    """A plausible project folder: configs, logs with unique error codes, notes, CSVs, code, docs."""
    files: dict[str, str] = {}
    facts: dict[str, Any] = {"configs": {}, "codes": {}, "todos": 0}
    for name in rng.sample(list(_SERVICES), rng.randint(2, 4)):
        files[f"config/{name}.ini"], facts["configs"][f"config/{name}.ini"] = _config_file(rng, name)
    codes = rng.sample(range(1000, 9999), 6)
    for index, day in enumerate(sorted(rng.sample(range(1, 29), rng.randint(3, 6)))):
        own = [f"E{codes[index]}"] if rng.random() < 0.8 else []
        files[f"logs/app-2024-05-{day:02d}.log"] = _log_file(rng, f"2024-05-{day:02d}", own)
        facts["codes"].update({code: f"logs/app-2024-05-{day:02d}.log" for code in own})
    for day in sorted(rng.sample(range(1, 29), rng.randint(2, 5))):
        files[f"notes/meeting-2024-04-{day:02d}.md"] = _note_file(rng, f"2024-04-{day:02d}")
    for name in rng.sample(list(_CSV_FILES), rng.randint(1, 3)):
        files[f"data/{name}"] = _csv_file(rng, _CSV_FILES[name])
    for module in rng.sample(["parser", "report", "billing", "auth"], 2):
        todos = rng.randint(0, 3)
        facts["todos"] += todos
        files[f"src/{module}.py"] = _source_file(rng, module, todos)
    files["docs/README.md"] = f"# Project {rng.choice(_TOPICS).title()}\nOwner: {rng.choice(_PEOPLE)}\n"
    return files, facts


def _setup(files: dict[str, str], rng: random.Random) -> dict[str, Any]:
    extra = [d for d in ("archive", "backup", "tmp") if rng.random() < 0.4]
    return {"files": dict(sorted(files.items())), "dirs": extra, "cwd": "."}


_task = functools.partial(build_task, DOMAIN)  # (kind, groups, parallel, **Task fields)


_MISSING_WHY = (
    "That path does not exist from the current directory; the file is at {path}, so I'll use that path."
)


# -- kind: read one setting from a config file ------------------------------------------------------------------
_LOOKUP_REQUESTS = [
    "What {key} is set in {path}?",
    "Look up the {service}'s {key} — the config is {path}.",
    "Can you check {path} and tell me the {key}?",
    "I forgot the {service} {key}. It's in {path}.",
    "Open {path} and read me the {key} setting.",
    "What is the {key} of the {service}? See {path}.",
]
_LOOKUP_CD_REQUESTS = [
    "Go into the {folder} folder and tell me the {key} from {name}.",
    "Change into {folder}/, then read {name}: what's the {key}?",
    "cd to {folder} and check the {key} in {name}, please.",
    "From inside {folder}, open {name} and report the {service}'s {key}.",
    "Switch to the {folder} directory first; what {key} does {name} set?",
]


def _build_config_lookup(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    files, facts = _workspace(rng)
    path = rng.choice(sorted(facts["configs"]))
    key = rng.choice(list(_CONFIG_KEYS))
    folder, name = path.split("/")
    slots = {"key": _CONFIG_KEYS[key], "service": _SERVICES[name.removesuffix(".ini")], "path": path}
    if difficulty == 1:
        read = Step("read_file", {"path": path})
        groups, wrong = [[read]], Step("read_file", {"path": name})
        request = rng.choice(_LOOKUP_REQUESTS).format(**slots)
        why = _MISSING_WHY.format(path=path)
    else:
        read = Step("read_file", {"path": name})
        groups, wrong = (
            [[Step("change_directory", {"path": folder})], [read]],
            Step("read_file", {"path": path}),
        )
        request = rng.choice(_LOOKUP_CD_REQUESTS).format(folder=folder, name=name, **slots)
        why = f"I'm already inside {folder}/, so the file is simply {name} from here."
    return _task(
        "config_lookup",
        groups,
        parallel,
        request=request,
        setup=_setup(files, rng),
        answer=facts["configs"][path][key],
        plan=f"Read {path} and find the {key} line.",
        final_template=rng.choice([f"The {key} is {{answer}}.", f"{path} sets {key} = {{answer}}."]),
        mistakes=[(read, wrong, "No such file or directory", why)],
    )


# -- kind: find which log mentions an error code ----------------------------------------------------------------
_GREP_REQUESTS = [
    "Which log file mentions error {code}?",
    "Find the log that contains {code}.",
    "Error {code} showed up somewhere in logs/. Which file is it in?",
    "In which file under logs is {code} reported?",
    "Search the logs for {code} and tell me the file name.",
    "Somebody reported {code}. Which day's log has it?",
]


def _build_grep_locate(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    files, facts = _workspace(rng)
    while not facts["codes"]:
        files, facts = _workspace(rng)
    code = rng.choice(sorted(facts["codes"]))
    step = Step("grep_files", {"pattern": code, "path": "logs"})
    why = "There is no folder called log; the logs live in logs/, so I'll search there."
    return _task(
        "grep_locate",
        [[step]],
        parallel,
        request=rng.choice(_GREP_REQUESTS).format(code=code),
        setup=_setup(files, rng),
        answer=facts["codes"][code].split("/")[-1],
        plan=f"Search the logs folder for {code} with grep_files and report the file that matches.",
        final_template=rng.choice([f"{code} appears in {{answer}}.", "It's in {answer}."]),
        mistakes=[
            (step, Step("grep_files", {"pattern": code, "path": "log"}), "No such file or directory", why)
        ],
    )


# -- kind: count TODO comments ---------------------------------------------------------------------------------
_TODO_REQUESTS = [
    "How many TODO comments are there in src?",
    "Count the TODOs left in the source folder.",
    "How many open TODO markers does the code under src/ have?",
    "Before the release I need the number of TODO lines in src. How many?",
    "Tell me how many TODOs remain in src/.",
]


def _build_todo_count(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    files, facts = _workspace(rng)
    while facts["todos"] == 0:
        files, facts = _workspace(rng)
    return _task(
        "todo_count",
        [[Step("grep_files", {"pattern": "TODO", "path": "src"})]],
        parallel,
        request=rng.choice(_TODO_REQUESTS),
        setup=_setup(files, rng),
        answer=str(facts["todos"]),
        plan="grep_files for TODO under src and count the matching lines.",
        final_template=rng.choice(["There are {answer} TODO comments in src.", "{answer} TODOs are left."]),
    )


# -- kind: line count of one file -------------------------------------------------------------------------------
_LINES_REQUESTS = [
    "How many lines are in {path}?",
    "Count the lines of {path}.",
    "What's the line count of {path}?",
    "{path}: how long is it, in lines?",
    "Tell me how many lines {path} has.",
]


def _build_line_count(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    files, _ = _workspace(rng)
    path = rng.choice(sorted(files))
    step = Step("file_info", {"path": path})
    stem, _, extension = path.rpartition(".")
    wrong_extension = {"csv": "txt", "log": "txt", "md": "txt", "py": "txt", "ini": "cfg"}[extension]
    wrong = Step("file_info", {"path": f"{stem}.{wrong_extension}"})
    why = f"The file ends in .{extension}, not .{wrong_extension}; I'll use the exact name {path}."
    return _task(
        "line_count",
        [[step]],
        parallel,
        request=rng.choice(_LINES_REQUESTS).format(path=path),
        setup=_setup(files, rng),
        answer=str(_count_lines(files[path])),
        plan=f"Ask file_info for {path} and read the line count.",
        final_template=rng.choice([f"{path} has {{answer}} lines.", "It is {answer} lines long."]),
        mistakes=[(step, wrong, "No such file or directory", why)],
    )


# -- kind: which of several files is longest ----------------------------------------------------------------------
_COMPARE_REQUESTS = [
    "Which of these files has the most lines: {files}?",
    "Among {files}, which one is the longest (by line count)?",
    "I want to know which file is biggest in lines: {files}.",
    "Compare {files} by number of lines and tell me the longest.",
    "Out of {files}, which file has the highest line count?",
]


def _build_compare_sizes(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    while True:
        files, _ = _workspace(rng)
        if len(files) < difficulty:
            continue
        chosen = rng.sample(sorted(files), difficulty)
        counts = sorted((_count_lines(files[p]) for p in chosen), reverse=True)
        if counts[0] != counts[1]:
            break
    winner = max(chosen, key=lambda p: _count_lines(files[p]))
    return _task(
        "compare_sizes",
        [[Step("file_info", {"path": path}) for path in chosen]],
        parallel,
        request=rng.choice(_COMPARE_REQUESTS).format(files=spoken_list(chosen)),
        setup=_setup(files, rng),
        answer=winner,
        plan="Get file_info for every file (independent calls) and compare their line counts.",
        final_template=f"{{answer}} is the longest, with {_count_lines(files[winner])} lines.",
    )


# -- kind: write a new file (creating its folder when needed) ---------------------------------------------------
_WRITE_REQUESTS = [
    "Create {path} with this content:\n{content}",
    "Please write a file {path} containing exactly:\n{content}",
    "Save the following as {path}:\n{content}",
    "Make a new file at {path}. Its text should be:\n{content}",
    "Put this into {path} (create it):\n{content}",
]
_WRITE_NEW_DIR_REQUESTS = [
    "Make a folder {folder} and create {path} in it with this content:\n{content}",
    "I need a new directory {folder} with a file {name} inside containing:\n{content}",
    "Set up {folder}/ and save the text below as {path}:\n{content}",
    "Create the directory {folder}, then write {path} with:\n{content}",
    "There's no {folder} folder yet. Create it and add {name} with this text:\n{content}",
]
_NEW_FOLDERS = ["projects", "drafts", "reports", "plans", "scratch", "ideas", "handover"]


def _note_content(rng: random.Random) -> tuple[str, str]:
    topic = rng.choice(_TOPICS)
    items = rng.sample(_ACTIONS, rng.randint(2, 4))
    body = f"{topic.title()} checklist\n" + "".join(f"- {item}\n" for item in items)
    return f"{topic}-checklist.txt", body


def _build_write_note(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    files, _ = _workspace(rng)
    name, content = _note_content(rng)
    folder = "notes" if difficulty == 1 else rng.choice(_NEW_FOLDERS)
    path = f"{folder}/{name}"
    write = Step("write_file", {"path": path, "content": content})
    groups, mistakes = [[write]], []
    templates = _WRITE_REQUESTS
    if difficulty == 2:
        groups = [[Step("make_directory", {"path": folder})], [write]]
        why = f"The folder {folder} does not exist yet; I have to create it before writing the file."
        mistakes = [(groups[0][0], write, "No such file or directory", why)]
        templates = _WRITE_NEW_DIR_REQUESTS
    return _task(
        "write_note",
        groups,
        parallel,
        request=rng.choice(templates).format(
            path=path, folder=folder, name=name, content=content.rstrip("\n")
        ),
        setup=_setup(files, rng),
        expected_state={"files": {path: content}, "dirs": [folder]},
        plan=("Create the folder, then write" if difficulty == 2 else "Write")
        + f" {path} with the given text.",
        final_template=f"Created {path}.",
        mistakes=mistakes,
    )


# -- kind: rename one file ----------------------------------------------------------------------------------------
_RENAME_REQUESTS = [
    "Rename {path} to {new_name}.",
    "Please change the name of {path} to {new_name} (same folder).",
    "{path} should be called {new_name}. Can you rename it?",
    "Give {path} the new name {new_name}.",
    "Rename the file {path}; the new name is {new_name}.",
]


def _build_rename(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    files, _ = _workspace(rng)
    path = rng.choice(sorted(files))
    folder, name = path.split("/")
    stem, _, extension = name.rpartition(".")
    new_name = f"{rng.choice(['old', 'final', 'v2', 'reviewed', 'draft'])}-{stem}.{extension}"
    step = Step("move_path", {"source": path, "destination": f"{folder}/{new_name}"})
    wrong = Step("move_path", {"source": name, "destination": f"{folder}/{new_name}"})
    return _task(
        "rename",
        [[step]],
        parallel,
        request=rng.choice(_RENAME_REQUESTS).format(path=path, new_name=new_name),
        setup=_setup(files, rng),
        expected_state={"files": {path: None, f"{folder}/{new_name}": files[path]}},
        plan=f"Rename with move_path from {path} to {folder}/{new_name}.",
        final_template=f"Renamed {path} to {folder}/{new_name}.",
        mistakes=[(step, wrong, "No such file or directory", _MISSING_WHY.format(path=path))],
    )


# -- kind: make a folder, then move or copy several files into it ------------------------------------------------
_MOVE_REQUESTS = [
    "Create a folder {folder} and move {files} into it.",
    "Please archive {files}: put them in a new directory {folder}.",
    "Tidy up: make {folder}/ and move {files} there.",
    "I'd like {files} moved into a new folder called {folder}.",
    "Set up {folder} and file {files} under it.",
]
_COPY_REQUESTS = [
    "Back up {files} into a new folder {folder} (keep the originals).",
    "Make a {folder} directory and copy {files} into it.",
    "Copy {files} to a fresh backup folder, {folder}.",
    "Create {folder} with copies of {files}.",
    "I need copies of {files} in a new directory {folder}; don't move the originals.",
]


def _build_organize(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    files, _ = _workspace(rng)
    while len(files) < difficulty - 1:
        files, _ = _workspace(rng)
    chosen = sorted(rng.sample(sorted(files), difficulty - 1))
    verb = rng.choice(["move", "copy"])
    folder = rng.choice(["old-files", "review", "handover", "to-send", "q2-archive"])
    tool = "move_path" if verb == "move" else "copy_file"
    transfers = [Step(tool, {"source": path, "destination": folder}) for path in chosen]
    expected: dict[str, str | None] = {f"{folder}/{path.split('/')[-1]}": files[path] for path in chosen}
    if verb == "move":
        expected.update({path: None for path in chosen})
    wrong = Step(tool, {"source": chosen[0].split("/")[-1], "destination": folder})
    return _task(
        "organize",
        [[Step("make_directory", {"path": folder})], transfers],
        parallel,
        request=rng.choice(_MOVE_REQUESTS if verb == "move" else _COPY_REQUESTS).format(
            folder=folder, files=spoken_list(chosen)
        ),
        setup=_setup(files, rng),
        expected_state={"files": expected, "dirs": [folder]},
        plan=f"Create {folder}, then {verb} each file into it (the {verb}s are independent).",
        final_template=f"Done: {len(chosen)} file(s) {'moved' if verb == 'move' else 'copied'} into {folder}/.",
        mistakes=[(transfers[0], wrong, "No such file or directory", _MISSING_WHY.format(path=chosen[0]))],
    )


# -- kind: concatenate several files into one ---------------------------------------------------------------------
_MERGE_REQUESTS = [
    "Combine {files} into a single file {target} (concatenate them in that order).",
    "Concatenate {files} into {target}.",
    "Merge {files}, in this order, into {target}.",
    "Put the contents of {files} together into one file, {target}.",
    "I want one file {target} containing {files}, one after another.",
]


def _build_merge(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    files, _ = _workspace(rng)
    while len(files) < difficulty - 1:
        files, _ = _workspace(rng)
    folder = rng.choice(["notes", "logs"])
    family = sorted(p for p in files if p.startswith(folder + "/"))
    chosen = rng.sample(family if len(family) >= difficulty - 1 else sorted(files), difficulty - 1)
    target = f"docs/{rng.choice(['combined', 'digest', 'bundle', 'all-in-one'])}.txt"
    combined = "".join(files[path] for path in chosen)
    reads = [Step("read_file", {"path": path}) for path in chosen]
    wrong = Step("read_file", {"path": chosen[0].split("/")[-1]})
    return _task(
        "merge",
        [reads, [Step("write_file", {"path": target, "content": combined})]],
        parallel,
        request=rng.choice(_MERGE_REQUESTS).format(files=spoken_list(chosen), target=target),
        setup=_setup(files, rng),
        expected_state={"files": {target: combined}},
        plan="Read every file (independent calls), then write their texts one after another into the target.",
        final_template=f"{target} now holds the {len(chosen)} files in order.",
        mistakes=[(reads[0], wrong, "No such file or directory", _MISSING_WHY.format(path=chosen[0]))],
    )


# -- kind: find and delete temporary files -----------------------------------------------------------------------
_CLEANUP_REQUESTS = [
    "Delete every .{ext} file in {folder}.",
    "Clean up {folder}: remove all the *.{ext} files.",
    "Get rid of the .{ext} files under {folder}, and leave everything else.",
    "Please remove all files ending in .{ext} from {folder}.",
    "There are leftover .{ext} files in {folder}; delete them.",
]


def _build_cleanup(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    files, _ = _workspace(rng)
    folder = rng.choice(["logs", "data", "notes", "src"])
    ext = rng.choice(["tmp", "bak", "swp"])
    junk = [
        f"{folder}/{rng.choice(['cache', 'old', 'scratch', 'copy', 'autosave'])}-{i}.{ext}"
        for i in range(1, difficulty)
    ]
    files.update({path: f"temporary {i}\n" for i, path in enumerate(junk)})
    keep = {path: files[path] for path in files if path.startswith(folder + "/") and path not in junk}
    listing = Step("find_files", {"name_pattern": f"*.{ext}", "path": folder})
    why = f"remove_path on {folder} would delete the whole folder; I only want the .{ext} files, one by one."
    return _task(
        "cleanup",
        [[listing], [Step("remove_path", {"path": path}) for path in junk]],
        parallel,
        request=rng.choice(_CLEANUP_REQUESTS).format(ext=ext, folder=folder),
        setup=_setup(files, rng),
        expected_state={"files": {**{path: None for path in junk}, **keep}},
        plan=f"Find the *.{ext} files in {folder} with find_files, then remove each one (independent calls).",
        final_template=f"Removed {len(junk)} .{ext} file(s) from {folder}.",
        mistakes=[(listing, Step("remove_path", {"path": folder}), "Directory not empty", why)],
    )


TASK_KINDS = [
    TaskKind("config_lookup", _build_config_lookup, range(1, 3)),
    TaskKind("grep_locate", _build_grep_locate, range(1, 2)),
    TaskKind("todo_count", _build_todo_count, range(1, 2)),
    TaskKind("line_count", _build_line_count, range(1, 2)),
    TaskKind("write_note", _build_write_note, range(1, 3)),
    TaskKind("rename", _build_rename, range(1, 2)),
    TaskKind("compare_sizes", _build_compare_sizes, range(2, 9), parallel_from=2),
    TaskKind("organize", _build_organize, range(2, 9), parallel_from=3),
    TaskKind("merge", _build_merge, range(3, 9), parallel_from=3),
    TaskKind("cleanup", _build_cleanup, range(2, 9), parallel_from=3),
]


def sample_task(rng: random.Random, difficulty: int | None = None, parallel: bool = False) -> Task:
    """A verifiable filesystem task needing `difficulty` calls (1–8); `parallel` puts ≥2 calls in one turn."""
    return sample_from(TASK_KINDS, DOMAIN, rng, difficulty, parallel)
