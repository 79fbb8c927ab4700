"""Our own AST checker for BFCL's Python categories, following `bfcl_eval`'s `ast_checker` rule by rule.

Why our own: BFCL's checker module imports every API client through `bfcl_eval.constants.model_config`
(OpenAI, Anthropic, Google … SDKs), which we do not install. Why the same rules, quirks included: a score is
only comparable with BFCL's leaderboard if exactly the same outputs pass. `tests/test_ast_checker.py` checks
that this module and BFCL's own checker agree (validity and error type) on real data, right and wrong.

Forms (BFCL's): a decoded model output is `[{func_name: {param: value}}]`; a possible answer is
`[{func_name: {param: [allowed values…]}}]`, where `""` among the allowed values means "may be omitted".
Function names are the original (dotted) ones: map sanitized tool names back before checking
(`pipelines.eval.bfcl.decode_tool_calls`), which is what BFCL's `underscore_to_dot` does on its side.

Where BFCL would crash on data it never ships (an answer of the wrong shape), we fail the check instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipelines.errors import BadInput

Call = dict[str, dict[str, Any]]
Answer = dict[str, dict[str, list[Any]]]

PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
# Only these get their items' types checked, one level deep (BFCL does not recurse further either).
NESTED_TYPES = ("array", "tuple")
_IGNORED_IN_STRINGS = re.compile(r"[ \,\.\/\-\_\*\^]")


@dataclass(frozen=True)
class CheckResult:
    valid: bool
    error_type: str = ""
    errors: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """`error_type: first message`, or "" when valid: one line for result tables."""
        if self.valid:
            return ""
        return f"{self.error_type}: {self.errors[0]}" if self.errors else self.error_type


VALID = CheckResult(True)


def _fail(error_type: str, *errors: str) -> CheckResult:
    return CheckResult(False, error_type, tuple(errors))


def standardize_string(text: str) -> str:
    """BFCL's normalisation: "April 1, 2024" and "april 1 2024" are the same answer; ' and " are too."""
    return _IGNORED_IN_STRINGS.sub("", text).lower().replace("'", '"')


def _standardize_if_str(value: Any) -> Any:
    return standardize_string(value) if type(value) is str else value


def has_no_call(decoded: Any) -> bool:
    """BFCL's `is_empty_output`: no call at all, `[{}]`, or anything not in call format counts as none."""
    if not is_call_format(decoded):
        return True
    return len(decoded) == 0 or (len(decoded) == 1 and len(decoded[0]) == 0)


def is_call_format(decoded: Any) -> bool:
    """BFCL's `is_function_calling_format_output`: a list of one-key dicts whose value is a dict."""
    if type(decoded) is not list:
        return False
    return all(type(c) is dict and len(c) == 1 and type(next(iter(c.values()))) is dict for c in decoded)


def check_calls(
    functions: list[dict[str, Any]], decoded: list[Call], possible_answer: list[Answer], category: str
) -> CheckResult:
    """Score one example's decoded calls; dispatch on the category name exactly like BFCL's `ast_checker`."""
    if not is_call_format(decoded):
        return _fail("ast_decoder:decoder_wrong_output_format", "Did not output in the specified format.")
    if "parallel" in category:
        return check_parallel(functions, decoded, possible_answer)
    if "multiple" in category:
        return check_multiple(functions, decoded, possible_answer)
    if len(decoded) != 1:
        return _fail("simple_function_checker:wrong_count", "Wrong number of functions.")
    return check_function(functions[0], decoded[0], possible_answer[0])


