"""qllm installs as a wheel: the wheel carries its data files, and the CLI works from a plain install.

The prompt templates, the eval suites and the reference eval runs are package data read through
importlib.resources. A checkout (the editable install of ``.venv``) would find them whether or not
``pyproject.toml`` lists them, so only a real wheel, installed away from the checkout and run from
another folder, shows that a user who runs ``pip install qllm-*.whl`` gets them too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    cwd: Path
    """A folder outside the checkout, where commands run (and may write runs/)."""


def _run(argv: list[str | Path], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH: nothing but the fresh venv's own sys.path may decide what `import qllm` finds.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"COLUMNS": "250"}
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _copy_sources(destination: Path) -> Path:
    """The files git sees (tracked and new, not ignored), so the build neither reads nor writes the
    checkout's build/ and egg-info (setuptools keeps stale files in build/lib and would pack them)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is listed but absent
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _build_wheel(tmp: Path) -> Path:
    source = _copy_sources(tmp / "src")
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp / "dist",
            source,
        ],
        cwd=tmp,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp / "dist").glob("qllm-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> tuple[Path, Path]:
    venv = tmp / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp).returncode == 0
    python = venv / "bin" / "python"
    installed = _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
        cwd=tmp,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
    site_packages = Path(purelib.stdout.strip())
    # Dependencies are borrowed, not installed: scripts/setup.sh installs the full pinned set
    # (requirements/lock.txt) and `pip check`s it, and installing torch, Ray and LangChain again would
    # take minutes and a network. This test is about what the wheel itself carries. A plain path line in
    # a .pth file is appended to sys.path, but the .pth files *inside* that folder are not processed, so
    # the editable install's finder (which maps `qllm` to the checkout) never runs: the borrowed folder
    # lends its packages, and `qllm` comes from the wheel.
    borrowed = Path(sysconfig.get_paths()["purelib"])
    (site_packages / "borrowed-dependencies.pth").write_text(f"{borrowed}\n")
    return venv, site_packages


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    venv, site_packages = _fresh_venv(tmp, wheel)
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    return Installed(wheel, venv, site_packages, cwd)


def test_the_wheel_carries_prompts_suites_and_references(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())

    for suite in ("smoke", "full", "targets"):
        assert f"qllm/evals/suites/{suite}.toml" in names
    assert {"qllm/evals/reference/smoke-local-v1.json", "qllm/evals/reference/smoke-local-v1.md"} <= names
    assert "qllm/evals/reference/levers/2-smoke-code.json" in names
    shipped = {p.name for p in (REPO / "qllm" / "prompts" / "v1").glob("*.md")}
    assert shipped and {f"qllm/prompts/v1/{name}" for name in shipped} <= names
    opponents = ("epymarl_adversary.pt", "epymarl_prey.pt", "LICENSE", "NOTICE", "README.md")
    assert {f"qllm/envs/pretrained/{name}" for name in opponents} <= names
    assert "qllm/rl/kernels/gru.cpp" in names  # compiled where the wheel is installed, on first use
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_qllm_is_imported_from_the_wheel_not_the_checkout(installed: Installed) -> None:
    found = _run(
        [installed.venv / "bin" / "python", "-c", "import qllm; print(qllm.__file__)"], installed.cwd
    )

    assert found.returncode == 0, found.stderr
    location = Path(found.stdout.strip()).resolve()
    assert location.is_relative_to(installed.site_packages.resolve()), location
    assert not location.is_relative_to(REPO)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("tasks", "list"), ("matrix", "mpe-spread-<N>", "lbf-8x8-2p-2f", "rware-tiny-2ag")),
        (("tasks", "show", "mpe-tag-pretrained"), ("pretrained prey", "EPyMARL")),
        (
            ("evals", "list"),
            ("shipped suites: full, smoke, targets", "smoke-local-v1", "levers/2-smoke-code"),
        ),
        (("evals", "show", "smoke-local-v1"), ("Eval run", "semantic_score", "matrix-climbing")),
        (("generate", "--help"), ("--coder", "--evaluator", "--candidates")),
    ],
    ids=" ".join,
)
def test_the_installed_cli_finds_its_data(
    installed: Installed, argv: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    result = _run([installed.venv / "bin" / "qllm", *argv], installed.cwd)

    assert result.returncode == 0, result.stdout + result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout
