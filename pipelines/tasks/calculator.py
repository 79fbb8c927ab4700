"""Calculator tasks: expressions, unit conversions, chains, statistics, percent changes, memory; each with its reference calls, answer and plausible mistakes (the env is pipelines/envs/calculator.py)."""

from __future__ import annotations

import json
import random
from typing import Any

from pipelines.envs.calculator import (
    DOMAIN,
    CalculatorEnv,
    _convert,
    _evaluate,
    _fmt,
    _task,
    _tidy,
)
from pipelines.tasks.building import TaskKind, sample_from, spoken_list
from pipelines.tasks.records import Step, Task


def _money(rng: random.Random, low: int, high: int) -> float:
    return round(rng.uniform(low, high), rng.choice([0, 2]))


# -- kind: one arithmetic expression ---------------------------------------------------------------------------
_EXPRESSION_REQUESTS = [
    "What is {shown}?",
    "Compute {shown} for me.",
    "Can you evaluate {shown}?",
    "I need the value of {shown}, please.",
    "Quick one: {shown} = ?",
    "Work out {shown}.",
    "My homework asks for {shown}. What do you get?",
    "Please calculate {shown} (4 decimal places are fine).",
]


def _random_operand(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.55:
        return str(rng.randint(2, 99))
    if roll < 0.8:
        return f"{rng.uniform(1, 50):.{rng.choice([1, 2])}f}"
    if roll < 0.9:
        return f"sqrt({rng.choice([4, 9, 16, 25, 36, 49, 64, 81, 100, 144, 2, 3, 10])})"
    return f"{rng.randint(2, 12)} ** {rng.randint(2, 3)}"


def _random_expression(rng: random.Random) -> str:
    text = _random_operand(rng)
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["+", "-", "*", "/", "*", "+"])
        operand = _random_operand(rng)
        grouped = " " in text and rng.random() < 0.3
        text = f"({text}) {op} {operand}" if grouped else f"{text} {op} {operand}"
    return text


def _shown(expression: str, rng: random.Random) -> str:
    """How a person would type it: sometimes × ÷ ^ instead of * / **."""
    if rng.random() < 0.5:
        return expression
    return expression.replace("**", "^").replace(" * ", " × ").replace(" / ", " ÷ ")


