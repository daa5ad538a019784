"""`cascade eval metrics | stats | report` end to end on a small sweep, offline (random-weight Inception)."""

import json

import numpy as np
from PIL import Image

from cascade.cli import main as cascade_main
from cascade.eval.weights import INCEPTION_WEIGHTS_FILENAMES


def _folder(folder, count, seed, size=24):
    folder.mkdir(parents=True)
    rng = np.random.RandomState(seed)
    records = []
    for index in range(count):
        name = f"{index:03d}.png"
        base = rng.rand(3) * 255
        image = base + rng.randn(size, size, 3) * (20 + 5 * seed)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / name)
        records.append(json.dumps({"file": name, "prompt": f"<b>prompt {index}</b>"}))
    (folder / "metadata.jsonl").write_text("\n".join(records) + "\n")


def test_metrics_stats_and_report_commands(tmp_path, capsys):
    _folder(tmp_path / "real", 8, 0)
    _folder(tmp_path / "sweep" / "guidance=1", 6, 1)
    _folder(tmp_path / "sweep" / "guidance=4", 6, 2)
    stats_dir = tmp_path / "stats"
    common = ["--extractor", "random-inception", "--random-size", "75", "--device", "cpu", "--stats-dir", str(stats_dir), "--no-progress",
              "--batch-size", "8"]

    assert cascade_main(["eval", "stats", "--real", str(tmp_path / "real"), "--out", str(tmp_path / "real.npz"),
                         *common]) == 0
    assert len(list(stats_dir.glob("real-*-native-random-inception-seed0-75px-*.npz"))) == 1

    out = tmp_path / "metrics.json"
    assert cascade_main(["eval", "metrics", "--real", str(tmp_path / "real.npz"), "--fake", str(tmp_path / "sweep"),
                         "--metrics", "fid,pr,kid", "--kid-subset-size", "4", "--kid-subsets", "5",
                         "--out", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert "guidance=1" in printed and "guidance=4" in printed and "FID" in printed
    document = json.loads(out.read_text())
    assert document["command"][:3] == ["cascade", "eval", "metrics"]
    results = document["results"]
    assert [r["setting"] for r in results] == [{"guidance": 1.0}, {"guidance": 4.0}]
    for result in results:
        assert {"fid", "precision", "recall", "kid_mean"} <= result["metrics"].keys()
        assert result["protocol"]["num_samples"] == 6 and result["protocol"]["num_reference"] == 8
        assert result["protocol"]["extractor"] == "random-inception-seed0-75px"

    report_dir = tmp_path / "report"
    assert cascade_main(["eval", "report", "--metrics", str(out), "--out", str(report_dir)]) == 0
    page = (report_dir / "report.html").read_text()
    assert "FID vs guidance" in page and "&lt;b&gt;prompt 0&lt;/b&gt;" in page and "<b>prompt" not in page
    assert (report_dir / "report.md").is_file()


def test_missing_weights_is_a_clean_command_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("CASCADE_INCEPTION_WEIGHTS", raising=False)
    _folder(tmp_path / "real", 2, 0)
    code = cascade_main(["eval", "metrics", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "real")])
    assert code == 1
    assert INCEPTION_WEIGHTS_FILENAMES[0] in capsys.readouterr().err


def _metrics_of(tmp_path, fake, *extra):
    """`cascade eval metrics` of `fake` against the real folder; (exit code, results or None)."""
    out = tmp_path / "metrics.json"
    out.unlink(missing_ok=True)
    code = cascade_main(["eval", "metrics", "--real", str(tmp_path / "real"), "--fake", str(fake), "--out", str(out),
                         "--extractor", "random-inception", "--random-size", "75", "--device", "cpu",
                         "--stats-dir", str(tmp_path / "stats"), "--no-progress", "--batch-size", "8", *extra])
    return code, json.loads(out.read_text())["results"] if code == 0 else None


def test_a_sample_folder_is_scored_by_its_final_images_and_a_lower_stage_only_by_name(tmp_path, capsys):
    _folder(tmp_path / "real", 8, 0)
    samples = tmp_path / "samples" / "guidance=3"  # what `cascade sample --keep-intermediate` / the demo write
    _folder(samples, 8, 1, size=24)
    _folder(samples / "intermediate" / "stage0_12px", 8, 2, size=12)  # one batch of each size (--batch-size 8)

    code, results = _metrics_of(tmp_path, samples)
    assert code == 0, capsys.readouterr().err
    assert [r["protocol"]["num_samples"] for r in results] == [8] and results[0]["samples"] == str(samples)

    code, results = _metrics_of(tmp_path, samples, "--stage", "stage0_12px")
    assert code == 0, capsys.readouterr().err
    assert results[0]["samples"] == str(samples / "intermediate" / "stage0_12px")
    assert results[0]["protocol"]["num_samples"] == 8 and results[0]["protocol"]["stage"] == "stage0_12px"


def test_images_of_several_sizes_are_an_error_naming_the_folder_and_the_sizes_not_a_resize(tmp_path, capsys):
    _folder(tmp_path / "real", 8, 0)
    mixed = tmp_path / "mixed"
    _folder(mixed / "large", 6, 1, size=24)
    _folder(mixed / "small", 6, 2, size=12)
    for extra in ((), ("--resolution", "24")):
        code, _ = _metrics_of(tmp_path, mixed, *extra)
        error = capsys.readouterr().err.strip()
        assert code == 1 and len(error.splitlines()) == 1, error
        assert str(mixed) in error and "6 at 12x12" in error and "6 at 24x24" in error
