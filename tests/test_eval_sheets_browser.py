"""The HTML rating sheet in a real headless Chromium: answer, reload, download, ingest.

Needs Debian's ``chromium`` (installed here when missing and running as root) and the
``websocket-client`` package; run only these tests with ``pytest -m browser``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from eval_sheets_helpers import FORMULA_PROMPT, PROMPTS, SCRIPT_PROMPT, TAG_PROMPT, make_study
from headless_chromium import ChromiumUnavailable, HeadlessChromium, ensure_chromium

from cascade.cli import main as cascade_main

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def chromium() -> str:
    pytest.importorskip("websocket", reason="the browser tests need the websocket-client package (dev extra)")
    try:
        return ensure_chromium()
    except ChromiumUnavailable as reason:
        pytest.skip(str(reason))


def click_all(browser: HeadlessChromium, selector: str) -> int:
    """Click every element matching ``selector`` the way a user would; returns how many."""
    return browser.evaluate(
        f"(() => {{ const found = document.querySelectorAll({json.dumps(selector)});"
        " found.forEach((element) => element.click()); return found.length; })()"
    )


def test_fill_sheet_in_chromium_then_ingest(chromium: str, tmp_path: Path):
    study = make_study(tmp_path / "study", raters=2)
    placements = study.placements("r1")
    sheet_url = (study.out / "raters" / f"sheet-{study.key['study_id']}-r1.html").resolve().as_uri()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    first_half = [p["pair_id"] for p in placements[: len(placements) // 2]]
    total = len(PROMPTS)

    with HeadlessChromium(chromium, download_dir=downloads, timeout=30) as browser:
        browser.open(sheet_url)
        assert (
            browser.evaluate("document.getElementById('progress-text').textContent") == f"0 of {total} pairs answered"
        )

        # Prompts are text: no injected script ran, no element was injected, the text is intact.
        assert browser.evaluate("window.__xss === undefined")
        assert browser.evaluate("document.scripts.length") == 2
        assert browser.evaluate("document.querySelectorAll('main img').length") == 2 * total
        shown_prompts = browser.evaluate("Array.from(document.querySelectorAll('.prompt'), (p) => p.textContent)")
        assert SCRIPT_PROMPT in shown_prompts and TAG_PROMPT in shown_prompts

        # Half the pairs, then a reload: the answers come back from localStorage.
        for pair_id in first_half:
            click_all(browser, f'#pair-{pair_id} input[data-question="quality"][value="left"]')
            click_all(browser, f'#pair-{pair_id} input[data-question="alignment"][value="right"]')
        browser.reload()
        assert (
            browser.evaluate("document.getElementById('progress-text').textContent")
            == f"{len(first_half)} of {total} pairs answered"
        )
        assert browser.evaluate("document.querySelectorAll('input:checked').length") == 2 * len(first_half)

        # The rest, then download.
        assert click_all(browser, 'input[data-question="quality"][value="left"]') == total
        assert click_all(browser, 'input[data-question="alignment"][value="right"]') == total
        assert browser.evaluate("document.getElementById('progress').value") == total
        assert browser.evaluate("document.querySelectorAll('section.pair.done').length") == total
        click_all(browser, "#download")
        downloaded = browser.wait_for_download(f"answers-{study.key['study_id']}-r1.csv")

    with downloaded.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["pair_id"] for row in rows] == [p["pair_id"] for p in placements]
    assert {(row["quality"], row["alignment"]) for row in rows} == {("left", "right")}
    prompts = {row["prompt"] for row in rows}
    assert "'" + FORMULA_PROMPT in prompts and FORMULA_PROMPT not in prompts, "formula neutralised in the download"
    assert SCRIPT_PROMPT in prompts
    # Every field quoted, as in the template: a `;` or tab list separator cannot split a prompt.
    template_lines = study.template("r1").read_text(encoding="utf-8-sig").splitlines()
    downloaded_lines = downloaded.read_text(encoding="utf-8-sig").splitlines()
    assert all(line.startswith('"') and line.endswith('"') for line in downloaded_lines)
    assert downloaded_lines[0] == template_lines[0]

    results_path = tmp_path / "results.json"
    assert (
        cascade_main(["eval", "sheets", "ingest", "--key", str(study.key_path), str(downloaded), "--out", str(results_path)]) == 0
    )
    overall = json.loads(results_path.read_text())["overall"]
    on_left = {name: sum(p["left"] == name for p in placements) for name in ("base", "new")}
    assert overall["n_pairs"] == total and overall["n_answers"] == total
    for name, other in (("base", "new"), ("new", "base")):
        assert overall["questions"]["quality"]["systems"][name]["preferred"] == on_left[name]
        assert overall["questions"]["alignment"]["systems"][name]["preferred"] == on_left[other]
    assert overall["questions"]["quality"]["indifferent"] == 0
