"""Offline lint of Argo Workflow / WorkflowTemplate / CronWorkflow manifests (workflows.argo.lint).

No `from __future__ import annotations` here: Hera reads the runner functions' annotations at render time.
"""

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.errors import WorkflowError
from workflows.argo.lint import Problem, lint_document, lint_files
from workflows.argo.manifests import load_documents
from workflows.argo.schema import argo_release

DIAMOND = """
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata:
  name: diamond
spec:
  entrypoint: main
  onExit: notify
  arguments:
    parameters:
      - name: model
        value: tiny-gpt
  templates:
    - name: main
      outputs:
        parameters:
          - name: verdict
            valueFrom:
              parameter: "{{tasks.join.outputs.parameters.verdict}}"
      dag:
        tasks:
          - name: fetch
            template: produce
            arguments:
              parameters:
                - name: label
                  value: "{{workflow.parameters.model}}-{{workflow.name}}"
          - name: left
            depends: fetch
            template: produce
            arguments:
              parameters:
                - name: label
                  value: "{{tasks.fetch.outputs.parameters.label}}"
          - name: right
            depends: fetch.Succeeded
            template: produce
            when: "{{tasks.fetch.outputs.result}} != skip"
            arguments:
              parameters:
                - name: label
                  value: right
          - name: join
            depends: "left && (right.Succeeded || right.Skipped)"
            template: combine
            hooks:
              exit:
                template: notify
                arguments:
                  parameters:
                    - name: status
                      value: "{{tasks.join.status}}"
            arguments:
              parameters:
                - name: a
                  value: "{{tasks.left.outputs.parameters.label}}"
                - name: b
                  value: "{{tasks.fetch.outputs.result}}"
    - name: produce
      retryStrategy:
        limit: "2"
        retryPolicy: OnError
      inputs:
        parameters:
          - name: label
      outputs:
        parameters:
          - name: label
            valueFrom:
              path: /tmp/label
      container:
        image: alpine:3.20
        command: [sh, -c]
        args: ["echo {{inputs.parameters.label}} | tee {{outputs.parameters.label.path}} # {{pod.name}}"]
    - name: combine
      inputs:
        parameters:
          - name: a
          - name: b
            default: none
      outputs:
        parameters:
          - name: verdict
            valueFrom:
              path: /tmp/verdict
      script:
        image: python:3.11
        command: [python]
        source: |
          print("{{inputs.parameters.a}}", "{{inputs.parameters.b}}", {"not": "an argo tag {{x}}"})
    - name: notify
      inputs:
        parameters:
          - name: status
            default: "{{workflow.status}}"
      container:
        image: alpine:3.20
        command: [echo, "{{inputs.parameters.status}} {{workflow.failures}} {{workflow.labels.team}}"]
"""

STEPS = """
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata:
  generateName: coin-
spec:
  entrypoint: main
  templates:
    - name: main
      steps:
        - - name: flip
            template: flip
        - - name: heads
            template: say
            when: "{{steps.flip.outputs.result}} == heads"
            arguments:
              parameters: [{name: text, value: "heads from {{steps.flip.id}}"}]
          - name: tails
            template: say
            when: "{{steps.flip.outputs.result}} == tails"
            arguments:
              parameters: [{name: text, value: tails}]
        - - name: each
            template: say
            withItems: [{name: a}, {name: b}]
            arguments:
              parameters: [{name: text, value: "{{item.name}} after {{steps.heads.status}}"}]
    - name: flip
      script:
        image: python:3.11
        command: [python]
        source: |
          import random
          print(random.choice(["heads", "tails"]))
    - name: say
      inputs:
        parameters: [{name: text}]
      container:
        image: alpine:3.20
        command: [echo, "{{inputs.parameters.text}}"]
"""

CRON = """
apiVersion: argoproj.io/v1alpha1
kind: CronWorkflow
metadata:
  name: nightly
spec:
  schedules: ["0 3 * * *", "@every 12h30m"]
  timezone: Europe/Paris
  concurrencyPolicy: Forbid
  workflowSpec:
    entrypoint: main
    arguments:
      parameters: [{name: alias, value: champion}]
    templates:
      - name: main
        dag:
          tasks:
            - name: eval
              template: run
              arguments:
                parameters: [{name: alias, value: "{{workflow.parameters.alias}}@{{workflow.scheduledTime}}"}]
      - name: run
        inputs:
          parameters: [{name: alias}]
        container:
          image: alpine:3.20
          command: [echo, "{{inputs.parameters.alias}}"]
"""


