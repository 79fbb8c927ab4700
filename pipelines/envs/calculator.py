"""Calculator / unit-conversion environment, and its task sampler.

Expressions go through a small AST walker instead of `eval`: only numbers, + - * / // % **, a few math
functions, `pi`/`e` and the names in memory are accepted, so a model-written expression can never reach
Python itself. Every number is a float (no unbounded ints, so `9**9**9` overflows fast instead of hanging).
Results are rounded to 4 decimals and printed the same way by the tools and the sampler's ground truth.
"""

from __future__ import annotations

import ast
import functools
import json
import keyword
import math
import operator
import re
import statistics
from collections.abc import Callable
from typing import Any

from pipelines.envs.base import ToolEnv, ToolError
from pipelines.errors import BadInput
from pipelines.tasks.building import build_task

DOMAIN = "calculator"
MAX_EXPRESSION_CHARS = 300
MAX_MEMORY_SLOTS = 50
MAX_STATISTICS_VALUES = 10_000

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": lambda x, digits=0: round(x, int(digits)),
    "floor": math.floor,
    "ceil": math.ceil,
    "log": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "min": min,
    "max": max,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")


# -- numbers as the tools print them ---------------------------------------------------------------------------
def _tidy(value: float) -> int | float:
    """4 decimals, integral values as ints: `12.0` prints as `12`, `1/3` as `0.3333`."""
    rounded = round(float(value), 4)
    if rounded == 0:
        return 0
    return int(rounded) if rounded.is_integer() and abs(rounded) < 1e15 else rounded


def _fmt(value: float) -> str:
    return str(_tidy(value))


def _as_number(value: Any, name: str) -> float:
    """Models sometimes send "12" or "twelve": accept numeric strings, refuse the rest with a tool error."""
    if isinstance(value, bool):
        raise ToolError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ToolError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ToolError(f"{name} must be finite, got {value!r}")
    return number


