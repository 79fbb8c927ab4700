"""The code domain's banks: function-writing problems and questions answered by running a snippet.

Data for code_runner.py's sampler, kept apart so that module stays about the environment. Each `Problem` has a
reference solution, a plausible buggy first draft (for the fail → fix → pass pattern), fixed edge cases and a
generator of random arguments (the sampler shows the model one case that exposes the bug). Each `ComputeRecipe` is a
snippet whose first line is an import, so dropping it gives the compute task's crashing mistake.
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


# -- the problem bank ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """A function-writing problem: reference solution, plausible buggy first draft and how to fix it."""

    name: str
    params: str
    returns: str
    description: str  # a verb phrase: "returns …", "counts …"
    reference: str
    # The buggy draft; most are the reference with one line changed, written as (that line, its buggy version)
    # so the bug is what the bank shows. The tuple becomes the draft's full text on construction.
    buggy: str | tuple[str, str]
    bug: str  # the reflection after the buggy draft fails its tests
    edge_cases: tuple[tuple[Any, ...], ...]  # fixed cases; the sampler shows one that exposes the bug
    random_args: Callable[[random.Random], tuple[Any, ...]]

    def __post_init__(self) -> None:
        if isinstance(self.buggy, tuple):
            line, buggy_line = self.buggy
            if self.reference.count(line) != 1:
                raise ValueError(f"problem {self.name}: {line!r} must occur exactly once in the reference")
            object.__setattr__(self, "buggy", self.reference.replace(line, buggy_line))

    @property
    def signature(self) -> str:
        return f"def {self.name}({self.params}) -> {self.returns}"


_VOCABULARY = (
    "apple", "banana", "cherry", "delta", "echo", "forest", "garden", "harbor", "island", "jungle", "kettle",
    "lemon", "mango", "nectar", "orange", "pepper", "quartz", "river", "silver", "tiger", "umbrella", "velvet",
    "window", "yellow", "zebra", "code", "data", "model", "train", "token", "python", "list",
)  # fmt: skip


def _word(r: random.Random) -> str:
    return r.choice(_VOCABULARY)


def _words(r: random.Random, lo: int = 0, hi: int = 6) -> list[str]:
    return [_word(r) for _ in range(r.randint(lo, hi))]


def _ints(r: random.Random, lo: int = 0, hi: int = 8, low: int = -20, high: int = 20) -> list[int]:
    return [r.randint(low, high) for _ in range(r.randint(lo, hi))]


def _spaced(r: random.Random, words: list[str]) -> str:
    return "".join(" " * r.randint(0, 2) + w for w in words) + " " * r.randint(0, 2)


def _mixed_case(r: random.Random, text: str) -> str:
    return "".join(c.upper() if r.random() < 0.3 else c for c in text)


def _roman(n: int) -> str:
    table: tuple[tuple[int, str], ...] = (
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
    )
    table += ((10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))
    out = ""
    for value, symbol in table:
        count, n = divmod(n, value)
        out += symbol * count
    return out


def _palindrome_case(r: random.Random) -> tuple[Any, ...]:
    word = "".join(r.choice("abcde") for _ in range(r.randint(1, 5)))
    text = word + word[::-1][r.randint(0, 1) :] if r.random() < 0.6 else word + "x" + word
    return (
        _mixed_case(r, " ".join(text[i : i + 3] for i in range(0, len(text), 3)) + r.choice(["", "!", "."])),
    )


def _anagram_case(r: random.Random) -> tuple[Any, ...]:
    word = _word(r)
    other = " ".join(r.sample(word, len(word))) if r.random() < 0.6 else word + "s"
    return (word, _mixed_case(r, other))


def _matrix(r: random.Random, rows: int, cols: int) -> list[list[int]]:
    return [[r.randint(0, 9) for _ in range(cols)] for _ in range(rows)]


def _prefix_case(r: random.Random) -> tuple[Any, ...]:
    stem = _word(r)[: r.randint(0, 4)]
    return ([stem + "".join(r.choice("ab") for _ in range(r.randint(0, 3))) for _ in range(r.randint(1, 4))],)


def _code(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


PROBLEMS: tuple[Problem, ...] = (
    Problem(
        "reverse_words", "text: str", "str",
        "returns the words of `text` in reverse order, joined by single spaces (extra whitespace is dropped)",
        _code('def reverse_words(text: str) -> str:\n    return " ".join(reversed(text.split()))'),
        ('return " ".join(reversed(text.split()))', 'return " ".join(reversed(text.split(" ")))'),
        "split(' ') keeps empty strings for repeated or leading spaces; split() with no argument drops them.",
        (("hello world",), ("  many   spaces here ",), ("",), ("one",)),
        lambda r: (_spaced(r, _words(r, 1, 5)),),
    ),
    Problem(
        "is_palindrome", "text: str", "bool",
        "returns True when `text` reads the same backwards, ignoring case and every non-alphanumeric character",
        _code("""
            def is_palindrome(text: str) -> bool:
                cleaned = [c.lower() for c in text if c.isalnum()]
                return cleaned == cleaned[::-1]
        """),
        ("cleaned = [c.lower() for c in text if c.isalnum()]", "cleaned = [c for c in text if c.isalnum()]"),
        "I compared characters without lower-casing them, so 'Aba' failed; normalise the case first.",
        (("A man, a plan, a canal: Panama",), ("racecar",), ("hello",), ("",), ("No lemon, no melon",)),
        _palindrome_case,
    ),
    Problem(
        "count_vowels", "text: str", "int",
        "counts the vowels (a, e, i, o, u, in either case) in `text`",
        _code('def count_vowels(text: str) -> int:\n    return sum(c in "aeiouAEIOU" for c in text)'),
        ('return sum(c in "aeiouAEIOU" for c in text)', 'return sum(c in "aeiou" for c in text)'),
        "Only lower-case vowels were counted; upper-case ones count too.",
        (("Programming In Python",), ("hello",), ("AEIOU",), ("xyz",), ("",)),
        lambda r: (_mixed_case(r, " ".join(_words(r, 0, 5))),),
    ),
    Problem(
        "capitalize_words", "text: str", "str",
        "upper-cases the first character of every space-separated word and leaves everything else unchanged",
        _code("""
            def capitalize_words(text: str) -> str:
                return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))
        """),
        ('return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))', "return text.title()"),
        "str.title() also lower-cases the rest of each word and capitalises after apostrophes; only the first "
        "character of each word may change.",
        (("don't stop",), ("mcDonald farm",), ("hello world",), ("",), ("a  b",)),
        lambda r: (" ".join(w if r.random() < 0.5 else w[:2] + w[2:].upper() for w in _words(r, 0, 4)),),
    ),
    Problem(
        "running_sum", "nums: list[int]", "list[int]",
        "returns the running totals of `nums`: item i is nums[0] + … + nums[i]",
        _code("""
            def running_sum(nums: list[int]) -> list[int]:
                totals, total = [], 0
                for n in nums:
                    total += n
                    totals.append(total)
                return totals
        """),
        _code("""
            def running_sum(nums: list[int]) -> list[int]:
                return [sum(nums[:i]) for i in range(len(nums))]
        """),
        "nums[:i] stops before index i, so every total missed its own item; use nums[:i + 1] (or keep a running "
        "total).",
        (([1, 2, 3, 4],), ([5],), ([],), ([-1, 1, -1],)),
        lambda r: (_ints(r),),
    ),
    Problem(
        "chunk_list", "items: list[int], size: int", "list[list[int]]",
        "splits `items` into consecutive chunks of `size` items (the last chunk may be shorter)",
        _code("""
            def chunk_list(items: list[int], size: int) -> list[list[int]]:
                return [items[i : i + size] for i in range(0, len(items), size)]
        """),
        ("return [items[i : i + size] for i in range(0, len(items), size)]",
         "return [items[i : i + size] for i in range(0, len(items) - size + 1, size)]"),
        "The range stopped before the final, shorter chunk; step over the whole list with range(0, len(items), "
        "size).",
        (([1, 2, 3, 4, 5], 2), ([1, 2, 3, 4], 2), ([], 3), ([1, 2], 5)),
        lambda r: (_ints(r, 0, 9), r.randint(1, 4)),
    ),
    Problem(
        "flatten", "nested: list", "list",
        "flattens arbitrarily nested lists into one flat list, keeping the order",
        _code("""
            def flatten(nested: list) -> list:
                flat = []
                for item in nested:
                    if isinstance(item, list):
                        flat.extend(flatten(item))
                    else:
                        flat.append(item)
                return flat
        """),
        _code("""
            def flatten(nested: list) -> list:
                return [x for item in nested for x in (item if isinstance(item, list) else [item])]
        """),
        "Only one level was flattened; lists inside lists need a recursive call.",
        (([1, [2, [3, [4]]], 5],), ([[1, 2], [3]],), ([],), ([1, 2, 3],)),
        lambda r: ([r.randint(0, 9), [r.randint(0, 9), [r.randint(0, 9)] * r.randint(0, 2)], r.randint(0, 9)],),
    ),
    Problem(
        "second_largest", "nums: list[int]", "int | None",
        "returns the second largest distinct value in `nums`, or None when there are fewer than two distinct values",
        _code("""
            def second_largest(nums: list[int]) -> int | None:
                distinct = sorted(set(nums))
                return distinct[-2] if len(distinct) >= 2 else None
        """),
        ("distinct = sorted(set(nums))\n    return distinct[-2] if len(distinct) >= 2 else None",
         "ordered = sorted(nums)\n    return ordered[-2] if len(ordered) >= 2 else None"),
        "A repeated maximum was counted twice; deduplicate with set() before picking the second value.",
        (([5, 5, 4],), ([3, 1, 4, 1, 5],), ([7],), ([2, 2],), ([],)),
        lambda r: (_ints(r, 0, 7, 0, 6),),
    ),
    Problem(
        "fizzbuzz", "n: int", "list[str]",
        'returns, for 1 to n inclusive, "FizzBuzz" for multiples of 15, "Fizz" for other multiples of 3, "Buzz" '
        "for other multiples of 5 and the number as a string otherwise",
        _code("""
            def fizzbuzz(n: int) -> list[str]:
                out = []
                for i in range(1, n + 1):
                    out.append("FizzBuzz" if i % 15 == 0 else "Fizz" if i % 3 == 0 else "Buzz" if i % 5 == 0 else str(i))
                return out
        """),
        ("for i in range(1, n + 1):", "for i in range(1, n):"),
        "range(1, n) stops at n - 1; the list must include n itself.",
        ((15,), (1,), (0,), (5,)),
        lambda r: (r.randint(0, 30),),
    ),
    Problem(
        "factorial", "n: int", "int",
        "returns n! for n >= 0 (factorial(0) == 1)",
        _code("""
            def factorial(n: int) -> int:
                result = 1
                for i in range(2, n + 1):
                    result *= i
                return result
        """),
        ("for i in range(2, n + 1):", "for i in range(1, n):"),
        "range(1, n) leaves out n itself; multiply up to and including n with range(2, n + 1).",
        ((5,), (0,), (1,), (10,)),
        lambda r: (r.randint(0, 25),),
    ),
    Problem(
        "fibonacci", "n: int", "int",
        "returns the n-th Fibonacci number, with fibonacci(0) == 0 and fibonacci(1) == 1",
        _code("""
            def fibonacci(n: int) -> int:
                a, b = 0, 1
                for _ in range(n):
                    a, b = b, a + b
                return a
        """),
        ("a, b = 0, 1", "a, b = 1, 1"),
        "The sequence must start 0, 1; starting at 1, 1 shifted every value by one place.",
        ((0,), (1,), (2,), (10,)),
        lambda r: (r.randint(0, 60),),
    ),
    Problem(
        "gcd", "a: int, b: int", "int",
        "returns the greatest common divisor of `a` and `b`, never negative (gcd(0, 0) == 0)",
        _code("""
            def gcd(a: int, b: int) -> int:
                a, b = abs(a), abs(b)
                while b:
                    a, b = b, a % b
                return a
        """),
        ("a, b = abs(a), abs(b)\n    while b:", "while b:"),
        "Negative inputs gave a negative result; take abs() of both numbers first.",
        ((17, -5), (12, 18), (-4, 0), (0, 0), (0, 5)),
        lambda r: (r.randint(-60, 60), r.randint(-60, 60)),
    ),
    Problem(
        "is_prime", "n: int", "bool",
        "returns True when `n` is a prime number",
        _code("""
            def is_prime(n: int) -> bool:
                if n < 2:
                    return False
                for d in range(2, int(n ** 0.5) + 1):
                    if n % d == 0:
                        return False
                return True
        """),
        ("for d in range(2, int(n ** 0.5) + 1):", "for d in range(2, int(n ** 0.5)):"),
        "The divisor range stopped before the square root, so squares like 9 and 25 passed as primes; use "
        "range(2, int(n ** 0.5) + 1).",
        ((9,), (25,), (2,), (1,), (13,), (4,)),
        lambda r: (r.randint(-3, 200),),
    ),
    Problem(
        "digit_sum", "n: int", "int",
        "returns the sum of the decimal digits of `n`, ignoring its sign",
        _code("def digit_sum(n: int) -> int:\n    return sum(int(c) for c in str(abs(n)))"),
        ("return sum(int(c) for c in str(abs(n)))", "return sum(int(c) for c in str(n))"),
        "str(n) of a negative number starts with '-', which int() rejects; use abs(n).",
        ((-45,), (123,), (0,), (9999,)),
        lambda r: (r.randint(-100000, 100000),),
    ),
    Problem(
        "word_frequencies", "text: str", "dict[str, int]",
        "counts how often each whitespace-separated word occurs in `text`, case-insensitively (keys lower-case)",
        _code("""
            def word_frequencies(text: str) -> dict[str, int]:
                counts = {}
                for word in text.lower().split():
                    counts[word] = counts.get(word, 0) + 1
                return counts
        """),
        ("for word in text.lower().split():", "for word in text.split():"),
        "Words were counted case-sensitively, so 'The' and 'the' were separate keys; lower-case the text first.",
        (("The the THE",), ("the cat and the hat",), ("",)),
        lambda r: (_mixed_case(r, " ".join(r.choice(_VOCABULARY[:6]) for _ in range(r.randint(0, 8)))),),
    ),
    Problem(
        "invert_dict", "mapping: dict[str, str]", "dict[str, list[str]]",
        "maps each value of `mapping` to the sorted list of keys that had that value",
        _code("""
            def invert_dict(mapping: dict[str, str]) -> dict[str, list[str]]:
                inverted = {}
                for key, value in mapping.items():
                    inverted.setdefault(value, []).append(key)
                return {value: sorted(keys) for value, keys in inverted.items()}
        """),
        _code("""
            def invert_dict(mapping: dict[str, str]) -> dict[str, list[str]]:
                return {value: [key] for key, value in mapping.items()}
        """),
        "A later key overwrote earlier keys with the same value; collect every key per value, then sort.",
        (({"a": "x", "b": "y", "c": "x"},), ({},), ({"k": "v"},)),
        lambda r: ({_word(r): r.choice("xyz") for _ in range(r.randint(0, 6))},),
    ),
    Problem(
        "merge_counts", "first: dict[str, int], second: dict[str, int]", "dict[str, int]",
        "merges two count dictionaries, adding the counts of keys present in both",
        _code("""
            def merge_counts(first: dict[str, int], second: dict[str, int]) -> dict[str, int]:
                merged = dict(first)
                for key, count in second.items():
                    merged[key] = merged.get(key, 0) + count
                return merged
        """),
        _code("""
            def merge_counts(first: dict[str, int], second: dict[str, int]) -> dict[str, int]:
                return {**first, **second}
        """),
        "Dict unpacking let the second dict overwrite shared keys; their counts must be added.",
        (({"a": 1, "b": 2}, {"b": 3, "c": 4}), ({}, {"x": 1}), ({"a": 1}, {})),
        lambda r: tuple({r.choice("abcde"): r.randint(1, 9) for _ in range(r.randint(0, 4))} for _ in range(2)),
    ),
    Problem(
        "group_by_first_letter", "words: list[str]", "dict[str, list[str]]",
        "groups `words` by their lower-cased first letter, keeping the input order inside each group and "
        "skipping empty strings",
        _code("""
            def group_by_first_letter(words: list[str]) -> dict[str, list[str]]:
                groups = {}
                for word in words:
                    if word:
                        groups.setdefault(word[0].lower(), []).append(word)
                return groups
        """),
        ("if word:\n            groups.setdefault(word[0].lower(), []).append(word)",
         "groups.setdefault(word[0], []).append(word)"),
        "Empty strings crashed on word[0], and 'Apple' and 'apple' must share the key 'a'; skip empty words and "
        "lower-case the key.",
        ((["Apple", "apple", "Bob"],), (["apple", "avocado", "banana"],), (["", "x"],), ([],)),
        lambda r: ([_mixed_case(r, w) for w in _words(r, 0, 6)],),
    ),
    Problem(
        "rotate_right", "items: list[int], k: int", "list[int]",
        "rotates `items` right by `k` positions (k may exceed the length; an empty list stays empty)",
        _code("""
            def rotate_right(items: list[int], k: int) -> list[int]:
                if not items:
                    return []
                k %= len(items)
                return items[-k:] + items[:-k] if k else list(items)
        """),
        _code("""
            def rotate_right(items: list[int], k: int) -> list[int]:
                return items[-k:] + items[:-k]
        """),
        "k larger than the length was not reduced; rotate by k % len(items) (and keep the empty-list case).",
        (([1, 2, 3], 5), ([1, 2, 3, 4, 5], 2), ([], 3), ([1, 2, 3], 0)),
        lambda r: (_ints(r, 0, 6), r.randint(0, 9)),
    ),
    Problem(
        "unique_in_order", "items: list[int]", "list[int]",
        "removes duplicates from `items`, keeping the first occurrence of each value in the original order",
        _code("""
            def unique_in_order(items: list[int]) -> list[int]:
                seen, out = set(), []
                for item in items:
                    if item not in seen:
                        seen.add(item)
                        out.append(item)
                return out
        """),
        _code('def unique_in_order(items: list[int]) -> list[int]:\n    return sorted(set(items))'),
        "set() loses the original order; keep a seen-set and append values in input order.",
        (([3, 1, 3, 2, 1],), ([5, 4, 3],), ([],), ([1, 1, 1],)),
        lambda r: (_ints(r, 0, 9, 0, 5),),
    ),
    Problem(
        "binary_search", "items: list[int], target: int", "int",
        "returns the index of `target` in the sorted list `items` of distinct values, or -1 if it is absent",
        _code("""
            def binary_search(items: list[int], target: int) -> int:
                lo, hi = 0, len(items) - 1
                while lo <= hi:
                    mid = (lo + hi) // 2
                    if items[mid] == target:
                        return mid
                    if items[mid] < target:
                        lo = mid + 1
                    else:
                        hi = mid - 1
                return -1
        """),
        ("while lo <= hi:", "while lo < hi:"),
        "With `while lo < hi` the last remaining candidate was never checked; loop while lo <= hi.",
        (([2], 2), ([1, 3, 5, 7], 7), ([1, 3, 5, 7], 1), ([], 4), ([1, 3, 5], 4)),
        lambda r: (sorted(r.sample(range(50), r.randint(0, 8))), r.randint(0, 49)),
    ),
    Problem(
        "max_subarray_sum", "nums: list[int]", "int",
        "returns the largest sum of a non-empty contiguous slice of the non-empty list `nums`",
        _code("""
            def max_subarray_sum(nums: list[int]) -> int:
                best = current = nums[0]
                for x in nums[1:]:
                    current = max(x, current + x)
                    best = max(best, current)
                return best
        """),
        _code("""
            def max_subarray_sum(nums: list[int]) -> int:
                best = current = 0
                for x in nums:
                    current = max(0, current + x)
                    best = max(best, current)
                return best
        """),
        "Starting from 0 treats the empty slice as allowed, so an all-negative list returned 0; start from "
        "nums[0].",
        (([-3, -1, -2],), ([-2, 1, -3, 4, -1, 2, 1, -5, 4],), ([5],), ([1, 2, 3],)),
        lambda r: (_ints(r, 1, 8, -9, 9),),
    ),
    Problem(
        "roman_to_int", "numeral: str", "int",
        "converts a Roman numeral (I, V, X, L, C, D, M, with subtractive pairs like IV and CM) to an integer",
        _code("""
            def roman_to_int(numeral: str) -> int:
                values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
                total = 0
                for i, symbol in enumerate(numeral):
                    value = values[symbol]
                    if i + 1 < len(numeral) and values[numeral[i + 1]] > value:
                        total -= value
                    else:
                        total += value
                return total
        """),
        _code("""
            def roman_to_int(numeral: str) -> int:
                values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
                return sum(values[symbol] for symbol in numeral)
        """),
        "Subtractive pairs like IV and CM were added instead of subtracted; a symbol before a larger one counts "
        "negative.",
        (("IV",), ("MCMXCIV",), ("III",), ("LVIII",)),
        lambda r: (_roman(r.randint(1, 3999)),),
    ),
    Problem(
        "int_to_roman", "number: int", "str",
        "converts an integer from 1 to 3999 to a Roman numeral, using subtractive pairs (4 is IV, 900 is CM)",
        _code("""
            def int_to_roman(number: int) -> str:
                table = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
                         (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
                out = ""
                for value, symbol in table:
                    count, number = divmod(number, value)
                    out += symbol * count
                return out
        """),
        ('table = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),\n             (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]',
         'table = [(1000, "M"), (500, "D"), (100, "C"), (50, "L"), (10, "X"), (5, "V"), (1, "I")]'),
        "The table lacked the subtractive forms (CM, CD, XC, XL, IX, IV), so 4 came out as IIII.",
        ((4,), (1994,), (9,), (3,), (58,)),
        lambda r: (r.randint(1, 3999),),
    ),
    Problem(
        "caesar_shift", "text: str, shift: int", "str",
        "shifts every ASCII letter of `text` by `shift` places, wrapping around the alphabet and keeping its "
        "case; other characters stay as they are",
        _code("""
            def caesar_shift(text: str, shift: int) -> str:
                out = []
                for c in text:
                    if "a" <= c <= "z":
                        out.append(chr((ord(c) - ord("a") + shift) % 26 + ord("a")))
                    elif "A" <= c <= "Z":
                        out.append(chr((ord(c) - ord("A") + shift) % 26 + ord("A")))
                    else:
                        out.append(c)
                return "".join(out)
        """),
        _code("""
            def caesar_shift(text: str, shift: int) -> str:
                return "".join(chr(ord(c) + shift) if c.isalpha() else c for c in text)
        """),
        "Letters were shifted past 'z' instead of wrapping; shift modulo 26 from the start of the alphabet, per "
        "case.",
        (("xyz", 3), ("Hello, World!", 13), ("abc", 1), ("", 5)),
        lambda r: (_mixed_case(r, " ".join(_words(r, 0, 3))), r.randint(-30, 30)),
    ),
    Problem(
        "run_length_encode", "text: str", "str",
        "run-length encodes `text`: each run of a repeated character becomes the character and the run length "
        '("aaabcc" -> "a3b1c2")',
        _code("""
            def run_length_encode(text: str) -> str:
                out = []
                i = 0
                while i < len(text):
                    j = i
                    while j < len(text) and text[j] == text[i]:
                        j += 1
                    out.append(f"{text[i]}{j - i}")
                    i = j
                return "".join(out)
        """),
        _code("""
            def run_length_encode(text: str) -> str:
                out = []
                count = 1
                for i in range(1, len(text)):
                    if text[i] == text[i - 1]:
                        count += 1
                    else:
                        out.append(f"{text[i - 1]}{count}")
                        count = 1
                return "".join(out)
        """),
        "The final run was never written, because runs are only emitted when the character changes; flush the "
        "last run after the loop (and handle the empty string).",
        (("aaabcc",), ("a",), ("",), ("abc",)),
        lambda r: ("".join(r.choice("ab") * r.randint(1, 3) for _ in range(r.randint(0, 5))),),
    ),
    Problem(
        "are_anagrams", "first: str, second: str", "bool",
        "returns True when the two strings are anagrams of each other, ignoring case and spaces",
        _code("""
            def are_anagrams(first: str, second: str) -> bool:
                def letters(s: str) -> list[str]:
                    return sorted(s.replace(" ", "").lower())
                return letters(first) == letters(second)
        """),
        _code("""
            def are_anagrams(first: str, second: str) -> bool:
                return sorted(first.lower()) == sorted(second.lower())
        """),
        "Spaces were compared as characters, so 'dirty room' did not match 'Dormitory'; drop spaces first.",
        (("Dormitory", "dirty room"), ("listen", "silent"), ("abc", "abd"), ("a gentleman", "elegant man")),
        _anagram_case,
    ),
    Problem(
        "count_words", "text: str", "int",
        "counts the whitespace-separated words in `text`",
        _code("def count_words(text: str) -> int:\n    return len(text.split())"),
        ("return len(text.split())", 'return len(text.split(" "))'),
        "split(' ') yields empty strings for extra spaces (and one for the empty text); split() without an "
        "argument counts only real words.",
        (("  padded   text ",), ("",), ("hello world",), ("one",)),
        lambda r: (_spaced(r, _words(r, 0, 6)),),
    ),
    Problem(
        "transpose", "matrix: list[list[int]]", "list[list[int]]",
        "transposes the rectangular (possibly empty) `matrix`: rows become columns",
        _code("def transpose(matrix: list[list[int]]) -> list[list[int]]:\n    return [list(r) for r in zip(*matrix)]"),
        ("return [list(r) for r in zip(*matrix)]",
         "n = len(matrix)\n    return [[matrix[j][i] for j in range(n)] for i in range(n)]"),
        "The number of rows was used for both dimensions, which only works for square matrices; iterate over "
        "the columns (zip(*matrix)).",
        (([[1, 2, 3], [4, 5, 6]],), ([[1, 2], [3, 4]],), ([],), ([[7]],)),
        lambda r: (_matrix(r, r.randint(1, 4), r.randint(1, 4)),),
    ),
    Problem(
        "diagonal_sum", "matrix: list[list[int]]", "int",
        "sums both diagonals of the square `matrix`, counting the centre cell only once",
        _code("""
            def diagonal_sum(matrix: list[list[int]]) -> int:
                n = len(matrix)
                total = sum(matrix[i][i] + matrix[i][n - 1 - i] for i in range(n))
                return total - (matrix[n // 2][n // 2] if n % 2 else 0)
        """),
        ("total = sum(matrix[i][i] + matrix[i][n - 1 - i] for i in range(n))\n    return total - (matrix[n // 2][n // 2] if n % 2 else 0)",
         "return sum(matrix[i][i] + matrix[i][n - 1 - i] for i in range(n))"),
        "For odd sizes the centre cell lies on both diagonals and was counted twice; subtract it once.",
        (([[1, 2, 3], [4, 5, 6], [7, 8, 9]],), ([[1, 2], [3, 4]],), ([[5]],), ([],)),
        lambda r: (lambda n: (_matrix(r, n, n),))(r.randint(1, 5)),
    ),
    Problem(
        "balanced_brackets", "text: str", "bool",
        "returns True when the brackets (), [] and {} in `text` are balanced and properly nested (other "
        "characters are ignored)",
        _code("""
            def balanced_brackets(text: str) -> bool:
                pairs = {")": "(", "]": "[", "}": "{"}
                stack = []
                for c in text:
                    if c in "([{":
                        stack.append(c)
                    elif c in pairs:
                        if not stack or stack.pop() != pairs[c]:
                            return False
                return not stack
        """),
        _code("""
            def balanced_brackets(text: str) -> bool:
                return all(text.count(a) == text.count(b) for a, b in ("()", "[]", "{}"))
        """),
        "Equal counts are not enough: ')(' and '([)]' have matching counts but wrong order; use a stack.",
        ((")(",), ("([)]",), ("([]{})",), ("",), ("(a[b]c)",)),
        lambda r: ("".join(r.choice("()[]{}x") for _ in range(r.randint(0, 8))),),
    ),
    Problem(
        "longest_common_prefix", "words: list[str]", "str",
        'returns the longest common prefix of all `words` ("" for an empty list)',
        _code("""
            def longest_common_prefix(words: list[str]) -> str:
                if not words:
                    return ""
                prefix = words[0]
                for word in words[1:]:
                    while not word.startswith(prefix):
                        prefix = prefix[:-1]
                return prefix
        """),
        _code("""
            def longest_common_prefix(words: list[str]) -> str:
                prefix = words[0]
                for word in words[1:]:
                    while not word.startswith(prefix):
                        prefix = prefix[:-1]
                return prefix
        """),
        "An empty list crashed on words[0]; return '' for it before anything else.",
        (([],), (["flower", "flow", "flight"],), (["dog", "racecar"],), (["same", "same"],)),
        _prefix_case,
    ),
    Problem(
        "median", "nums: list[int]", "float",
        "returns the median of the non-empty list `nums` as a float (the mean of the two middle values when the "
        "length is even)",
        _code("""
            def median(nums: list[int]) -> float:
                ordered = sorted(nums)
                mid = len(ordered) // 2
                if len(ordered) % 2:
                    return float(ordered[mid])
                return (ordered[mid - 1] + ordered[mid]) / 2
        """),
        _code("""
            def median(nums: list[int]) -> float:
                return float(sorted(nums)[len(nums) // 2])
        """),
        "For even lengths the upper middle value was returned; average the two middle values.",
        (([4, 1, 3, 2],), ([3, 1, 2],), ([5],), ([1, 2],)),
        lambda r: (_ints(r, 1, 8),),
    ),
    Problem(
        "snake_to_camel", "name: str", "str",
        'converts snake_case to camelCase ("make_it_work" -> "makeItWork"): the first word lower-case, each later '
        "word capitalised, repeated underscores ignored",
        _code("""
            def snake_to_camel(name: str) -> str:
                parts = [p for p in name.split("_") if p]
                if not parts:
                    return ""
                return parts[0].lower() + "".join(p.capitalize() for p in parts[1:])
        """),
        _code("""
            def snake_to_camel(name: str) -> str:
                return "".join(p.capitalize() for p in name.split("_"))
        """),
        "The first word must stay lower-case; only the words after it are capitalised.",
        (("make_it_work",), ("hello_world",), ("single",), ("",), ("double__underscore",)),
        lambda r: ("_".join(_words(r, 1, 4)),),
    ),
    Problem(
        "camel_to_snake", "name: str", "str",
        'converts camelCase or PascalCase to snake_case ("helloWorld" and "HelloWorld" -> "hello_world")',
        _code("""
            def camel_to_snake(name: str) -> str:
                out = []
                for i, c in enumerate(name):
                    if c.isupper() and i > 0:
                        out.append("_")
                    out.append(c.lower())
                return "".join(out)
        """),
        _code("""
            def camel_to_snake(name: str) -> str:
                return "".join("_" + c.lower() if c.isupper() else c for c in name)
        """),
        "A capital first letter got a leading underscore; only add '_' before capitals after the first "
        "character.",
        (("HelloWorld",), ("helloWorld",), ("simple",), ("",)),
        lambda r: ("".join(w.capitalize() if i or r.random() < 0.5 else w for i, w in enumerate(_words(r, 1, 3))),),
    ),
    Problem(
        "count_set_bits", "n: int", "int",
        "counts the 1 bits in the binary form of the non-negative integer `n`",
        _code('def count_set_bits(n: int) -> int:\n    return bin(n).count("1")'),
        _code("""
            def count_set_bits(n: int) -> int:
                count = 0
                while n > 1:
                    count += n & 1
                    n >>= 1
                return count
        """),
        "`while n > 1` stopped before the highest bit; loop while n > 0.",
        ((1,), (7,), (0,), (8,), (255,)),
        lambda r: (r.randint(0, 5000),),
    ),
    Problem(
        "pairs_with_sum", "nums: list[int], target: int", "list[list[int]]",
        "returns the sorted list of distinct pairs [a, b] (a <= b) of values at two different positions of "
        "`nums` with a + b == target",
        _code("""
            def pairs_with_sum(nums: list[int], target: int) -> list[list[int]]:
                seen, pairs = set(), set()
                for x in nums:
                    if target - x in seen:
                        pairs.add((min(x, target - x), max(x, target - x)))
                    seen.add(x)
                return [list(p) for p in sorted(pairs)]
        """),
        _code("""
            def pairs_with_sum(nums: list[int], target: int) -> list[list[int]]:
                values = set(nums)
                pairs = {(min(x, target - x), max(x, target - x)) for x in values if target - x in values}
                return [list(p) for p in sorted(pairs)]
        """),
        "A value was paired with itself even when it occurs only once; only match values seen at earlier "
        "positions.",
        (([3], 6), ([1, 2, 3, 4, 5], 6), ([3, 3], 6), ([], 1), ([2, 4, 3], 6)),
        lambda r: (_ints(r, 0, 7, 0, 8), r.randint(0, 12)),
    ),
    Problem(
        "is_leap_year", "year: int", "bool",
        "returns True for Gregorian leap years (divisible by 4, except centuries not divisible by 400)",
        _code("""
            def is_leap_year(year: int) -> bool:
                return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        """),
        ("return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)",
         "return year % 4 == 0 and year % 100 != 0"),
        "Years divisible by 400 (like 2000) are leap years too.",
        ((2000,), (1900,), (2024,), (2023,)),
        lambda r: (r.choice([r.randint(1800, 2400), 100 * r.randint(15, 25)]),),
    ),
    Problem(
        "days_in_month", "year: int, month: int", "int",
        "returns the number of days in `month` (1-12) of `year`, with 29 days for February in leap years",
        _code("""
            def days_in_month(year: int, month: int) -> int:
                if month == 2:
                    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
                    return 29 if leap else 28
                return 30 if month in (4, 6, 9, 11) else 31
        """),
        ("leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)\n        return 29 if leap else 28",
         "return 28"),
        "February has 29 days in leap years.",
        ((2024, 2), (2023, 2), (2023, 4), (2000, 2), (1900, 2), (2023, 12)),
        lambda r: (r.randint(1890, 2100), r.randint(1, 12)),
    ),
    Problem(
        "truncate_text", "text: str, limit: int", "str",
        'returns `text` unchanged if it has at most `limit` characters, else cuts it so that the result including '
        'a trailing "..." is exactly `limit` characters long (limit >= 3)',
        _code("""
            def truncate_text(text: str, limit: int) -> str:
                return text if len(text) <= limit else text[: limit - 3] + "..."
        """),
        ('return text if len(text) <= limit else text[: limit - 3] + "..."',
         'return text if len(text) <= limit else text[:limit] + "..."'),
        "The '...' must fit inside the limit; cut the text at limit - 3.",
        (("hello world", 8), ("short", 10), ("exactly", 7), ("abcdef", 5)),
        lambda r: (" ".join(_words(r, 1, 4)), r.randint(3, 20)),
    ),
    Problem(
        "mask_card", "number: str", "str",
        'replaces every character of `number` except the last four with "#"',
        _code('def mask_card(number: str) -> str:\n    return "#" * max(len(number) - 4, 0) + number[-4:]'),
        ('return "#" * max(len(number) - 4, 0) + number[-4:]',
         'return "#" * (len(number) - 3) + number[-3:]'),
        "Off by one: only the last three characters stayed visible; keep the last four.",
        (("4556364607935616",), ("1234",), ("12",), ("",)),
        lambda r: ("".join(r.choice("0123456789") for _ in range(r.randint(0, 16))),),
    ),
    Problem(
        "sum_of_multiples", "limit: int", "int",
        "returns the sum of all natural numbers below `limit` that are multiples of 3 or 5",
        _code("""
            def sum_of_multiples(limit: int) -> int:
                return sum(n for n in range(limit) if n % 3 == 0 or n % 5 == 0)
        """),
        ("return sum(n for n in range(limit) if n % 3 == 0 or n % 5 == 0)",
         "return sum(range(0, limit, 3)) + sum(range(0, limit, 5))"),
        "Multiples of 15 were counted twice (once as multiples of 3, once of 5); add each number once.",
        ((16,), (10,), (0,), (1,), (31,)),
        lambda r: (r.randint(0, 200),),
    ),
    Problem(
        "top_k_frequent", "words: list[str], k: int", "list[str]",
        "returns the `k` most frequent words, most frequent first, ties in alphabetical order",
        _code("""
            def top_k_frequent(words: list[str], k: int) -> list[str]:
                counts = {}
                for word in words:
                    counts[word] = counts.get(word, 0) + 1
                return sorted(counts, key=lambda w: (-counts[w], w))[:k]
        """),
        _code("""
            from collections import Counter

            def top_k_frequent(words: list[str], k: int) -> list[str]:
                return [word for word, _ in Counter(words).most_common(k)]
        """),
        "most_common() keeps ties in first-seen order; sort by (-count, word) instead.",
        ((["b", "a", "b", "a", "c"], 2), (["pear", "apple", "pear", "fig", "apple", "fig"], 2), (["x"], 1), ([], 3)),
        lambda r: ([r.choice(_VOCABULARY[:5]) for _ in range(r.randint(0, 9))], r.randint(1, 3)),
    ),
    Problem(
        "interleave", "first: list[int], second: list[int]", "list[int]",
        "alternates items from `first` and `second`, then appends the rest of the longer list",
        _code("""
            def interleave(first: list[int], second: list[int]) -> list[int]:
                out = []
                for i in range(max(len(first), len(second))):
                    if i < len(first):
                        out.append(first[i])
                    if i < len(second):
                        out.append(second[i])
                return out
        """),
        _code("""
            def interleave(first: list[int], second: list[int]) -> list[int]:
                return [x for pair in zip(first, second) for x in pair]
        """),
        "zip() stops at the shorter list, so the tail of the longer one was dropped; append the remainder.",
        (([1, 3, 5], [2, 4]), ([1], [2, 3, 4]), ([], [1]), ([1, 2], [3, 4])),
        lambda r: (_ints(r, 0, 5), _ints(r, 0, 5)),
    ),
    Problem(
        "count_overlapping", "text: str, pattern: str", "int",
        "counts the occurrences of the non-empty `pattern` in `text`, overlapping ones included",
        _code("""
            def count_overlapping(text: str, pattern: str) -> int:
                count, start = 0, 0
                while True:
                    found = text.find(pattern, start)
                    if found < 0:
                        return count
                    count += 1
                    start = found + 1
        """),
        _code("def count_overlapping(text: str, pattern: str) -> int:\n    return text.count(pattern)"),
        "str.count() skips overlapping matches ('aaaa' holds 'aa' three times); advance one character after each "
        "match.",
        (("aaaa", "aa"), ("banana", "ana"), ("abcabc", "abc"), ("", "a")),
        lambda r: ("".join(r.choice("ab") for _ in range(r.randint(0, 10))), r.choice(["a", "aa", "ab", "aba"])),
    ),
    Problem(
        "pascal_row", "n: int", "list[int]",
        "returns row `n` (0-based) of Pascal's triangle",
        _code("""
            def pascal_row(n: int) -> list[int]:
                row = [1]
                for _ in range(n):
                    row = [a + b for a, b in zip([0] + row, row + [0])]
                return row
        """),
        ("for _ in range(n):", "for _ in range(n - 1):"),
        "The loop ran n - 1 times and produced the previous row; row n takes n steps from [1].",
        ((4,), (0,), (1,), (6,)),
        lambda r: (r.randint(0, 15),),
    ),
    Problem(
        "collatz_steps", "n: int", "int",
        "returns how many Collatz steps (n // 2 if n is even, else 3 * n + 1) it takes to reach 1 from n >= 1",
        _code("""
            def collatz_steps(n: int) -> int:
                steps = 0
                while n != 1:
                    n = n // 2 if n % 2 == 0 else 3 * n + 1
                    steps += 1
                return steps
        """),
        ("steps = 0", "steps = 1"),
        "The count started at 1, so every answer was one too high; reaching 1 from 1 takes 0 steps.",
        ((1,), (6,), (27,), (2,)),
        lambda r: (r.randint(1, 1000),),
    ),
    Problem(
        "to_binary", "n: int", "str",
        'returns the binary digits of the non-negative integer `n` without a "0b" prefix ("0" for zero)',
        _code("def to_binary(n: int) -> str:\n    return bin(n)[2:]"),
        _code("""
            def to_binary(n: int) -> str:
                digits = ""
                while n > 0:
                    digits = str(n % 2) + digits
                    n //= 2
                return digits
        """),
        "Zero never entered the loop and came back as an empty string; return '0' for it.",
        ((0,), (5,), (1,), (255,)),
        lambda r: (r.randint(0, 4096),),
    ),
    Problem(
        "slugify", "text: str", "str",
        'turns `text` into a URL slug: lower-case, every run of non-alphanumeric characters becomes one "-", '
        "and no leading or trailing dashes",
        _code("""
            import re

            def slugify(text: str) -> str:
                return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
        """),
        ('return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")',
         'return re.sub(r"[^a-z0-9]", "-", text.lower())'),
        "Each separator character became its own '-', leaving doubled dashes and dashes at the ends; replace "
        "whole runs and strip the ends.",
        (("Hello, World!",), ("  spaced  out ",), ("already-slug",), ("",)),
        lambda r: (_mixed_case(r, r.choice([" ", ", ", " - ", "!"]).join(_words(r, 1, 4))),),
    ),
)  # fmt: skip


# -- the compute questions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComputeRecipe:
    """A question answered by running a snippet. The snippet's first line is an import that the mistake drops."""

    label: str
    question: str
    snippet: str
    slots: Callable[[random.Random], dict[str, Any]]
    missing: str  # the name a script without the import line fails on


def _date(r: random.Random) -> str:
    return f"{r.randint(1950, 2050)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"


def _date_pair(r: random.Random) -> dict[str, Any]:
    first, second = sorted({_date(r), _date(r), _date(r)})[:2]
    return {"start": first, "end": second}


RECIPES: tuple[ComputeRecipe, ...] = (
    ComputeRecipe("Primes below {n}", "How many prime numbers are there below {n}?",
            "import math\nprint(sum(1 for k in range(2, {n}) if all(k % d for d in range(2, math.isqrt(k) + 1))))",
            lambda r: {"n": r.randint(50, 3000)}, "math"),
    ComputeRecipe("F({n})", "What is the Fibonacci number F({n}), with F(0) = 0 and F(1) = 1?",
            "from functools import lru_cache\n\n\n@lru_cache(maxsize=None)\ndef fib(k):\n"
            "    return k if k < 2 else fib(k - 1) + fib(k - 2)\n\n\nprint(fib({n}))",
            lambda r: {"n": r.randint(30, 90)}, "lru_cache"),
    ComputeRecipe("Digits of {b}**{e}", "How many decimal digits does {b} to the power of {e} have?",
            "import math\nprint(len(str(math.prod([{b}] * {e}))))",
            lambda r: {"b": r.randint(2, 9), "e": r.randint(20, 400)}, "math"),
    ComputeRecipe("Digit sum of {n}!", "What is the sum of the digits of {n}! ({n} factorial)?",
            "import math\nprint(sum(int(c) for c in str(math.factorial({n}))))",
            lambda r: {"n": r.randint(10, 150)}, "math"),
    ComputeRecipe("LCM of 1..{n}", "What is the least common multiple of all the integers from 1 to {n}?",
            "import math\nfrom functools import reduce\nprint(reduce(math.lcm, range(1, {n} + 1)))",
            lambda r: {"n": r.randint(5, 30)}, "math"),
    ComputeRecipe("Days from {start} to {end}", "How many days are there from {start} to {end}?",
            "from datetime import date\nprint((date.fromisoformat('{end}') - date.fromisoformat('{start}')).days)",
            _date_pair, "date"),
    ComputeRecipe("Weekday of {day}", "Which day of the week is {day}?",
            "from datetime import date\nprint(date.fromisoformat('{day}').strftime('%A'))",
            lambda r: {"day": _date(r)}, "date"),
    ComputeRecipe("Collatz steps from {n}", "How many steps does the Collatz sequence starting at {n} take to reach 1?",
            "import itertools\n\nn = {n}\nfor steps in itertools.count():\n    if n == 1:\n        print(steps)\n"
            "        break\n    n = n // 2 if n % 2 == 0 else 3 * n + 1",
            lambda r: {"n": r.randint(2, 100000)}, "itertools"),
    ComputeRecipe("C({n}, {k})", "In how many ways can you choose {k} items out of {n}?",
            "import math\nprint(math.comb({n}, {k}))",
            lambda r: (lambda n: {"n": n, "k": r.randint(2, n // 2)})(r.randint(10, 60)), "math"),
    ComputeRecipe("gcd({a}, {b})", "What is the greatest common divisor of {a} and {b}?",
            "import math\nprint(math.gcd({a}, {b}))",
            lambda r: (lambda f: {"a": f * r.randint(2, 999), "b": f * r.randint(2, 999)})(r.randint(2, 500)),
            "math"),
    ComputeRecipe("Prime number {n}", "What is the {n}th prime number, counting 2 as the first?",
            "import itertools\n\ncount = 0\nfor k in itertools.count(2):\n"
            "    if all(k % d for d in range(2, int(k ** 0.5) + 1)):\n        count += 1\n        if count == {n}:\n"
            "            print(k)\n            break",
            lambda r: {"n": r.randint(5, 800)}, "itertools"),
    ComputeRecipe("Sum of squares 1..{n}", "What is the sum of the squares of the integers from 1 to {n}?",
            "from functools import reduce\nprint(reduce(lambda total, k: total + k * k, range(1, {n} + 1), 0))",
            lambda r: {"n": r.randint(10, 5000)}, "reduce"),
)  # fmt: skip