def _load(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(textwrap.dedent(text))
    return doc


def _dag(tasks: str, templates: str = "", params: str = "[]") -> dict[str, Any]:
    """A Workflow whose entrypoint `main` is a DAG of `tasks` (YAML list) over an `echo` template."""
    body = textwrap.indent(textwrap.dedent(tasks).strip(), " " * 10)
    extra = textwrap.indent(textwrap.dedent(templates).strip(), " " * 4)
    return _load(f"""
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata:
  name: wf
spec:
  entrypoint: main
  arguments:
    parameters: {params}
  templates:
    - name: main
      dag:
        tasks:
{body}
    - name: echo
      inputs:
        parameters: [{{name: msg, default: hi}}]
      outputs:
        parameters: [{{name: out, valueFrom: {{path: /tmp/out}}}}]
      container: {{image: alpine:3.20, command: [echo, "{{{{inputs.parameters.msg}}}}"]}}
{extra}
""")


def _messages(doc: dict[str, Any], **kwargs: Any) -> list[str]:
    return [str(p) for p in lint_document("x.yaml", doc, **kwargs)]


def _one(doc: dict[str, Any], needle: str, **kwargs: Any) -> str:
    found = [m for m in _messages(doc, **kwargs) if needle in m]
    assert found, f"no problem mentions {needle!r}: {_messages(doc, **kwargs)}"
    return found[0]


@pytest.mark.parametrize("text", [DIAMOND, STEPS, CRON], ids=["diamond-dag", "steps", "cron"])
def test_valid_documents_have_no_problems(text: str) -> None:
    """GIVEN a correct WorkflowTemplate, Workflow or CronWorkflow WHEN linted THEN nothing is reported."""
    assert _messages(_load(text)) == []


def test_cluster_workflow_template_is_linted() -> None:
    """GIVEN the diamond as a ClusterWorkflowTemplate WHEN linted clean and with a fault THEN kind is reported."""
    doc = _load(DIAMOND.replace("kind: WorkflowTemplate", "kind: ClusterWorkflowTemplate"))
    assert _messages(doc) == []
    doc["spec"]["entrypoint"] = "absent"
    assert _one(doc, "absent").startswith("x.yaml: ClusterWorkflowTemplate/diamond: entrypoint references")


def test_legacy_single_schedule_and_descriptors_pass() -> None:
    """GIVEN a CronWorkflow with the legacy `schedule` field and a descriptor WHEN linted THEN it passes."""
    doc = _load(CRON)
    del doc["spec"]["schedules"]
    doc["spec"]["schedule"] = "@daily"
    assert _messages(doc) == []


def test_hera_render_lints_clean() -> None:
    """GIVEN a DAG built with Hera's runner scripts WHEN its render is linted THEN nothing is reported."""
    from hera.workflows import DAG, WorkflowTemplate, script

    @script(constructor="runner", image="python:3.11")
    def produce(n: int) -> int:
        return n + 1

    @script(constructor="runner", image="python:3.11")
    def consume(a: int, b: int) -> None:
        print(a + b)

    with WorkflowTemplate(name="hera-demo", entrypoint="main", arguments={"n": "1"}) as wt:
        with DAG(name="main"):
            a = produce(name="a", arguments={"n": "{{workflow.parameters.n}}"})
            b = produce(name="b", arguments={"n": a.result})
            c = consume(name="c", arguments={"a": a.result, "b": b.result})
            a >> b >> c  # type: ignore[operator]  # Hera types >> on its Task/Step union loosely
    doc = wt.to_dict()
    assert "{{inputs.parameters}}" in yaml.safe_dump(doc)
    assert _messages(doc) == []


def test_problem_prints_on_one_line() -> None:
    """GIVEN a problem WHEN printed THEN file, kind/name, template, task and message are joined with colons."""
    problem = Problem("argo/x.yaml", "WorkflowTemplate", "golden", "main", "gate", "missing dependency: boom")
    assert str(problem) == "argo/x.yaml: WorkflowTemplate/golden: template main: task gate: missing dependency: boom"
    warning = Problem("f", "Workflow", "w", None, None, "careful", "warning")
    assert str(warning) == "f: Workflow/w: warning: careful"


def test_schema_errors_name_the_field_path() -> None:
    """GIVEN a wrongly typed field and a misspelt one WHEN linted THEN each is reported with its path."""
    doc = _dag("""
        - {name: a, template: echo}
        - {name: b, template: echo, dependencies: a}
        - {name: c, template: echo, dependancies: [a]}
    """)
    assert "template main: schema: spec.templates[0].dag.tasks[1].dependencies: expected a list, got a string 'a'" in (
        _one(doc, "dependencies: expected")
    )
    assert "spec.templates[0].dag.tasks[2]: unknown field 'dependancies'" in _one(doc, "unknown field")
    assert "did you mean 'dependencies'?" in _one(doc, "unknown field")


def test_schema_is_the_target_argo_release() -> None:
    """GIVEN the SDK pinned in pyproject.toml WHEN asked THEN it is the Argo release the Helm values install (the
    chart's images are pinned by `images.tag`: the last 3.7 chart ships an older 3.7 patch)."""
    values = Path(__file__).parents[2] / "infrastructure" / "helm" / "argo-workflows.values.yaml"
    installed = str(yaml.safe_load(values.read_text(encoding="utf-8"))["images"]["tag"])
    assert argo_release() == installed


def test_fields_of_the_target_release_pass_and_later_ones_fail() -> None:
    """GIVEN fields of Argo v3.7 (one Hera's models lack: the singular `synchronization.mutex`), and a field only
    Argo v4.1 added WHEN linted THEN the v3.7 fields pass and the v4.1 one fails naming the field and the release."""
    doc = _load(DIAMOND)
    doc["spec"]["templates"][1]["synchronization"] = {"mutex": {"name": "release"}}
    doc["spec"]["synchronization"] = {"semaphores": [{"configMapKeyRef": {"name": "limits", "key": "release"}}]}
    doc["spec"]["artifactGC"] = {"strategy": "OnWorkflowDeletion"}
    doc["spec"]["templates"][1]["metadata"] = {"labels": {"tier": "eval"}}
    assert _messages(doc) == []
    doc["spec"]["podResources"] = {"requests": {"cpu": "1"}}  # Argo v4.1.0 (argoproj/argo-workflows#16399)
    assert f"schema: spec: unknown field 'podResources' (Argo Workflows {argo_release()} has no such field)" in (
        _one(doc, "podResources")
    )


def test_wire_forms_argo_accepts_pass() -> None:
    """GIVEN values in the JSON forms Argo's Go types unmarshal (numbers for strings, scalar withItems, nulls)
    WHEN linted THEN nothing is reported; a list where an object belongs still fails."""
    doc = _load(STEPS)
    step = doc["spec"]["templates"][0]["steps"][2][0]
    step["withItems"] = [1, "two", {"three": 3}]
    step["arguments"]["parameters"][0]["value"] = "{{item}}"
    doc["spec"]["activeDeadlineSeconds"] = 600
    doc["spec"]["templates"][0]["activeDeadlineSeconds"] = 60  # IntOrString in a template
    doc["spec"]["templates"][2]["container"]["resources"] = {"limits": {"cpu": 1, "memory": "1Gi"}}
    doc["spec"]["onExit"] = None
    assert _messages(doc) == []
    doc["spec"]["templates"][0]["retryStrategy"] = [{"limit": "2"}]
    assert "spec.templates[0].retryStrategy: expected an object, got a list" in _one(doc, "retryStrategy")


def test_missing_required_field_is_a_warning() -> None:
    """GIVEN a memoize cache configMap without its OpenAPI-required key WHEN linted THEN a warning, not an error."""
    doc = _load(DIAMOND)
    doc["spec"]["templates"][1]["memoize"] = {"key": "k", "maxAge": "1h", "cache": {"configMap": {"name": "cache"}}}
    problems = lint_document("x.yaml", doc)
    assert [(p.severity, p.message) for p in problems] == [
        ("warning", "schema: spec.templates[1].memoize.cache.configMap: required field 'key' is missing")
    ]


def test_int_or_string_retry_limit_is_schema_valid() -> None:
    """GIVEN retryStrategy.limit written as the string "2" or the int 2 WHEN linted THEN no problem."""
    for limit in ("2", 2):
        doc = _load(DIAMOND)
        doc["spec"]["templates"][1]["retryStrategy"]["limit"] = limit
        assert _messages(doc) == []


def test_missing_entrypoint() -> None:
    """GIVEN an entrypoint naming no template WHEN linted THEN the problem says so."""
    doc = _load(STEPS)
    doc["spec"]["entrypoint"] = "mian"
    assert "entrypoint references template mian which does not exist" in _one(doc, "mian")


def test_workflow_without_entrypoint_needs_workflow_template_ref() -> None:
    """GIVEN a Workflow without entrypoint WHEN linted THEN an error; with workflowTemplateRef THEN none."""
    doc = _load(STEPS)
    del doc["spec"]["entrypoint"]
    assert "spec.entrypoint is required" in _one(doc, "entrypoint")
    ref = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "r-"},
        "spec": {"workflowTemplateRef": {"name": "diamond"}},
    }
    assert _messages(ref) == []
    assert _messages(ref, templates_by_name={"diamond": _load(DIAMOND)}) == []


