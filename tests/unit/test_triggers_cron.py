"""`llmrelease cron next`: fire times of the rendered nightly-regression CronWorkflow, and bad schedules/zones."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import yaml

from registry.errors import SpecError
from workflows.cli.main import main
from workflows.cli.triggers import next_fire_times

ARGO = Path(__file__).resolve().parents[2] / "argo"


def cron(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["cron", "next", *args, "--argo-dir", str(ARGO)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_rendered_cron_workflow_is_argo_3_6_shaped() -> None:
    """GIVEN argo/nightly-regression.cronworkflow.yaml WHEN read THEN it uses `schedules` (Argo 3.6), a time zone,
    Forbid, a starting deadline and history limits."""
    doc = yaml.safe_load((ARGO / "nightly-regression.cronworkflow.yaml").read_text())
    spec = doc["spec"]
    assert doc["kind"] == "CronWorkflow" and "schedule" not in spec
    assert (spec["schedules"], spec["timezone"], spec["concurrencyPolicy"]) == (
        ["30 3 * * *"],
        "Europe/Berlin",
        "Forbid",
    )
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] > 0 and spec["failedJobsHistoryLimit"] > 0


def test_next_fire_times_are_shown_in_the_cron_workflows_time_zone(capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN the rendered nightly-regression WHEN asked for 3 fire times after a fixed instant THEN they are at
    03:30 Berlin time, printed with Berlin's offset, across the switch to summer time."""
    code, lines, err = cron(capsys, "nightly-regression", "-n", "3", "--after", "2026-03-27T12:00:00+00:00")
    assert (code, err) == (0, "")
    assert lines == [
        "nightly-regression: 30 3 * * * (Europe/Berlin)",
        "2026-03-28T03:30:00+01:00",
        "2026-03-29T03:30:00+02:00",
        "2026-03-30T03:30:00+02:00",
    ]


def test_several_schedules_merge_in_time_order_without_duplicates() -> None:
    """GIVEN two schedules that coincide at 12:00 WHEN the next 4 times are asked THEN they are merged and sorted."""
    after = datetime.fromisoformat("2026-11-23T10:00:00+00:00")
    times = next_fire_times(["0 12 * * *", "0 */6 * * *"], "UTC", after, 4)
    assert [t.isoformat() for t in times] == [
        "2026-11-23T12:00:00+00:00",
        "2026-11-23T18:00:00+00:00",
        "2026-11-24T00:00:00+00:00",
        "2026-11-24T06:00:00+00:00",
    ]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--schedule", "0 25 * * *"], "schedule '0 25 * * *' does not parse"),
        (["--schedule", "every night"], "has 2 fields"),
        (["--schedule", "@fortnightly"], "is not one of"),
        (["--timezone", "Mars/Olympus"], "timezone 'Mars/Olympus' is not an IANA time zone"),
        (["--after", "tomorrow"], "--after 'tomorrow' is not an ISO time"),
        (["-n", "0"], "-n 0: give a positive number"),
    ],
)
def test_a_schedule_or_time_zone_that_does_not_parse_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    """GIVEN a bad schedule, time zone, start or count WHEN cron next runs THEN exit 2 with one stderr line."""
    code, lines, err = cron(capsys, "nightly-regression", *args)
    assert code == 2 and lines == []
    assert err.count("\n") == 1 and words in err and err.startswith("llmrelease cron: ")


def test_a_cron_workflow_file_with_a_bad_time_zone_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """GIVEN a CronWorkflow file whose timezone is not IANA WHEN cron next reads it THEN exit 2, naming it."""
    doc = yaml.safe_load((ARGO / "nightly-regression.cronworkflow.yaml").read_text())
    doc["spec"]["timezone"] = "CEST+2"
    path = tmp_path / "cron.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, _, err = cron(capsys, str(path))
    assert code == 2 and "timezone 'CEST+2' is not an IANA time zone" in err


def test_an_unknown_cron_workflow_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN a name that is not rendered WHEN cron next runs THEN exit 2 naming it."""
    code, _, err = cron(capsys, "weekly-report")
    assert code == 2 and "weekly-report: no CronWorkflow by that name" in err


def test_every_schedules_have_no_fixed_times() -> None:
    """GIVEN an @every schedule WHEN fire times are asked THEN a SpecError explains why there are none."""
    with pytest.raises(SpecError, match="@every"):
        next_fire_times(["@every 1h"], "UTC", datetime.fromisoformat("2026-11-23T10:00:00+00:00"), 2)
