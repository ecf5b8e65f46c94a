"""Template-level checks of the offline lint: DAG and steps structure, calls and `{{...}}` references.

Private to `workflows.argo.lint`. Every check returns `Finding`s (template, task, message, severity); `lint` adds the
file, kind and object name. The semantics follow Argo's workflow/validate: a DAG task may only read the outputs
of its ancestors, a step only those of steps in earlier groups, and tags whose prefix Argo does not own (a
script's own `{{foo}}`) are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from registry.errors import WorkflowError
from workflows.argo.expressions import TAG, depends_names

__all__ = ["Finding", "TemplateIndex", "as_list", "as_map", "lint_call", "lint_template"]

_WORKFLOW_GLOBALS = frozenset({
    "name", "namespace", "uid", "status", "failures", "duration", "creationTimestamp", "serviceAccountName",
    "mainEntrypoint", "scheduledTime", "priority", "parameters", "parameters.json", "labels", "labels.json",
    "annotations", "annotations.json",
})
_WORKFLOW_PREFIXES = ("creationTimestamp.", "labels.", "annotations.", "outputs.parameters.", "outputs.artifacts.")
_NODE_ATTRS = frozenset({
    "outputs.result", "outputs.exitCode", "outputs.parameters", "outputs.artifacts", "status", "startedAt",
    "finishedAt", "id", "ip", "exitCode", "hostNodeName",
})
_LOOPS = ("withItems", "withParam", "withSequence")
_NOT_SCANNED = frozenset({"name", "template", "templateRef", "inline", "hooks", "onExit"})
_WHERE = {"arguments": "argument", "when": "when", "withParam": "withParam", "depends": "depends"}


class Finding(NamedTuple):
    """One fault, located by template and task (or step); `lint` turns it into a `Problem`."""

    template: str | None
    task: str | None
    message: str
    severity: str = "error"


def as_map(value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping, else an empty one (schema faults are reported elsewhere)."""
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    """`value` if it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def _names(section: Any, kind: str) -> set[str]:
    """The `name`s of `section[kind]`, e.g. the declared `inputs.parameters`."""
    return {str(as_map(p).get("name")) for p in as_list(as_map(section).get(kind))}


def _templates_of(doc: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The templates by name of a WorkflowTemplate document (or of a bare spec)."""
    spec = as_map(doc.get("spec", doc))
    return {str(t.get("name")): t for t in as_list(spec.get("templates")) if isinstance(t, Mapping)}