def find_function(functions: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for function in functions:
        if function["name"] == name:
            return function
    raise BadInput(f"a possible answer calls {name!r}, which the example's functions do not declare")


def check_multiple(
    functions: list[dict[str, Any]], decoded: list[Call], possible_answer: list[Answer]
) -> CheckResult:
    """Choose-from-several: exactly one call, checked against the one expected function."""
    if len(decoded) != len(possible_answer):
        return _fail("multiple_function_checker:wrong_count", "Wrong number of functions.")
    expected = find_function(functions, next(iter(possible_answer[0])))
    return check_function(expected, decoded[0], possible_answer[0])


def check_parallel(
    functions: list[dict[str, Any]], decoded: list[Call], possible_answer: list[Answer]
) -> CheckResult:
    """Order-free: each expected call takes the first still-unmatched predicted call that passes.

    This is BFCL's greedy matching, kept on purpose: when an earlier expected call could match either of
    two predictions, it takes the first and a later one may then find none, although a full matching
    exists. Such an output fails in BFCL, so it fails here (tested in test_ast_checker.py).
    """
    if len(decoded) != len(possible_answer):
        return _fail("parallel_function_checker_no_order:wrong_count", "Wrong number of functions.")
    matched: set[int] = set()
    for i, answer in enumerate(possible_answer):
        function = find_function(functions, next(iter(answer)))
        tries = {
            j: check_function(function, decoded[j], answer) for j in range(len(decoded)) if j not in matched
        }
        hit = next((j for j, result in tries.items() if result.valid), None)
        if hit is None:
            reasons = [f"output {j}: {result.summary}" for j, result in tries.items()]
            return _fail(
                "parallel_function_checker_no_order:cannot_find_match",
                f"Could not find a matching function among index {sorted(tries)} of model output "
                f"for index {i} of possible answers.",
                *reasons,
            )
        matched.add(hit)
    return VALID


def check_function(function: dict[str, Any], call: Call, answer: Answer) -> CheckResult:
    """One call against one function doc and its allowed values (BFCL's `simple_function_checker`)."""
    allowed = next(iter(answer.values()))
    name = function["name"]
    properties = function["parameters"].get("properties", {})
    if name not in call:
        return _fail(
            "simple_function_checker:wrong_func_name", f"Function name {name!r} not found in model output."
        )
    arguments = call[name]
    for param in function["parameters"].get("required", []):
        if param not in arguments:
            return _fail(
                "simple_function_checker:missing_required", f"Missing required parameter: {param!r}."
            )
    for param, value in arguments.items():
        if param not in properties or param not in allowed:
            return _fail("simple_function_checker:unexpected_param", f"Unexpected parameter: {param!r}.")
        result = check_argument(name, param, value, properties[param], allowed[param])
        if not result.valid:
            return result
    for param, values in allowed.items():
        if param not in arguments and "" not in values:
            return _fail(
                "simple_function_checker:missing_optional",
                f"Optional parameter {param!r} not provided and not marked as optional.",
            )
    return VALID


def _python_type(function_name: str, param: str, type_name: str) -> type:
    if type_name not in PYTHON_TYPES:
        raise BadInput(
            f"function {function_name!r} parameter {param!r}: unknown BFCL type {type_name!r} "
            f"(known: {', '.join(PYTHON_TYPES)})"
        )
    return PYTHON_TYPES[type_name]


def check_argument(
    function_name: str, param: str, value: Any, spec: dict[str, Any], allowed: list
) -> CheckResult:
    """Type, then value: strings normalised, lists and dicts compared element-wise, the rest by `==`."""
    type_name = spec.get("type", "")
    expected = _python_type(function_name, param, type_name)
    nested = None
    if type_name in NESTED_TYPES:
        nested = _python_type(function_name, param, spec.get("items", {}).get("type", ""))
    if type_name == "tuple" and type(value) is tuple:
        value = list(value)  # possible answers went through JSON, where tuples became lists
    if type_name == "float" and type(value) is int:
        value = float(value)  # Python would accept an int where a float is declared
    typed = check_type(param, value, allowed, type_name, expected, nested)
    if not typed.result.valid:
        return typed.result
    if not typed.is_variable:
        if expected is dict:
            return check_dict(param, value, allowed)
        if expected is list and nested is dict:
            return check_list_of_dicts(param, value, allowed)
        if expected is str:
            return check_string(param, value, allowed)
        if expected is list:
            return check_list(param, value, allowed)
    if value not in allowed:
        return _fail(
            "value_error:others",
            f"Invalid value for parameter {param!r}: {value!r}. Expected one of {allowed}.",
        )
    return VALID


@dataclass(frozen=True)
class TypeCheck:
    result: CheckResult
    # The possible answers hold a value of another type than declared (BFCL writes a variable name as a
    # string where the doc says e.g. "dict"); then values are compared as-is, without normalisation.
    is_variable: bool = False


def _answer_type(allowed: list) -> type | None:
    """Type of the first allowed value that is not the optional marker ""."""
    return next((type(a) for a in allowed if a != ""), None)


def check_type(
    param: str, value: Any, allowed: list, type_name: str, expected: type[Any], nested: type | None
) -> TypeCheck:
    """Exact `type(...)` match (so True is not an int), or the answers' own type (a variable)."""
    answer_type = _answer_type(allowed)
    simple_error = (
        f"Incorrect type for parameter {param!r}. Expected type {type_name}, got {type(value).__name__}. "
        f"Parameter value: {value!r}."
    )
    if type(value) is expected:
        is_variable = answer_type is not None and answer_type is not expected
        if nested is None or _items_match_some_answer(value, allowed, nested):
            return TypeCheck(VALID, is_variable)
        nested_error = (
            f"Nested type checking failed for parameter {param!r}. Expected outer type {type_name} with "
            f"inner type {nested.__name__}. Parameter value: {value!r}."
        )
        if type(value) is answer_type:
            return TypeCheck(_fail("type_error:nested", nested_error), True)
        return TypeCheck(_fail("type_error:simple", nested_error, simple_error))
    if answer_type is not None and type(value) is answer_type:
        return TypeCheck(VALID, True)
    return TypeCheck(_fail("type_error:simple", simple_error))


def _items_match_some_answer(value: list, allowed: list, nested: type) -> bool:
    """Every item has the inner type (or that answer's own item type) for at least one allowed answer.

    An allowed answer that is not a list (the optional marker "") passes without looking at the items:
    BFCL's loop leaves its flag set for such answers, so we do too.
    """
    for answer in allowed:
        if type(answer) is not list:
            return True
        item_type = _answer_type(answer)
        if all(type(item) is nested or type(item) is item_type for item in value):
            return True
    return False


def check_string(param: str, value: str, allowed: list) -> CheckResult:
    normalised = [standardize_string(a) for a in allowed if type(a) is str]
    if standardize_string(value) not in normalised:
        return _fail(
            "value_error:string",
            f"Invalid value for parameter {param!r}: {value!r}. Expected one of {allowed}. Case insensitive.",
        )
    return VALID


def check_list(param: str, value: list, allowed: list) -> CheckResult:
    """Order matters inside a list; string items are normalised on both sides."""
    normalised_value = [_standardize_if_str(v) for v in value]
    # BFCL iterates each answer with len()/[]: the optional "" becomes [], so an empty list matches it.
    normalised = [
        [_standardize_if_str(a) for a in answer] for answer in allowed if isinstance(answer, (list, str))
    ]
    if normalised_value not in normalised:
        return _fail(
            "value_error:list/tuple",
            f"Invalid value for parameter {param!r}: {value!r}. Expected one of {allowed}.",
        )
    return VALID


def check_dict(param: str, value: Any, allowed: list) -> CheckResult:
    """A dict argument passes if it matches one allowed dict (keys known, values allowed, none missing)."""
    result = _fail("dict_checker:unclear")
    for answer in allowed:
        if answer == "":
            continue
        result = _check_dict_against(value, answer)
        if result.valid:
            return VALID
    return result


def _check_dict_against(value: Any, answer: Any) -> CheckResult:
    if not isinstance(value, dict) or not isinstance(answer, dict):
        return _fail("value_error:dict_value", f"Expected a dict matching {answer!r}, got {value!r}.")
    errors: list[str] = []
    error_type = "dict_checker:unclear"
    for key, item in value.items():
        if key not in answer:
            errors.append(f"Unexpected dict key parameter: {key!r}.")
            error_type = "value_error:dict_key"
            break
        options = [_standardize_if_str(a) for a in answer[key]]
        if _standardize_if_str(item) not in options:
            errors.append(f"Invalid value for parameter {key!r}: {item!r}. Expected one of {options}.")
            error_type = "value_error:dict_value"
            break
    # BFCL runs this second pass even after a failure above, so a missing key decides the error type.
    for key, options in answer.items():
        if key not in value and "" not in options:
            errors.append(f"Missing dict key parameter: {key!r}.")
            error_type = "value_error:dict_key"
            break
    return _fail(error_type, *errors) if errors else VALID


def check_list_of_dicts(param: str, value: list, allowed: list) -> CheckResult:
    """Same length and, position by position, each dict matches (order matters)."""
    result = _fail("list_dict_checker:unclear")
    for answer in allowed:
        if not isinstance(answer, (list, str)) or len(value) != len(answer):
            result = _fail("value_error:list_dict_count", "Wrong number of dictionaries in the list.")
            continue
        checks = (check_dict(param, item, [expected]) for item, expected in zip(value, answer, strict=True))
        failed = next((r for r in checks if not r.valid), None)
        if failed is None:
            return VALID
        result = failed
    return result
