"""Shared pydantic configuration: camelCase on the wire (Kubernetes style), snake_case in Python."""

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every API object: strict about unknown fields so typos are caught, camelCase aliases."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict:
        """The Kubernetes-facing form: camelCase keys, JSON-compatible values."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
