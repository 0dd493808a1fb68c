"""Row rules such as ``rating >= 4`` or ``page in ["home", "search"] and not is_bot``: a tiny parser, no eval.

Grammar (precedence low to high)::

    rule    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := operand (("==" | "!=" | ">=" | "<=" | ">" | "<") operand | "in" "[" literal ("," literal)* "]")?
    operand := NAME | NUMBER | "STRING" | 'STRING' | "(" rule ")"

NAME is a value of the spec (an input column, a joined column or a derived value). A bare NAME (no
comparison) is true where the value is non-zero. ``Rule.evaluate(values)`` runs on whole pyarrow columns at
once; a row whose compared value is missing gets a missing (null) result, which the caller counts.
"""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

import pyarrow as pa
import pyarrow.compute as pc


class RuleError(ValueError):
    """A rule that does not parse or does not fit the values' types."""


_TOKEN = re.compile(r"\s*(?:(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<str>\"[^\"]*\"|'[^']*')|"
                    r"(?P<op>==|!=|>=|<=|>|<|\(|\)|\[|\]|,)|(?P<name>[A-Za-z_][A-Za-z0-9_.]*))")
_CMP = {"==": pc.equal, "!=": pc.not_equal, ">=": pc.greater_equal, "<=": pc.less_equal, ">": pc.greater,
        "<": pc.less}
_KEYWORDS = ("and", "or", "not", "in")


def _tokens(text: str) -> List[Tuple[str, object]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise RuleError(f"rule {text!r}: cannot read {text[pos:].strip()[:20]!r} (at character {pos + 1})")
        pos = m.end()
        if m.group("num") is not None:
            s = m.group("num")
            out.append(("lit", float(s) if any(c in s for c in ".eE") else int(s)))
        elif m.group("str") is not None:
            out.append(("lit", m.group("str")[1:-1]))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        else:
            name = m.group("name")
            out.append(("kw", name) if name in _KEYWORDS else ("name", name))
    return out


class Rule:
    """A parsed rule: ``text``, the value ``names`` it reads, ``check(types)`` and ``evaluate(values)``."""

    def __init__(self, text: str, tree):
        self.text, self.tree = text, tree
        self.names = sorted(set(_names(tree)))

    def __repr__(self):
        return f"Rule({self.text!r})"

    def check(self, types: Dict[str, str]) -> None:
        """RuleError for an unknown value or a comparison of a string with a number."""
        _check(self.tree, types, self.text)

    def evaluate(self, values: Dict[str, pa.Array]) -> pa.Array:
        """Boolean array (null where a compared value is missing)."""
        return _eval(self.tree, values)


def parse_rule(text: str) -> Rule:
    toks = _tokens(text)
    if not toks:
        raise RuleError("empty rule")
    p = _Parser(toks, text)
    tree = p.or_()
    if p.i != len(toks):
        raise RuleError(f"rule {text!r}: unexpected {toks[p.i][1]!r}")
    if tree[0] == "lit":
        raise RuleError(f"rule {text!r}: compares no value")
    return Rule(text, tree)


class _Parser:
    def __init__(self, toks, text):
        self.toks, self.text, self.i = toks, text, 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self, kind=None, value=None):
        k, v = self.peek()
        if k is None or (kind and k != kind) or (value is not None and v != value):
            want = value or kind
            raise RuleError(f"rule {self.text!r}: expected {want!r}" + (f", got {v!r}" if k else " at the end"))
        self.i += 1
        return k, v

    def _chain(self, keyword: str, operand):
        """``operand (keyword operand)*``, left-associative: nested ``(keyword, left, right)`` nodes."""
        node = operand()
        while self.peek() == ("kw", keyword):
            self.take()
            node = (keyword, node, operand())
        return node

    def or_(self):
        return self._chain("or", self.and_)

    def and_(self):
        return self._chain("and", self.not_)

    def not_(self):
        if self.peek() == ("kw", "not"):
            self.take()
            return ("not", self.not_())
        return self.compare()

    def compare(self):
        left = self.operand()
        k, v = self.peek()
        if k == "op" and v in _CMP:
            self.take()
            return ("cmp", v, left, self.operand())
        if (k, v) == ("kw", "in"):
            self.take()
            self.take("op", "[")
            items = [self.take("lit")[1]]
            while self.peek() == ("op", ","):
                self.take()
                items.append(self.take("lit")[1])
            self.take("op", "]")
            return ("in", left, items)
        return left

    def operand(self):
        k, v = self.peek()
        if (k, v) == ("op", "("):
            self.take()
            node = self.or_()
            self.take("op", ")")
            return node
        if k in ("name", "lit"):
            self.take()
            return (k, v)
        raise RuleError(f"rule {self.text!r}: expected a value, a number or a string" + (f", got {v!r}" if k else ""))


def _names(node):
    if node[0] == "name":
        yield node[1]
    for child in node[1:]:
        if isinstance(child, tuple):
            yield from _names(child)


def _kind(node, types) -> str:
    """'string' | 'number' | 'bool' of an operand."""
    if node[0] == "lit":
        return "string" if isinstance(node[1], str) else "number"
    if node[0] == "name":
        return "string" if types[node[1]] == "string" else "number"
    return "bool"


def _check(node, types, text):
    for name in _names(node):
        if name not in types:
            raise RuleError(f"rule {text!r}: no value '{name}' (known: {', '.join(types)})")
    op = node[0]
    if op == "cmp":
        a, b = _kind(node[2], types), _kind(node[3], types)
        if "bool" in (a, b) or a != b:
            raise RuleError(f"rule {text!r}: '{node[1]}' compares a {a} with a {b}")
    elif op == "in":
        a = _kind(node[1], types)
        kinds = {"string" if isinstance(x, str) else "number" for x in node[2]}
        if kinds != {a}:
            raise RuleError(f"rule {text!r}: 'in' lists {'/'.join(sorted(kinds))} values for a {a} value")
    elif op in ("and", "or", "not"):
        for child in node[1:]:
            _check(child, types, text)
    elif op == "name" and types[node[1]] == "string":
        raise RuleError(f"rule {text!r}: '{node[1]}' is a string; compare it (e.g. {node[1]} == \"x\")")


def _eval(node, values):
    op = node[0]
    if op == "name":
        col = values[node[1]]
        return col if pa.types.is_boolean(col.type) else pc.not_equal(col, 0)
    if op == "lit":
        return pa.scalar(node[1])
    if op == "cmp":
        return _CMP[node[1]](_operand(node[2], values), _operand(node[3], values))
    if op == "in":
        col = _operand(node[1], values)
        hit = pc.is_in(col, value_set=pa.array(node[2]).cast(col.type))
        return pc.if_else(pc.is_null(col), pa.scalar(None, pa.bool_()), hit)
    if op == "not":
        return pc.invert(_eval(node[1], values))
    fn = pc.and_kleene if op == "and" else pc.or_kleene
    return fn(_eval(node[1], values), _eval(node[2], values))


def _operand(node, values):
    if node[0] == "name":
        return values[node[1]]
    if node[0] == "lit":
        return pa.scalar(node[1])
    return _eval(node, values)
