"""The HTML / Markdown report: escaping of user text, embedded images, sweep plots, sample grids
and the human-evaluation section (from a `cascade eval sheets ingest` results document)."""

import base64
import json
import re

import numpy as np
import pytest
from PIL import Image

from cascade.eval.human_eval_results import load_human_eval
from cascade.eval.report import Report, build_evaluation_report
from cascade.eval.results import EvaluationResult, load_results, save_results
from cascade.eval.sweeps import discover_sample_sets, parse_setting

EVIL = '<script>alert("x")</script> & =cmd'


def _sample_folder(folder, count, seed):
    folder.mkdir(parents=True)
    rng = np.random.RandomState(seed)
    lines = []
    for index in range(count):
        name = f"{index:04d}.png"
        Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / name)
        prompt = EVIL if index == 0 else f"a red circle number {index}"
        lines.append(json.dumps({"file": name, "prompt": prompt, "seed": index}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def _results(root):
    results = []
    for guidance, fid, precision, recall in ((1.0, 30.0, 0.5, 0.7), (3.0, 20.0, 0.7, 0.5), (5.0, 25.0, 0.8, 0.3)):
        folder = root / f"guidance={guidance:g}"
        _sample_folder(folder, 5, int(guidance))
        results.append(EvaluationResult(
            samples=str(folder), setting={"guidance": guidance},
            metrics={"fid": fid, "precision": precision, "recall": recall},
            protocol={"num_samples": 5, "num_reference": 50, "reference": "real<set>", "extractor": "random-inception-seed0",
                      "weights_hash": "0123456789abcdef", "preprocessing": "TF1 bilinear to 299", "pr_k": 3}))
    return results


def _human_eval_document():
    def group(category, base_rate):
        return {"category": category, "n_pairs": 4, "n_answers": 8, "questions": {
            question: {"systems": {"base": {"preference": base_rate, "ci_low": base_rate - 0.1,
                                            "ci_high": base_rate + 0.1, "preferred": 3},
                                   "new": {"preference": 1 - base_rate, "ci_low": 0.9 - base_rate,
                                           "ci_high": 1.1 - base_rate, "preferred": 5}},
                       "indifferent": 0,
                       "agreement": {"fleiss_kappa": 0.2, "percent_agreement": 0.6, "unanimous": 0.5}}
            for question in ("quality", "alignment")}}

    return {"format": "cascade.eval.sheets/results", "version": 1, "study_id": "drawbench-test",
            "prompt_set": "data/prompts/drawbench.csv", "systems": ["base", "new"],
            "questions": {"quality": "Which image is of higher quality?",
                          "alignment": "Which image better represents the text caption?"},
            "raters": ["r1", "r2"], "bootstrap": {"resamples": 100, "seed": 0},
            "overall": group(None, 0.4), "categories": [group("Colors", 0.3), group(EVIL, 0.45)]}


def test_parse_settings_and_discover_sweep_folders(tmp_path):
    assert parse_setting("guidance=3,aug_level=0.1") == {"guidance": 3.0, "aug_level": 0.1}
    assert parse_setting("sampler=ddim") == {"sampler": "ddim"}
    assert parse_setting("samples") is None
    for path in ("guidance=10", "guidance=2/aug_level=0.1", "guidance=2/aug_level=0", "notes"):
        _sample_folder(tmp_path / path, 1, 0)
    sets = discover_sample_sets(tmp_path)
    assert [s.setting for s in sets] == [{"guidance": 2.0, "aug_level": 0.0}, {"guidance": 2.0, "aug_level": 0.1},
                                         {"guidance": 10.0}]
    assert [s.path for s in discover_sample_sets(tmp_path / "notes")] == [tmp_path / "notes"]


def test_a_sweep_of_one_stages_setting_is_discovered_and_plotted_against_its_stage_named_key(tmp_path):
    assert parse_setting("base.guidance=3.0,sr1.aug_level=0.1") == {"base.guidance": 3.0, "sr1.aug_level": 0.1}
    results = []
    for guidance, fid in ((1.0, 30.0), (3.0, 20.0)):
        _sample_folder(tmp_path / f"base.guidance={guidance}", 2, int(guidance))
        results.append(EvaluationResult(samples=str(tmp_path / f"base.guidance={guidance}"),
                                        setting={"base.guidance": guidance}, metrics={"fid": fid},
                                        protocol={"num_samples": 2}))
    assert [s.setting for s in discover_sample_sets(tmp_path)] == [r.setting for r in results]
    files = build_evaluation_report(tmp_path / "report", results)
    assert "FID vs base.guidance" in files.html.read_text()
    assert (tmp_path / "report" / "report_assets" / "fid-vs-base.guidance.png").is_file()


def test_report_escapes_user_text_and_embeds_everything(tmp_path):
    results = _results(tmp_path / "samples")
    save_results(tmp_path / "metrics.json", results)
    (tmp_path / "human.json").write_text(json.dumps(_human_eval_document()))
    files = build_evaluation_report(tmp_path / "out", load_results(tmp_path / "metrics.json"),
                                    human_eval=tmp_path / "human.json", title="Run <1>")
    page = files.html.read_text()
    assert "<script" not in page.lower() and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; =cmd" in page
    assert "<title>Run &lt;1&gt;</title>" in page and "real&lt;set&gt;" in page
    assert "not comparable to published FIDs" in page  # random-inception feature space is flagged
    for protocol_value in ("0123456789abcdef", "TF1 bilinear to 299", "random-inception-seed0"):
        assert protocol_value in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # FID vs guidance, precision vs recall, 3 sample grids, 2 human-eval bar charts.
    assert len(images) == 7
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in images)
    assert 'src="http' not in page and "<link" not in page  # self-contained
    for text in ("Which image is of higher quality?", "0.300 [0.200, 0.400]", "fleiss_kappa", "drawbench-test"):
        assert text in page

    markdown = files.markdown.read_text()
    assert "<script" not in markdown and "&lt;script&gt;alert(" in markdown and "alert\\(" not in markdown
    linked = re.findall(r"\]\((report_assets/[^)]+)\)", markdown)
    assert len(linked) == 7 and all((files.markdown.parent / path).is_file() for path in linked)
    assert not list((tmp_path / "out").rglob(".*.tmp"))


def test_report_builder_api_for_custom_reports(tmp_path):
    from matplotlib.figure import Figure

    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    report = (Report("demo").heading("Alignment <table>").table(["caption", "ok"], [[EVIL, 0.95], ["x", None]])
              .figure(figure, "loss <curve>", name="loss").code("base:\n  lr: 1e-4 # <b>", caption="config")
              .note("random features").text("prompt: <i>x</i>"))
    files = report.write(tmp_path, name="demo")
    page = files.html.read_text()
    assert "Alignment &lt;table&gt;" in page and "&lt;b&gt;" in page and "<p>prompt: &lt;i&gt;x&lt;/i&gt;</p>" in page and "<td class=\"num\">0.9500</td>" in page
    assert (tmp_path / "demo_assets" / "loss.png").is_file()
    assert "```\nbase:\n  lr: 1e-4 # <b>\n```" in files.markdown.read_text()


def test_human_eval_loader_rejects_other_documents(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="cascade eval sheets ingest"):
        load_human_eval(tmp_path / "other.json")
    (tmp_path / "ok.json").write_text(json.dumps(_human_eval_document()))
    loaded = load_human_eval(tmp_path / "ok.json")
    assert loaded.categories == ["Colors", EVIL, "overall"] and loaded.systems == ["base", "new"]
    assert loaded.study["raters"] == 2


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("guidance (3), s = 0.1!", "guidance (3), s = 0.1!"),  # ordinary punctuation stays readable
        ("a_b*c [link](url) | `x`", "a\\_b\\*c \\[link\\](url) \\| \\`x\\`"),
        ("# not a heading", "\\# not a heading"),
        ("- not a list", "\\- not a list"),
        ("12. not a numbered item", "12\\. not a numbered item"),
        ("<b>bold</b> & more\nlines", "&lt;b&gt;bold&lt;/b&gt; &amp; more lines"),
    ],
)
def test_markdown_escapes_syntax_not_punctuation(text, escaped):
    from cascade.eval.markdown import escape

    assert escape(text) == escaped
