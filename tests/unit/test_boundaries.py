"""Package boundaries: the pipeline core imports no Ray, the SDK imports no torch, and the
base install is the SDK (pipeline, Ray and development tools are extras)."""

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import rescored_ray

REPO = Path(__file__).resolve().parents[2]
RAY_LAYERS = ("rescored_ray.service", "rescored_ray.batch")


def core_modules() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.walk_packages(rescored_ray.__path__, "rescored_ray.")
        if not m.name.startswith(RAY_LAYERS) and not m.name.endswith("__main__")
    )


def modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    return set(out.split())


def test_importing_the_core_leaves_ray_out():
    modules = core_modules()
    assert {"rescored_ray.pipeline", "rescored_ray.settings", "rescored_ray.separation", "rescored_ray.cli"} <= set(
        modules
    )
    loaded = modules_after("\n".join(f"import {name}" for name in modules))
    assert set(modules) <= loaded
    assert "ray" not in loaded, "the pipeline core imported Ray"


def test_importing_the_sdk_leaves_torch_out():
    loaded = modules_after(
        "import rescored_ray\n"
        "from rescored_ray import Client, AsyncClient, Score, JobFailed, JobCancelled\n"
        "from rescored_ray.options import JobOptions\n"
        "Client('http://127.0.0.1:9').submit  # the client and its pieces\n"
    )
    assert "rescored_ray.client" in loaded
    assert not {"torch", "ray", "demucs", "music21", "onnxruntime"} & loaded


def test_the_base_install_is_the_sdk():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["dependencies"]}
    assert base == {"httpx", "websockets", "tqdm", "pydantic", "pandas"}
    extras = project["optional-dependencies"]
    assert {"pipeline", "ray", "dev"} <= set(extras)
    assert any(dep.startswith("torch") for dep in extras["pipeline"])
    assert any(dep.startswith("ray[") for dep in extras["ray"])
    makefile = (REPO / "Makefile").read_text()
    assert '".[pipeline,ray,dev]"' in makefile  # make install still installs everything


def test_python_m_rescored_ray_batch_is_the_batch_command():
    out = subprocess.run(
        [sys.executable, "-m", "rescored_ray.batch", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0 and "--output" in out.stdout and "--resume" in out.stdout
    wrapper = subprocess.run(
        [sys.executable, "jobs/transcribe_playlist.py", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert wrapper.returncode == 0 and "--output" in wrapper.stdout and "Transcribe whole playlists" in wrapper.stdout
