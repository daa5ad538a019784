"""Render one rater's self-contained HTML sheet: images as data URIs, inline CSS and script.

Prompts are user text and reach the page two ways, both safe: in the markup through
`html.escape`, and in the script's data as JSON inside ``<script type="application/json">``
with ``<``, ``>`` and ``&`` written as ``\\u003c``, ``\\u003e``, ``\\u0026`` (`json_for_script`),
so no prompt can close the script block or open a tag.
"""

from __future__ import annotations

import json
from html import escape

from .answer_csv import COLUMNS
from .sheet_assets import SHEET_CSS, SHEET_JS
from .study import QUESTIONS, Study

CHOICE_LABELS = (("left", "Left"), ("indifferent", "Indifferent"), ("right", "Right"))


def sheet_file_name(study_id: str, rater_id: str) -> str:
    """The name of a rater's HTML sheet."""
    return f"sheet-{study_id}-{rater_id}.html"


def answers_file_name(study_id: str, rater_id: str) -> str:
    """The name of both the CSV template and the CSV the sheet's download button saves."""
    return f"answers-{study_id}-{rater_id}.csv"


def json_for_script(value: object) -> str:
    """JSON that is safe inside a ``<script>`` element whatever strings ``value`` holds."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_sheet(study: Study, rater_id: str, image_uris: dict[str, str]) -> str:
    """The HTML sheet of ``rater_id``; ``image_uris`` maps each image path to its data URI."""
    sheet = study.raters[rater_id]
    data = {
        "study_id": study.study_id,
        "rater_id": rater_id,
        "columns": list(COLUMNS),
        "questions": dict(QUESTIONS),
        "pairs": [{"id": p.pair_id, "prompt": study.pairs[p.pair_id].prompt} for p in sheet.placements],
        "download_name": answers_file_name(study.study_id, rater_id),
    }
    sections = "\n".join(
        _pair_section(
            position=placement.position,
            total=len(sheet.placements),
            pair_id=placement.pair_id,
            prompt=study.pairs[placement.pair_id].prompt,
            left_uri=image_uris[study.pairs[placement.pair_id].images[placement.left]],
            right_uri=image_uris[study.pairs[placement.pair_id].images[placement.right]],
        )
        for placement in sheet.placements
    )
    study_id, rater = escape(study.study_id), escape(rater_id)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="cascade-study-id" content="{study_id}">
<meta name="cascade-rater-id" content="{rater}">
<title>Image comparison: study {study_id}, rater {rater}</title>
<style>{SHEET_CSS}</style>
</head>
<body>
<header>
<h1>Image comparison · study <code>{study_id}</code> · rater <code>{rater}</code></h1>
<div class="toolbar">
<progress id="progress" value="0" max="{len(sheet.placements)}"></progress>
<span id="progress-text" aria-live="polite"></span>
<button type="button" id="download">Download answers (CSV)</button>
<button type="button" id="next" class="secondary">Next unanswered</button>
<span id="status" role="status"></span>
</div>
</header>
<main>
<section class="instructions">
<p>Each pair below shows two images made for the caption above them. For every pair, answer both
questions: <strong>{escape(QUESTIONS["quality"])}</strong> and <strong>{escape(QUESTIONS["alignment"])}</strong>
Choose <em>Indifferent</em> when neither is better. There are no right answers; judge by your own impression.</p>
<p>Your answers are kept in this browser as you go, so you can close the page and come back. When you
are done, press <em>Download answers</em> and send the file back. If you prefer a spreadsheet, fill in
<code>{escape(answers_file_name(study.study_id, rater_id))}</code> instead: one row per pair id, in the
order shown here, with <code>left</code>, <code>right</code> or <code>indifferent</code>.</p>
</section>
{sections}
</main>
<script type="application/json" id="sheet-data">{json_for_script(data)}</script>
<script>{SHEET_JS}</script>
</body>
</html>
"""


def _pair_section(position: int, total: int, pair_id: str, prompt: str, left_uri: str, right_uri: str) -> str:
    """One pair: heading, the prompt as text, both images, and a radio group per question."""
    questions = "\n".join(
        f"<fieldset><legend>{escape(text)}</legend>"
        + "".join(
            f'<label><input type="radio" name="{pair_id}:{question}" value="{value}" '
            f'data-pair="{pair_id}" data-question="{question}"> {label}</label>'
            for value, label in CHOICE_LABELS
        )
        + "</fieldset>"
        for question, text in QUESTIONS.items()
    )
    return f"""<section class="pair" id="pair-{pair_id}">
<h2>Pair {position} of {total} · id {pair_id}</h2>
<p class="prompt">{escape(prompt)}</p>
<div class="images">
<figure><img src="{left_uri}" alt="left image" decoding="async"><figcaption>Left</figcaption></figure>
<figure><img src="{right_uri}" alt="right image" decoding="async"><figcaption>Right</figcaption></figure>
</div>
{questions}
</section>"""
