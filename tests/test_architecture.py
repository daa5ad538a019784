"""The package's shape: one import namespace, layers that only point down, installable anywhere.

The layer contracts live in pyproject.toml ([tool.importlinter]) and are checked here with
import-linter, so an upward import fails the suite; a copy of the package with one planted
upward import proves the check is not vacuous.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"


def _lint(root: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package under `root` (a fresh process, no cache)."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_the_layer_contracts_are_kept():
    result = _lint(REPO, REPO)  # a fresh process: import-linter reconfigures logging in the one it runs in
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def test_an_upward_import_breaks_the_contracts(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(REPO / "cascade", copy / "cascade", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "shipped"))
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    upward = copy / "cascade" / "data" / "shards.py"
    upward.write_text(upward.read_text() + "\nfrom ..stages import DiffusionStage  # an upward import\n")
    result = _lint(copy, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cascade.data.shards -> cascade.stages" in result.stdout
    assert "BROKEN" in result.stdout


def test_the_diffusion_math_imports_only_torch_and_the_standard_library():
    graph = grimp.build_graph("cascade", include_external_packages=True, cache_dir=None)
    modules = {"cascade.diffusion"} | graph.find_descendants("cascade.diffusion")
    external = {
        imported.split(".")[0]
        for module in modules
        for imported in graph.find_modules_directly_imported_by(module)
        if not imported.startswith("cascade")
    }
    assert external - sys.stdlib_module_names - {"torch"} == set()
    inside = {
        imported
        for module in modules
        for imported in graph.find_modules_directly_imported_by(module)
        if imported.startswith("cascade") and not imported.startswith("cascade.diffusion")
    }
    assert inside == set()


def test_a_users_data_and_eval_modules_do_not_shadow_ours(tmp_path):
    (tmp_path / "data.py").write_text("raise RuntimeError('the user\\'s data.py was imported')\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "__init__.py").write_text("raise RuntimeError('the user\\'s eval package was imported')\n")
    out = tmp_path / "shards"
    commands = [
        ["-m", "cascade", "data", "write-shards", "--source", "synthetic", "--count", "4", "--resolution", "16",
         "--out", str(out), "--no-progress"],
        ["-m", "cascade", "eval", "--help"],
        ["-c", "import cascade.data.datamodule, cascade.eval.metrics, cascade.cli.eval, cascade.cli.sample"],
    ]
    for command in commands:
        result = subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(out.glob("*.tar"))) == 1


@pytest.mark.slow
def test_the_built_wheel_runs_the_demo_from_an_empty_folder(wheel_demo):
    """`pip install` of the wheel (outside the checkout), then `cascade demo --fast` in an empty
    folder (the `wheel_demo` fixture): the configs, sbatch templates and prompt sets travel inside
    the package."""
    wheel, names = wheel_demo.wheel, wheel_demo.names
    assert {name.split("/")[0] for name in names} == {"cascade", wheel.name.split("-py3")[0] + ".dist-info"}
    assert {"cascade/shipped/configs/demo/base.yaml", "cascade/shipped/slurm/train.sbatch",
            "cascade/shipped/prompts/drawbench.csv"} <= set(names)

    empty, env, cascade = wheel_demo.empty, wheel_demo.env, wheel_demo.cascade
    where = subprocess.run([str(wheel_demo.python), "-c", "import cascade; print(cascade.__file__)"], cwd=empty, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(wheel_demo.site), where

    init = subprocess.run([str(cascade), "init", "project"], cwd=empty, env=env, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    assert (empty / "project" / "configs" / "demo" / "base.yaml").is_file()
    assert (empty / "project" / "slurm" / "train.sbatch").is_file()
    dry_run = subprocess.run([str(cascade), "slurm", "submit", "sample", "--run-dir", "samples", "--dry-run"],
                             cwd=empty, env=env, capture_output=True, text=True)
    assert dry_run.returncode == 0 and "#SBATCH" in dry_run.stdout, dry_run.stderr

    demo = wheel_demo.result
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert (wheel_demo.out / "report.html").is_file()
