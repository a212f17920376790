"""The HTML report of a recorded tpp run in headless Chromium: it loads from a file with no
console errors, fetches nothing, and shows every timeline row, the verdict and the chart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from controlplane.scenarios.report import render
from controlplane.scenarios.runner import analyse
from tests.controlplane.web.test_dashboard import new_browser

RECORD = Path(__file__).parent / "data" / "tpp-auto-record.json"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    record = json.loads(RECORD.read_text())
    path = tmp_path_factory.mktemp("report") / "gameday.html"
    path.write_text(render(record))
    return record, path


def test_report_is_self_contained(page):
    _, path = page
    text = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "the report must fetch nothing"
    assert "<svg" in text and "<style>" in text and "<script>" in text


def test_report_renders_in_chromium_with_every_row_and_the_chart(page):
    from selenium.webdriver.common.by import By
    record, path = page
    expected = analyse(record)
    driver = new_browser()
    try:
        driver.get(path.as_uri())
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe
        rows = driver.find_elements(By.CSS_SELECTOR, "#timeline tbody tr")
        assert len(rows) == len(expected["events"]) > 20
        texts = [r.text for r in rows]
        for e in expected["events"]:
            assert any(e["text"][:60] in t for t in texts), e["text"]
        # the script ran: it counts the rows
        assert driver.find_element(By.ID, "count").text == f"{len(rows)} events"
        talk = driver.find_elements(By.CSS_SELECTOR, "#talk tr")
        assert len(talk) == len(record["talk_timeline"]) + 1
        chart = driver.find_element(By.ID, "chart")
        assert chart.size["width"] > 500 and chart.size["height"] > 200
        line = driver.find_element(By.ID, "completeness")
        assert len(line.get_attribute("points").split()) > 60
        assert driver.find_element(By.ID, "p99").is_displayed()
        assert len(driver.find_elements(By.CSS_SELECTOR, "#chart .fault-mark")) == 3
        assert driver.find_element(By.ID, "verdict").text == "targets missed"
        faults = driver.find_elements(By.CSS_SELECTOR, "#faults tr")
        assert len(faults) == 4
        assert len(driver.find_elements(By.CSS_SELECTOR, "#plans tr")) == len(record["plans"]) + 1
    finally:
        driver.quit()
