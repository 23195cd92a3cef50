"""The base of every configuration section's model: unknown keys are errors, values are frozen,
and YAML's booleans are never taken as numbers. Kept apart from schema.py (the whole file's
schema) so that a command that reads one section (`pacsguard scan`) loads only what it needs."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's `yes`, `on` and `true` are booleans, which pydantic would take as the number 1:
        `port: yes` must be an error naming the key, not port 1 (an outside tester, round 5)."""
        if info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool):
            if _wants_number(annotation) and not _admits(annotation, bool):
                raise ValueError(f"expected a number, not the boolean {str(value).lower()}")
        elif isinstance(value, list) and any(isinstance(item, bool) for item in value):
            items = [m for a in _members(annotation) if get_args(a) for m in _members(get_args(a)[0])]
            if any(m in (int, float) for m in items) and bool not in items:  # dicom_ports: [yes, 104]
                raise ValueError("expected numbers, not booleans (`yes`, `on`, `true` are booleans in YAML)")
        return value


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types a field's annotation admits (the members of a union, or the type itself)."""
    args = get_args(annotation)
    return tuple(m for a in args for m in _members(a)) if args and type(annotation).__name__ in (
        "UnionType", "_UnionGenericAlias") else (annotation,)


def _wants_number(annotation: Any) -> bool:
    return any(m in (int, float) for m in _members(annotation))


def _admits(annotation: Any, kind: type) -> bool:
    return kind in _members(annotation)
