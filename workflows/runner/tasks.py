"""DAG and steps templates: scheduling, `depends`, `when`, loops, and how children's outputs reach siblings."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from registry.errors import WorkflowError
from workflows.argo.expressions import depends_names, evaluate_depends, evaluate_when, substitute
from workflows.runner.artifacts import resolve_argument
from workflows.runner.nodes import FAILED, POD_IP, Node, NodeBook
from workflows.runner.skipped import NOT_RUN, declared_outputs, refuse_absent, unsupplied

__all__ = ["TaskContext", "run_dag", "run_steps"]

_ENDED = frozenset({"Succeeded", "Failed", "Error"})  # Completed(): a Skipped/Omitted node runs no exit hook


class Runner(Protocol):
    """What scheduling needs from the engine (`workflows.runner.engine.Runner`): its nodes and template calls."""

    book: NodeBook
    spec: Mapping[str, Any]

    def template(
        self, ref: Mapping[str, Any], where: str, within: Mapping[str, Any] | None = None
    ) -> Mapping[str, Any]:
        """The template a task or step calls from template `within`."""
        ...

    def execute(
        self,
        tmpl: Mapping[str, Any],
        args: Mapping[str, str],
        parent: Node | None,
        display: str,
        artifacts: Mapping[str, Mapping[str, Any]] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Node:
        """Run one template call to its end and return its node."""
        ...


class TaskContext:
    """One invocation of a dag/steps template: its scope grows as its children finish."""

    def __init__(self, runner: Runner, tmpl: Mapping[str, Any], node: Node, scope: Mapping[str, str]) -> None:
        self.runner, self.tmpl, self.node = runner, tmpl, node
        self.scope = dict(scope)
        self.prefix = "tasks" if "dag" in tmpl else "steps"
        self.results: dict[str, Node] = {}
        self.absent: set[str] = set()  # outputs of Skipped/Omitted children that declare no default
        self.cond = threading.Condition()
        limit = tmpl.get("parallelism")
        self.slots = threading.BoundedSemaphore(int(limit)) if limit else None

    def where(self, task: Mapping[str, Any]) -> str:
        """'template T: task N' for messages."""
        return f"template {self.tmpl['name']}: {self.prefix[:-1]} {task.get('name')}"

    def publish(self, name: str, node: Node, task: Mapping[str, Any] | None = None) -> None:
        """Expose a finished child's status and outputs as `tasks.<name>.*` / `steps.<name>.*`."""
        entries = self._entries(name, node)
        absent: set[str] = set()
        if task is not None and node.phase in NOT_RUN and not node.parameters:
            defaults, absent = self._skipped_outputs(name, task)
            entries.update(defaults)
        with self.cond:
            self.results[name] = node
            self.scope.update(entries)
            self.absent |= absent
            self.cond.notify_all()

    def _skipped_outputs(self, name: str, task: Mapping[str, Any]) -> tuple[dict[str, str], set[str]]:
        """A child that never ran: its outputs' defaults and the absent rest (workflows.runner.skipped)."""
        try:
            tmpl = self.runner.template(task, self.where(task), self.tmpl)
        except WorkflowError:
            return {}, set()  # the task's own error already says why
        return declared_outputs(tmpl, f"{self.prefix}.{name}.outputs")

    def _arguments(self, arguments: Mapping[str, Any], local: Mapping[str, str], where: str) -> dict[str, str]:
        """The parameter arguments substituted; one that is only a reference to an absent output is left out."""
        args: dict[str, str] = {}
        for param in arguments.get("parameters", []):
            value, here = str(param.get("value", "")), f"{where}: argument {param['name']}"
            if unsupplied(value, self.absent, local):
                continue  # the input's default applies, or the call fails for want of a value
            refuse_absent(value, self.absent, local, here)
            args[str(param["name"])] = substitute(value, local, where=here)
        return args

    def _entries(self, name: str, node: Node) -> dict[str, str]:
        base = f"{self.prefix}.{name}"
        kids = [self.runner.book.get(c) for c in node.children] if node.type in ("TaskGroup", "StepGroup") else []
        entries = {
            f"{base}.status": node.phase,
            f"{base}.id": node.id,
            f"{base}.startedAt": str(node.started),
            f"{base}.finishedAt": str(node.finished),
        }
        if node.daemoned:
            entries[f"{base}.ip"] = POD_IP  # Argo records a pod's IP for daemoned nodes
        entries[f"{base}.hostNodeName"] = socket.gethostname()
        if node.exit_code is not None:
            entries[f"{base}.exitCode"] = entries[f"{base}.outputs.exitCode"] = str(node.exit_code)
        if kids:
            results = [_maybe_json(k.result) for k in kids if k.result is not None]
            entries[f"{base}.outputs.result"] = json.dumps(results)
            entries[f"{base}.outputs.parameters"] = json.dumps([k.parameters for k in kids if k.parameters])
            for key in {p for k in kids for p in k.parameters}:
                entries[f"{base}.outputs.parameters.{key}"] = json.dumps([k.parameters.get(key) for k in kids])
        else:
            if node.result is not None:
                entries[f"{base}.outputs.result"] = node.result
            entries.update({f"{base}.outputs.parameters.{k}": v for k, v in node.parameters.items()})
            entries.update({f"{base}.outputs.artifacts.{k}": v for k, v in node.artifacts.items()})
        return entries

    def run_task(self, task: Mapping[str, Any]) -> Node:
        """Run one task/step: expand its loop if any, else run it once."""
        try:
            items = _loop_items(task, dict(self.scope), self.where(task))
        except WorkflowError as e:
            return self._error(task, self.node, str(task["name"]), str(e))
        if items is None:
            return self._run_one(task, {}, self.node, str(task["name"]))
        group = self.runner.book.new(self.node, str(task["name"]), "TaskGroup", str(task.get("template", "")))
        self.runner.book.start(group)
        slots: list[Node | None] = [None] * len(items)
        threads = []
        for i, item in enumerate(items):
            label, extra = _item_scope(item)
            display = f"{task['name']}({i}:{label})"
            threads.append(
                threading.Thread(
                    target=lambda i=i, e=extra, d=display: slots.__setitem__(i, self._run_one(task, e, group, d))
                )
            )
        _run_all(threads)
        children = [node for node in slots if node is not None]
        group.children = [node.id for node in children]  # item order, as Argo aggregates them
        if any(_suspended(c) for c in children):  # a suspended item: the group waits with it
            group.phase = "Running"
            return group
        failed = [c for c in children if c.phase in FAILED and not _continues(task, c)]
        phase = "Failed" if failed else "Succeeded"
        return self.runner.book.finish(group, phase, f"child '{failed[0].display_name}' failed" if failed else "")

    def _run_one(self, task: Mapping[str, Any], extra: Mapping[str, str], parent: Node, display: str) -> Node:
        with self.cond:
            local = {**self.scope, **extra}
        where = self.where(task)
        try:
            if "when" in task:
                refuse_absent(str(task["when"]), self.absent, local, f"{where}: when")
                condition = substitute(str(task["when"]), local, where=f"{where}: when")
                if not evaluate_when(condition):
                    node = self.runner.book.new(parent, display, "Skipped", str(task.get("template", "")))
                    return self.runner.book.finish(node, "Skipped", f"when '{condition}' evaluated false")
            args = self._arguments(task.get("arguments", {}), local, where)
            arts = _artifact_args(task, local, where)
            tmpl = self.runner.template(task, where, self.tmpl)
            own = {f"{self.prefix}.name": display}  # Argo's steps.name / tasks.name: the calling step's name
            if self.slots:
                with self.slots:
                    node = self.runner.execute(tmpl, args, parent, display, arts, own)
            else:
                node = self.runner.execute(tmpl, args, parent, display, arts, own)
        except WorkflowError as e:
            return self._error(task, parent, display, str(e))
        return self._exit_hook(task, node, local)

    def _exit_hook(self, task: Mapping[str, Any], node: Node, local: Mapping[str, str]) -> Node:
        """Run the task's exit hook (`hooks.exit`, or `onExit`) once its node ended, as Argo's runOnExitNode.

        The hook is a child `<node>.onExit` of the task's node, called with its own arguments (none: the
        workflow's), which see the task's outputs; the task waits for it, and its phase is not the task's.
        """
        hook = {"template": task["onExit"]} if task.get("onExit") else (task.get("hooks") or {}).get("exit")
        if not hook or node.phase not in _ENDED:
            return node
        if not hook.get("arguments"):
            hook = {**hook, "arguments": self.runner.spec.get("arguments") or {}}
        where = f"{self.where(task)}: exit hook"
        outputs = {k: v for k, v in self._entries(str(task["name"]), node).items() if ".outputs." in k}
        local = {**local, **outputs}
        try:
            args = self._arguments(hook["arguments"], local, where)
            tmpl = self.runner.template(hook, where, self.tmpl)
            self.runner.execute(tmpl, args, node, "onExit", _artifact_args(hook, local, where), {"steps.name": ""})
        except WorkflowError as e:
            self._error(hook, node, "onExit", str(e))
        return node

    def _error(self, task: Mapping[str, Any], parent: Node, display: str, message: str) -> Node:
        node = self.runner.book.new(parent, display, "Pod", str(task.get("template", "")))
        return self.runner.book.finish(node, "Error", message)


