"""Every YAML in cluster/ is checked: Ray cluster-launcher configs with Ray's own validator, the
KubeRay RayJob manifest with a schema check written here, the job runtime env with Ray's
``RuntimeEnv``; the guide's commands name files that exist.

The RayJob check covers the fields KubeRay documents for ``ray.io/v1`` RayJob (spec.entrypoint,
spec.rayClusterSpec.headGroupSpec / workerGroupSpecs with their required keys, value types
such as ``rayStartParams`` being strings); it is not KubeRay's full CRD schema.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

from distributed_reptile.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))
LAUNCHERS = [
    p for p in YAMLS if any("provider" in (d or {}) for d in yaml.safe_load_all(p.read_text()))
]


# ---------------------------------------------------------------------- RayJob schema check
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy",
    "metadata", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode",
    "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}  # fmt: skip
RAYCLUSTER_SPEC_FIELDS = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "headGroupSpec", "headServiceAnnotations", "managedBy", "rayVersion", "suspend",
    "upgradeStrategy", "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP_FIELDS = {"enableIngress", "headService", "rayStartParams", "serviceType", "template"}
WORKER_GROUP_FIELDS = {
    "groupName", "idleTimeoutSeconds", "maxReplicas", "minReplicas", "numOfHosts",
    "rayStartParams", "replicas", "scaleStrategy", "suspend", "template",
}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def rayjob_problems(doc: dict[str, Any]) -> list[str]:
    """What in ``doc`` breaks the RayJob fields KubeRay documents (empty: nothing)."""
    problems: list[str] = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion must be ray.io/v1, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != "RayJob":
        problems.append(f"kind must be RayJob, got {doc.get('kind')!r}")
    name = (doc.get("metadata") or {}).get("name", "")
    if not DNS_1123.match(str(name)):
        problems.append(f"metadata.name {name!r} is not a DNS-1123 label")
    spec = doc.get("spec") or {}
    problems += [f"spec.{k}: not a RayJob field" for k in set(spec) - RAYJOB_SPEC_FIELDS]
    if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
        problems.append("spec.entrypoint: required, a non-empty command string")
    if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:
        problems.append(f"spec.submissionMode must be one of {sorted(SUBMISSION_MODES)}")
    if "runtimeEnvYAML" in spec:
        env = yaml.safe_load(spec["runtimeEnvYAML"])
        if not isinstance(env, dict):
            problems.append("spec.runtimeEnvYAML: must be a YAML mapping (a runtime env)")
    for key in ("ttlSecondsAfterFinished", "activeDeadlineSeconds"):
        if key in spec and (not isinstance(spec[key], int) or spec[key] < 0):
            problems.append(f"spec.{key}: must be a non-negative integer")
    cluster = spec.get("rayClusterSpec")
    if cluster is None:
        if "clusterSelector" not in spec:
            problems.append(
                "spec.rayClusterSpec: required (or clusterSelector for an existing cluster)"
            )
        return problems
    problems += [
        f"spec.rayClusterSpec.{k}: not a RayCluster field"
        for k in set(cluster) - RAYCLUSTER_SPEC_FIELDS
    ]
    auth = cluster.get("authOptions")
    if auth is not None and auth.get("mode") not in ("disabled", "token"):
        problems.append("spec.rayClusterSpec.authOptions.mode: 'disabled' or 'token'")
    head = cluster.get("headGroupSpec")
    if not isinstance(head, dict):
        problems.append("spec.rayClusterSpec.headGroupSpec: required")
    else:
        where = "spec.rayClusterSpec.headGroupSpec"
        problems += [f"{where}.{k}: not a head group field" for k in set(head) - HEAD_GROUP_FIELDS]
        problems += _group_problems(head, where)
        if head.get("serviceType", "ClusterIP") not in ("ClusterIP", "NodePort", "LoadBalancer"):
            problems.append(f"{where}.serviceType: ClusterIP, NodePort or LoadBalancer")
    groups = cluster.get("workerGroupSpecs", [])
    if not isinstance(groups, list):
        problems.append("spec.rayClusterSpec.workerGroupSpecs: must be a list")
        groups = []
    names = [g.get("groupName") for g in groups]
    if len(set(names)) != len(names):
        problems.append("spec.rayClusterSpec.workerGroupSpecs: groupName values must be unique")
    for i, group in enumerate(groups):
        where = f"spec.rayClusterSpec.workerGroupSpecs[{i}]"
        problems += [
            f"{where}.{k}: not a worker group field" for k in set(group) - WORKER_GROUP_FIELDS
        ]
        if not isinstance(group.get("groupName"), str) or not group["groupName"]:
            problems.append(f"{where}.groupName: required")
        problems += _group_problems(group, where)
        counts = {k: group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")}
        if any(v is not None and (not isinstance(v, int) or v < 0) for v in counts.values()):
            problems.append(
                f"{where}: minReplicas / replicas / maxReplicas must be non-negative integers"
            )
        elif None not in counts.values() and not (
            counts["minReplicas"] <= counts["replicas"] <= counts["maxReplicas"]
        ):
            problems.append(f"{where}: needs minReplicas <= replicas <= maxReplicas")
    return problems


def _group_problems(group: dict[str, Any], where: str) -> list[str]:
    problems = []
    params = group.get("rayStartParams", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        problems.append(f'{where}.rayStartParams: a map of strings (quote numbers: num-cpus: "0")')
    containers = (((group.get("template") or {}).get("spec")) or {}).get("containers")
    if not isinstance(containers, list) or not containers:
        problems.append(f"{where}.template.spec.containers: required, at least one container")
    else:
        for j, c in enumerate(containers):
            if not (isinstance(c, dict) and c.get("name") and c.get("image")):
                problems.append(f"{where}.template.spec.containers[{j}]: needs name and image")
    return problems


def _rayjob_docs(path: Path) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}


# ---------------------------------------------------------------------- the files
def test_cluster_folder_has_the_promised_files() -> None:
    names = {p.name for p in CLUSTER.iterdir()}
    assert {"local.yaml", "aws.yaml", "rayjob.yaml", "runtime_env.yaml", "submit_job.sh"} <= names
    assert {p.name for p in LAUNCHERS} == {"local.yaml", "aws.yaml"}


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_every_cluster_yaml_passes_its_validator(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    kinds = {d.get("kind") for d in docs}
    if path in LAUNCHERS:
        # what `ray up` does before starting anything: fill in the provider's defaults, validate
        validate_config(prepare_config(docs[0]))
    elif "RayJob" in kinds:
        problems = [p for d in docs if d.get("kind") == "RayJob" for p in rayjob_problems(d)]
        assert problems == []
    elif path.name == "runtime_env.yaml":
        (env,) = docs
        assert set(env) <= set(RuntimeEnv.known_fields), set(env) - set(RuntimeEnv.known_fields)
        RuntimeEnv(**env)
    else:
        pytest.fail(f"{path.name}: no validator for this file; add one to this test")


@pytest.mark.parametrize("path", LAUNCHERS, ids=[p.name for p in LAUNCHERS])
def test_launcher_configs_keep_the_jobs_api_local_and_use_token_auth(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    # every node gets the same token file
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # the checkout that is synced holds the package the setup commands install
    assert config["file_mounts"]["~/distributed-reptile"] == "."
    assert ".venv" in config["rsync_exclude"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.update(max_worker=3), "'max_worker' was unexpected"),
        (lambda c: c["auth"].update(ssh_usr="me"), "'ssh_usr' was unexpected"),
        (lambda c: c.update(upscaling_speed="fast"), "'fast' is not of type 'number'"),
    ],
)
def test_ray_validator_rejects_a_broken_launcher_config(mutate: Any, message: str) -> None:
    import jsonschema

    config = copy.deepcopy(yaml.safe_load((CLUSTER / "aws.yaml").read_text()))
    mutate(config)
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate_config(prepare_config(config))


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda j: j.update(apiVersion="ray.io/v1alpha1"), "apiVersion must be ray.io/v1"),
        (lambda j: j["spec"].pop("entrypoint"), "spec.entrypoint: required"),
        (lambda j: j["spec"].update(entrypont="x"), "spec.entrypont: not a RayJob field"),
        (lambda j: j["spec"]["rayClusterSpec"].pop("headGroupSpec"), "headGroupSpec: required"),
        (
            lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"),
            "workerGroupSpecs[0].groupName: required",
        ),
        (
            lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update(
                {"num-cpus": 0}
            ),
            "headGroupSpec.rayStartParams: a map of strings",
        ),
        (
            lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas=9),
            "needs minReplicas <= replicas <= maxReplicas",
        ),
        (
            lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
                "containers"
            ][0].pop("image"),
            "containers[0]: needs name and image",
        ),
    ],
)
def test_rayjob_check_rejects_a_broken_manifest(mutate: Any, expected: str) -> None:
    job = copy.deepcopy(_rayjob_docs(CLUSTER / "rayjob.yaml")["RayJob"])
    mutate(job)
    problems = rayjob_problems(job)
    assert any(expected in p for p in problems), problems


def test_rayjob_runs_the_config_it_mounts_and_writes_to_its_volume() -> None:
    docs = _rayjob_docs(CLUSTER / "rayjob.yaml")
    job, config_map, claim = docs["RayJob"], docs["ConfigMap"], docs["PersistentVolumeClaim"]
    entry = job["spec"]["entrypoint"].split()
    assert entry[:2] == ["distributed-reptile", "train"]
    config_path, output = Path(entry[2]), Path(entry[entry.index("--output") + 1])
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    # the config file is a key of the mounted ConfigMap, and it is the smoke config, valid
    (config_volume,) = [n for n, v in volumes.items() if "configMap" in v]
    assert volumes[config_volume]["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_path.parent == Path(mounts[config_volume])
    body = yaml.safe_load(config_map["data"][config_path.name])
    assert body == yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    RunConfig.from_dict(body)
    # the run folder is on the claimed volume, mounted on the head where the driver runs
    (runs_volume,) = [n for n, v in volumes.items() if "persistentVolumeClaim" in v]
    assert volumes[runs_volume]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert output.is_relative_to(mounts[runs_volume])
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}


def test_submit_script_is_valid_bash_and_uses_the_shipped_runtime_env() -> None:
    script = CLUSTER / "submit_job.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "--runtime-env cluster/runtime_env.yaml" in text
    assert "-- distributed-reptile train" in text


def test_cluster_guide_commands_name_files_that_exist() -> None:
    guide = (REPO / "docs" / "cluster.md").read_text()
    blocks = "\n".join(re.findall(r"```(?:bash|sh)?\n(.*?)```", guide, flags=re.S))
    named = set(re.findall(r"\b((?:cluster|configs|scripts)/[\w./-]+\.(?:yaml|sh|py))", blocks))
    assert {"cluster/local.yaml", "cluster/aws.yaml", "configs/smoke.yaml"} <= named
    missing = [p for p in named if not (REPO / p).exists()]
    assert missing == []
    for command in ("ray up", "ray job submit", "ray job logs", "ray down", "ray dashboard"):
        assert command in blocks
