"""The chart's values reach the pods: Helm's engine renders the chart, the operator runs with the environment
its Deployment gives it (nothing else), and the trainer pods it creates carry the GPU defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.operator.conftest import Cluster, Operator, eventually, manifest, operator_config
from trainingjob_operator.k8s.config import OperatorConfig

CHART = Path(__file__).resolve().parents[2] / "charts" / "trainingjob-operator"
GPU_VALUES = {"trainer": {"gpu": {"enabled": True, "count": 2}, "nodeSelector": {"pool": "gpu"},
                          "resources": {"requests": {"cpu": "4", "memory": "16Gi"}}}}


def operator_env(values: dict[str, Any]) -> dict[str, str]:
    """The literal env of the operator container the chart renders."""
    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="tj", namespace="trainingjob-system")
    docs = [d for path, text in manifests.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text)
            if d]
    (container,) = [c for d in docs if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "operator"]
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.fixture
async def chart_operator(cluster: Cluster, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Operator]:
    env = operator_env(GPU_VALUES)
    for name in ("TJ_DEFAULT_IMAGE", "TJ_DEFAULT_TRAINER_ROLE"):
        monkeypatch.setenv(name, env[name])
    from_chart = OperatorConfig.from_env()
    config = dataclasses.replace(operator_config(cluster.api, redis_url), trainer_defaults=from_chart.trainer_defaults)
    op = Operator(config=config)
    await op.start()
    yield op
    await op.stop()


async def test_the_charts_gpu_defaults_appear_in_trainer_pods_and_a_jobs_own_fields_win(
    cluster: Cluster, chart_operator: Operator
) -> None:
    await cluster.create_job(manifest("gpu"))
    await cluster.create_job(manifest("cpu", replicas={"trainer": {"replicas": 2, "resources": {}}}))
    await eventually(lambda: cluster.running("gpu", 5) and cluster.running("cpu", 5), what="both jobs running")

    trainer = cluster.pods("gpu")["gpu-trainer-0"]
    (container,) = trainer["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"nvidia.com/gpu": 2}}
    assert trainer["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in trainer["spec"]["tolerations"]
    assert container["image"].endswith("-cuda")  # TJ_DEFAULT_IMAGE: the CUDA build when gpu.enabled
    server = cluster.pods("gpu")["gpu-embedding-server-0"]
    assert "nvidia.com/gpu" not in str(server["spec"]["containers"][0].get("resources"))  # servers stay on CPU
    # A job that sets its trainers' resources (even to nothing) keeps them: no GPU for it.
    (cpu_container,) = cluster.pods("cpu")["cpu-trainer-0"]["spec"]["containers"]
    assert cpu_container["resources"] == {}