def _artifact_args(task: Mapping[str, Any], scope: Mapping[str, str], where: str) -> dict[str, dict[str, Any]]:
    """Argument artifacts resolved (`from`, s3, http, git, raw, subPath); an optional unresolvable one is left out."""
    arts: dict[str, dict[str, Any]] = {}
    for art in task.get("arguments", {}).get("artifacts", []):
        try:
            arts[str(art["name"])] = resolve_argument(art, scope, where)
        except WorkflowError:
            if not art.get("optional"):
                raise
    return arts


def _suspended(node: Node) -> bool:
    """Running and not a ready daemon: a suspend (or a node waiting on one) that `llmrelease resume` continues."""
    return node.phase == "Running" and not node.daemoned


def _maybe_json(text: str | None) -> object:
    try:
        return json.loads(text or "")
    except ValueError:
        return text


def _continues(task: Mapping[str, Any], node: Node) -> bool:
    cont = task.get("continueOn") or {}
    return bool(cont.get("failed") if node.phase == "Failed" else cont.get("error"))


def _loop_items(task: Mapping[str, Any], scope: Mapping[str, str], where: str) -> list[Any] | None:
    if "withItems" in task:
        return [substitute(i, scope, where=where) if isinstance(i, str) else i for i in task["withItems"]]
    if "withParam" in task:
        raw = substitute(str(task["withParam"]), scope, where=f"{where}: withParam")
        try:
            items = json.loads(raw)
        except ValueError as e:
            raise WorkflowError(f"{where}: withParam is not a JSON list: {raw[:80]!r}") from e
        if not isinstance(items, list):
            raise WorkflowError(f"{where}: withParam must be a JSON list, got {type(items).__name__}")
        return items
    if "withSequence" in task:
        return _sequence(task["withSequence"], scope, where)
    return None


