"""The TrainingJob API (training.cpr.dev/v1alpha1): the one source of truth for validation and defaults."""

from trainingjob_operator.api.loading import ManifestError, load_manifest, parse_manifest
from trainingjob_operator.api.spec import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    ROLES,
    SHORT_NAME,
    VERSION,
    Role,
    TrainingJob,
    TrainingJobSpec,
)
from trainingjob_operator.api.status import Condition, Phase, TrainingJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "ROLES",
    "SHORT_NAME",
    "VERSION",
    "Condition",
    "ManifestError",
    "Phase",
    "Role",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "load_manifest",
    "parse_manifest",
]
