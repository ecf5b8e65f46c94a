"""Argo's two small languages: `{{...}}` tag substitution, and the boolean expressions of `when` and `depends`.

`when` in Argo is tag substitution followed by govaluate. After substitution, the expression is made of
literals: numbers, quoted strings, `true`/`false`, and bare words (`heads == heads` in Argo's conditionals
example) which we read as strings, as Argo users expect. Operators: `== != < > <= >= =~ !~ && || !` and
parentheses. `depends` uses the boolean part of the same grammar (`&& || !` and parentheses, no comparisons, no
strings) with task names, optionally `.Succeeded`, `.Failed`, ..., as operands: `depends_names` lists them (the
linter and the runner's scheduler), `evaluate_depends` decides with the tasks' results (the runner).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from registry.errors import WorkflowError
from workflows.argo.exprlang import evaluate_expr, expr_text, nest_scope

__all__ = [
    "DEPENDS_RESULTS",
    "TAG",
    "Value",
    "depends_names",
    "evaluate",
    "evaluate_depends",
    "evaluate_when",
    "substitute",
]

TAG = re.compile(r"\{\{\s*(=?[^{}]*?)\s*\}\}")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'[^']*'|"[^"]*")
      | (?P<op>&&|\|\||==|!=|<=|>=|=~|!~|<|>|!|\(|\))
      | (?P<word>[^\s()!=<>&|'"]+)
    )""",
    re.VERBOSE,
)
_COMPARATORS = {"==", "!=", "<", ">", "<=", ">=", "=~", "!~"}
DEPENDS_RESULTS = frozenset(
    {"Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned", "AnySucceeded", "AllFailed"}
)
_DEPENDS_OPERAND = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_-]*)(?:\.([A-Za-z]+))?")


def substitute(text: str, scope: Mapping[str, str], *, where: str, strict: bool = True) -> str:
    """Replace every `{{name}}` in `text` with `scope[name]`.

    Raises:
        WorkflowError: a tag names nothing in scope (when strict), or is an `{{=expr}}` expression tag.
    """

    def _one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in scope:
            return scope[name]
        if strict:
            raise WorkflowError(
                f"{where}: unresolved reference '{{{{{name}}}}}': declare it as an input, "
                "a workflow argument or an output of a task this one depends on"
            )
        return match.group(0)

    if "{{=" in text:
        text = _expression_tags(text, scope, where=where, strict=strict)
    return TAG.sub(_one, text)


def _expression_tags(text: str, scope: Mapping[str, str], *, where: str, strict: bool) -> str:
    """Replace each `{{=expr}}` (expr-lang; braces inside it balanced) with its value (workflows.argo.exprlang)."""
    out, pos, env = [], 0, None
    while (start := text.find("{{=", pos)) >= 0:
        end = _tag_end(text, start + 3)
        if end < 0:
            raise WorkflowError(f"{where}: expression tag at {text[start : start + 30]!r}... is not closed with }}}}")
        out.append(text[pos:start])
        env = env if env is not None else nest_scope(scope)
        try:
            out.append(expr_text(evaluate_expr(text[start + 3 : end], env)))
        except WorkflowError as e:
            if strict:
                raise WorkflowError(f"{where}: expression tag '{text[start : end + 2]}': {e}") from e
            out.append(text[start : end + 2])  # left as is until its names are known, as Argo's allowUnresolved
        pos = end + 2
    return "".join(out) + text[pos:]


def _tag_end(text: str, pos: int) -> int:
    """Where the `}}` closing an expression tag starts: braces and quotes inside it are skipped; -1 if none."""
    depth, quote = 0, ""
    while pos < len(text):
        char = text[pos]
        if quote:
            pos += 2 if char == "\\" else 1
            quote = "" if char == quote else quote
            continue
        if char in "'\"":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}" and depth == 0 and text.startswith("}}", pos):
            return pos
        elif char == "}":
            depth -= 1
        pos += 1
    return -1


@dataclass(frozen=True)
class _Tok:
    kind: str  # "str", "op", "word"
    text: str
    pos: int  # where the token starts in the expression