def _build_expression(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    expression = _random_expression(rng)
    while abs(_evaluate(expression, {})) > 1e9:  # keep the numbers human-sized
        expression = _random_expression(rng)
    step = Step("evaluate_expression", {"expression": expression})
    mistakes = []
    if "**" in expression:
        wrong = expression.replace("**", "^")
        mistakes.append((step, Step("evaluate_expression", {"expression": wrong}), "use ** for powers", _POW))
    elif " * " in expression:
        wrong = expression.replace(" * ", " x ")
        mistakes.append((step, Step("evaluate_expression", {"expression": wrong}), "use * for multi", _TIMES))
    answer = _fmt(_evaluate(expression, {}))
    return _task(
        "expression",
        [[step]],
        parallel,
        request=rng.choice(_EXPRESSION_REQUESTS).format(shown=_shown(expression, rng)),
        answer=answer,
        plan="Translate the request into a plain arithmetic expression (* for times, / for divide, ** for powers) "
        "and evaluate it with evaluate_expression.",
        final_template=rng.choice(["{answer}", "The result is {answer}.", "It comes out to {answer}."]),
        mistakes=mistakes,
    )


_POW = "The calculator wants ** for powers, not ^; I'll rewrite the expression with **."
_TIMES = "Multiplication has to be written with *, not x; I'll fix the expression and evaluate it again."


# -- kind: one unit conversion ---------------------------------------------------------------------------------
# (from, to, request wording of from, wording of to, value range)
_CONVERSIONS = [
    ("km", "mi", "kilometers", "miles", (1, 300)),
    ("mi", "km", "miles", "kilometers", (1, 200)),
    ("ft", "m", "feet", "meters", (1, 5000)),
    ("in", "cm", "inches", "centimeters", (1, 100)),
    ("kg", "lb", "kilograms", "pounds", (1, 150)),
    ("lb", "kg", "pounds", "kilograms", (1, 300)),
    ("oz", "g", "ounces", "grams", (1, 40)),
    ("st", "kg", "stone", "kilograms", (5, 25)),
    ("F", "C", "degrees Fahrenheit", "degrees Celsius", (-20, 110)),
    ("C", "F", "degrees Celsius", "degrees Fahrenheit", (-30, 45)),
    ("C", "K", "degrees Celsius", "kelvin", (-50, 100)),
    ("GiB", "GB", "GiB", "GB", (1, 512)),
    ("MB", "MiB", "megabytes", "mebibytes", (10, 5000)),
    ("TB", "GiB", "terabytes", "GiB", (1, 20)),
    ("h", "min", "hours", "minutes", (1, 48)),
    ("week", "h", "weeks", "hours", (1, 12)),
    ("gal", "l", "gallons", "liters", (1, 60)),
    ("cup", "ml", "cups", "milliliters", (1, 8)),
    ("l", "fl_oz", "liters", "fluid ounces", (1, 5)),
    ("mph", "km/h", "miles per hour", "km/h", (10, 90)),
    ("knot", "km/h", "knots", "kilometers per hour", (5, 40)),
    ("acre", "ha", "acres", "hectares", (1, 500)),
    ("ft2", "m2", "square feet", "square meters", (100, 4000)),
    ("t", "lb", "metric tons", "pounds", (1, 30)),
]
_CONVERSION_REQUESTS = [
    "How many {to_name} is {value} {from_name}?",
    "Convert {value} {from_name} to {to_name}.",
    "What's {value} {from_name} in {to_name}?",
    "I have {value} {from_name}. How much is that in {to_name}?",
    "Please express {value} {from_name} in {to_name}.",
    "{value} {from_name} equals how many {to_name}?",
    "Can you turn {value} {from_name} into {to_name} for me?",
]
# Plausible wrong unit names for some targets, each refused by the tool with a message that names the fix.
_UNIT_SLIPS = {
    "fl_oz": ("oz", "cannot convert volume", "'oz' is the mass ounce; for volume I need 'fl_oz'."),
    "C": ("degrees", "ambiguous unit", "'degrees' alone is ambiguous; the temperature scale must be 'C'."),
    "F": ("degrees", "ambiguous unit", "'degrees' alone is ambiguous; the temperature scale must be 'F'."),
    "t": ("tons", "ambiguous unit", "'tons' is ambiguous; metric tons are 't'."),
}


def _conversion_value(rng: random.Random, low: int, high: int) -> float:
    return rng.randint(low, high) if rng.random() < 0.6 else round(rng.uniform(low, high), 1)


def _build_conversion(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    source, target, from_name, to_name, (low, high) = rng.choice(_CONVERSIONS)
    value = _conversion_value(rng, low, high)
    step = Step("convert_units", {"value": value, "from_unit": source, "to_unit": target})
    mistakes = []
    for symbol, slot in ((target, "to_unit"), (source, "from_unit")):
        if symbol in _UNIT_SLIPS:
            slip, error, why = _UNIT_SLIPS[symbol]
            mistakes.append((step, Step("convert_units", {**step.arguments, slot: slip}), error, why))
            break
    answer = _fmt(_convert(value, source, target)[0])
    request = rng.choice(_CONVERSION_REQUESTS).format(value=_fmt(value), from_name=from_name, to_name=to_name)
    return _task(
        "conversion",
        [[step]],
        parallel,
        request=request[0].upper() + request[1:],
        answer=answer,
        plan=f"Convert {_fmt(value)} {source} to {target} with convert_units and report the number.",
        final_template=rng.choice(
            [f"{{answer}} {to_name}.", f"That is {{answer}} {to_name}.", f"It's about {{answer}} {to_name}."]
        ),
        mistakes=mistakes,
    )


# -- kind: convert several quantities to one unit, then add them ------------------------------------------------
# (dimension wording, target, target name, [(unit, name, low, high)], request templates)
_SUM_SCENARIOS = [
    (
        "distance",
        "km",
        "kilometers",
        [
            ("mi", "miles", 1, 20),
            ("m", "meters", 200, 5000),
            ("ft", "feet", 500, 9000),
            ("yd", "yards", 100, 3000),
        ],
        [
            "Over the weekend I covered {items}. What's the total distance in {target_name}?",
            "My training log says {items}. How many {target_name} is that altogether?",
            "Add up these distances in {target_name}: {items}.",
            "The route has legs of {items}. Total length in {target_name}?",
            "I hiked {items}. Sum it up in {target_name}, please.",
        ],
    ),
    (
        "weight",
        "kg",
        "kilograms",
        [("lb", "pounds", 1, 60), ("g", "grams", 100, 5000), ("oz", "ounces", 2, 80), ("st", "stone", 1, 4)],
        [
            "My luggage pieces weigh {items}. What's the total weight in {target_name}?",
            "The shipment contains {items}. How heavy is it in {target_name}?",
            "Add these weights and give me {target_name}: {items}.",
            "For the recipe batch I need {items}. Total in {target_name}?",
            "Combined mass of {items}, in {target_name}?",
        ],
    ),
    (
        "duration",
        "h",
        "hours",
        [
            ("min", "minutes", 10, 300),
            ("s", "seconds", 600, 20000),
            ("day", "days", 1, 3),
            ("week", "weeks", 1, 2),
        ],
        [
            "The project tasks take {items}. How many {target_name} in total?",
            "I logged {items} this month. Total in {target_name}?",
            "Sum these durations in {target_name}: {items}.",
            "Rendering took {items}. How long is that all together, in {target_name}?",
            "What do {items} add up to, in {target_name}?",
        ],
    ),
    (
        "storage",
        "GB",
        "gigabytes",
        [("MB", "MB", 100, 9000), ("GiB", "GiB", 1, 64), ("MiB", "MiB", 200, 8000), ("TB", "TB", 1, 2)],
        [
            "I need to back up {items}. How many {target_name} is that in total?",
            "The dataset shards are {items}. Total size in {target_name}?",
            "Add up these file sizes in {target_name}: {items}.",
            "My phone has {items} of photos, videos and apps. Total in {target_name}?",
            "How much disk space, in {target_name}, do {items} need together?",
        ],
    ),
]


def _build_conversion_sum(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    _, target, target_name, units, templates = rng.choice(_SUM_SCENARIOS)
    count = difficulty - 1  # one conversion per foreign-unit item, then one sum
    quantities = [
        (unit, name, _conversion_value(rng, low, high))
        for unit, name, low, high in rng.choices(units, k=count)
    ]
    # With a single conversion, an item already in the target unit keeps the sum meaningful.
    native = _conversion_value(rng, 2, 20) if count == 1 or rng.random() < 0.4 else None
    conversions = [
        Step("convert_units", {"value": v, "from_unit": u, "to_unit": target}) for u, _, v in quantities
    ]
    terms = [_fmt(_convert(v, u, target)[0]) for u, _, v in quantities]
    terms += [_fmt(native)] if native is not None else []
    total_step = Step("evaluate_expression", {"expression": " + ".join(terms)})
    described = [(f"{_fmt(v)} {u}", f"{_fmt(v)} {name}") for u, name, v in quantities]
    if native is not None:
        described.insert(
            rng.randint(0, len(described)), (f"{_fmt(native)} {target}", f"{_fmt(native)} {target_name}")
        )
    wrong = Step("evaluate_expression", {"expression": " + ".join(symbolic for symbolic, _ in described)})
    return _task(
        "conversion_sum",
        [conversions, [total_step]],
        parallel,
        request=rng.choice(templates).format(
            items=spoken_list([words for _, words in described]), target_name=target_name
        ),
        answer=_fmt(_evaluate(total_step.arguments["expression"], {})),
        plan=f"Convert each quantity that is not already in {target} with convert_units (independent calls), "
        "then add the numbers with evaluate_expression.",
        final_template=rng.choice(
            [f"The total is {{answer}} {target_name}.", f"Altogether: {{answer}} {target}."]
        ),
        mistakes=[(total_step, wrong, "units are not allowed", _UNITS_WHY)],
    )


_UNITS_WHY = "Expressions only take plain numbers, so I must convert each quantity first and add the results."


# -- kind: a chain of operations, each on the previous result ---------------------------------------------------
# (phrase, expression pattern on the previous value {x}, argument range)
_CHAIN_OPS = [
    ("add {a}", "{x} + {a}", (5, 500)),
    ("subtract {a}", "{x} - {a}", (5, 200)),
    ("multiply by {a}", "{x} * {a}", (2, 6)),
    ("divide by {a}", "{x} / {a}", (2, 8)),
    ("increase it by {a}%", "{x} * (1 + {a} / 100)", (3, 40)),
    ("take off {a}%", "{x} * (1 - {a} / 100)", (3, 40)),
    ("square it", "{x} ** 2", None),
    ("take the square root", "sqrt({x})", None),
]
_CHAIN_REQUESTS = [
    "Start with {start}, then {ops}. What number do you end up with?",
    "Take {start}; {ops}. What's the result?",
    "I have a value of {start}. Please {ops}, one step at a time, and tell me the final number.",
    "Beginning at {start}: {ops}. Final value?",
    "Step by step: from {start}, {ops}. What do I get at the end?",
    "Run this sequence on {start}: {ops}.",
]


def _chain_steps(rng: random.Random, start: float, count: int) -> tuple[list[Step], list[str], float]:
    value, steps, phrases = start, [], []
    for _ in range(count):
        phrase, pattern, bounds = rng.choice(_CHAIN_OPS)
        if (pattern == "sqrt({x})" and value < 0) or (pattern == "{x} ** 2" and abs(value) > 1e4):
            phrase, pattern, bounds = _CHAIN_OPS[0]
        amount = rng.randint(*bounds) if bounds else 0
        shown = _fmt(value) if value >= 0 else f"({_fmt(value)})"  # -5 ** 2 would square 5, not -5
        expression = pattern.format(x=shown, a=amount)
        value = float(_tidy(_evaluate(expression, {})))  # the next step starts from the printed result
        steps.append(Step("evaluate_expression", {"expression": expression}))
        phrases.append(phrase.format(a=amount))
    return steps, phrases, value


def _build_chain(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    start = rng.randint(10, 2000)
    steps, phrases, final = _chain_steps(rng, start, difficulty)
    ops = phrases[0] if len(phrases) == 1 else ", then ".join(phrases[:-1]) + ", and finally " + phrases[-1]
    mistakes = []
    for step, phrase in zip(steps, phrases, strict=True):
        if phrase.endswith("%") and "(1 + " in step.arguments["expression"]:
            previous = step.arguments["expression"].split(" * ")[0]
            wrong = Step("evaluate_expression", {"expression": f"{previous} + {phrase.split()[-1]}"})
            mistakes.append((step, wrong, "percent signs are not supported", _PERCENT_WHY))
            break
    return _task(
        "chain",
        [[s] for s in steps],
        False,  # every step needs the previous result: never parallel
        request=rng.choice(_CHAIN_REQUESTS).format(start=start, ops=ops),
        answer=_fmt(final),
        plan="Apply the operations in order with evaluate_expression, feeding each result into the next step.",
        final_template=rng.choice(["The final number is {answer}.", "You end up with {answer}.", "{answer}"]),
        mistakes=mistakes,
    )


_PERCENT_WHY = "The calculator has no % sign; a 15% increase is the value times (1 + 15 / 100)."


# -- kind: statistics of one list ------------------------------------------------------------------------------
_STATS_REQUESTS = [
    "What is the {stat} of these numbers: {values}?",
    "Here are my {things}: {values}. What's the {stat}?",
    "Give me the {stat} of {values}.",
    "I recorded {things} of {values}. Can you find the {stat}?",
    "Find the {stat} for this data: {values}.",
]
_STAT_NAMES = {
    "mean": "mean",
    "median": "median",
    "stdev": "standard deviation",
    "sum": "sum",
    "max": "maximum",
}
_THINGS = [
    "test scores", "daily step counts", "delivery times", "monthly expenses", "sensor readings", "lap times",
]  # fmt: skip


def _build_stats(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    values = [
        rng.randint(10, 200) if rng.random() < 0.7 else round(rng.uniform(10, 200), 1)
        for _ in range(rng.randint(4, 9))
    ]
    stat = rng.choice(list(_STAT_NAMES))
    step = Step("compute_statistics", {"values": values})
    summary = json.loads(CalculatorEnv().compute_statistics(values))
    shown = ", ".join(_fmt(v) for v in values)
    request = rng.choice(_STATS_REQUESTS).format(
        stat=_STAT_NAMES[stat], values=shown, things=rng.choice(_THINGS)
    )
    return _task(
        "stats",
        [[step]],
        parallel,
        request=request,
        answer=str(summary[stat]),
        plan="Pass the numbers to compute_statistics and read off the requested statistic.",
        final_template=f"The {_STAT_NAMES[stat]} is {{answer}}.",
    )


# -- kind: compare groups by a statistic -----------------------------------------------------------------------
_GROUPS = [
    (
        "team",
        [
            "Team Red",
            "Team Blue",
            "Team Green",
            "Team Gold",
            "Team Silver",
            "Team Black",
            "Team Orange",
            "Team Teal",
        ],
    ),
    (
        "store",
        ["Northgate", "Riverside", "Hillcrest", "Lakeview", "Downtown", "Westfield", "Bayside", "Elmwood"],
    ),
    ("runner", ["Amara", "Bruno", "Chen", "Dalia", "Emeka", "Freya", "Goran", "Hiro"]),
    (
        "sensor",
        [
            "sensor A1",
            "sensor B2",
            "sensor C3",
            "sensor D4",
            "sensor E5",
            "sensor F6",
            "sensor G7",
            "sensor H8",
        ],
    ),
]
_COMPARE_REQUESTS = [
    "Which {group} has the highest {stat}? {listing}",
    "Here are the numbers per {group}: {listing}. Which one has the highest {stat}?",
    "Compare the {stat} across these: {listing}. Who comes out on top?",
    "{listing} — which {group} wins on {stat}?",
    "I need to know which {group} has the largest {stat}. Data: {listing}",
    "Rank by {stat} and tell me the leading {group}: {listing}",
]


def _distinct_winner(summaries: list[dict[str, Any]], stat: str) -> bool:
    scores = sorted((s[stat] for s in summaries), reverse=True)
    return scores[0] != scores[1]


def _build_stats_compare(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    group, names = rng.choice(_GROUPS)
    stat = rng.choice(["mean", "median", "max", "sum"])
    env = CalculatorEnv()
    while True:
        chosen = rng.sample(names, difficulty)
        data: list[list[float]] = [[rng.randint(40, 100) for _ in range(rng.randint(3, 6))] for _ in chosen]
        summaries = [json.loads(env.compute_statistics(values)) for values in data]
        if _distinct_winner(summaries, stat):
            break
    best = max(range(difficulty), key=lambda i: summaries[i][stat])
    listing = "; ".join(
        f"{name}: {', '.join(map(str, values))}" for name, values in zip(chosen, data, strict=True)
    )
    return _task(
        "stats_compare",
        [[Step("compute_statistics", {"values": values}) for values in data]],
        parallel,
        request=rng.choice(_COMPARE_REQUESTS).format(group=group, stat=_STAT_NAMES[stat], listing=listing),
        answer=chosen[best],
        plan=f"Run compute_statistics on each {group}'s numbers (independent calls) and compare the "
        f"{_STAT_NAMES[stat]}s.",
        final_template=f"{{answer}} has the highest {_STAT_NAMES[stat]} ({summaries[best][stat]}).",
    )


# -- kind: percent change --------------------------------------------------------------------------------------
_CHANGE_REQUESTS = [
    "The price went from {old} to {new}. What's the percentage change?",
    "Last year we had {old} visitors and this year {new}. By what percent did that change?",
    "My rent changed from {old} to {new}. What is that as a percent change?",
    "Percent change from {old} to {new}?",
    "Sales moved from {old} to {new}. Express the change in percent.",
    "How big a change (in %) is going from {old} to {new}?",
]


def _build_percent_change(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    old = rng.randint(20, 5000)
    new = old + rng.choice([-1, 1]) * rng.randint(1, old // 2 + 1)
    step = Step("percent_change", {"old_value": old, "new_value": new})
    answer = CalculatorEnv().percent_change(old, new)
    return _task(
        "percent_change",
        [[step]],
        parallel,
        request=rng.choice(_CHANGE_REQUESTS).format(old=old, new=new),
        answer=answer,
        plan="Use percent_change with the old and the new value.",
        final_template=rng.choice(["That's a change of {answer}.", "The change is {answer}.", "{answer}"]),
    )


# -- kind: memory workflow (store values, combine them, store the result) ---------------------------------------
_BUDGET_ITEMS = [
    ("rent", 600, 2500),
    ("groceries", 150, 900),
    ("utilities", 50, 300),
    ("transport", 30, 400),
    ("insurance", 40, 350),
    ("internet", 20, 90),
    ("phone", 15, 80),
    ("gym", 10, 70),
    ("streaming", 8, 40),
]
_MEMORY_REQUESTS = [
    "Save my monthly costs in memory — {items} — then work out the {period} total and save it as {result}.",
    "Please store these numbers: {items}. After that compute the {period} total and keep it under {result}.",
    "Remember {items}. Then calculate what they add up to {period_phrase} and store that as {result}.",
    "Put {items} into the calculator's memory, then figure out the {period} sum and save it as {result}.",
    "Keep track of {items} for me, and store their {period} total as {result}.",
]
_STORE_ONLY_REQUESTS = [
    "Please remember these values: {items}.",
    "Store {items} in memory so I can use them later.",
    "Save {items} for later calculations.",
    "Keep {items} in the calculator memory.",
    "Note down {items} in memory, please.",
]


def _build_memory(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    """2 calls: store two values. 3: store two, evaluate. 4–8: store d-2, evaluate, store the total."""
    count = 2 if difficulty <= 3 else difficulty - 2
    values = {name: rng.randint(low, high) for name, low, high in rng.sample(_BUDGET_ITEMS, count)}
    stores = [Step("store_value", {"name": name, "value": value}) for name, value in values.items()]
    items = spoken_list([f"{name} = {value}" for name, value in values.items()])
    if difficulty == 2:
        return _task(
            "memory",
            [stores],
            parallel,
            request=rng.choice(_STORE_ONLY_REQUESTS).format(items=items),
            expected_state={"memory": values},
            plan="Store each value with store_value under the given name (independent calls).",
            final_template="Done, all values are saved in memory.",
        )
    return _memory_total_task(rng, values, stores, items, parallel, save_result=difficulty > 3)


def _memory_total_task(
    rng: random.Random,
    values: dict[str, int],
    stores: list[Step],
    items: str,
    parallel: bool,
    save_result: bool,
) -> Task:
    period, factor, per = rng.choice(
        [("monthly", 1, "per month"), ("yearly", 12, "per year"), ("quarterly", 3, "per quarter")]
    )
    result_name = f"{period}_total"
    names = " + ".join(values)
    expression = names if factor == 1 else f"{factor} * ({names})"
    total = _tidy(_evaluate(expression, {k: float(v) for k, v in values.items()}))
    evaluate = Step("evaluate_expression", {"expression": expression})
    first = next(iter(values))
    wrong = Step(
        "evaluate_expression", {"expression": expression.replace(first, first.rstrip("s") + "_cost", 1)}
    )
    why = (
        f"I used a name that was never stored; the value is called {first!r}, so I'll use exactly that name."
    )
    templates = _MEMORY_REQUESTS if save_result else _MEMORY_ANSWER_REQUESTS
    groups = [stores, [evaluate]] + (
        [[Step("store_value", {"name": result_name, "value": total})]] if save_result else []
    )
    return _task(
        "memory",
        groups,
        parallel,
        request=rng.choice(templates).format(
            items=items, period=period, result=result_name, period_phrase=per
        ),
        answer=str(total),
        expected_state={"memory": {**values, result_name: total} if save_result else values},
        plan="Store each value (independent calls), then evaluate the total using the stored names"
        + (", then store the total." if save_result else "."),
        final_template=f"The {period} total is {{answer}}"
        + (f", saved as {result_name}." if save_result else "."),
        mistakes=[(evaluate, wrong, "unknown name", why)],
    )


_MEMORY_ANSWER_REQUESTS = [
    "Store {items} in memory, then tell me the {period} total using the stored values.",
    "Remember {items}, and compute what they come to {period_phrase}.",
    "Save {items} first; then what's the {period} total?",
    "Put {items} into memory and work out the {period} sum from them.",
    "Keep {items} in the calculator's memory and give me their total {period_phrase}.",
]


TASK_KINDS = [
    TaskKind("expression", _build_expression, range(1, 2)),
    TaskKind("conversion", _build_conversion, range(1, 2)),
    TaskKind("stats", _build_stats, range(1, 2)),
    TaskKind("percent_change", _build_percent_change, range(1, 2)),
    TaskKind("chain", _build_chain, range(1, 9)),
    TaskKind("conversion_sum", _build_conversion_sum, range(2, 9), parallel_from=3),
    TaskKind("stats_compare", _build_stats_compare, range(2, 9), parallel_from=2),
    TaskKind("memory", _build_memory, range(2, 9), parallel_from=2),
]


def sample_task(rng: random.Random, difficulty: int | None = None, parallel: bool = False) -> Task:
    """A verifiable calculator task needing `difficulty` calls (1–8); `parallel` puts ≥2 calls in one turn."""
    return sample_from(TASK_KINDS, DOMAIN, rng, difficulty, parallel)