@pytest.mark.parametrize(
    ("tasks", "needle"),
    [
        ("- {name: a, template: ech0}", "task a: a references template ech0 which does not exist"),
        ("- {name: a, template: echo, onExit: gone}", "task a: onExit references template gone which does not exist"),
        (
            "- {name: a, template: echo, hooks: {exit: {template: gone}}}",
            "task a.hooks.exit: a.hooks.exit references template gone",
        ),
        ("- {name: a}", "task a: a must set exactly one of template, templateRef, inline"),
    ],
)
def test_unknown_template_references(tasks: str, needle: str) -> None:
    """GIVEN a task, exit handler or hook calling a missing template WHEN linted THEN it is named."""
    _one(_dag(tasks), needle)


def test_missing_template_in_steps_and_workflow_on_exit() -> None:
    """GIVEN a step and the workflow onExit naming missing templates WHEN linted THEN both are reported."""
    doc = _load(STEPS)
    doc["spec"]["onExit"] = "cleanup"
    doc["spec"]["templates"][0]["steps"][0][0]["template"] = "flop"
    _one(doc, "template main: task flip: flip references template flop which does not exist")
    _one(doc, "onExit references template cleanup which does not exist")


def test_template_ref_checked_against_templates_by_name() -> None:
    """GIVEN templateRefs WHEN linted with a template library THEN a missing template is an error, an unknown
    WorkflowTemplate a warning; without a library THEN they are skipped."""
    doc = _dag("""
        - {name: a, templateRef: {name: diamond, template: produce}, arguments: {parameters: [{name: label, value: x}]}}
        - {name: b, templateRef: {name: diamond, template: nope}}
        - {name: c, templateRef: {name: elsewhere, template: t}}
        - name: d
          depends: a
          template: echo
          arguments: {parameters: [{name: msg, value: "{{tasks.a.outputs.parameters.bogus}}"}]}
    """)
    assert _messages(doc) == []
    problems = lint_document("x.yaml", doc, templates_by_name={"diamond": _load(DIAMOND)})
    by_task = {p.task: p for p in problems}
    assert set(by_task) == {"b", "c", "d"}
    assert "WorkflowTemplate diamond has no template nope" in by_task["b"].message
    assert by_task["c"].severity == "warning" and "elsewhere" in by_task["c"].message
    assert "template produce of task a declares no output parameters.bogus" in by_task["d"].message


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("{name: empty, inputs: {}}", "template empty: template has no type"),
        (
            "{name: both, container: {image: a}, script: {image: a, source: x}}",
            "template both: template has more than one type (container, script)",
        ),
    ],
)
def test_exactly_one_template_type(template: str, needle: str) -> None:
    """GIVEN a template with no type or two types WHEN linted THEN the template is named."""
    _one(_dag("- {name: a, template: echo}", f"- {template}"), needle)


