"""cluster.yaml (the `ray up` config for AWS) checked without a cluster or cloud account.

The file is validated the way `ray up` does it (Ray's own JSON schema, then
``prepare_config`` + ``validate_config``), and the commands each node type actually runs
are worked out with the launcher's rules: the head runs ``setup_commands`` +
``head_setup_commands``; a worker runs its node type's ``worker_setup_commands`` if it has
that key (it *replaces* the global lists), else ``setup_commands`` + ``worker_setup_commands``.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler as autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
PROJECT_MOUNT = "/home/ubuntu/rescored-ray"
SCHEMA_PATH = Path(autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def raw() -> dict:
    # A missing file is a failure, never a skip.
    assert CLUSTER_YAML.is_file(), f"{CLUSTER_YAML} is missing"
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    assert isinstance(config, dict), "cluster.yaml must be a mapping"
    return config


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _node_types(config: dict) -> dict:
    return config["available_node_types"]


def _head_type(config: dict) -> str:
    return config["head_node_type"]


def _gpu_worker_types(config: dict) -> dict:
    head = _head_type(config)
    return {
        name: spec
        for name, spec in _node_types(config).items()
        if name != head and spec.get("resources", {}).get("GPU", 0) >= 1
    }


def _head_setup(config: dict) -> list[str]:
    return list(config.get("setup_commands", [])) + list(config.get("head_setup_commands", []))


def _worker_setup(config: dict, node_type: str) -> list[str]:
    spec = _node_types(config)[node_type]
    if "worker_setup_commands" in spec:
        return list(spec["worker_setup_commands"])
    return list(config.get("setup_commands", [])) + list(config.get("worker_setup_commands", []))


def _index(commands: list[str], pattern: str) -> int:
    for i, command in enumerate(commands):
        if re.search(pattern, command):
            return i
    raise AssertionError(f"no setup command matches {pattern!r}:\n" + "\n".join(commands))


TORCH = r"pip install\b.*\btorch==2\.13\.0\b"
PROJECT = r"pip install\b.*-e\s+'?/home/ubuntu/rescored-ray\[pipeline,ray\]"
RAY_PIN = r"\bray\[[^\]]*\]==2\.60(\.|\b)"
BASIC_PITCH = r"pip install\b.*--no-deps\b.*\bbasic-pitch==0\.4\.0\b"
ORT_GPU = r"pip install\b.*\bonnxruntime-gpu\b"


def test_cluster_yaml_exists():
    assert CLUSTER_YAML.is_file(), f"{CLUSTER_YAML} is missing"


def test_schema_accepts_the_file_as_written(raw, schema):
    jsonschema.validate(raw, schema)


def test_ray_up_validation_accepts_it(raw):
    # What `ray up` does before it talks to AWS: fill defaults, merge commands, validate.
    validate_config(prepare_config(copy.deepcopy(raw)))


def test_validator_is_live(raw, schema):
    # The schema really is strict about node types: a typo'd key is rejected.
    broken = copy.deepcopy(raw)
    name = next(iter(_gpu_worker_types(broken)))
    broken["available_node_types"][name]["max_worker"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_aws_provider(raw):
    assert raw["provider"]["type"] == "aws"
    assert raw["provider"].get("region")


def test_autoscaling_gpu_worker_type(raw):
    gpu_types = _gpu_worker_types(raw)
    assert gpu_types, "no worker type with GPU resources"
    for name, spec in gpu_types.items():
        assert spec.get("min_workers", 0) == 0, f"{name}: GPU workers should scale from zero"
        assert spec["max_workers"] > spec.get("min_workers", 0), f"{name}: max_workers must exceed min_workers"
        assert spec["max_workers"] <= raw["max_workers"], f"{name}: capped by the global max_workers"
        assert spec["node_config"].get("InstanceType"), f"{name}: no instance type"
    assert raw.get("idle_timeout_minutes", 5) > 0


def test_head_has_no_gpu(raw):
    head = _node_types(raw)[_head_type(raw)]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU", 1) >= 1


def test_file_mounts_include_the_project(raw):
    mounts = raw["file_mounts"]
    assert PROJECT_MOUNT in mounts, f"{PROJECT_MOUNT} is not mounted"
    local = (REPO / mounts[PROJECT_MOUNT]).resolve()  # relative to the repo root, where `ray up` runs
    assert local == REPO, f"{PROJECT_MOUNT} maps to {local}, not the repository"
    assert (local / "pyproject.toml").is_file()
    for excluded in (".venv", ".git"):
        assert excluded in raw.get("rsync_exclude", []), f"{excluded} would be copied to every node"


@pytest.mark.parametrize("node", ["head", "gpu_workers"])
def test_setup_installs_torch_then_project_then_basic_pitch(raw, node):
    if node == "head":
        plans = {_head_type(raw): _head_setup(raw)}
    else:
        plans = {name: _worker_setup(raw, name) for name in _gpu_worker_types(raw)}
    for name, commands in plans.items():
        torch_at = _index(commands, TORCH)
        project_at = _index(commands, PROJECT)
        basic_pitch_at = _index(commands, BASIC_PITCH)
        assert torch_at < project_at, f"{name}: torch must be installed before the project"
        assert project_at < basic_pitch_at, f"{name}: basic-pitch goes in after the project, with --no-deps"
        _index(commands, RAY_PIN)  # Ray pinned to 2.60


def test_onnxruntime_gpu_only_on_gpu_workers(raw):
    assert not any(re.search(ORT_GPU, c) for c in _head_setup(raw)), "the CPU head gets onnxruntime-gpu"
    for name in _gpu_worker_types(raw):
        commands = _worker_setup(raw, name)
        assert _index(commands, ORT_GPU) > _index(commands, PROJECT), (
            f"{name}: onnxruntime-gpu must come after the project install (which pulls in CPU onnxruntime)"
        )


def test_start_commands(raw):
    head = " ; ".join(raw["head_start_ray_commands"])
    worker = " ; ".join(raw["worker_start_ray_commands"])
    assert raw["head_start_ray_commands"][0].strip() == "ray stop"
    assert raw["worker_start_ray_commands"][0].strip() == "ray stop"
    for flag in (
        "--head",
        "--port=6379",
        "--autoscaling-config=~/ray_bootstrap_config.yaml",
        "--dashboard-host=0.0.0.0",
    ):
        assert flag in head, f"head start command lacks {flag}"
    assert "--address=$RAY_HEAD_IP:6379" in worker


def test_token_auth_is_wired(raw):
    # Ray 2.60: `ray start --address` never enables token auth by itself, and the head only
    # does when a token exists; so the config sets the mode and ships the token explicitly.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token" in c for c in raw[key]), f"{key} do not set RAY_AUTH_MODE=token"
    token_mounts = [remote for remote in raw["file_mounts"] if remote.endswith("/.ray/auth_token")]
    assert token_mounts, "no file mount puts the auth token at ~/.ray/auth_token on the nodes"
