"""The HTML release report in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

Checks what a reader sees: the page renders, each plot is an inline SVG with a non-zero box, nothing is fetched
from the network, and a screenshot is not blank.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from steps.evidence import write_bundle
from steps.evidence.report import write_report
from tests.unit.test_evidence import REPO, run_inputs, write_run_files

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
_MISSING = "chromium/chromedriver not on PATH: apt-get install chromium chromium-driver"
if CHROMIUM is None or DRIVER is None:
    if os.environ.get("CI"):
        pytest.fail(f"{_MISSING} (CI must install them before the tests)", pytrace=False)
    pytest.skip(_MISSING, allow_module_level=True)
selenium = pytest.importorskip("selenium", reason="selenium is not installed: pip install selenium")

PLOTS = ("plot-comparisons", "plot-latency", "plot-canary")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1800",
        "--disable-background-networking",
        "--no-first-run",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(REPO)
    write_bundle(run_inputs(write_run_files(tmp_path / "run")), tmp_path / "bundle")
    return write_report(tmp_path / "bundle")


def _requested_urls(driver: Any) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_report_renders_with_visible_plots_and_no_network(browser: Any, report: Path, tmp_path: Path) -> None:
    """GIVEN the report of a run aborted in canary
    WHEN headless Chromium opens it from disk
    THEN the title names the model, each plot's SVG has a non-zero bounding box, the digest is shown, the only
    request is the file itself, and a screenshot has many distinct colours (not blank)."""
    from PIL import Image

    browser.get(report.as_uri())
    assert "demo-qa" in browser.title
    boxes = browser.execute_script(
        "return Array.from(document.querySelectorAll('figure.plot')).map(f => {"
        " const s = f.querySelector('svg'); const r = s ? s.getBoundingClientRect() : {width: 0, height: 0};"
        " return [f.id, r.width, r.height, s ? s.querySelectorAll('path, use').length : 0]; })"
    )
    assert [b[0] for b in boxes] == list(PLOTS)
    for plot_id, width, height, marks in boxes:
        assert width > 300 and height > 100 and marks > 10, (plot_id, width, height, marks)
    digest = browser.find_element("id", "evidence-digest").text
    assert digest == (report.parent / "manifest.sha256").read_text().strip()
    assert browser.execute_script("return document.scripts.length") == 0
    assert [u for u in _requested_urls(browser) if not u.startswith("file://")] == []
    browser.execute_script("document.getElementById('plot-canary').scrollIntoView()")
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        assert rgb.size[0] > 600 and len(colours) > 50
        assert sum(n for n, _ in colours if _ != (255, 255, 255)) > 0.02 * rgb.size[0] * rgb.size[1]