def test_duplicate_task_and_step_names() -> None:
    """GIVEN two tasks (or two steps) of one name WHEN linted THEN the duplicate is reported."""
    doubled = _dag("- {name: a, template: echo}\n- {name: a, template: echo}")
    _one(doubled, "template main: task a: duplicate task name a")
    doc = _load(STEPS)
    doc["spec"]["templates"][0]["steps"][2][0]["name"] = "heads"
    _one(doc, "task heads: duplicate step name heads")


def test_dag_cycle_is_named() -> None:
    """GIVEN a -> b -> c -> a WHEN linted THEN the cycle is spelt out."""
    doc = _dag("""
        - {name: a, template: echo, depends: c}
        - {name: b, template: echo, depends: a}
        - {name: c, template: echo, depends: b.Succeeded}
        - {name: d, template: echo, depends: d}
    """)
    assert "dependency cycle: a -> c -> b -> a" in _one(doc, "cycle: a")
    _one(doc, "dependency cycle: d -> d")


def test_dependency_on_unknown_task_and_mixing() -> None:
    """GIVEN a dependency on a missing task and a DAG mixing depends with dependencies WHEN linted THEN both."""
    doc = _dag("""
        - {name: a, template: echo}
        - {name: b, template: echo, dependencies: [a, ghost]}
        - {name: c, template: echo, depends: a}
    """)
    _one(doc, "task b: depends on task ghost which does not exist in the DAG")
    _one(doc, "template main: cannot use both 'depends' and 'dependencies' in the same DAG")


