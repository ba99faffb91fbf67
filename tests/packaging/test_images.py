"""The Dockerfiles, checked as far as this machine can without a container runtime:
hadolint, a pinned base, a non-root user, the build stage's inputs make a complete
package, and the image's commands (entrypoint, default command, a team image's modules)
run — outside Docker, with the same ``kflow`` the image installs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kflow._workflow import Registry

ROOT = Path(__file__).resolve().parents[2]
IMAGE, TEAM_IMAGE = ROOT / "Dockerfile", ROOT / "examples" / "Dockerfile"
BIN = Path(sys.executable).parent


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def last(dockerfile: Path, instruction: str) -> str:
    return [args for word, args in instructions(dockerfile) if word == instruction][-1]


@pytest.mark.parametrize("dockerfile", [IMAGE, TEAM_IMAGE], ids=["kflow", "team"])
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run([BIN / "hadolint", dockerfile], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_pinned_multi_stage_and_non_root() -> None:
    steps = instructions(IMAGE)
    base = last(IMAGE, "ARG")
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", base), base
    assert [args for word, args in steps if word == "FROM"] == [
        "${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"
    ]  # fmt: skip
    user = last(IMAGE, "USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER {user} must be numeric, not root"
    assert json.loads(last(IMAGE, "ENTRYPOINT")) == ["kflow"]


def test_the_build_stage_inputs_make_a_complete_package(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for word, args in instructions(IMAGE):
        if word == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for source in sources:
                target = context / source
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns(
                        "__pycache__", "*.egg-info"))  # fmt: skip
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, target)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", tmp_path / "wheels", context],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("kflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kflow/py.typed" in names
    migrations = (ROOT / "operator/kflow/_store/migrations").glob("*.sql")
    assert {f"kflow/_store/migrations/{m.name}" for m in migrations} <= set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "kflow = kflow.cli:main" in scripts and "kubectl-kflow = kflow.plugin:main" in scripts


def _image_command(
    *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    entrypoint = json.loads(last(IMAGE, "ENTRYPOINT"))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KFLOW_")}
    return subprocess.run(
        [BIN / entrypoint[0], *entrypoint[1:], *extra], capture_output=True, text=True,
        env={**clean, **(env or {})}, timeout=60,
    )  # fmt: skip


def test_the_image_commands_run() -> None:
    assert _image_command("--help").returncode == 0
    assert "--run" in _image_command("runner", "--help").stdout
    # The default command: the operator, which refuses to start without its settings,
    # saying which, and without echoing values.
    default = _image_command(*json.loads(last(IMAGE, "CMD")),
                             env={"KFLOW_DSN": "postgresql://u:hunter2@db/x",
                                  "KFLOW_DSN_FILE": "/run/dsn"})  # fmt: skip
    assert default.returncode == 2
    assert "set exactly one of KFLOW_DSN and KFLOW_DSN_FILE" in default.stderr
    assert "hunter2" not in default.stderr + default.stdout


def test_the_team_image_names_modules_that_import() -> None:
    name, _, value = last(TEAM_IMAGE, "ENV").partition("=")
    assert name == "KFLOW_WORKFLOW_MODULES"
    modules = json.loads(shlex.split(value)[0])
    registry = Registry.from_modules(modules)
    assert registry.workflows(), f"no workflows in {modules}"
