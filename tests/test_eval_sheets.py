"""`cascade eval sheets make / ingest`: blinding, un-blinding, validation, escaping."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import pytest
from eval_sheets_helpers import (
    FORMULA_PROMPT,
    PROMPTS,
    SCRIPT_PROMPT,
    TAG_PROMPT,
    MadeStudy,
    make_study,
    write_prompt_csv,
    write_sample_folder,
)
from PIL import Image

from cascade.cli import main as cascade_main
from cascade.eval.sheets.answer_csv import COLUMNS, neutralise_formula
from cascade.eval.sheets.errors import SheetError
from cascade.eval.sheets.html_sheet import json_for_script
from cascade.eval.sheets.images import image_data_uri


@pytest.fixture
def study(tmp_path: Path) -> MadeStudy:
    return make_study(tmp_path)


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return list(csv.reader(handle))


def fill(template: Path, target: Path, quality: str = "left", alignment: str = "right", edit=None) -> Path:
    """Copy an answer template with every pair answered; ``edit(rows)`` may change the rows first."""
    rows = read_rows(template)
    for row in rows[1:]:
        row[COLUMNS.index("quality")] = quality
        row[COLUMNS.index("alignment")] = alignment
    if edit is not None:
        edit(rows)
    with target.open("w", newline="", encoding="utf-8-sig") as handle:
        csv.writer(handle).writerows(rows)
    return target


def ingest(study: MadeStudy, *sheets: Path, out: Path | None = None) -> int:
    out = out or study.out / "results.json"
    return cascade_main(
        ["eval", "sheets", "ingest", "--key", str(study.key_path), *map(str, sheets), "--out", str(out), "--bootstrap", "200"]
    )


def test_files_carry_study_and_rater_ids(study: MadeStudy):
    study_id = study.key["study_id"]
    assert re.fullmatch(r"prompts-[0-9a-f]{8}", study_id)
    assert [r["rater_id"] for r in study.key["raters"]] == ["r1", "r2", "r3"]
    for rater in ("r1", "r2", "r3"):
        html = study.sheet(rater)
        assert f'<meta name="cascade-study-id" content="{study_id}">' in html
        assert f'<meta name="cascade-rater-id" content="{rater}">' in html
        rows = read_rows(study.template(rater))
        assert tuple(rows[0]) == COLUMNS
        assert {(row[0], row[1]) for row in rows[1:]} == {(study_id, rater)}
    assert not list(study.out.rglob("*.tmp")), "atomic writes leave no temporary files"


def test_sheet_is_self_contained(study: MadeStudy):
    html = study.sheet("r1")
    assert not re.search(r'(src|href)="(?!data:)', html), "every resource is inline"
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert html.count("data:image/png;base64,") == 2 * len(PROMPTS)


def test_key_unblinds_every_image(study: MadeStudy):
    pairs = {pair["pair_id"]: pair for pair in study.key["pairs"]}
    assert [pairs[p]["prompt"] for p in sorted(pairs)] == [prompt for prompt, _ in PROMPTS]
    for rater in ("r1", "r2", "r3"):
        html = study.sheet(rater)
        shown = re.findall(
            r'id="pair-(p\d+)".*?<img src="([^"]+)" alt="left image".*?<img src="([^"]+)" alt="right image"', html, re.S
        )
        placements = study.placements(rater)
        assert [pair_id for pair_id, _, _ in shown] == [p["pair_id"] for p in placements]
        for (pair_id, left_uri, right_uri), placement in zip(shown, placements, strict=True):
            images = pairs[pair_id]["images"]
            assert left_uri == png_uri(images[placement["left"]])
            assert right_uri == png_uri(images[placement["right"]])
            assert {placement["left"], placement["right"]} == {"base", "new"}


def png_uri(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def test_raters_get_different_orders_and_balanced_sides(study: MadeStudy):
    orders = [tuple(p["pair_id"] for p in study.placements(r)) for r in ("r1", "r2", "r3")]
    assert len(set(orders)) == 3
    assert all(sorted(order) == sorted(p["pair_id"] for p in study.key["pairs"]) for order in orders)
    for rater in ("r1", "r2", "r3"):
        assert sum(p["left"] == "base" for p in study.placements(rater)) == len(PROMPTS) // 2
        assert [p["position"] for p in study.placements(rater)] == list(range(1, len(PROMPTS) + 1))


def test_seed_fixes_the_study(tmp_path: Path):
    first, again, other = (
        make_study(tmp_path / "a", seed=1),
        make_study(tmp_path / "b", seed=1),
        make_study(tmp_path / "c", seed=2),
    )
    assert first.key["study_id"] == again.key["study_id"] != other.key["study_id"]
    assert first.key["raters"] == again.key["raters"] != other.key["raters"]


def test_limit_and_index_choose_prompts_and_samples(tmp_path: Path):
    texts = [prompt for prompt, _ in PROMPTS]
    write_sample_folder(tmp_path / "x", texts, 1, samples_per_prompt=2)
    write_sample_folder(tmp_path / "y", texts, 2, samples_per_prompt=2)
    argv = [
        "sheets",
        "make",
        "--prompts",
        str(write_prompt_csv(tmp_path / "p.csv", PROMPTS)),
        "--system-a",
        f"x={tmp_path / 'x'}",
        "--system-b",
        f"y={tmp_path / 'y'}",
        "--raters",
        "1",
        "--out",
        str(tmp_path / "out"),
        "--limit",
        "4",
        "--index",
        "1",
    ]
    assert cascade_main(["eval", *argv]) == 0
    (key_path,) = (tmp_path / "out").glob("key-*.json")
    key = json.loads(key_path.read_text())
    assert [pair["prompt"] for pair in key["pairs"]] == texts[:4]
    assert all(Path(path).name.endswith("_1.png") for pair in key["pairs"] for path in pair["images"].values())


def test_missing_samples_are_reported(tmp_path: Path, capsys):
    texts = [prompt for prompt, _ in PROMPTS]
    write_sample_folder(tmp_path / "x", texts, 1)
    write_sample_folder(tmp_path / "y", texts[:5], 2)
    argv = [
        "sheets",
        "make",
        "--prompts",
        str(write_prompt_csv(tmp_path / "p.csv", PROMPTS)),
        "--system-a",
        f"x={tmp_path / 'x'}",
        "--system-b",
        f"y={tmp_path / 'y'}",
        "--out",
        str(tmp_path / "out"),
    ]
    assert cascade_main(["eval", *argv]) == 1
    message = capsys.readouterr().err
    assert "system 'y'" in message and "7 of 12 prompts" in message
    assert not (tmp_path / "out").exists()


def test_prompts_stay_text_in_html(study: MadeStudy):
    html = study.sheet("r1")
    for prompt in (SCRIPT_PROMPT, TAG_PROMPT):
        assert prompt not in html
    assert "&lt;/script&gt;&lt;script&gt;window.__xss = 1&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;window.__xss = 2&quot;&gt; &amp; &quot;quotes&quot;" in html
    assert html.count("<script") == 2 and html.count("</script>") == 2
    data_block = re.search(r'<script type="application/json" id="sheet-data">(.*?)</script>', html, re.S).group(1)
    assert "<" not in data_block and ">" not in data_block
    assert SCRIPT_PROMPT in [pair["prompt"] for pair in json.loads(data_block)["pairs"]]


def test_json_for_script_cannot_close_the_block():
    text = json_for_script({"prompt": "</script><!-- & -->"})
    assert "</" not in text and "<!--" not in text
    assert json.loads(text) == {"prompt": "</script><!-- & -->"}


@pytest.mark.parametrize(
    "cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "\0x", " =leading space", "\n\x01 +1", "\u00a0@x"]
)
def test_formula_cells_are_neutralised(cell: str):
    assert neutralise_formula(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["A red car.", "1+1=2", " a = b", "", "r1", "   "])
def test_ordinary_cells_are_kept(cell: str):
    assert neutralise_formula(cell) == cell


def _split_like_a_spreadsheet(line: str, separator: str) -> list[str]:
    """Cells of one CSV line as Excel / LibreOffice read it with another list separator: every
    double quote toggles quoting, and only a separator outside quotes ends a cell."""
    cells, cell, quoted = [], "", False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == separator and not quoted:
            cells.append(cell)
            cell = ""
        else:
            cell += ch
    return cells + [cell]


@pytest.mark.parametrize("separator", [",", ";", "\t"])
def test_no_cell_of_the_template_starts_a_formula_whatever_the_list_separator(tmp_path: Path, separator: str):
    hostile = ["a;=cmd|' /C calc'!A0", "b\t=1+1", 'c","=2+2', "plain"]
    study = make_study(tmp_path, prompts=[(prompt, "hostile") for prompt in hostile])
    for line in study.template("r1").read_text(encoding="utf-8-sig").splitlines():
        for cell in _split_like_a_spreadsheet(line, separator):
            assert not cell.lstrip().startswith(("=", "+", "-", "@")), (separator, line, cell)
    rows = read_rows(study.template("r1"))
    assert {row[COLUMNS.index("prompt")] for row in rows[1:]} == set(hostile)


def test_template_neutralises_prompts(study: MadeStudy):
    prompts = {
        row[COLUMNS.index("pair_id")]: row[COLUMNS.index("prompt")] for row in read_rows(study.template("r1"))[1:]
    }
    by_text = {pair["prompt"]: prompts[pair["pair_id"]] for pair in study.key["pairs"]}
    assert by_text[FORMULA_PROMPT] == "'" + FORMULA_PROMPT
    assert (
        by_text["+1 dollar"] == "'+1 dollar" and by_text["-minus"] == "'-minus" and by_text["@mention"] == "'@mention"
    )
    assert by_text["A red colored car."] == "A red colored car."
    assert by_text["A sign that says 'Schönhausen'."] == "A sign that says 'Schönhausen'."


def test_ingest_unblinds_and_counts(study: MadeStudy, tmp_path: Path):
    sheets = [
        fill(study.template(r), tmp_path / f"{r}.csv", quality="left", alignment="right") for r in ("r1", "r2", "r3")
    ]
    assert ingest(study, *sheets) == 0
    results = json.loads((study.out / "results.json").read_text())
    left_counts = {"base": 0, "new": 0}
    for rater in ("r1", "r2", "r3"):
        for placement in study.placements(rater):
            left_counts[placement["left"]] += 1
    overall = results["overall"]
    assert overall["n_pairs"] == len(PROMPTS) and overall["n_answers"] == 3 * len(PROMPTS)
    for system, other in (("base", "new"), ("new", "base")):
        assert overall["questions"]["quality"]["systems"][system]["preferred"] == left_counts[system]
        assert overall["questions"]["alignment"]["systems"][system]["preferred"] == left_counts[other]
    assert results["systems"] == ["base", "new"] and results["raters"] == ["r1", "r2", "r3"]
    assert [group["category"] for group in results["categories"]] == ["Colors", "Counting", "Safety", "Text"]
    assert sum(group["n_pairs"] for group in results["categories"]) == len(PROMPTS)
    quality = overall["questions"]["quality"]["systems"]
    assert quality["base"]["preference"] + quality["new"]["preference"] == pytest.approx(1.0)
    assert quality["base"]["ci_low"] <= quality["base"]["preference"] <= quality["base"]["ci_high"]


def test_indifferent_answers_split_half_half(study: MadeStudy, tmp_path: Path):
    sheet = fill(study.template("r1"), tmp_path / "r1.csv", quality="indifferent", alignment="I")
    assert ingest(study, sheet) == 0
    results = json.loads((study.out / "results.json").read_text())
    for question in ("quality", "alignment"):
        summary = results["overall"]["questions"][question]
        assert summary["indifferent"] == len(PROMPTS)
        assert summary["systems"]["base"]["preference"] == pytest.approx(0.5)
        assert summary["systems"]["base"]["ci_low"] == pytest.approx(0.5) == summary["systems"]["base"]["ci_high"]
        assert summary["agreement"]["fleiss_kappa"] is None, "one rater: no agreement"


def test_ingest_accepts_semicolon_separated_sheets(study: MadeStudy, tmp_path: Path):
    rows = read_rows(fill(study.template("r1"), tmp_path / "comma.csv"))
    semicolon = tmp_path / "semicolon.csv"
    with semicolon.open("w", newline="", encoding="utf-8-sig") as handle:
        csv.writer(handle, delimiter=";").writerows(rows)
    assert ingest(study, semicolon) == 0


def expect_problem(study: MadeStudy, capsys, sheets: list[Path], *fragments: str) -> str:
    out = study.out / "bad-results.json"
    assert ingest(study, *sheets, out=out) == 1
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert not out.exists()
    return message


def test_unknown_pair_id(study: MadeStudy, tmp_path: Path, capsys):
    sheet = fill(study.template("r1"), tmp_path / "r1.csv", edit=lambda rows: rows[3].__setitem__(3, "p999"))
    expect_problem(
        study,
        capsys,
        [sheet],
        f"{sheet} row 4: unknown pair id 'p999' for rater r1",
        "has no answers for 1 of 12 pairs",
    )


def test_duplicate_answer_in_one_file(study: MadeStudy, tmp_path: Path, capsys):
    sheet = fill(study.template("r1"), tmp_path / "r1.csv", edit=lambda rows: rows.append(list(rows[2])))
    pair_id = read_rows(sheet)[2][3]
    expect_problem(
        study,
        capsys,
        [sheet],
        f"{sheet} row 14: duplicate answer for rater r1 pair {pair_id} (first answered at {sheet} row 3)",
    )


def test_duplicate_answer_across_files(study: MadeStudy, tmp_path: Path, capsys):
    first = fill(study.template("r1"), tmp_path / "first.csv")
    second = fill(study.template("r1"), tmp_path / "second.csv")
    expect_problem(
        study,
        capsys,
        [first, second],
        f"{second} row 2: duplicate answer for rater r1",
        f"(first answered at {first} row 2)",
    )


def test_missing_answers(study: MadeStudy, tmp_path: Path, capsys):
    def drop_and_blank(rows):
        del rows[5]
        rows[2][COLUMNS.index("alignment")] = ""

    sheet = fill(study.template("r2"), tmp_path / "r2.csv", edit=drop_and_blank)
    expect_problem(
        study,
        capsys,
        [sheet],
        f"{sheet} row 3: missing answer to 'alignment'",
        "rater r2 has no answers for 1 of 12 pairs",
    )


def test_sheet_from_another_study(study: MadeStudy, tmp_path: Path, capsys):
    other = make_study(tmp_path / "other", seed=99)
    sheet = fill(other.template("r1"), tmp_path / "other-r1.csv")
    expect_problem(
        study,
        capsys,
        [sheet],
        f"{sheet} row 2: study id {other.key['study_id']!r} is not this key's study",
        "another study",
    )


def test_unknown_answer_and_rater(study: MadeStudy, tmp_path: Path, capsys):
    def spoil(rows):
        rows[1][COLUMNS.index("quality")] = "maybe"
        rows[2][COLUMNS.index("rater_id")] = "r7"

    sheet = fill(study.template("r1"), tmp_path / "r1.csv", edit=spoil)
    expect_problem(
        study,
        capsys,
        [sheet],
        f"{sheet} row 2: unknown answer 'maybe' to 'quality'",
        "expected one of left, right, indifferent",
        f"{sheet} row 3: unknown rater id 'r7'",
    )


def test_missing_column(study: MadeStudy, tmp_path: Path, capsys):
    sheet = tmp_path / "r1.csv"
    sheet.write_text("study_id,rater_id,pair_id,quality\nx,r1,p001,left\n")
    expect_problem(study, capsys, [sheet], f"{sheet} row 1: missing column(s) alignment")


def test_cli_lists_commands(capsys):
    assert cascade_main(["eval", "--help"]) == 0
    assert "sheets" in capsys.readouterr().out


def test_inconsistent_key_is_rejected(study: MadeStudy, tmp_path: Path, capsys):
    key = json.loads(study.key_path.read_text())
    key["raters"][0]["sheet"][0]["left"] = "mystery"
    study.key_path.write_text(json.dumps(key))
    sheet = fill(study.template("r1"), tmp_path / "r1.csv")
    expect_problem(
        study, capsys, [sheet], f"{study.key_path}: rater r1's sheet names a system that is not in the study"
    )


def test_ingest_reads_a_legacy_encoded_sheet(study: MadeStudy, tmp_path: Path):
    rows = read_rows(fill(study.template("r1"), tmp_path / "utf8.csv"))
    legacy = tmp_path / "cp1252.csv"
    with legacy.open("w", newline="", encoding="cp1252") as handle:
        csv.writer(handle).writerows(rows)
    assert ingest(study, legacy) == 0


def decoded(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_png_mode_embeds_files_as_is_or_downscaled(tmp_path: Path):
    Image.new("RGBA", (64, 32), (1, 2, 3, 4)).save(tmp_path / "wide.png")
    assert image_data_uri(tmp_path / "wide.png", 64, "png") == png_uri(str(tmp_path / "wide.png"))
    with decoded(image_data_uri(tmp_path / "wide.png", 16, "png")) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (16, 8), "RGBA")


def test_jpeg_mode_reencodes_and_downscales(tmp_path: Path):
    Image.new("RGBA", (64, 32), (200, 100, 50, 255)).save(tmp_path / "wide.png")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "photo.jpg", quality=90)
    with decoded(image_data_uri(tmp_path / "wide.png", 16, "jpeg", jpeg_quality=95)) as image:
        assert (image.format, image.size, image.mode) == ("JPEG", (16, 8), "RGB")
        assert max(abs(a - b) for a, b in zip(image.getpixel((8, 4)), (200, 100, 50), strict=True)) <= 3
    jpeg_uri = "data:image/jpeg;base64," + base64.b64encode((tmp_path / "photo.jpg").read_bytes()).decode()
    assert image_data_uri(tmp_path / "photo.jpg", 512, "jpeg") == jpeg_uri


def test_unreadable_image_is_reported(tmp_path: Path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(SheetError, match="broken.png: cannot read image"):
        image_data_uri(tmp_path / "broken.png")


def test_sheets_embed_jpeg_by_default(tmp_path: Path):
    study = make_study(tmp_path, raters=1, image_format="jpeg")
    html = study.sheet("r1")
    assert html.count("data:image/jpeg;base64,") == 2 * len(PROMPTS) and "data:image/png" not in html


def test_a_sheet_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path: Path):
    """A 300-byte PNG whose header declares 60000x60000 pixels is never decoded for a sheet."""
    from test_data_writer import _png_header_only

    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(60000, 60000))
    with pytest.raises(SheetError, match="bomb.png: cannot read image"):
        image_data_uri(path)