def _sequence(seq: Mapping[str, Any], scope: Mapping[str, str], where: str) -> list[str]:
    def num(key: str, default: int) -> int:
        return int(substitute(str(seq.get(key, default)), scope, where=f"{where}: withSequence.{key}"))

    if "count" in seq:
        start = num("start", 0)
        values = list(range(start, start + num("count", 0)))
    else:
        start, end = num("start", 0), num("end", 0)
        values = list(range(start, end + 1)) if end >= start else list(range(start, end - 1, -1))
    fmt = seq.get("format")
    return [str(fmt) % v if fmt else str(v) for v in values]


def _item_scope(item: Any) -> tuple[str, dict[str, str]]:
    text = item if isinstance(item, str) else json.dumps(item)
    scope = {"item": text}
    if isinstance(item, Mapping):
        scope.update({f"item.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in item.items()})
    return text, scope


def _run_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ---- DAG ------------------------------------------------------------------------------------------------------


def _depends_expr(task: Mapping[str, Any]) -> str:
    if "depends" in task:
        return str(task["depends"])
    return " && ".join(str(d) for d in task.get("dependencies", []) or [])


def _depends_needs(template: str, task: str, expr: str) -> set[str]:
    """The tasks `expr` names ({} when empty).

    Raises:
        WorkflowError: the expression does not parse (the same check as `llmrelease lint`).
    """
    try:
        return set(depends_names(expr)) if expr else set()
    except WorkflowError as e:
        raise WorkflowError(f"template {template}: task {task}: depends {expr!r} does not parse: {e}") from e


def _task_result(results: Mapping[str, Node], book_get: Callable[[str], Node]) -> Callable[[str, str], bool]:
    """How a finished task answers a `depends` operand: bare (Succeeded or Skipped) or `.Result`."""

    def result(name: str, suffix: str) -> bool:
        node = results[name]
        if not suffix:
            return node.phase in ("Succeeded", "Skipped") or node.daemoned
        kids = [book_get(c) for c in node.children]
        return {
            "Succeeded": node.phase == "Succeeded",
            "Failed": node.phase == "Failed",
            "Errored": node.phase == "Error",
            "Skipped": node.phase == "Skipped",
            "Omitted": node.phase == "Omitted",
            "Daemoned": node.daemoned,
            "AnySucceeded": any(k.phase == "Succeeded" for k in kids),
            "AllFailed": bool(kids) and all(k.phase in FAILED for k in kids),
        }[suffix]

    return result


def run_dag(ctx: TaskContext) -> tuple[str, str]:
    """Schedule the DAG's tasks as their dependencies finish; returns (phase, message)."""
    tasks = {str(t["name"]): t for t in ctx.tmpl["dag"]["tasks"]}
    exprs = {n: _depends_expr(t) for n, t in tasks.items()}
    needs = {n: _depends_needs(str(ctx.tmpl["name"]), n, e) for n, e in exprs.items()}
    for name, deps in needs.items():
        unknown = deps - tasks.keys()
        if unknown:
            raise WorkflowError(
                f"template {ctx.tmpl['name']}: task {name} depends on unknown task(s) {', '.join(sorted(unknown))}"
            )
    pending, running = set(tasks), set()

    def work(name: str) -> None:
        node = ctx.run_task(tasks[name])
        ctx.publish(name, node, tasks[name])
        with ctx.cond:  # only after its result is published: the loop must never see it neither running nor done
            running.discard(name)
            ctx.cond.notify_all()

    with ctx.cond:
        while pending or running:
            done = {n for n, node in ctx.results.items() if not _suspended(node)}
            ready = sorted(n for n in pending if needs[n] <= done)
            for name in ready:
                pending.discard(name)
                if exprs[name] and not evaluate_depends(exprs[name], _task_result(ctx.results, ctx.runner.book.get)):
                    node = ctx.runner.book.new(ctx.node, name, "Skipped", str(tasks[name].get("template", "")))
                    ctx.runner.book.finish(node, "Omitted", f"depends '{exprs[name]}' is false")
                    ctx.publish(name, node, tasks[name])  # its status, and its outputs' defaults
                    continue
                running.add(name)
                threading.Thread(target=work, args=(name,), daemon=True).start()
            if not ready:
                if not running and len(done) < len(ctx.results):
                    return "Running", ""  # the rest waits on a suspended task: `llmrelease resume`
                if not running:
                    raise WorkflowError(
                        f"template {ctx.tmpl['name']}: tasks {sorted(pending)} can never start (a dependency cycle)"
                    )
                ctx.cond.wait()
    return _dag_phase(ctx, tasks, needs)


def _dag_phase(ctx: TaskContext, tasks: Mapping[str, Any], needs: Mapping[str, set[str]]) -> tuple[str, str]:
    """Failed when a failure is neither continued-on nor handled by a task that ran because of it."""
    if any(_suspended(node) for node in ctx.results.values()):
        return "Running", ""
    for name, node in sorted(ctx.results.items(), key=lambda kv: kv[1].finished or 0):
        if node.phase not in FAILED or _continues(tasks[name], node):
            continue
        handled = any(
            name in needs[other] and ctx.results[other].phase not in ("Omitted",) for other in tasks if other != name
        )
        if not handled:
            return "Failed", f"child '{node.display_name}' failed: {node.message}"
    return "Succeeded", ""


# ---- steps ----------------------------------------------------------------------------------------------------


def run_steps(ctx: TaskContext) -> tuple[str, str]:
    """Run step groups in order, the steps of a group in parallel; stop at a group with a failure."""
    for index, group in enumerate(ctx.tmpl["steps"]):
        group_node = ctx.runner.book.new(ctx.node, f"[{index}]", "StepGroup", str(ctx.tmpl["name"]))
        ctx.runner.book.start(group_node)
        saved, ctx.node = ctx.node, group_node
        done: list[tuple[Mapping[str, Any], Node]] = []
        threads = [threading.Thread(target=lambda s=step, out=done: out.append((s, ctx.run_task(s)))) for step in group]
        _run_all(threads)
        ctx.node = saved
        for step, node in done:
            ctx.publish(str(step["name"]), node, step)
        if any(_suspended(node) for _, node in done):  # a suspended step: resume continues from here
            return "Running", ""
        failed = [(s, n) for s, n in done if n.phase in FAILED and not _continues(s, n)]
        if failed:
            message = f"child '{failed[0][1].display_name}' failed: {failed[0][1].message}"
            ctx.runner.book.finish(group_node, "Failed", message)
            return "Failed", message
        ctx.runner.book.finish(group_node, "Succeeded")
    return "Succeeded", ""