# -- units -----------------------------------------------------------------------------------------------------
# symbol -> (dimension, factor to the dimension's base unit); temperature is affine and handled apart.
_UNITS: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.001),
    "cm": ("length", 0.01),
    "m": ("length", 1.0),
    "km": ("length", 1000.0),
    "in": ("length", 0.0254),
    "ft": ("length", 0.3048),
    "yd": ("length", 0.9144),
    "mi": ("length", 1609.344),
    "nmi": ("length", 1852.0),
    "mg": ("mass", 1e-6),
    "g": ("mass", 0.001),
    "kg": ("mass", 1.0),
    "t": ("mass", 1000.0),
    "oz": ("mass", 0.028349523125),
    "lb": ("mass", 0.45359237),
    "st": ("mass", 6.35029318),
    "short_ton": ("mass", 907.18474),
    "ms": ("time", 0.001),
    "s": ("time", 1.0),
    "min": ("time", 60.0),
    "h": ("time", 3600.0),
    "day": ("time", 86400.0),
    "week": ("time", 604800.0),
    "B": ("data", 1.0),
    "KB": ("data", 1e3),
    "MB": ("data", 1e6),
    "GB": ("data", 1e9),
    "TB": ("data", 1e12),
    "KiB": ("data", 1024.0),
    "MiB": ("data", 1024.0**2),
    "GiB": ("data", 1024.0**3),
    "TiB": ("data", 1024.0**4),
    "ml": ("volume", 0.001),
    "l": ("volume", 1.0),
    "tsp": ("volume", 0.00492892159375),
    "tbsp": ("volume", 0.01478676478125),
    "fl_oz": ("volume", 0.0295735295625),
    "cup": ("volume", 0.2365882365),
    "pt": ("volume", 0.473176473),
    "qt": ("volume", 0.946352946),
    "gal": ("volume", 3.785411784),
    "m/s": ("speed", 1.0),
    "km/h": ("speed", 1 / 3.6),
    "mph": ("speed", 0.44704),
    "knot": ("speed", 1852 / 3600),
    "m2": ("area", 1.0),
    "km2": ("area", 1e6),
    "ft2": ("area", 0.09290304),
    "ha": ("area", 1e4),
    "acre": ("area", 4046.8564224),
    "C": ("temperature", 1.0),
    "F": ("temperature", 1.0),
    "K": ("temperature", 1.0),
}
_ALIASES: dict[str, str] = {
    **{name: "mm" for name in ("millimeter", "millimeters", "millimetre", "millimetres")},
    **{name: "cm" for name in ("centimeter", "centimeters", "centimetre", "centimetres")},
    **{name: "m" for name in ("meter", "meters", "metre", "metres")},
    **{name: "km" for name in ("kilometer", "kilometers", "kilometre", "kilometres")},
    **{name: "in" for name in ("inch", "inches")},
    **{name: "ft" for name in ("foot", "feet")},
    **{name: "yd" for name in ("yard", "yards")},
    **{name: "mi" for name in ("mile", "miles")},
    **{name: "nmi" for name in ("nautical_mile", "nautical_miles", "nautical mile", "nautical miles")},
    **{name: "mg" for name in ("milligram", "milligrams")},
    **{name: "g" for name in ("gram", "grams")},
    **{name: "kg" for name in ("kilogram", "kilograms", "kilo", "kilos")},
    **{name: "t" for name in ("tonne", "tonnes", "metric_ton", "metric ton")},
    **{name: "oz" for name in ("ounce", "ounces")},
    **{name: "lb" for name in ("lbs", "pound", "pounds")},
    **{name: "st" for name in ("stone", "stones")},
    **{name: "ms" for name in ("millisecond", "milliseconds")},
    **{name: "s" for name in ("sec", "second", "seconds")},
    **{name: "min" for name in ("minute", "minutes", "mins")},
    **{name: "h" for name in ("hr", "hrs", "hour", "hours")},
    **{name: "day" for name in ("d", "days")},
    **{name: "week" for name in ("wk", "weeks")},
    **{name: "B" for name in ("byte", "bytes")},
    **{name: "KB" for name in ("kilobyte", "kilobytes")},
    **{name: "MB" for name in ("megabyte", "megabytes")},
    **{name: "GB" for name in ("gigabyte", "gigabytes")},
    **{name: "TB" for name in ("terabyte", "terabytes")},
    **{name: "KiB" for name in ("kibibyte", "kibibytes")},
    **{name: "MiB" for name in ("mebibyte", "mebibytes")},
    **{name: "GiB" for name in ("gibibyte", "gibibytes")},
    **{name: "TiB" for name in ("tebibyte", "tebibytes")},
    **{name: "ml" for name in ("milliliter", "milliliters", "millilitre", "millilitres")},
    **{name: "l" for name in ("liter", "liters", "litre", "litres")},
    **{name: "tsp" for name in ("teaspoon", "teaspoons")},
    **{name: "tbsp" for name in ("tablespoon", "tablespoons")},
    **{name: "fl_oz" for name in ("fl oz", "fluid_ounce", "fluid ounce", "fluid ounces", "fluid_ounces")},
    **{name: "cup" for name in ("cups",)},
    **{name: "pt" for name in ("pint", "pints")},
    **{name: "qt" for name in ("quart", "quarts")},
    **{name: "gal" for name in ("gallon", "gallons")},
    **{name: "m/s" for name in ("meters per second", "metres per second", "mps")},
    **{name: "km/h" for name in ("kph", "kmh", "kilometers per hour", "kilometres per hour")},
    **{name: "mph" for name in ("miles per hour",)},
    **{name: "knot" for name in ("knots", "kn", "kt")},
    **{name: "m2" for name in ("sq m", "square meter", "square meters", "square metre", "square metres")},
    **{name: "km2" for name in ("sq km", "square kilometer", "square kilometers", "square kilometres")},
    **{name: "ft2" for name in ("sq ft", "square foot", "square feet")},
    **{name: "ha" for name in ("hectare", "hectares")},
    **{name: "acre" for name in ("acres",)},
    **{name: "C" for name in ("celsius", "°c", "degc", "degrees celsius", "centigrade")},
    **{name: "F" for name in ("fahrenheit", "°f", "degf", "degrees fahrenheit")},
    **{name: "K" for name in ("kelvin", "kelvins")},
}
# Names people use that mean two different things: refused with the choices instead of silently guessed.
_AMBIGUOUS_UNITS = {
    "ton": "use 't' (metric tonne, 1000 kg) or 'short_ton' (US ton, 2000 lb)",
    "tons": "use 't' (metric tonne, 1000 kg) or 'short_ton' (US ton, 2000 lb)",
    "degree": "say which scale: 'C', 'F' or 'K'",
    "degrees": "say which scale: 'C', 'F' or 'K'",
}
_UNIT_BY_LOWER = {symbol.lower(): symbol for symbol in _UNITS} | {a.lower(): s for a, s in _ALIASES.items()}