@pytest.mark.parametrize(
    ("depends", "fault"),
    [
        ("a &&", "expression ends early"),
        ("a.Done", "unknown result .Done"),
        ("(a || a.Failed", "missing ')'"),
        ("a b", "unexpected 'b'"),
        ("a == b", "unexpected '== b'"),
    ],
)
def test_depends_must_parse(depends: str, fault: str) -> None:
    """GIVEN a malformed depends expression WHEN linted THEN the task and the parse fault are named."""
    doc = _dag(f"- {{name: a, template: echo}}\n- {{name: b, template: echo, depends: {depends!r}}}")
    assert fault in _one(doc, "task b: depends")


def test_depends_accepts_full_grammar() -> None:
    """GIVEN every result suffix with &&, ||, ! and parentheses WHEN linted THEN no problem."""
    expr = (
        "(a.Succeeded || a.Failed || a.Errored) && !(a-1.Skipped || a-1.Omitted) && "
        "a-1.Daemoned || a.AnySucceeded || a.AllFailed"
    )
    doc = _dag(
        f"- {{name: a, template: echo}}\n- {{name: a-1, template: echo}}\n"
        f"- {{name: b, template: echo, depends: '{expr}'}}"
    )
    assert _messages(doc) == []


def test_missing_dependency() -> None:
    """GIVEN a task reading outputs of a task it does not (transitively) depend on WHEN linted THEN the
    message names both tasks; a transitive ancestor is fine."""
    doc = _dag("""
        - {name: eval, template: echo}
        - {name: safety, template: echo, depends: eval}
        - {name: latency, template: echo}
        - name: gate
          depends: safety
          template: echo
          when: "{{tasks.latency.outputs.result}} == ok"
          arguments: {parameters: [{name: msg, value: "{{tasks.eval.outputs.parameters.out}}{{tasks.latency.id}}"}]}
    """)
    problems = [str(p) for p in lint_document("argo/x.yaml", doc)]
    assert problems == [
        "argo/x.yaml: Workflow/wf: template main: task gate: missing dependency: "
        "when references tasks.latency but gate does not depend on latency",
        "argo/x.yaml: Workflow/wf: template main: task gate: missing dependency: "
        "argument references tasks.latency but gate does not depend on latency",
    ]


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("{{inputs.parameters.nope}}", "template main declares no inputs.parameters named nope"),
        ("{{workflow.parameters.nope}}", "spec.arguments.parameters declares no nope"),
        ("{{workflow.nonsense}}", "not a workflow variable"),
        ("{{tasks.ghost.outputs.result}}", "template main has no task ghost"),
        ("{{tasks.a.outputs.parameters.nope}}", "template echo of task a declares no output parameters.nope"),
        ("{{tasks.a.outputs.artifacts.nope}}", "template echo of task a declares no output artifacts.nope"),
        ("{{tasks.a.colour}}", "'colour' is not a task attribute"),
        ("{{item}}", "unresolved reference {{item}}: b has no withItems, withParam or withSequence"),
        ("{{steps.a.outputs.result}}", "steps.* is only defined inside a steps template"),
        ("{{pod.ip}}", "the only pod variable is pod.name"),
    ],
)
def test_unresolvable_references_in_dag_arguments(value: str, needle: str) -> None:
    """GIVEN a task argument with a reference that cannot resolve WHEN linted THEN the task and fault are named."""
    doc = _dag(
        f"""
        - {{name: a, template: echo}}
        - {{name: b, template: echo, depends: a, arguments: {{parameters: [{{name: msg, value: "{value}"}}]}}}}
    """,
        params="[{name: model, value: m}]",
    )
    message = _one(doc, needle)
    assert "template main: task b:" in message
    assert value in message


