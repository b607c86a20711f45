from pathlib import Path

import pytest
import yaml

from trainingjob_operator.api import ManifestError, Role, load_manifest, parse_manifest
from trainingjob_operator.api.spec import DEFAULT_IMAGE, default_image, spec_from_json

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def manifest(spec: dict, name: str = "demo") -> dict:
    return {"apiVersion": "training.cpr.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": spec}


def test_defaults_describe_the_local_example_topology() -> None:
    job = parse_manifest(manifest({}))
    spec = job.spec
    assert job.namespace == "default"
    assert spec.image is None and default_image() == DEFAULT_IMAGE
    assert [spec.replicas.count(r) for r in (Role.TRAINER, Role.EMBEDDING_SERVER, Role.SYNC_SERVER)] == [2, 2, 1]
    assert spec.model.rows() == [100_000] * 26
    assert spec.training.sync.mode == "background" and spec.training.sync.algorithm == "easgd"
    assert spec.recovery.mode == "partial"


def test_spec_round_trips_through_the_replica_env_json() -> None:
    job = parse_manifest(manifest({"model": {"tableRows": [10, 20, 30], "sparseFeatures": 3}}))
    again = spec_from_json(job.spec_json())
    assert again == job.spec
    assert again.model.rows() == [10, 20, 30]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_validates(example: Path) -> None:
    job = load_manifest(example)
    assert job.metadata.name


@pytest.mark.parametrize(
    ("spec", "field", "expectation"),
    [
        ({"replicas": {"trainer": {"replicas": 0}}}, "spec.replicas.trainer.replicas", "greater than or equal to 1"),
        ({"replicas": {"syncServer": {"replicas": 2}}}, "spec.replicas.syncServer.replicas", "less than or equal to 1"),
        ({"data": {"batchSize": "big"}}, "spec.data.batchSize", "valid integer"),
        ({"data": {"source": "parquet"}}, "spec.data.source", "'synthetic' or 'criteo'"),
        ({"data": {"source": "criteo"}}, "spec.data", "path is required"),
        ({"model": {"tableRows": [10, 10]}}, "spec.model", "one entry per sparse feature"),
        ({"training": {"sync": {"algorithm": "allreduce"}}}, "spec.training.sync.algorithm", "easgd"),
        ({"trainng": {}}, "spec.trainng", "unknown field"),
        ({"redis": {"url": "http://x"}}, "spec.redis.url", "redis://"),
        ({"recovery": {"mode": "sometimes"}}, "spec.recovery.mode", "partial"),
        ({"replicas": {"trainer": {"resources": {"limit": {}}}}}, "spec.replicas.trainer.resources", "requests"),
    ],
)
def test_bad_input_names_the_field_and_the_expectation(spec: dict, field: str, expectation: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(manifest(spec))
    assert caught.value.field == field
    assert expectation in caught.value.expectation
    assert "\n" not in str(caught.value)


def test_bad_metadata_name_is_rejected() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(manifest({}, name="Bad_Name"))
    assert caught.value.field == "metadata.name"
    assert "DNS-1123" in caught.value.expectation


def test_wrong_kind_and_version() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest({**manifest({}), "apiVersion": "training.cpr.dev/v2"})
    assert caught.value.field == "apiVersion"


def test_file_errors_are_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    with pytest.raises(ManifestError, match=r"broken.yaml: \(yaml\): is not valid YAML at line"):
        load_manifest(broken)
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(manifest({})) + "---\n" + yaml.safe_dump(manifest({})))
    with pytest.raises(ManifestError, match="exactly one TrainingJob document, found 2"):
        load_manifest(two)
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c"}}
    with_claim = tmp_path / "with-claim.yaml"  # what kubectl apply -f takes: the claim the job needs beside it
    with_claim.write_text(yaml.safe_dump(claim) + "---\n" + yaml.safe_dump(manifest({}, name="solo")))
    assert load_manifest(with_claim).name == "solo"
    with pytest.raises(ManifestError, match="cannot be read"):
        load_manifest(tmp_path / "missing.yaml")


def test_model_is_importable_without_torch_or_kopf() -> None:
    import subprocess
    import sys

    code = ("import sys, trainingjob_operator.api, trainingjob_operator.tuning, trainingjob_operator.reconcile;"
            "bad=[m for m in ('torch','kopf') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0