def _unit_symbol(name: str) -> str:
    if name in _UNITS:  # exact symbols first: 'MB' vs 'mb' and 'C' are case-sensitive in spirit
        return name
    key = name.strip().lower()
    if key in _AMBIGUOUS_UNITS:
        raise ToolError(f"ambiguous unit {name!r}: {_AMBIGUOUS_UNITS[key]}")
    if key not in _UNIT_BY_LOWER:
        raise ToolError(f"unknown unit {name!r}; known units: {', '.join(_UNITS)}")
    return _UNIT_BY_LOWER[key]


def _to_kelvin(value: float, scale: str) -> float:
    return {"C": value + 273.15, "F": (value - 32) * 5 / 9 + 273.15, "K": value}[scale]


def _from_kelvin(value: float, scale: str) -> float:
    return {"C": value - 273.15, "F": (value - 273.15) * 9 / 5 + 32, "K": value}[scale]


def _convert(value: float, from_unit: str, to_unit: str) -> tuple[float, str, str]:
    """(converted value, from symbol, to symbol); ToolError for unknown or incompatible units."""
    source, target = _unit_symbol(str(from_unit)), _unit_symbol(str(to_unit))
    (source_dim, source_factor), (target_dim, target_factor) = _UNITS[source], _UNITS[target]
    if source_dim != target_dim:
        raise ToolError(f"cannot convert {source_dim} ({source}) to {target_dim} ({target})")
    if source_dim == "temperature":
        return _from_kelvin(_to_kelvin(float(value), source), target), source, target
    return float(value) * source_factor / target_factor, source, target


# -- the safe expression evaluator -----------------------------------------------------------------------------
# `x` as a times sign: a lone x between a number (or a closing parenthesis) and a number, name or parenthesis.
# "61 x sqrt(3)" is multiplication too; "2 xl" is not (the x starts a word), so it is left to the unit check.
_TIMES_SIGN_RE = re.compile(r"[\d)]\s*(?:×|x(?![A-Za-z_]))\s*[\w(.]")
# A number directly followed by a word: "1 week", "2.5km", "20 °C". Not a digit inside a name ("log10"), and
# not scientific notation ("1e5", "2.5E-3"), which Python itself reads as a number.
_NUMBER_THEN_WORD_RE = re.compile(r"(?<![\w.])(\d+\.?\d*|\.\d+)\s*((?![eE][+-]?\d)[A-Za-z_°][\w/°]*)(\s*\()?")


def _expression_hint(expression: str) -> str | None:
    """Explain the usual ways people write maths that is not valid here, before parsing fails obscurely."""
    if "^" in expression:
        return "use ** for powers, not ^"
    if _TIMES_SIGN_RE.search(expression):
        return "use * for multiplication, not x or ×"
    if "÷" in expression:
        return "use / for division, not ÷"
    if re.search(r"%\s*($|[a-zA-Z)])", expression) or re.search(r"[+\-]\s*[\d.]+\s*%", expression):
        return "percent signs are not supported: write 15% of 80 as 80 * 15 / 100 (or use percent_change)"
    return _number_word_hint(expression)