def test_references_that_resolve() -> None:
    """GIVEN Argo's globals, loop items, expression tags and custom tags WHEN linted THEN nothing is reported."""
    refs = [
        "{{workflow.name}}",
        "{{workflow.namespace}}",
        "{{workflow.uid}}",
        "{{workflow.duration}}",
        "{{workflow.creationTimestamp.RFC3339}}",
        "{{workflow.serviceAccountName}}",
        "{{workflow.annotations.owner}}",
        "{{workflow.mainEntrypoint}}",
        "{{workflow.parameters.model}}",
        "{{workflow.outputs.parameters.g}}",
        "{{tasks.name}}",
        "{{node.name}}",
        "{{=sprig.upper('x')}}",
        "{{item.x}}",
        "{{tasks.a.outputs.parameters.out}}",
        "{{tasks.a.startedAt}}",
        "{{tasks.a.finishedAt}}",
        "{{tasks.a.ip}}",
        "{{tasks.a.outputs.exitCode}}",
        "{{tasks.a.outputs.artifacts.log}}",
        "{{custom}}",
    ]
    doc = _dag(
        f"""
        - {{name: a, template: echo}}
        - name: b
          template: echo
          depends: a
          withParam: "{{{{tasks.a.outputs.result}}}}"
          arguments: {{parameters: [{{name: msg, value: "{" ".join(refs)}"}}]}}
    """,
        params="[{name: model, value: m}]",
    )
    doc["spec"]["templates"][1]["outputs"]["artifacts"] = [{"name": "log", "path": "/tmp/log"}]
    doc["spec"]["templates"][1]["retryStrategy"] = {"limit": "{{inputs.parameters.msg}}"}
    doc["spec"]["templates"][1]["container"]["args"] = ["{{retries}} {{lastRetry.exitCode}} {{pod.name}}"]
    assert _messages(doc) == []


def test_item_outside_a_template_loop_and_template_body() -> None:
    """GIVEN {{item}} in a leaf template body WHEN linted THEN the template is named."""
    doc = _dag("- {name: a, template: echo}")
    doc["spec"]["templates"][1]["container"]["command"].append("{{item}}")
    _one(doc, "template echo: unresolved reference {{item}}: the template has no withItems")


def test_steps_only_see_earlier_groups() -> None:
    """GIVEN a step reading a step of its own or a later group WHEN linted THEN it is reported."""
    doc = _load(STEPS)
    heads = doc["spec"]["templates"][0]["steps"][1][0]
    heads["when"] = "{{steps.tails.outputs.result}} == x"
    heads["arguments"]["parameters"][0]["value"] = "{{steps.each.outputs.result}}"
    _one(
        doc,
        "task heads: unresolved reference {{steps.tails.outputs.result}}: step tails is not in a step group "
        "before heads",
    )
    _one(doc, "step each is not in a step group before heads")


