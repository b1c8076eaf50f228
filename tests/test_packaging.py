"""An installed copy (a wheel, not the checkout) carries its configs: `python -m splitinfer.run`,
`splitinfer sweep` and `splitinfer serve` work from an unrelated folder.

Offline and quick: the wheel is built with the test venv's setuptools (no build isolation), installed with
--no-deps into a fresh venv that sees the test venv's packages through a .pth file (torch etc. are not
copied), and every command runs with that venv's python from a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in", "conf", "splitinfer")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(venv bin folder, environment) of a fresh venv holding splitinfer installed from a wheel."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"  # a copy of the sources: the build writes build/ and *.egg-info next to them
    src.mkdir()
    for name in BUILD_FILES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy2(path, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", SPLITINFER_CACHE=str(root / "cache"), PYTHONUNBUFFERED="1")
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
              str(root / "dist"), str(src)], root, env)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((root / "dist").glob("splitinfer-*.whl"))

    venv = root / "venv"
    r = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    assert r.returncode == 0, r.stderr[-3000:]
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env)
    # The test venv's packages (torch, hydra, ...) become visible to the new venv, after its own.
    (Path(site.stdout.strip()) / "_test_venv_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
              str(wheel)], root, env)
    assert r.returncode == 0, r.stderr[-3000:]
    return venv / "bin", env


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working folder with no conf/ and no splitinfer/ in it."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


@pytest.mark.slow
def test_the_installed_copy_runs_a_job_from_any_folder(installed, elsewhere):
    bin_dir, env = installed
    python = str(bin_dir / "python")
    r = _run([python, "-c", "import splitinfer, splitinfer.run as run; print(splitinfer.__file__); "
              "print(run.CONFIG_PATH)"], elsewhere, env)
    assert r.returncode == 0, r.stderr
    where, config_path = r.stdout.split()
    assert Path(where).is_relative_to(bin_dir.parent), f"the checkout ran, not the installed copy: {where}"
    assert config_path == "pkg://splitinfer.conf"

    r = _run([python, "-m", "splitinfer.run", "model=tiny_llama", "experiment=smoke", "logger=jsonl", "split.cut=2",
              "codec=int8", "disk_cache=false", "hydra.run.dir=job"], elsewhere, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (elsewhere / "job" / "metrics.json").is_file()
    assert "cut 2 | codec int8" in r.stdout and "output" in r.stdout

    r = _run([python, "-m", "splitinfer.run", "codec=int9"], elsewhere, env, timeout=60)
    assert r.returncode == 2 and "Did you mean codec=int8?" in r.stderr


@pytest.mark.slow
def test_the_installed_sweep_and_serve_read_the_shipped_configs(installed, elsewhere):
    bin_dir, env = installed
    splitinfer = str(bin_dir / "splitinfer")
    r = _run([splitinfer, "sweep", "--experiment", "smoke", "--no-report", "--out", "sw", "split.cut=2",
              "codec=int8"], elsewhere, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (elsewhere / "sw" / "0" / "metrics.json").is_file()

    # cut=1 is a Hydra override of conf/server/default.yaml: it only applies when that file was found.
    serve = subprocess.Popen([splitinfer, "serve", "--model", "tiny-llama", "--port", "0", "cut=1"], cwd=elsewhere,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen: list[str] = []

        def read_until_ready() -> None:  # warnings may come first (stderr is merged)
            for text in serve.stdout:
                seen.append(text)
                if text.startswith("splitinfer serve:"):
                    return

        reader = threading.Thread(target=read_until_ready, daemon=True)
        reader.start()
        reader.join(120)
        assert seen and "cut [1] on tcp://127.0.0.1:" in seen[-1], seen
    finally:
        serve.terminate()
        serve.wait(30)