def _tokenize(expr: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    stripped = expr.rstrip()
    while pos < len(stripped):
        m = _TOKEN.match(stripped, pos)
        if m is None or m.end() == pos:
            raise WorkflowError(f"unexpected {stripped[pos:].strip()!r} at position {pos}")
        kind = m.lastgroup or "word"
        text = m.group(kind)
        tokens.append(_Tok(kind, text[1:-1] if kind == "str" else text, m.start(kind)))
        pos = m.end()
    return tokens


Value = bool | float | str


class _Parser:
    """Recursive descent: or -> and -> not -> comparison -> atom (`boolean_only`: no comparison, no string)."""

    def __init__(self, expr: str, resolve: Callable[[str], Value], *, boolean_only: bool = False) -> None:
        self.expr = expr
        self.tokens = _tokenize(expr)
        self.pos = 0
        self.resolve = resolve
        self.boolean_only = boolean_only

    def parse(self) -> Value:
        if not self.tokens:
            raise WorkflowError("empty expression")
        value = self._or()
        if self.pos != len(self.tokens):
            raise self._unexpected(self.tokens[self.pos])
        return value

    def _unexpected(self, tok: _Tok) -> WorkflowError:
        return WorkflowError(f"unexpected {self.expr[tok.pos :].strip()!r}")

    def _peek(self) -> _Tok | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take_op(self, *ops: str) -> str | None:
        tok = self._peek()
        if tok is not None and tok.kind == "op" and tok.text in ops:
            self.pos += 1
            return tok.text
        return None

    def _or(self) -> Value:
        left = self._and()
        while self._take_op("||"):
            right = self._and()
            left = _truthy(left) or _truthy(right)
        return left

    def _and(self) -> Value:
        left = self._not()
        while self._take_op("&&"):
            right = self._not()
            left = _truthy(left) and _truthy(right)
        return left

    def _not(self) -> Value:
        if self._take_op("!"):
            return not _truthy(self._not())
        return self._comparison()

    def _comparison(self) -> Value:
        left = self._atom()
        tok = self._peek()
        op = self._take_op(*_COMPARATORS)
        if op is None:
            return left
        if self.boolean_only and tok is not None:
            raise self._unexpected(tok)
        return _compare(left, op, self._atom())

    def _atom(self) -> Value:
        tok = self._peek()
        if tok is None:
            raise WorkflowError("expression ends early")
        self.pos += 1
        if tok.kind == "op":
            if tok.text != "(":
                raise self._unexpected(tok)
            value = self._or()
            if not self._take_op(")"):
                raise WorkflowError("missing ')'")
            return value
        if tok.kind == "str":
            if self.boolean_only:
                raise self._unexpected(tok)
            return tok.text
        return self.resolve(tok.text)


def _literal(word: str) -> Value:
    if word in ("true", "false"):
        return word == "true"
    try:
        return float(word)
    except ValueError:
        return word


def _truthy(value: Value) -> bool:
    if isinstance(value, bool):
        return value
    raise WorkflowError(f"expected a boolean, got {value!r}")


def _compare(left: Value, op: str, right: Value) -> bool:
    if op in ("=~", "!~"):
        found = re.search(str(right), str(left)) is not None
        return found if op == "=~" else not found
    if op not in ("==", "!=") and isinstance(left, float) != isinstance(right, float):
        raise WorkflowError(f"cannot order {left!r} and {right!r}")
    if isinstance(left, float) and isinstance(right, float):
        a: float | str = left
        b: float | str = right
    else:
        a, b = _as_text(left), _as_text(right)
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if type(a) is not type(b):
        raise WorkflowError(f"cannot order {left!r} and {right!r}")
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]  # type: ignore[operator]


def _as_text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return value


def evaluate(expr: str, resolve: Callable[[str], Value] = _literal) -> Value:
    """Evaluate `expr`; bare words go through `resolve` (default: literals and strings)."""
    return _Parser(expr, resolve).parse()


def evaluate_when(expr: str) -> bool:
    """Evaluate an already-substituted `when` condition the way Argo's govaluate does.

    Raises:
        WorkflowError: the expression does not parse or is not boolean.
    """
    try:
        return _truthy(evaluate(expr))
    except WorkflowError as e:
        raise WorkflowError(f"when {expr!r}: {e}") from e


def evaluate_depends(expr: str, result: Callable[[str, str], bool]) -> bool:
    """Evaluate a DAG task's `depends`; `result(task, suffix)` answers each operand ("" for a bare task name).

    Raises:
        WorkflowError: the expression does not parse, or names a result not in `DEPENDS_RESULTS` (the message
            names the fault, not the expression: the caller says which task's `depends` it is).
    """

    def resolve(word: str) -> Value:
        match = _DEPENDS_OPERAND.fullmatch(word)
        if match is None:
            raise WorkflowError(f"unexpected {word!r}: expected a task name, optionally with .Succeeded, .Failed, ...")
        task, suffix = match.group(1), match.group(2) or ""
        if suffix and suffix not in DEPENDS_RESULTS:
            raise WorkflowError(f"unknown result .{suffix} (use one of {', '.join(sorted(DEPENDS_RESULTS))})")
        return result(task, suffix)

    return _truthy(_Parser(expr, resolve, boolean_only=True).parse())


def depends_names(expr: str) -> list[str]:
    """The task names a DAG `depends` expression names, in order of first mention.

    Raises:
        WorkflowError: as `evaluate_depends`.
    """
    names: list[str] = []

    def note(task: str, _suffix: str) -> bool:
        names.append(task)
        return True

    evaluate_depends(expr, note)
    return list(dict.fromkeys(names))