@dataclass(frozen=True)
class TemplateIndex:
    """What the template checks need to know about the object around a template."""

    templates: Mapping[str, Mapping[str, Any]]
    global_params: frozenset[str]
    external: Mapping[str, Mapping[str, Any]] | None = None

    def callee(self, call: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The template a task, step or hook calls, when it can be known offline."""
        if isinstance(call.get("template"), str):
            return self.templates.get(call["template"])
        ref = as_map(call.get("templateRef"))
        if self.external is None or str(ref.get("name")) not in self.external:
            return as_map(call.get("inline")) or None
        return _templates_of(self.external[str(ref["name"])]).get(str(ref.get("template")))


@dataclass(frozen=True)
class _Scope:
    """The variables visible where a tag is written."""

    template: Mapping[str, Any]
    index: TemplateIndex
    prefix: str | None = None
    known: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    visible: frozenset[str] = frozenset()
    owner: str | None = None
    loop: bool = False


def _tags(value: Any) -> Iterator[str]:
    """Every `{{...}}` tag inside `value`, stripped."""
    if isinstance(value, str):
        yield from (m.group(1) for m in TAG.finditer(value))
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tags(item)
    elif isinstance(value, list):
        for item in value:
            yield from _tags(item)


def _unresolved(tag: str, why: str) -> str:
    return f"unresolved reference {{{{{tag}}}}}: {why}"


def _check_tag(tag: str, scope: _Scope, where: str) -> str | None:
    """None when `tag` resolves in `scope`, else the message saying why not."""
    if tag.startswith("="):
        return None
    if tag == "item" or tag.startswith("item."):
        who = f"{scope.owner} has" if scope.owner else "the template has"
        return None if scope.loop else _unresolved(tag, f"{who} no withItems, withParam or withSequence")
    head, _, rest = tag.partition(".")
    if head in ("inputs", "outputs"):
        return _check_io(tag, head, rest, scope.template)
    if head == "workflow":
        return _check_workflow(tag, rest, scope.index.global_params)
    if head in ("tasks", "steps"):
        return _check_node(tag, head, rest, scope, where)
    if head == "pod" and rest != "name":
        return _unresolved(tag, "the only pod variable is pod.name")
    return None


def _check_io(tag: str, head: str, rest: str, template: Mapping[str, Any]) -> str | None:
    kind, _, tail = rest.partition(".")
    name, _, attr = tail.partition(".")
    if (head, rest) in (("inputs", "parameters"), ("outputs", "result"), ("outputs", "exitCode")):
        return None
    if kind not in ("parameters", "artifacts") or not name or attr not in ("", "path"):
        return _unresolved(tag, f"not a template {head} variable")
    if name in _names(template.get(head), kind):
        return None
    return _unresolved(tag, f"template {template.get('name')} declares no {head}.{kind} named {name}")


def _check_workflow(tag: str, rest: str, global_params: frozenset[str]) -> str | None:
    if rest in _WORKFLOW_GLOBALS or rest.startswith(_WORKFLOW_PREFIXES):
        return None
    if rest.startswith("parameters."):
        name = rest.removeprefix("parameters.")
        if name in global_params:
            return None
        return _unresolved(tag, f"spec.arguments.parameters declares no {name}")
    return _unresolved(tag, "not a workflow variable")


def _check_node(tag: str, head: str, rest: str, scope: _Scope, where: str) -> str | None:
    noun = "task" if head == "tasks" else "step"
    if rest == "name":
        return None
    if scope.prefix != head:
        return _unresolved(tag, f"{head}.* is only defined inside a {'DAG' if head == 'tasks' else 'steps'} template")
    node, _, attr = rest.partition(".")
    if node not in scope.known:
        return _unresolved(tag, f"template {scope.template.get('name')} has no {noun} {node}")
    if node not in scope.visible:
        if head == "tasks":
            return f"missing dependency: {where} references tasks.{node} but {scope.owner} does not depend on {node}"
        return _unresolved(tag, f"step {node} is not in a step group before {scope.owner}")
    if attr in _NODE_ATTRS:
        return None
    parts = attr.split(".")
    if len(parts) != 3 or parts[:2] not in (["outputs", "parameters"], ["outputs", "artifacts"]):
        return _unresolved(tag, f"{attr!r} is not a {noun} attribute")
    callee = scope.index.callee(scope.known[node])
    if callee is None or parts[2] in _names(callee.get("outputs"), parts[1]):
        return None
    return _unresolved(tag, f"template {callee.get('name')} of {noun} {node} declares no output {parts[1]}.{parts[2]}")


def _scan(
    fields: Mapping[str, Any], scope: _Scope, template: str, task: str | None, skip: frozenset[str] = frozenset()
) -> list[Finding]:
    """Check every tag in `fields` (the keys of a template or of a task) but those in `skip` against `scope`."""
    out: list[Finding] = []
    for key, value in fields.items():
        if key in skip:
            continue
        for tag in _tags(value):
            message = _check_tag(tag, scope, _WHERE.get(key, key))
            if message is not None:
                out.append(Finding(template, task, message))
    return out


def lint_call(
    template: str | None, task: str | None, call: Mapping[str, Any], index: TemplateIndex, what: str | None = None
) -> list[Finding]:
    """Check what a task, step, hook or entrypoint (`what` names it) calls: the template exists, gets its inputs."""
    what = what or task or "the call"
    given = [key for key in ("template", "templateRef", "inline") if call.get(key) is not None]
    if len(given) != 1:
        return [Finding(template, task, f"{what} must set exactly one of template, templateRef, inline")]
    if given[0] == "template" and str(call["template"]) not in index.templates:
        return [Finding(template, task, f"{what} references template {call['template']} which does not exist")]
    ref = as_map(call.get("templateRef"))
    out = _check_template_ref(template, task, ref, index) if given[0] == "templateRef" else []
    callee = index.callee(call)
    supplied = _names(call.get("arguments"), "parameters")
    for param in map(as_map, as_list(as_map(as_map(callee).get("inputs")).get("parameters"))):
        if not {"value", "default", "valueFrom"} & param.keys() and str(param.get("name")) not in supplied:
            out.append(Finding(template, task, f"{what} does not supply input parameter {param.get('name')} "
                                               f"required by template {as_map(callee).get('name')}"))
    return out


def _check_template_ref(
    template: str | None, task: str | None, ref: Mapping[str, Any], index: TemplateIndex
) -> list[Finding]:
    if index.external is None:
        return []
    owner, name = str(ref.get("name")), str(ref.get("template"))
    if owner not in index.external:
        return [Finding(template, task, f"templateRef names WorkflowTemplate {owner}, not among the linted files; "
                                        "its template was not checked", "warning")]
    if name not in _templates_of(index.external[owner]):
        return [Finding(template, task, f"templateRef: WorkflowTemplate {owner} has no template {name}")]
    return []


def _lint_hooks(template: str | None, task: str | None, call: Mapping[str, Any], index: TemplateIndex) -> list[Finding]:
    """The task's onExit handler and lifecycle hooks call templates that exist."""
    out: list[Finding] = []
    if isinstance(call.get("onExit"), str) and call["onExit"] not in index.templates:
        out.append(Finding(template, task, f"onExit references template {call['onExit']} which does not exist"))
    for hook_name, hook in as_map(call.get("hooks")).items():
        out.extend(lint_call(template, f"{task}.hooks.{hook_name}" if task else f"hooks.{hook_name}", hook, index))
    return out


def _lint_node(name: str, node: str, call: Mapping[str, Any], scope: _Scope) -> list[Finding]:
    """All checks of one DAG task or step, given what it can see."""
    out = lint_call(name, node, call, scope.index) + _lint_hooks(name, node, call, scope.index)
    out += _scan(call, scope, name, node, _NOT_SCANNED)
    with_self = _Scope(scope.template, scope.index, scope.prefix, scope.known, scope.visible | {node}, node, scope.loop)
    out += _scan({"hooks": call.get("hooks")}, with_self, name, node)
    return out


def _ancestors(deps: Mapping[str, list[str]]) -> dict[str, frozenset[str]]:
    """Each task's transitive dependencies (cycle-safe)."""
    out: dict[str, frozenset[str]] = {}
    for task in deps:
        seen: set[str] = set()
        stack = list(deps[task])
        while stack:
            dep = stack.pop()
            if dep not in seen:
                seen.add(dep)
                stack.extend(deps.get(dep, []))
        out[task] = frozenset(seen)
    return out


def _cycles(deps: Mapping[str, list[str]]) -> list[list[str]]:
    """Each distinct dependency cycle, as the path that closes it."""
    found: dict[frozenset[str], list[str]] = {}
    done: set[str] = set()

    def visit(task: str, path: list[str]) -> None:
        for dep in deps.get(task, []):
            if dep in path:
                cycle = path[path.index(dep):] + [dep]
                found.setdefault(frozenset(cycle), cycle)
            elif dep not in done:
                visit(dep, [*path, dep])
        done.add(task)

    for task in deps:
        if task not in done:
            visit(task, [task])
    return list(found.values())


def _dag_edges(name: str, tasks: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, list[str]], list[Finding]]:
    """Each task's direct dependencies, and the faults of its `depends` / `dependencies`."""
    deps: dict[str, list[str]] = {}
    out: list[Finding] = []
    for task, body in tasks.items():
        named = [str(d) for d in as_list(body.get("dependencies"))]
        if isinstance(body.get("depends"), str):
            try:
                named += depends_names(body["depends"])
            except WorkflowError as e:
                out.append(Finding(name, task, f"depends {body['depends']!r} does not parse: {e}"))
        for dep in dict.fromkeys(named):
            if dep not in tasks:
                out.append(Finding(name, task, f"depends on task {dep} which does not exist in the DAG"))
        deps[task] = [d for d in dict.fromkeys(named) if d in tasks]
    if any("depends" in t for t in tasks.values()) and any("dependencies" in t for t in tasks.values()):
        out.append(Finding(name, None, "cannot use both 'depends' and 'dependencies' in the same DAG"))
    return deps, out


