"""The value grammar of a BLMM config, parsed without ``eval``.

BLMM configs write numbers as YAML numbers or as strings: integer arithmetic
(``MAXMEM: "2**32"``), floats (``tol: "1e-6"``), percentages (``MinPercent: "10%"``)
and contrasts as bracketed lists (``"[1 0 0]"``, ``"[[1,0,0],[0,1,0]]"``).
Arithmetic is parsed with :mod:`ast`, allowing only integer literals and
``+ - * ** //``; brackets by a small tokenizer.
"""

from __future__ import annotations

import ast
import operator
import re

import numpy as np
from numpy.typing import NDArray

_INT_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Pow: operator.pow,
    ast.FloorDiv: operator.floordiv,
}


def parse_int_expr(value: int | str) -> int:
    """Return the value of an integer or of integer arithmetic such as ``"2**32"``.

    Only integer literals, parentheses, unary minus and ``+ - * ** //`` are allowed.

    Raises
    ------
    ValueError
        For anything else (floats, names, calls, huge exponents).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an integer or a string like '2**32', got {value!r}")
    try:
        tree = ast.parse(value.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"{value!r} is not integer arithmetic") from err

    def ev(node: ast.AST) -> int:
        """Evaluate one node of the restricted grammar."""
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _INT_OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and (right < 0 or right > 256):
                raise ValueError(f"exponent {right} out of range in {value!r}")
            if isinstance(node.op, ast.FloorDiv) and right == 0:
                raise ValueError(f"division by zero in {value!r}")
            return _INT_OPS[type(node.op)](left, right)
        raise ValueError(
            f"{value!r} is not integer arithmetic (only integers and + - * ** //)"
        )

    return ev(tree.body)


def parse_float(value: float | int | str) -> float:
    """Return a float from a YAML number or a string such as ``"1e-6"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError as err:
        raise ValueError(f"expected a number, got {value!r}") from err


def parse_fraction(value: float | int | str) -> float:
    """Return MinPercent as a fraction: ``0.1`` or ``"10%"`` -> 0.1."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return parse_float(value.strip()[:-1]) / 100.0
    return parse_float(value)


_TOKEN = re.compile(r"\s*(?:(\[)|(\])|(,)|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))")


def parse_vector(value: list | str | float | int) -> NDArray[np.float64]:
    """Return a contrast as an array: 1-D for a T contrast, 2-D for an F contrast.

    Accepts YAML lists and BLMM's strings ``"[1, 0, 0]"``, ``"[1 0 0]"`` and
    ``"[[1,0,0],[0,1,0]]"``, parsed by a small tokenizer (never ``eval``).

    Raises
    ------
    ValueError
        If the value is not a flat or a rectangular nested list of numbers.
    """
    if isinstance(value, str):
        value = _parse_bracketed(value)
    try:
        arr = np.array(value, dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{value!r} is not a list of numbers") from err
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim > 2 or arr.size == 0:
        raise ValueError(
            f"expected a 1-D (T) or 2-D (F) list of numbers, got {value!r}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{value!r} contains non-finite numbers")
    return arr


def _parse_bracketed(text: str) -> list:
    """Parse nested brackets of numbers separated by commas and/or spaces."""
    pos, tokens = 0, []
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"unexpected character at position {pos} of {text!r}")
        pos = m.end()
        if m.group(4) is not None:
            tokens.append(float(m.group(4)))
        elif m.group(1) or m.group(2):
            tokens.append(m.group(1) or m.group(2))
        # commas are separators only
        if pos < len(text) and not text[pos:].strip():
            break
    stack: list[list] = [[]]
    for tok in tokens:
        if tok == "[":
            stack.append([])
        elif tok == "]":
            if len(stack) < 2:
                raise ValueError(f"unbalanced brackets in {text!r}")
            inner = stack.pop()
            stack[-1].append(inner)
        else:
            stack[-1].append(tok)
    if len(stack) != 1 or len(stack[0]) != 1:
        raise ValueError(f"{text!r} is not one bracketed list")
    return stack[0][0]


_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_combination(text: str, names: list[str] | tuple[str, ...]) -> NDArray:
    """Return the weights of a linear combination of coefficient names.

    ``"age - time"``, ``"0.5*a + 0.5*b"``, ``"-2 * sex[T.M]"``: terms joined by ``+``
    or ``-``, each a coefficient name with an optional number and ``*`` before it.
    Names are matched as written (spaces ignored), the longest name first, so
    names holding ``-``, ``+`` or ``*`` inside brackets (``I(age - 50)``) work.
    A name given twice adds up.  Never ``eval``: a small scanner.

    Parameters
    ----------
    text : str
    names : sequence of str
        The coefficients, in the order of the columns of X.

    Returns
    -------
    ndarray of shape (p,)

    Raises
    ------
    ValueError
        For a name that is not a coefficient (listing the coefficients) and for
        anything that is not such a combination.
    """
    squeezed = {re.sub(r"\s+", "", n): j for j, n in enumerate(names)}
    by_length = sorted(squeezed, key=len, reverse=True)
    s = re.sub(r"\s+", "", str(text))
    L = np.zeros(len(names))
    pos = 0
    if not s:
        raise ValueError("is empty")
    while pos < len(s):
        sign = 1.0
        if s[pos] in "+-":
            sign = -1.0 if s[pos] == "-" else 1.0
            pos += 1
        elif pos:
            raise ValueError(f"{text!r}: expected '+' or '-' at {s[pos:]!r}")
        weight = 1.0
        m = _NUMBER.match(s, pos)
        if m and s[m.end() : m.end() + 1] == "*":
            weight, pos = float(m.group()), m.end() + 1
        name = next(
            (
                n
                for n in by_length
                if s.startswith(n, pos) and s[pos + len(n) : pos + len(n) + 1] in "+-"
            ),
            None,
        )
        if name is None:
            rest = re.split(r"[-+]", s[pos:], maxsplit=1)[0] or s[pos:]
            raise ValueError(
                f"{text!r}: {rest!r} is not a coefficient; the coefficients are "
                f"{', '.join(names)}"
            )
        L[squeezed[name]] += sign * weight
        pos += len(name)
    return L
