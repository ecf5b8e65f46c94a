"""Argo's expression tags `{{=...}}`: the subset of expr-lang (github.com/expr-lang/expr) Argo's examples use.

Argo evaluates the text after `=` with expr-lang over its substitution scope, the dotted names nested into maps
(`inputs.parameters.x`, `inputs.parameters['x-y']`, `workflow.parameters.p`, `item`...), with expr's builtins and
Argo's functions (`asInt`, `asFloat`, `string`, `toJson`, `jsonpath`, `sprig.*`); a string result is inserted as
is, any other as JSON (workflow/common/expression: `json.Marshal`). Supported here: literals (numbers, strings,
`true`/`false`/`nil`, arrays, maps `{key: value}`), member access (`.name`, `[index]`), calls, unary `- ! not`,
`** * / % + -`, comparisons, `in`, `contains`/`startsWith`/`endsWith`/`matches`, `&& and || or`, `??`,
`cond ? a : b`, and the predicate builtins (`filter map all any none one count`) with closures `{# ...}`. Anything
else is a `WorkflowError` naming it.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from registry.errors import WorkflowError

__all__ = ["evaluate_expr", "expr_text", "nest_scope"]

_TOKEN = re.compile(
    r"""\s*(?:(?P<num>\d+\.\d+|\d+)|(?P<str>'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*")
    |(?P<name>[A-Za-z_$][A-Za-z0-9_$]*)
    |(?P<op>\*\*|==|!=|<=|>=|&&|\|\||\?\?|[-+*/%<>!#.,:?()\[\]{}]))""",
    re.VERBOSE,
)
_BINARY = {  # operator -> precedence (higher binds tighter)
    "??": 1, "||": 2, "or": 2, "&&": 3, "and": 3, "==": 4, "!=": 4, "<": 4, ">": 4, "<=": 4, ">=": 4, "in": 4,
    "contains": 4, "startsWith": 4, "endsWith": 4, "matches": 4, "+": 5, "-": 5, "*": 6, "/": 6, "%": 6, "**": 7,
}  # fmt: skip
_PREDICATES = ("filter", "map", "all", "any", "none", "one", "count")
Node = tuple[Any, ...]


def _tokens(text: str) -> list[tuple[str, str]]:
    found, pos, text = [], 0, text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise WorkflowError(f"unexpected {text[pos:].strip()[:20]!r}")
        kind = str(match.lastgroup)
        found.append((kind, match.group(kind)))
        pos = match.end()
    return found


class _Parser:
    """Precedence climbing over the tokens; produces tuples ("kind", ...)."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str:
        return self.toks[self.i][1] if self.i < len(self.toks) else ""

    def take(self, expected: str = "") -> tuple[str, str]:
        if self.i >= len(self.toks) or (expected and self.toks[self.i][1] != expected):
            raise WorkflowError(f"expected {expected or 'more'} at {self.peek() or 'the end'!r}")
        self.i += 1
        return self.toks[self.i - 1]

    def parse(self) -> Node:
        node = self.expression()
        if self.i != len(self.toks):
            raise WorkflowError(f"unexpected {self.peek()!r}")
        return node

    def expression(self, floor: int = 0) -> Node:
        left = self.unary()
        while True:
            op = self.peek()
            if op == "?" and floor == 0:
                self.take()
                yes = self.expression()
                self.take(":")
                left = ("if", left, yes, self.expression())
                continue
            if op not in _BINARY or _BINARY[op] <= floor - (op == "**"):
                return left
            self.take()
            left = ("bin", op, left, self.expression(_BINARY[op]))

    def unary(self) -> Node:
        if self.peek() in ("-", "!", "not", "+"):
            op = self.take()[1]
            return ("un", op, self.unary())
        return self.postfix(self.primary())

    def postfix(self, node: Node) -> Node:
        while self.peek() in (".", "[", "("):
            op = self.take()[1]
            if op == ".":
                node = ("get", node, ("lit", self.take()[1]))
            elif op == "[":
                node = ("get", node, self.expression())
                self.take("]")
            else:
                node = ("call", node, self.arguments(node))
        return node

    def arguments(self, callee: Node) -> list[Node]:
        args: list[Node] = []
        while self.peek() != ")":
            closure = callee == ("var", callee[-1]) and callee[-1] in _PREDICATES and len(args) == 1
            if closure and self.peek() == "{":
                self.take("{")
                args.append(("closure", self.expression()))
                self.take("}")
            else:
                args.append(self.expression())
            if self.peek() != ")":
                self.take(",")
        self.take(")")
        return args

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "num":
            return ("lit", float(text) if "." in text else int(text))
        if kind == "str":
            return ("lit", _string(text))
        if kind == "name":
            literals = {"true": True, "false": False, "nil": None}
            return ("lit", literals[text]) if text in literals else ("var", text)
        if text == "#":
            return ("var", "#")
        if text == "(":
            node = self.expression()
            self.take(")")
            return node
        if text in ("[", "{"):
            return self.collection(text)
        raise WorkflowError(f"unexpected {text!r}")

    def collection(self, opener: str) -> Node:
        closer, items = {"[": "]", "{": "}"}[opener], []
        while self.peek() != closer:
            if opener == "{":
                key = self.take()[1].strip("'\"")
                self.take(":")
                items.append((key, self.expression()))
            else:
                items.append(self.expression())
            if self.peek() != closer:
                self.take(",")
        self.take(closer)
        return ("map", items) if opener == "{" else ("list", items)


def _string(token: str) -> str:
    """A quoted literal's text; a single-quoted one is read as the double-quoted JSON string it would be."""
    if token[0] == "'":
        token = '"' + token[1:-1].replace("\\'", "'").replace('"', '\\"') + '"'
    try:
        return str(json.loads(token))
    except ValueError as e:
        raise WorkflowError(f"string {token} does not parse ({e})") from e


def nest_scope(scope: Mapping[str, str]) -> dict[str, Any]:
    """The flat substitution scope as expr-lang's environment: `a.b.c` becomes {"a": {"b": {"c": ...}}}."""
    env: dict[str, Any] = {}
    for key in sorted(scope, key=lambda k: k.count(".")):  # a name that is also a prefix becomes its map
        parts, here = key.split("."), env
        for part in parts[:-1]:
            if not isinstance(here.get(part), dict):
                here[part] = {}
            here = here[part]
        here[parts[-1]] = scope[key]
    return env


def evaluate_expr(text: str, env: Mapping[str, Any]) -> Any:
    """The value of expr-lang expression `text` over `env`.

    Raises:
        WorkflowError: The expression does not parse, names what `env` lacks, or uses what is not supported.
    """
    try:
        return _Eval(env).run(_Parser(text).parse())
    except (ArithmeticError, LookupError, TypeError, ValueError) as e:  # a function's own failure, e.g. bad JSON
        raise WorkflowError(f"{type(e).__name__}: {e}") from e


def expr_text(value: Any) -> str:
    """How Argo inserts a result: a string as is, anything else as JSON (an integral float without `.0`)."""
    if isinstance(value, str):
        return value
    return json.dumps(_go_numbers(value), separators=(",", ":"))


def _go_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_go_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _go_numbers(v) for k, v in value.items()}
    return value


class _Eval:
    def __init__(self, env: Mapping[str, Any], item: Any = None) -> None:
        self.env, self.item = env, item

    def run(self, node: Node) -> Any:
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "var":
            return self.variable(node[1])
        if kind == "list":
            return [self.run(n) for n in node[1]]
        if kind == "map":
            return {k: self.run(v) for k, v in node[1]}
        if kind == "get":
            return _member(self.run(node[1]), self.run(node[2]))
        if kind == "un":
            value = self.run(node[2])
            return -value if node[1] == "-" else value if node[1] == "+" else not value
        if kind == "if":
            return self.run(node[2]) if self.run(node[1]) else self.run(node[3])
        if kind == "bin":
            return self.binary(node[1], node[2], node[3])
        if kind == "call":
            return self.call(node[1], node[2])
        raise WorkflowError(f"a closure {{...}} is only an argument of {', '.join(_PREDICATES)}")

    def variable(self, name: str) -> Any:
        if name == "#":
            return self.item
        if name in self.env:
            return self.env[name]
        if name in _FUNCTIONS or name in _PREDICATES or name == "sprig":
            return ("fn", name)
        raise WorkflowError(f"unknown name {name!r}")

    def binary(self, op: str, left_node: Node, right_node: Node) -> Any:
        left = self.run(left_node)
        if op in ("&&", "and", "||", "or", "??"):
            decided = {"&&": not left, "and": not left, "||": bool(left), "or": bool(left), "??": left is not None}
            return left if decided[op] else self.run(right_node)
        return _OPERATORS[op](left, self.run(right_node))

    def call(self, callee: Node, args: list[Node]) -> Any:
        target = self.run(callee)
        if not (isinstance(target, tuple) and target[:1] == ("fn",)):
            raise WorkflowError(f"{_describe(callee)} is not a function")
        name = target[1]
        if name in _PREDICATES:
            return self.predicate(name, args)
        function = _FUNCTIONS.get(name)
        if function is None:
            raise WorkflowError(f"function {name}() is not supported by the local runner")
        return function(*[self.run(a) for a in args])

    def predicate(self, name: str, args: list[Node]) -> Any:
        if len(args) != 2 or args[1][0] != "closure":
            raise WorkflowError(f"{name}() takes an array and a closure {{...}}")
        items = self.run(args[0])
        results = [(item, _Eval(self.env, item).run(args[1][1])) for item in items]
        if name == "map":
            return [r for _, r in results]
        if name == "filter":
            return [i for i, r in results if r]
        hits = sum(1 for _, r in results if r)
        return {"all": hits == len(results), "any": hits > 0, "none": hits == 0, "one": hits == 1, "count": hits}[name]


def _describe(node: Node) -> str:
    return str(node[-1]) if node[0] in ("var", "lit") else node[0]


def _member(container: Any, key: Any) -> Any:
    if isinstance(container, tuple) and container == ("fn", "sprig"):
        return ("fn", f"sprig.{key}")
    try:
        return container[int(key) if isinstance(container, list) else key]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise WorkflowError(f"no member {key!r} in {str(container)[:60]!r}") from e


def _number(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float(value) if "." in str(value) else int(str(value))
    return value


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "in": lambda a, b: a in b,
    "contains": lambda a, b: b in a,
    "startsWith": lambda a, b: str(a).startswith(str(b)),
    "endsWith": lambda a, b: str(a).endswith(str(b)),
    "matches": lambda a, b: re.search(str(b), str(a)) is not None,
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,  # expr-lang: `/` is always a float division
    "%": lambda a, b: a % b,
    "**": lambda a, b: float(a**b),
}


def _jsonpath(document: Any, path: str) -> Any:
    """Argo's jsonpath(json, path) for the paths examples use: `$`, `.key`, `['key']`, `[index]`."""
    value = json.loads(document) if isinstance(document, str) else document
    for key, quoted, index in re.findall(r"\.([^.\[\]]+)|\[['\"]([^'\"]+)['\"]\]|\[(-?\d+)\]", path.lstrip("$")):
        value = _member(value, int(index) if index else key or quoted)
    return value


_GO_LAYOUT = (("2006", "%Y"), ("01", "%m"), ("02", "%d"), ("15", "%H"), ("04", "%M"), ("05", "%S"), ("Jan", "%b"))


def _sprig_date(layout: str, _when: Any) -> str:
    """Sprig's date: `_when` a time value; Argo's timestamps are strings, which sprig formats as now."""
    for go, strf in _GO_LAYOUT:
        layout = layout.replace(go, strf)
    return time.strftime(layout, time.gmtime())


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "asInt": lambda v: int(str(v)),
    "asFloat": lambda v: float(str(v)),
    "int": lambda v: int(float(str(v))),
    "float": lambda v: float(str(v)),
    "string": lambda v: v if isinstance(v, str) else expr_text(v),
    "toJson": expr_text,
    "fromJson": json.loads,
    "jsonpath": _jsonpath,
    "len": len,
    "abs": abs,
    "ceil": math.ceil,
    "floor": math.floor,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "trim": lambda s, chars=None: str(s).strip(chars),
    "split": lambda s, sep: str(s).split(sep),
    "join": lambda items, sep="": sep.join(str(i) for i in items),
    "keys": lambda m: list(m),
    "values": lambda m: list(m.values()),
    "first": lambda items: items[0] if items else None,
    "last": lambda items: items[-1] if items else None,
    "sprig.b64dec": lambda s: base64.b64decode(str(s)).decode(),
    "sprig.b64enc": lambda s: base64.b64encode(str(s).encode()).decode(),
    "sprig.add": lambda *n: sum(int(_number(x)) for x in n),
    "sprig.sub": lambda a, b: int(_number(a)) - int(_number(b)),
    "sprig.mul": lambda *n: math.prod(int(_number(x)) for x in n),
    "sprig.max": lambda *n: max(int(_number(x)) for x in n),
    "sprig.min": lambda *n: min(int(_number(x)) for x in n),
    "sprig.int": lambda v: int(_number(v)),
    "sprig.atoi": lambda v: int(str(v)),
    "sprig.toString": lambda v: v if isinstance(v, str) else expr_text(v),
    "sprig.trim": lambda s: str(s).strip(),
    "sprig.upper": lambda s: str(s).upper(),
    "sprig.lower": lambda s: str(s).lower(),
    "sprig.replace": lambda old, new, s: str(s).replace(old, new),
    "sprig.contains": lambda sub, s: sub in str(s),
    "sprig.hasPrefix": lambda pre, s: str(s).startswith(pre),
    "sprig.hasSuffix": lambda suf, s: str(s).endswith(suf),
    "sprig.default": lambda default, v=None: v if v not in (None, "", [], {}, 0, False) else default,
    "sprig.empty": lambda v: v in (None, "", [], {}, 0, False),
    "sprig.quote": lambda *s: " ".join(json.dumps(str(x)) for x in s),
    "sprig.date": _sprig_date,
}
