"""`cascade demo --fast`: the README's main job end to end, at smoke-test size."""

import io
import json
import re
import subprocess
import sys

import pytest
from rich.console import Console

from cascade.demo.training import StageRun, StageTrainingError, train_concurrently


@pytest.mark.slow
def test_demo_fast_trains_samples_evaluates_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "cascade", "demo", "--fast", "--out", str(out)],
                            check=False, capture_output=True, text=True, timeout=1200)
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
    for guidance in ("1", "3"):
        folder = out / "samples" / f"guidance={guidance}"
        lines = (folder / "metadata.jsonl").read_text().splitlines()
        assert len(lines) == 6
        assert json.loads(lines[0])["stages"][2]["image_size"] == 128
        assert len(list((folder / "intermediate" / "stage0_32px").glob("*.png"))) == 6

    for stage in ("base", "sr1", "sr2"):  # trained in their own processes, two at a time
        assert "training ended at step" in (out / "runs" / stage / "train.log").read_text()

    first_times = _report_times(out)
    rerun = subprocess.run([sys.executable, "-m", "cascade", "demo", "--fast", "--out", str(out)],
                           check=False, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.count("already trained") == 3, "a rerun resumes: finished stages are not retrained"
    rerun_times = _report_times(out)
    for step in ("data", "train base", "train sr1", "train sr2", "sampling"):  # skipped: the first run's times
        assert rerun_times[step] == first_times[step] and first_times[step] > 0, step


def _report_times(out):
    """{step: seconds} of the report's wall-clock table (Markdown rows `| train base | 12\\.3 |`)."""
    rows = re.findall(r"^\| ([a-z0-9 ]+) \| ([0-9\\.]+) \|$", (out / "report.md").read_text(), flags=re.MULTILINE)
    return {step: float(seconds.replace("\\", "")) for step, seconds in rows}


def test_a_failing_stage_is_named_with_its_log(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_stepz: 3\n")
    lanes = [[StageRun("base", broken, tmp_path / "base", 3, ())], [StageRun("sr1", broken, tmp_path / "sr1", 3, ())]]
    with pytest.raises(StageTrainingError, match=r"training the (base|sr1) stage failed .* its output is in .*train\.log"):
        train_concurrently(lanes, threads_per_process=1, console=Console(file=io.StringIO()))
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
    training.train_concurrently([[run]], threads_per_process=1, console=Console(file=out), heartbeat_seconds=0.0)
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

    def write_datasets(out, plan, console):
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
                        lambda cascade, scenes, out, plan, console: work(({}, 0), ({}, 12)))
    monkeypatch.setattr(demo, "evaluate_demo", lambda folders, reference, scenes, console: {})
    monkeypatch.setattr(demo, "write_demo_report", write_demo_report)

    assert demo.run_demo(tmp_path, demo.FAST, threads=1) == 0
    done.append(True)
    assert demo.run_demo(tmp_path, demo.FAST, threads=1) == 0
    first, rerun = reports
    assert list(first) == ["data", "train base", "train sr1", "train sr2", "sampling", "evaluation", "total"]
    assert first["data"] >= 0.05 and first["sampling"] >= 0.05
    for step in ("data", "train base", "train sr1", "train sr2", "sampling"):
        assert rerun[step] == first[step], step
    for timings in (first, rerun):  # the training processes run side by side: base | sr1 then sr2
        assert timings["total"] == pytest.approx(timings["data"] + 120.0 + timings["sampling"] + timings["evaluation"])
    recorded = json.loads((tmp_path / "timings.json").read_text())
    assert recorded == {step: seconds for step, seconds in rerun.items() if step != "total"}
