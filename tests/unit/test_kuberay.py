"""The Kubernetes manifests and the image they run.

``deploy/kuberay/*.yaml`` are validated against the CRD schemas of KubeRay v1.7.0 (vendored in
``tests/fixtures/kuberay-v1.7.0``), with unknown fields refused as ``kubectl apply
--validate=strict`` refuses them; the RayService's Serve config is ``configs/serve.yaml``; its
Secret and environment are settings the service accepts; the Dockerfile installs what
``make install`` installs. Nothing here starts a Kubernetes or builds the image: the project's
CI has neither a cluster nor a container daemon.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from rescored_ray.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kuberay"
CRDS = REPO / "tests" / "fixtures" / "kuberay-v1.7.0"
SCHEMAS = {"RayService": "ray.io_rayservices.v1.json", "RayJob": "ray.io_rayjobs.v1.json"}
MANIFESTS = ("rayservice.yaml", "rayjob.yaml")


def _documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def _resource(name: str, kind: str) -> dict:
    return next(doc for doc in _documents(name) if doc["kind"] == kind)


def _schema(kind: str) -> dict:
    return json.loads((CRDS / SCHEMAS[kind]).read_text())


def schema_errors(document: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(_schema(document["kind"]))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def unknown_fields(instance: object, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare. The API server drops them without a word (structural
    schemas prune), so a misspelt field would silently do nothing."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(instance, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if properties is not None and key in properties:
                found += unknown_fields(value, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(value, extra, f"{path}.{key}")
            elif properties is not None:
                found.append(f"{path}.{key}")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(instance):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def _containers(resource: dict) -> list[dict]:
    spec = resource["spec"].get("rayClusterConfig") or resource["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_manifests_validate_against_the_kuberay_crds(manifest):
    checked = 0
    for document in _documents(manifest):
        if document["kind"] in SCHEMAS:
            assert document["apiVersion"] == "ray.io/v1"
            assert schema_errors(document) == []
            assert unknown_fields(document, _schema(document["kind"])) == []
            checked += 1
        else:
            assert (document["apiVersion"], document["kind"]) == ("v1", "Secret")
            assert all(isinstance(value, str) for value in document["stringData"].values())
    assert checked == 1


def test_the_checks_refuse_a_misspelt_or_mistyped_field():
    service = _resource("rayservice.yaml", "RayService")
    misspelt = copy.deepcopy(service)
    misspelt["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 4
    misspelt["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFrom"][0][
        "secretRefs"
    ] = {"name": "rescored"}
    assert unknown_fields(misspelt, _schema("RayService")) == [
        ".spec.rayClusterConfig.headGroupSpec.template.spec.containers[0].envFrom[0].secretRefs",
        ".spec.rayClusterConfig.workerGroupSpecs[0].maxReplica",
    ]
    mistyped = copy.deepcopy(service)
    mistyped["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "one"
    mistyped["spec"]["rayClusterConfig"]["authOptions"]["mode"] = "password"
    errors = schema_errors(mistyped)
    assert any("replicas" in e and "'one' is not of type 'integer'" in e for e in errors), errors
    assert any("authOptions.mode" in e for e in errors), errors


def test_the_serve_config_is_configs_serve_yaml():
    service = _resource("rayservice.yaml", "RayService")
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load((REPO / "configs/serve.yaml").read_text())


def test_the_secret_and_environment_are_settings_the_service_accepts():
    secret = _resource("rayservice.yaml", "Secret")
    service = _resource("rayservice.yaml", "RayService")
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    for container in _containers(service):
        env = {item["name"]: item["value"] for item in container.get("env", [])}
        assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
        settings = load_settings(document=args, env={**secret["stringData"], **env})
        assert settings.service.ledger_url.startswith("redis://")  # jobs survive the loss of any node
        assert settings.service.storage_uri.startswith("s3://")  # results readable from every node
        assert settings.service.ingress_replicas == 2 and "alice" in settings.service.security.api_tokens
    for container in _containers(_resource("rayjob.yaml", "RayJob")):
        assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]


@pytest.mark.parametrize("manifest,kind", [("rayservice.yaml", "RayService"), ("rayjob.yaml", "RayJob")])
def test_versions_images_and_gpus_agree(manifest, kind):
    import ray

    resource = _resource(manifest, kind)
    spec = resource["spec"].get("rayClusterConfig") or resource["spec"]["rayClusterSpec"]
    assert spec["rayVersion"].rsplit(".", 1)[0] == ray.__version__.rsplit(".", 1)[0]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{spec['rayVersion']}-py311\n" in dockerfile
    project = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        container = group["template"]["spec"]["containers"][0]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        expected = f"rescored-ray:{project}-gpu" if gpus else f"rescored-ray:{project}"
        assert container["image"] == expected
    assert any(
        g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
        for g in spec["workerGroupSpecs"]
    )
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["authOptions"] == {"mode": "token"}


def test_the_image_installs_what_make_install_installs():
    makefile = (REPO / "Makefile").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    torch = re.search(r"^TORCH_SPEC \?= (\S+)", makefile, re.M).group(1)
    assert re.search(rf'^ARG TORCH_SPEC="{re.escape(torch)}[ "]', dockerfile, re.M), torch
    basic_pitch = re.search(r"--no-deps (basic-pitch==\S+)", makefile).group(1)
    assert f"--no-deps {basic_pitch}" in dockerfile
    assert re.search(r'-e "\.\[pipeline,ray,dev\]"', makefile) and '".[pipeline,ray]"' in dockerfile
    check = re.search(r'-c "(import torch[^;"]+)', makefile).group(1)
    assert check in dockerfile
    order = [dockerfile.index(s) for s in ("${TORCH_SPEC}", '".[pipeline,ray]"', f"--no-deps {basic_pitch}")]
    assert order == sorted(order)  # torch first, the project, then basic-pitch without its pins
