"""`cascade demo --fast`: the README's main job end to end, at smoke-test size."""

import io
import json
import re
import subprocess
import sys
from collections import Counter

import pytest
from rich.console import Console

from cascade.demo.training import StageRun, StageTrainingError, train_concurrently
from cascade.eval.heldout import stratum_of


@pytest.mark.slow
def test_demo_fast_trains_samples_evaluates_and_writes_the_report(wheel_demo):
    """`cascade demo --fast` (run once per session by the installed wheel, the `wheel_demo` fixture),
    then a rerun into the same folder."""
    out, result = wheel_demo.out, wheel_demo.result
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    html = (out / "report.html").read_text()
    for section in ("Caption alignment", "Guidance off vs on", "Every stage of the cascade", "Automatic metrics",
                    "Training", "Exact settings", "not comparable",
                    "Do the super-resolution stages lower the base", "detector accuracy per stratum"):
        assert section in html, section
    markdown = (out / "report.md").read_text()
    for stratum in ("1 object", "2 objects, no relation", "2 objects, relation", "3 objects, no relation",
                    "3 objects, relation", "balanced"):
        assert f"| {stratum} |" in markdown, stratum
    scenes = json.loads((out / "reference" / "scenes.json").read_text())
    assert len({scene["caption"] for scene in scenes}) == 6  # distinct captions, one real render each
    assert len(list((out / "reference").glob("*.png"))) == 6
    assert (out / "report.md").exists()
    for guidance in ("1", "2"):
        folder = out / "samples" / f"guidance={guidance}"
        lines = (folder / "metadata.jsonl").read_text().splitlines()
        # one image per caption, two of a caption that is its stratum's only one (images_per_stratum=2)
        per_caption = Counter(json.loads(line)["prompt"] for line in lines)
        assert per_caption == {scene["caption"]: 2 if n == 1 else 1 for scene, n in
                               zip(scenes, (Counter(map(stratum_of, scenes))[stratum_of(s)] for s in scenes))}
        assert len(lines) == 10
        assert json.loads(lines[0])["stages"][2]["image_size"] == 128
        assert len(list((folder / "intermediate" / "stage0_32px").glob("*.png"))) == 10

    for stage in ("base", "sr1", "sr2"):  # trained in their own processes, two at a time
        assert "training ended at step" in (out / "runs" / stage / "train.log").read_text()

    # The sweep: 2 captions x (base guidance 1, 3) x (SR aug level 0, 0.3), each in its own folder.
    for guidance in (1.0, 3.0):
        for aug_level in (0.0, 0.3):
            folder = out / "samples" / "sweep" / f"base.guidance={guidance:g},aug_level={aug_level:g}"
            records = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
            assert [record["prompt"] for record in records] == [scene["caption"] for scene in scenes[:2]]
            for record in records:
                base, sr1, sr2 = record["stages"]
                assert (base["guidance"], sr1["aug_level"], sr2["aug_level"]) == (guidance, aug_level, aug_level)
                assert (sr1["guidance"], sr2["guidance"], base["steps"]) == (1.0, 1.0, 4)
    assert "sweep: 4 settings x 2 captions: sampling" in result.stdout
    for asset in ("sweep.png", "sweep-grid.png"):
        assert (out / "report_assets" / asset).stat().st_size > 0
        assert f"](report_assets/{asset})" in markdown
    assert "Settings sweep" in html and "The same 2 captions (columns) in every setting (rows)" in html
    assert "cascade ablation --out runs/ablation" in html  # no ablation table yet: how to make one
    assert "| sweep sampling |" in markdown and "| sweep evaluation |" in markdown

    first_times = _report_times(out)
    (out.parent / "ablation").mkdir()
    (out.parent / "ablation" / "ablation.md").write_text(ABLATION_MD)  # what `cascade ablation --out` writes
    rerun = subprocess.run([str(wheel_demo.cascade), "demo", "--fast", "--out", str(out), "--threads", "2"],
                           cwd=wheel_demo.empty, env=wheel_demo.env, check=False, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.count("already trained") == 3, "a rerun resumes: finished stages are not retrained"
    rerun_times = _report_times(out)
    for step in ("data", "train base", "train sr1", "train sr2", "sampling", "sweep sampling"):  # skipped: the first run's times
        assert rerun_times[step] == first_times[step] and first_times[step] > 0, step
    rerun_html = (out / "report.html").read_text()
    assert "<td>v-pred</td><td>0.41</td><td>35.2</td>" in rerun_html  # found beside the demo's folder
    assert "cascade ablation --out runs/ablation" not in rerun_html


def _report_times(out):
    """{step: seconds} of the report's wall-clock table (Markdown rows `| train base | 12\\.3 |`)."""
    rows = re.findall(r"^\| ([a-z0-9 ]+) \| ([0-9\\.]+) \|$", (out / "report.md").read_text(), flags=re.MULTILINE)
    return {step: float(seconds.replace("\\", "")) for step, seconds in rows}


def test_a_failing_stage_is_named_with_its_log(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_stepz: 3\n")
    lanes = [[StageRun("base", broken, tmp_path / "base", 3, ())], [StageRun("sr1", broken, tmp_path / "sr1", 3, ())]]
    with pytest.raises(StageTrainingError, match=r"training the (base|sr1) stage failed .* its output is in .*train\.log"):
        train_concurrently(lanes, threads=2, console=Console(file=io.StringIO()))
    assert "max_stepz" in (tmp_path / "base" / "train.log").read_text()


def test_the_report_names_the_lowest_validation_loss_the_best(tmp_path):
    from cascade.demo.report import training_curves

    log = tmp_path / "csv" / "version_0" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text("step,train/loss,val/loss\n10,0.9,\n249,,0.50\n499,,0.31\n749,,0.35\n")
    figure, (best, val) = training_curves(tmp_path)
    assert best == 0.31
    assert val == {249: 0.50, 499: 0.31, 749: 0.35}
    figure.clear()


def test_training_names_each_log_and_prints_heartbeats_when_not_on_a_terminal(tmp_path, monkeypatch):
    from cascade.demo import training

    class Counting(StageRun):
        def command(self) -> list[str]:
            lines = "".join(f"print('step {step}/{self.steps}', flush=True); " for step in range(1, self.steps + 1))
            touch = f"import pathlib; p = pathlib.Path({str(self.last_checkpoint)!r}); p.parent.mkdir(parents=True); p.touch()"
            return [sys.executable, "-c", lines + touch]

    out = io.StringIO()
    run = Counting("base", tmp_path / "base.yaml", tmp_path / "base", 3, ())
    training.train_concurrently([[run]], threads=1, console=Console(file=out), heartbeat_seconds=0.0)
    printed = out.getvalue()
    assert f"training base (3 steps): log in {tmp_path / 'base' / 'train.log'}" in printed
    assert "base: step 3/3" in printed


def test_a_rerun_keeps_the_recorded_times_of_the_steps_it_skips(tmp_path, monkeypatch, one_torch_thread):
    """Each step stands in for the real one: the first run does the work (it takes a while), the
    rerun finds it done (as `write_shards`, `train_concurrently` and `sample_folder` do) and skips it."""
    import time
    from types import SimpleNamespace

    from cascade import demo

    done, reports = [], []

    def work(result_if_done, result):
        if done:
            return result_if_done
        time.sleep(0.05)
        return result

    def write_datasets(out, plan, console, workers=0):
        paths = {"train": out / "train", "val": out / "val", "reference": out / "reference"}
        return work((paths, False), (paths, True))

    def write_demo_report(out, **sections):
        reports.append(sections["timings"])
        return SimpleNamespace(html=out / "report.html", markdown=out / "report.md")

    monkeypatch.setattr(demo, "write_datasets", write_datasets)
    monkeypatch.setattr(demo, "train_concurrently",
                        lambda lanes, threads, console: work({}, {"sr1": 50.0, "base": 120.0, "sr2": 60.0}))
    monkeypatch.setattr(demo.Cascade, "from_paths", classmethod(lambda cls, paths, settings: None))
    monkeypatch.setattr(demo, "heldout_scenes", lambda plan: [])
    monkeypatch.setattr(demo, "sample_heldout",
                        lambda cascade, scenes, out, plan, console, ranks: work(({}, 0), ({}, 12)))
    monkeypatch.setattr(demo, "sample_heldout_sweep",
                        lambda cascade, scenes, out, plan, console, ranks: work(([], 0), ([], 4)))
    monkeypatch.setattr(demo, "evaluate_demo", lambda folders, reference, scenes, console, per_caption=None: {})
    monkeypatch.setattr(demo, "evaluate_sweep", lambda points, reference, scenes, console: [])
    monkeypatch.setattr(demo, "write_demo_report", write_demo_report)

    assert demo.run_demo(tmp_path, demo.FAST, threads=1) == 0
    done.append(True)
    assert demo.run_demo(tmp_path, demo.FAST, threads=1) == 0
    first, rerun = reports
    assert list(first) == ["data", "train base", "train sr1", "train sr2", "sampling", "sweep sampling", "evaluation",
                           "sweep evaluation", "total"]
    assert first["data"] >= 0.05 and first["sampling"] >= 0.05 and first["sweep sampling"] >= 0.05
    for step in ("data", "train base", "train sr1", "train sr2", "sampling", "sweep sampling"):
        assert rerun[step] == first[step], step
    for timings in (first, rerun):  # the training processes run side by side: base | sr1 then sr2
        assert timings["total"] == pytest.approx(timings["data"] + 120.0 + timings["sampling"] + timings["sweep sampling"]
                                                 + timings["evaluation"] + timings["sweep evaluation"])
    recorded = json.loads((tmp_path / "timings.json").read_text())
    assert recorded == {step: seconds for step, seconds in rerun.items() if step != "total"}


def test_the_sweep_samples_every_combination_into_its_own_folder_with_its_settings_in_the_metadata(tmp_path,
                                                                                                    one_torch_thread):
    """Each combination's values reach the stage they name (aug_level: every SR stage), the other
    settings stay, the folder names parse back to the values, and every setting starts from the same seeds."""
    from test_pipeline import tiny_stages

    from cascade.demo.sweep import sample_sweep
    from cascade.eval.sweeps import discover_sample_sets
    from cascade.pipeline import Cascade
    from cascade.pipeline.sweep import SweepAxis
    from cascade.pipeline.to_folder import FolderJob
    from cascade.stages import SamplingSettings

    cascade = Cascade(tiny_stages(), [SamplingSettings(steps=2, guidance=1.5, dynamic_threshold=0.99),
                                      SamplingSettings(steps=1, aug_level=0.1)])
    axes = (SweepAxis("guidance", (1.0, 3.0), stage=0), SweepAxis("aug_level", (0.0, 0.3)))
    job = FolderJob(n_per_condition=1, batch_size=2, progress=False)
    console = Console(file=io.StringIO())
    points, written = sample_sweep(cascade, axes, [(0, None), (2, None)], tmp_path / "sweep", job, console)
    assert written == 8
    assert [point.folder.name for point in points] == [
        "base.guidance=1,aug_level=0", "base.guidance=1,aug_level=0.3",
        "base.guidance=3,aug_level=0", "base.guidance=3,aug_level=0.3"]
    seeds = set()
    for point in points:
        records = [json.loads(line) for line in (point.folder / "metadata.jsonl").read_text().splitlines()]
        assert [record["class_label"] for record in records] == [0, 2]
        for record in records:
            base, sr = record["stages"]
            assert base["guidance"] == point.setting["base.guidance"] and sr["aug_level"] == point.setting["aug_level"]
            assert (base["steps"], base["dynamic_threshold"], sr["steps"], sr["guidance"]) == (2, 0.99, 1, 1.0)
        seeds.add(tuple(record["seed"] for record in records))
    assert len(seeds) == 1, "every setting starts from the same seeds"
    found = {sample_set.path: sample_set.setting for sample_set in discover_sample_sets(tmp_path / "sweep")}
    assert found == {point.folder: point.setting for point in points}
    assert sample_sweep(cascade, axes, [(0, None), (2, None)], tmp_path / "sweep", job, console)[1] == 0  # resumes


def test_a_sweep_axis_with_a_bad_value_names_the_key():
    from cascade.pipeline.sweep import SweepAxis
    from cascade.stages import StageConfigError

    with pytest.raises(StageConfigError, match="sampling.aug_level"):
        SweepAxis("aug_level", (0.0, 1.5))
    with pytest.raises(ValueError, match="sweep_captions"):
        __import__("dataclasses").replace(__import__("cascade.demo").demo.FAST, sweep_captions=7)


def test_the_sweep_plot_draws_each_value_against_the_first_setting_one_line_per_other_setting():
    from cascade.eval.plots import panels_vs_setting

    nan = float("nan")
    points = [({"g": 1.0, "s": 0.0}, {"exact": (0.5, 0.4, 0.7), "fid": 30.0}),
              ({"g": 3.0, "s": 0.0}, {"exact": (0.6, nan, nan), "fid": 20.0}),
              ({"g": 1.0, "s": 0.3}, {"exact": (0.2, 0.1, 0.25), "fid": nan}),
              ({"g": 3.0, "s": 0.3}, {"exact": (0.3, 0.3, 0.3), "fid": 25.0})]
    figure = panels_vs_setting(points, "g", ("exact", "fid"))
    exact, fid = figure.axes
    lines = {container.get_label(): container for container in exact.containers}
    assert list(lines) == ["s=0.0", "s=0.3"]
    assert lines["s=0.0"].lines[0].get_xdata().tolist() == [1.0, 3.0]
    assert lines["s=0.0"].lines[0].get_ydata().tolist() == [0.5, 0.6]
    bars = [segment.tolist() for segment in lines["s=0.0"].lines[2][0].get_segments()]
    assert bars == [[[1.0, 0.4], [1.0, 0.7]], [[3.0, 0.6], [3.0, 0.6]]]  # no interval: no bar
    fids = {container.get_label(): container.lines[0].get_ydata().tolist() for container in fid.containers}
    assert fids == {"s=0.0": [30.0, 20.0], "s=0.3": [25.0]}  # a NaN is left out
    assert exact.get_xlabel() == "g"


def test_the_grid_of_settings_puts_each_settings_image_of_each_caption_in_its_cell(tmp_path):
    from PIL import Image

    from cascade.eval.plots import labelled_grid

    colours = {(row, column): (40 * row + 20, 60 * column + 10, 200) for row in range(3) for column in range(2)}
    for (row, column), colour in colours.items():
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{row}-{column}.png")
    rows = [(f"setting {row}", [tmp_path / f"{row}-{column}.png" for column in range(2)]) for row in range(3)]
    tile, label_width = 48, 100
    grid = labelled_grid(rows, ["a red circle", "two blue squares left of a green triangle"], tile, label_width)
    header = grid.height - 3 * tile
    assert header > 2 * 11 and grid.width == label_width + 2 * tile  # the long caption wraps onto several lines
    for (row, column), colour in colours.items():
        assert grid.getpixel((label_width + column * tile + tile // 2, header + row * tile + tile // 2)) == colour
    pixels = grid.convert("L").load()
    for top, left, width in ((header, 0, label_width), (0, label_width + tile, tile)):  # a row's label, a caption
        assert min(pixels[x, y] for x in range(left, left + width) for y in range(top, top + 14)) < 128


def test_markdown_tables_read_back_as_written():
    from cascade.eval import markdown

    headers, rows = ["variant", "exact | balanced", "FID_random"], [["min-SNR *5*", 0.25, None], ["<b>#1</b>", 12.5, "x\\y"]]
    text = f"# Ablation\n\nTrained for *200* steps\nper variant.\n\n{markdown.table(headers, rows)}\n\nafter"
    assert markdown.read_blocks(text) == [
        ("heading", (1, "Ablation")), ("text", "Trained for *200* steps per variant."),
        ("table", (headers, [["min-SNR *5*", "0.2500", "-"], ["<b>#1</b>", "12.5000", "x\\y"]])), ("text", "after")]


ABLATION_MD = "# Ablation\n\n| variant | exact (balanced) | FID |\n|---|---|---|\n| v-pred | 0.41 | 35.2 |\n| eps-pred | 0.33 | 40.1 |\n"


def test_the_report_embeds_the_ablation_table_when_there_is_one(tmp_path):
    from cascade.demo.report import add_ablation_section
    from cascade.eval.report import Report

    path = tmp_path / "ablation" / "ablation.md"
    path.parent.mkdir()
    path.write_text(ABLATION_MD)
    files = add_ablation_section(Report("r"), path).write(tmp_path / "out")
    html, md = files.html.read_text(), files.markdown.read_text()
    assert "<td>v-pred</td><td>0.41</td><td>35.2</td>" in html and "<th>exact (balanced)</th>" in html
    assert "| eps-pred | 0\\.33 | 40\\.1 |" in md
    assert "cascade ablation --out" not in html


def test_the_report_says_how_to_make_the_ablation_table_when_there_is_none(tmp_path):
    from cascade.demo.report import add_ablation_section
    from cascade.eval.report import Report

    files = add_ablation_section(Report("r"), None).write(tmp_path)
    html = files.html.read_text()
    assert "cascade ablation --out runs/ablation" in html
    assert "<table" not in html.split("<h2>Ablation</h2>")[1]


def test_the_demo_finds_the_ablation_table_next_to_its_folder_or_where_given(tmp_path, capsys):
    from cascade.cli.demo import demo
    from cascade.demo import ablation_table

    out = tmp_path / "runs" / "demo"
    assert ablation_table(out, None) is None
    default = tmp_path / "runs" / "ablation" / "ablation.md"
    default.parent.mkdir(parents=True)
    default.write_text(ABLATION_MD)
    assert ablation_table(out, None) == default
    given = tmp_path / "elsewhere.md"
    given.write_text(ABLATION_MD)
    assert ablation_table(out, given) == given
    with pytest.raises(SystemExit) as exit_info:
        demo(["--out", str(out), "--ablation", str(tmp_path / "missing.md")])
    assert exit_info.value.code == 2
    assert "--ablation:" in capsys.readouterr().err


def test_the_sweep_section_tabulates_plots_and_grids_every_setting_with_the_same_captions_in_each_column(tmp_path):
    """Rows: the sweep settings, then the main run's guidance folders; column c: each folder's image of
    caption c with sample index 0 (the main folders hold two seeds per caption)."""
    import torch
    from PIL import Image

    from cascade.demo.evaluation import SweepResult
    from cascade.demo.report import add_sweep_section
    from cascade.eval.report import Report
    from cascade.eval.results import EvaluationResult
    from cascade.files.sample_folder import merge_metadata, write_image

    captions = ["a red circle", "two blue squares", "a green triangle"]

    def folder(name, shade, seeds):
        path = tmp_path / name
        path.mkdir()
        for index, caption in enumerate(captions):
            for sample in range(seeds):
                image = torch.full((3, 8, 8), -1.0)
                image[0], image[1], image[2] = shade, -1.0 + index * 0.5, -1.0 + sample  # row, column, seed
                write_image(path, f"{index:05d}_{sample:03d}", image,
                            {"file": f"{index:05d}_{sample:03d}.png", "condition_index": index, "index": sample,
                             "prompt": caption})
        merge_metadata(path)
        return path

    nan = float("nan")
    sweep = [SweepResult({"base.guidance": guidance, "aug_level": 0.1}, folder(f"g{guidance:g}", shade, 1),
                         {"exact": (0.5 * guidance / 3, 0.1, 0.9), "shape": (0.75, nan, nan), "count": (1.0, nan, nan),
                          "relation": (nan, nan, nan), "n_images": 3, "n_captions": 3},
                         EvaluationResult("", {"fid": 10.0 * guidance}, {}))
             for guidance, shade in ((1.0, -1.0), (3.0, -0.5))]
    main = {1.0: folder("main1", 0.0, 2), 3.0: folder("main3", 0.5, 2)}
    plan = {"sweep_captions": 3}
    files = add_sweep_section(Report("r"), plan, sweep, main).write(tmp_path / "out")
    md = files.markdown.read_text()
    assert "| 3 | 0\\.1 | 3 | 0\\.50 \\[0.10, 0.90\\] | 0\\.75 | 1\\.00 | \\- | 30\\.0000 |" in md
    assert "](report_assets/sweep.png)" in md and "](report_assets/sweep-grid.png)" in md
    grid = Image.open(tmp_path / "out" / "report_assets" / "sweep-grid.png").convert("RGB")
    tile, label_width = 96, 150
    header = grid.height - 4 * tile
    for row, shade in enumerate((-1.0, -0.5, 0.0, 0.5)):
        for column in range(3):
            expected = tuple(round((value + 1) * 127.5) for value in (shade, -1.0 + column * 0.5, -1.0))
            pixel = grid.getpixel((label_width + column * tile + tile // 2, header + row * tile + tile // 2))
            assert all(abs(a - b) <= 1 for a, b in zip(pixel, expected)), (row, column, pixel, expected)


def test_the_full_demo_samples_the_held_out_set_guided_only_and_the_fast_one_also_unguided(tmp_path):
    """The full run leaves guidance 1 to the sweep (its 15-minute budget); --fast keeps both folders."""
    from cascade import demo

    asked = []

    class Cascade:
        def updated(self, stage, guidance):
            asked.append((stage, guidance))
            return self

    class Ranks:
        def fill(self, cascade, conditions, job, folder, console):
            folder.mkdir(parents=True)
            return 0

    for name, plan, expected in (("full", demo.FULL, [2.0]), ("fast", demo.FAST, [1.0, 2.0])):
        asked.clear()
        folders, written = demo.sample_heldout(Cascade(), demo.heldout_scenes(demo.FAST)[:1], tmp_path / name, plan,
                                               Console(file=io.StringIO()), Ranks())
        assert asked == [(0, guidance) for guidance in expected] and sorted(folders) == expected and written == 0


def test_the_demos_fid_reads_each_captions_first_images_as_the_reference_weighs_captions(tmp_path):
    """A caption of a small stratum has more seeds for the detector; FID / precision / recall read
    every caption's first samples_per_caption images, one set per caption as in the reference."""
    import torch

    from cascade.demo.evaluation import first_images
    from cascade.files.sample_folder import merge_metadata, work_items, write_image

    for item in work_items([("a red circle", None), ("two blue squares", None)], (3, 1)):
        write_image(tmp_path, item.name, torch.zeros(3, 8, 8),
                    {"file": f"{item.name}.png", "index": item.sample_index, "prompt": item.condition})
    merge_metadata(tmp_path)
    assert [path.name for path in first_images(tmp_path, 1).files] == ["00000_000.png", "00001_000.png"]
    assert len(first_images(tmp_path, 2)) == 3


def test_a_smoke_run_shortens_only_the_bases_layout_pretraining(tmp_path):
    """`DemoPlan.layout_pretraining_steps` (the fast plan's few) reaches the base's `cascade fit` alone;
    the full plan leaves configs/demo/base.yaml's own."""
    from cascade.demo import FAST, FULL, stage_runs

    data = {"train": tmp_path / "train", "val": tmp_path / "val"}
    fast, full = stage_runs(tmp_path, data, FAST), stage_runs(tmp_path, data, FULL)
    flag = "--model.init_args.layout_pretraining.steps"
    base = fast[0].overrides
    assert base[base.index(flag) + 1] == str(FAST.layout_pretraining_steps)
    assert all(flag not in run.overrides for run in fast[1:] + full)


def test_when_a_lane_is_done_the_stage_still_training_is_granted_its_threads(tmp_path):
    """Two lanes sharing two threads: the SR lane's stage ends once the base has started, and the
    base, which started on one thread, is granted two (`StageRun.thread_grant`, read by
    `cascade.stages.ThreadGrant` in a real `cascade fit`)."""

    class Scripted(StageRun):
        script: str = ""

        def command(self) -> list[str]:
            return [sys.executable, "-c", self.script.format(run_dir=str(self.run_dir), grant=str(self.thread_grant),
                                                             base_grant=str(tmp_path / "base" / "threads"))]

    finish = ("import pathlib; p = pathlib.Path({run_dir!r}) / 'checkpoints' / 'last.ckpt'; "
              "p.parent.mkdir(parents=True, exist_ok=True); p.touch(); print('step 1/1', flush=True)")
    wait_for = "import time, pathlib\nfor _ in range(600):\n    if {condition}: break\n    time.sleep(0.05)\n"
    base = Scripted("base", tmp_path / "base.yaml", tmp_path / "base", 1, ())
    object.__setattr__(base, "script", (
        "import os, pathlib\nstarted = os.environ['OMP_NUM_THREADS']\n"
        + wait_for.format(condition="pathlib.Path({grant!r}).read_text() == '2'")
        + "pathlib.Path({run_dir!r}, 'seen').write_text(started + ' then ' + pathlib.Path({grant!r}).read_text())\n"
        + finish))
    sr = Scripted("sr1", tmp_path / "sr1.yaml", tmp_path / "sr1", 1, ())
    object.__setattr__(sr, "script", wait_for.format(condition="pathlib.Path({base_grant!r}).exists()") + finish)

    train_concurrently([[base], [sr]], threads=2, console=Console(file=io.StringIO()))
    assert (tmp_path / "base" / "seen").read_text() == "1 then 2"
    assert (tmp_path / "sr1" / "threads").read_text() == "1"