def _number_word_hint(expression: str) -> str | None:
    """A number followed by a word is a unit ("1 week + 2 week"), or a missing * before a constant or function
    ("2pi", "3 sqrt(2)"). Python keywords ("1 if x else 2") are left to the parser, except `in`: inches."""
    for match in _NUMBER_THEN_WORD_RE.finditer(expression):
        number, word, call = match.groups()
        if word in _CONSTANTS or (call and word in _FUNCTIONS):
            return f"use * for multiplication: write {number} * {word}{'(…)' if call else ''}"
        if keyword.iskeyword(word) and word.lower() not in _UNIT_BY_LOWER:
            continue
        found = expression[match.start(1) : match.end(2)]
        return (
            f"units are not allowed in expressions (found {found!r}): convert with convert_units first, "
            "then add plain numbers"
        )
    return None


def _evaluate(expression: str, names: dict[str, float]) -> float:
    if not isinstance(expression, str):
        raise ToolError(f"expression must be a string, got {expression!r}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression too long ({len(expression)} characters, max {MAX_EXPRESSION_CHARS})")
    hint = _expression_hint(expression)
    if hint:
        raise ToolError(f"could not evaluate {expression!r}: {hint}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise ToolError(f"could not parse {expression!r}: {getattr(exc, 'msg', exc)}") from None
    try:
        result = _eval_node(tree.body, names)
    except ZeroDivisionError:
        raise ToolError(f"division by zero in {expression!r}") from None
    except OverflowError:
        raise ToolError(f"result of {expression!r} is too large") from None
    except (ValueError, TypeError) as exc:
        raise ToolError(f"math error in {expression!r}: {exc}") from None
    if isinstance(result, complex) or not math.isfinite(result):
        raise ToolError(f"{expression!r} has no real, finite value")
    return float(result)


def _eval_node(node: ast.AST, names: dict[str, float]) -> float:
    if isinstance(node, ast.Constant) and (type(node.value) is int or type(node.value) is float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval_node(node.left, names), _eval_node(node.right, names)
        if isinstance(node.op, ast.Pow) and abs(right) > 1000:
            raise ToolError("exponent too large (max 1000)")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _eval_node(node.operand, names)
        return value if isinstance(node.op, ast.UAdd) else -value
    if isinstance(node, ast.Name):
        return _lookup_name(node.id, names)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        if node.func.id not in _FUNCTIONS:
            raise ToolError(f"unknown function {node.func.id!r}; available: {', '.join(_FUNCTIONS)}")
        return float(_FUNCTIONS[node.func.id](*(_eval_node(arg, names) for arg in node.args)))
    raise ToolError(f"unsupported syntax: {type(node).__name__} (only numbers, operators and math functions)")


def _lookup_name(name: str, names: dict[str, float]) -> float:
    if name in names:
        return names[name]
    if name in _CONSTANTS:
        return _CONSTANTS[name]
    stored = ", ".join(sorted(names)) or "none"
    raise ToolError(f"unknown name {name!r}; stored values: {stored}")


class CalculatorEnv(ToolEnv):
    """Arithmetic, unit conversion, statistics and a named memory of values."""

    domain = DOMAIN

    def __init__(self) -> None:
        super().__init__()
        self._memory: dict[str, float] = {}

    def _setup(self, setup: dict[str, Any]) -> None:
        try:
            self._memory = {str(k): _as_number(v, str(k)) for k, v in setup.get("memory", {}).items()}
        except ToolError as exc:
            raise BadInput(f"calculator task setup: memory: {exc}") from None

    def _check_state(self, expected: dict[str, Any]) -> bool:
        memory = expected.get("memory", {})
        return all(
            name in self._memory
            and math.isclose(self._memory[name], float(value), rel_tol=1e-9, abs_tol=1e-4)
            for name, value in memory.items()
        )

    def evaluate_expression(self, expression: str) -> str:
        """Evaluate an arithmetic expression and return its value rounded to 4 decimals.

        Supports + - * / // % ** and parentheses, the functions sqrt, abs, round, floor, ceil, log, log10,
        log2, exp, sin, cos, tan, min, max, the constants pi and e, and names saved with store_value.

        Args:
            expression: The expression, e.g. "(12.5 * 4) - sqrt(16)" or "rent * 12". Plain numbers only, no units.
        """
        return _fmt(_evaluate(expression, self._memory))

    def convert_units(self, value: float, from_unit: str, to_unit: str) -> str:
        """Convert a quantity between units of length, mass, time, data size, volume, speed, area or temperature.

        Args:
            value: The amount to convert.
            from_unit: The unit of `value`, a symbol or name such as "km", "miles", "lb", "GiB", "F", "cup".
            to_unit: The unit to convert to, of the same kind.
        """
        number = _as_number(value, "value")
        result, source, target = _convert(number, from_unit, to_unit)
        return f"{_fmt(number)} {source} = {_fmt(result)} {target}"

    def compute_statistics(self, values: list[float]) -> str:
        """Summary statistics of a list of numbers: count, sum, mean, median, min, max and sample stdev.

        Args:
            values: The numbers to summarise (at least one).
        """
        if not isinstance(values, list) or not values:
            raise ToolError("values must be a non-empty list of numbers")
        if len(values) > MAX_STATISTICS_VALUES:
            raise ToolError(f"too many values ({len(values)}, max {MAX_STATISTICS_VALUES})")
        numbers = [_as_number(v, "values[]") for v in values]
        stdev = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
        summary = {
            "count": len(numbers),
            "sum": _tidy(math.fsum(numbers)),
            "mean": _tidy(statistics.fmean(numbers)),
            "median": _tidy(statistics.median(numbers)),
            "min": _tidy(min(numbers)),
            "max": _tidy(max(numbers)),
            "stdev": _tidy(stdev),
        }
        return json.dumps(summary)

    def percent_change(self, old_value: float, new_value: float) -> str:
        """Relative change from an old value to a new one, in percent, with its sign (e.g. "+12.5%").

        Args:
            old_value: The starting value (not zero).
            new_value: The value it changed to.
        """
        old_value, new_value = _as_number(old_value, "old_value"), _as_number(new_value, "new_value")
        if old_value == 0:
            raise ToolError("old_value is 0: a percent change from zero is undefined")
        change = _tidy((new_value - old_value) / abs(old_value) * 100)
        return f"{'+' if change > 0 else ''}{change}%"

    def store_value(self, name: str, value: float) -> str:
        """Save a number in memory under a name, so later expressions can use it (e.g. "rent * 12").

        Args:
            name: Lowercase identifier such as "rent" or "total_cost".
            value: The number to store (replaces an earlier value with the same name).
        """
        value = _as_number(value, "value")
        if not isinstance(name, str) or not _NAME_RE.match(name) or name in _FUNCTIONS or name in _CONSTANTS:
            raise ToolError(
                f"invalid name {name!r}: use lowercase letters, digits and _, not a function name"
            )
        if name not in self._memory and len(self._memory) >= MAX_MEMORY_SLOTS:
            raise ToolError(f"memory is full ({MAX_MEMORY_SLOTS} values)")
        self._memory[name] = float(value)
        return f"stored {name} = {_fmt(value)}"

    def list_memory(self) -> str:
        """List every value stored in memory, by name."""
        return json.dumps({name: _tidy(value) for name, value in sorted(self._memory.items())})


# == task sampler ==============================================================================================
_task = functools.partial(build_task, DOMAIN)  # (kind, groups, parallel, **Task fields)