def _by_name(
    name: str, nodes: list[Mapping[str, Any]], noun: str
) -> tuple[dict[str, Mapping[str, Any]], list[Finding]]:
    """Tasks or steps by name, and a finding per duplicate name."""
    out: dict[str, Mapping[str, Any]] = {}
    faults: list[Finding] = []
    for node in nodes:
        node_name = str(node.get("name"))
        if node_name in out:
            faults.append(Finding(name, node_name, f"duplicate {noun} name {node_name}"))
        out.setdefault(node_name, node)
    return out, faults


def _lint_dag(template: Mapping[str, Any], index: TemplateIndex) -> list[Finding]:
    name = str(template.get("name"))
    dag = as_map(template.get("dag"))
    tasks, out = _by_name(name, [t for t in as_list(dag.get("tasks")) if isinstance(t, Mapping)], "task")
    deps, faults = _dag_edges(name, tasks)
    out += faults
    out += [Finding(name, None, f"dependency cycle: {' -> '.join(c)}") for c in _cycles(deps)]
    everything = _Scope(template, index, "tasks", tasks, frozenset(tasks))
    out += _scan({k: v for k, v in template.items() if k != "dag"}, everything, name, None)
    for task, ancestors in _ancestors(deps).items():
        call = tasks[task]
        loop = any(call.get(key) is not None for key in _LOOPS)
        out += _lint_node(name, task, call, _Scope(template, index, "tasks", tasks, ancestors, task, loop))
    return out


def _lint_steps(template: Mapping[str, Any], index: TemplateIndex) -> list[Finding]:
    name = str(template.get("name"))
    groups = [[s for s in as_list(g) if isinstance(s, Mapping)] for g in as_list(template.get("steps"))]
    steps, out = _by_name(name, [s for g in groups for s in g], "step")
    everything = _Scope(template, index, "steps", steps, frozenset(steps))
    out += _scan({k: v for k, v in template.items() if k != "steps"}, everything, name, None)
    earlier: set[str] = set()
    for group in groups:
        for step in group:
            loop = any(step.get(key) is not None for key in _LOOPS)
            scope = _Scope(template, index, "steps", steps, frozenset(earlier), str(step.get("name")), loop)
            out += _lint_node(name, str(step.get("name")), step, scope)
        earlier |= {str(s.get("name")) for s in group}
    return out


def lint_template(template: Mapping[str, Any], index: TemplateIndex) -> list[Finding]:
    """Structure and reference checks of one template (the template-type check lives in `lint`)."""
    if isinstance(template.get("dag"), Mapping):
        found = _lint_dag(template, index)
    elif isinstance(template.get("steps"), list):
        found = _lint_steps(template, index)
    else:
        found = _scan(template, _Scope(template, index), str(template.get("name")), None)
    return list(dict.fromkeys(found))
