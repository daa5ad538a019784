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
import venv
import zipfile
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


def _source_copy(target: Path) -> Path:
    """The project's files (no virtual environment, git data, build outputs or run artefacts)."""
    ignore = shutil.ignore_patterns(".venv", "venv", ".git", "build", "dist", "runs", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis")
    shutil.copytree(REPO, target, symlinks=True, ignore=ignore)
    return target


@pytest.mark.slow
def test_the_built_wheel_runs_the_demo_from_an_empty_folder(tmp_path):
    """`pip install` of the wheel (outside the checkout), then `cascade demo --fast` in an empty
    folder: the configs, sbatch templates and prompt sets travel inside the package."""
    source = _source_copy(tmp_path / "source")
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
             str(source)]
    subprocess.run(build, check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("cascade_diffusion-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {name.split("/")[0] for name in names} == {"cascade", wheel.name.split("-py3")[0] + ".dist-info"}
    assert {"cascade/shipped/configs/demo/base.yaml", "cascade/shipped/slurm/train.sbatch",
            "cascade/shipped/prompts/drawbench.csv"} <= set(names)

    # A venv that sees this test environment's packages (torch and friends) but not its cascade.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    test_site = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "test_environment.pth").write_text(test_site + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True)

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import cascade; print(cascade.__file__)"], cwd=empty, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(site), where

    cascade = env_dir / "bin" / "cascade"
    init = subprocess.run([str(cascade), "init", "project"], cwd=empty, env=env, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    assert (empty / "project" / "configs" / "demo" / "base.yaml").is_file()
    assert (empty / "project" / "slurm" / "train.sbatch").is_file()
    dry_run = subprocess.run([str(cascade), "slurm", "submit", "sample", "--run-dir", "samples", "--dry-run"],
                             cwd=empty, env=env, capture_output=True, text=True)
    assert dry_run.returncode == 0 and "#SBATCH" in dry_run.stdout, dry_run.stderr

    demo = subprocess.run([str(cascade), "demo", "--fast", "--out", "demo", "--threads", "2"], cwd=empty, env=env,
                          capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert (empty / "demo" / "report.html").is_file()
