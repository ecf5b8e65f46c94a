"""Find the rendered Argo object to run and turn it into one self-contained Workflow spec.

`llmrelease run` takes a YAML file or the name of a WorkflowTemplate / CronWorkflow under argo/. A Workflow
with `workflowTemplateRef` is merged with its template (the Workflow's arguments win), as Argo does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from registry.errors import WorkflowError

__all__ = ["Library", "load_documents", "load_library", "resolve_workflow"]

_RUNNABLE = ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow")


class Library:
    """The Argo objects the runner can see: every document of argo/ plus the files given."""

    def __init__(self, docs: Sequence[tuple[str, dict[str, Any]]]) -> None:
        self.docs = list(docs)

    def by_name(self, name: str, kinds: Sequence[str] = _RUNNABLE) -> tuple[str, dict[str, Any]] | None:
        """The document of one of `kinds` whose metadata.name (or generateName stem) is `name`."""
        for file, doc in self.docs:
            meta = doc.get("metadata", {})
            stem = str(meta.get("generateName", "")).rstrip("-")
            if doc.get("kind") in kinds and name in (meta.get("name"), stem):
                return file, doc
        return None

    def templates_by_name(self) -> dict[str, dict[str, Any]]:
        """WorkflowTemplates by name, for templateRef resolution."""
        out: dict[str, dict[str, Any]] = {}
        for _, doc in self.docs:
            if doc.get("kind") in ("WorkflowTemplate", "ClusterWorkflowTemplate"):
                out[str(doc["metadata"]["name"])] = doc
        return out


def _read(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except yaml.YAMLError as e:
        raise WorkflowError(f"{path}: not valid YAML ({e}); fix the syntax and retry") from e
    return [(str(path), d) for d in docs]


def load_library(argo_dir: Path, extra_files: Sequence[Path] = ()) -> Library:
    """Every document in `argo_dir/*.yaml` and `extra_files`."""
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in [*extra_files, *sorted(argo_dir.glob("*.yaml"))]:
        docs.extend(_read(path))
    return Library(docs)


def _from_doc(doc: Mapping[str, Any], library: Library, file: str) -> dict[str, Any]:
    """A Workflow-shaped dict {metadata, spec} for any runnable kind."""
    kind = doc.get("kind")
    meta = dict(doc.get("metadata", {}))
    stem = str(meta.get("name") or str(meta.get("generateName", "workflow-")).rstrip("-"))
    if kind == "CronWorkflow":
        spec = copy.deepcopy(doc["spec"].get("workflowSpec", {}))
    elif kind in ("WorkflowTemplate", "ClusterWorkflowTemplate", "Workflow"):
        spec = copy.deepcopy(doc.get("spec", {}))
    else:
        raise WorkflowError(f"{file}: kind {kind!r} cannot run; give a Workflow, WorkflowTemplate or CronWorkflow")
    ref = spec.pop("workflowTemplateRef", None)
    if ref:
        found = library.by_name(str(ref.get("name")), ("WorkflowTemplate", "ClusterWorkflowTemplate"))
        if found is None:
            raise WorkflowError(f"{file}: spec.workflowTemplateRef.name {ref.get('name')!r} not found in argo/ "
                                "or the given files; render it or pass its file")
        base = copy.deepcopy(found[1]["spec"])
        own = {p["name"]: p for p in spec.get("arguments", {}).get("parameters", [])}
        params = [own.pop(p["name"], p) for p in base.get("arguments", {}).get("parameters", [])]
        base.setdefault("arguments", {})["parameters"] = params + list(own.values())
        base.update({k: v for k, v in spec.items() if k != "arguments"})
        spec = base
    return {"kind": kind, "source": file, "stem": stem, "metadata": meta, "spec": spec}


def resolve_workflow(target: str, library: Library) -> dict[str, Any]:
    """Resolve `target` (a YAML file, or the name of a rendered object) into a runnable workflow dict.

    Raises:
        WorkflowError: nothing runnable by that name or in that file.
    """
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise WorkflowError(f"{target}: no such file; give a rendered YAML file or a template name from argo/")
        runnable = [(f, d) for f, d in _read(path) if d.get("kind") in _RUNNABLE]
        if not runnable:
            raise WorkflowError(f"{target}: holds no Workflow, WorkflowTemplate or CronWorkflow")
        file, doc = runnable[0]
        return _from_doc(doc, library, file)
    found = library.by_name(target)
    if found is None:
        names = sorted({str(d.get("metadata", {}).get("name")) for _, d in library.docs
                        if d.get("kind") in _RUNNABLE})
        raise WorkflowError(f"{target}: no workflow by that name in argo/ (known: {', '.join(names) or 'none'}); "
                            "run `llmrelease render` or give a file")
    return _from_doc(found[1], library, found[0])


def load_documents(paths: Sequence[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    """Every YAML document of `paths` (a folder stands for its *.yaml / *.yml files) as (file, document).

    Raises:
        WorkflowError: a file cannot be read, is not valid YAML, or holds a document that is not a mapping.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    for path in _expand(paths):
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except OSError as e:
            raise WorkflowError(f"{path}: cannot read ({e.strerror}); check the path") from e
        except yaml.YAMLError as e:
            raise WorkflowError(f"{path}: not valid YAML ({_yaml_reason(e)}); fix the syntax") from e
        for number, doc in enumerate(docs, start=1):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise WorkflowError(f"{path}: document {number} is a {type(doc).__name__}, not a mapping")
            out.append((str(path), doc))
    return out


def _expand(paths: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for path in map(Path, paths):
        out += sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    return out


def _yaml_reason(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else str(problem)