def test_missing_input_argument() -> None:
    """GIVEN a task that does not pass a required input WHEN linted THEN the parameter and template are named."""
    doc = _dag(
        "- {name: a, template: needs}",
        """
        - name: needs
          inputs: {parameters: [{name: model}]}
          container: {image: alpine:3.20}
    """,
    )
    _one(doc, "task a: a does not supply input parameter model required by template needs")


@pytest.mark.parametrize(
    ("strategy", "needle"),
    [
        ({"limit": "two"}, "retryStrategy: limit 'two' is not an integer"),
        ({"limit": -1}, "retryStrategy: limit -1 is not an integer"),
        ({"limit": "1", "retryPolicy": "Sometimes"}, "retryPolicy 'Sometimes' is not one of Always"),
    ],
)
def test_retry_strategy(strategy: dict[str, Any], needle: str) -> None:
    """GIVEN a bad retry limit or policy WHEN linted THEN the template is named."""
    doc = _dag("- {name: a, template: echo}")
    doc["spec"]["templates"][1]["retryStrategy"] = strategy
    assert "template echo:" in _one(doc, needle)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("schedules", ["0 3 * *"], "has 4 fields; a cron schedule has 5"),
        ("schedules", ["0 0 3 * * *"], "has 6 fields"),
        ("schedules", ["61 3 * * *"], "does not parse as a cron expression"),
        ("schedules", ["@fortnightly"], "is not one of @annually"),
        ("schedules", ["@every 1day"], "not a Go duration"),
        ("schedules", [], "no schedule"),
        ("timezone", "Mars/Olympus", "timezone 'Mars/Olympus' is not an IANA time zone"),
        ("concurrencyPolicy", "Sometimes", "concurrencyPolicy 'Sometimes' is not one of Allow, Forbid, Replace"),
    ],
)
def test_cron_fields(field: str, value: Any, needle: str) -> None:
    """GIVEN a CronWorkflow with a bad schedule, timezone or concurrency policy WHEN linted THEN it is named."""
    doc = _load(CRON)
    doc["spec"][field] = value
    assert _one(doc, needle).startswith("x.yaml: CronWorkflow/nightly: cron:")


def test_cron_workflow_spec_is_linted_like_a_workflow() -> None:
    """GIVEN a CronWorkflow whose workflowSpec references an undeclared parameter WHEN linted THEN reported."""
    doc = _load(CRON)
    doc["spec"]["workflowSpec"]["arguments"]["parameters"] = []
    _one(doc, "template main: task eval: unresolved reference {{workflow.parameters.alias}}")


def test_load_documents_multi_doc_and_syntax_errors(tmp_path: Path) -> None:
    """GIVEN a multi-document file and a broken one WHEN loaded THEN documents come back, the broken file is named."""
    good = tmp_path / "good.yaml"
    good.write_text(DIAMOND + "\n---\n" + CRON + "\n---\n")
    assert [d["kind"] for _, d in load_documents([good])] == ["WorkflowTemplate", "CronWorkflow"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Workflow\nspec: [unclosed\n")
    with pytest.raises(WorkflowError, match=r"bad\.yaml: not valid YAML \(line \d+"):
        load_documents([bad])


def test_lint_files_skips_other_kinds_and_resolves_neighbouring_templates(tmp_path: Path) -> None:
    """GIVEN a Workflow referencing a WorkflowTemplate in argo/ next to it plus a Sensor and a ConfigMap
    WHEN lint_files runs THEN only the faulty templateRef is reported."""
    (tmp_path / "argo").mkdir()
    (tmp_path / "argo" / "diamond.yaml").write_text(DIAMOND)
    other = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Sensor", "metadata": {"name": "s"}, "spec": {}}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    doc = _dag("- {name: a, templateRef: {name: diamond, template: missing}}")
    submitted = tmp_path / "submit.yaml"
    submitted.write_text(yaml.safe_dump_all([other, config, doc]))
    problems = lint_files([submitted])
    assert [str(p) for p in problems] == [
        f"{submitted}: Workflow/wf: template main: task a: "
        "templateRef: WorkflowTemplate diamond has no template missing"
    ]
    assert lint_files([tmp_path / "argo"]) == []
