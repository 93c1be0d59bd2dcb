"""Structured outputs: partial values of a JSON answer as it grows, validated at the end.

For a job whose ``response_format`` is ``{"type": "json_schema", "json_schema": {"schema": ...}}``
the worker parses the content so far with pydantic-core's partial JSON parser and emits an
``object.delta`` whenever the partial value changes; at the end it validates the whole answer
against the schema (jsonschema) and stores it as ``output.parsed``, or fails the job naming the
first path that does not match.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pydantic_core

from .errors import TokenspoolError

# partial parsing re-reads the whole answer; past this size parse every PARSE_EVERY-th delta
FULL_PARSE_LIMIT = 16_384
PARSE_EVERY = 16


class OutputValidationError(TokenspoolError):
    """The model's JSON answer is not valid JSON or does not match the requested schema."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"output does not match the schema at {path}: {message}")


def json_schema_of(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema a request asks for, or None when it asks for none."""
    if not response_format or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema")
    return schema if isinstance(schema, dict) else None


def _path(parts: Any) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


class StructuredTracker:
    """Follows one attempt's JSON content; emits partial values, validates the whole."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._parts: list[str] = []
        self._size = 0
        self._deltas = 0
        self._last: Any = None

    def feed(self, text: str) -> tuple[bool, Any]:
        """Add content; returns (changed, partial value)."""
        self._parts.append(text)
        self._size += len(text)
        self._deltas += 1
        if self._size > FULL_PARSE_LIMIT and self._deltas % PARSE_EVERY:
            return False, None
        raw = "".join(self._parts)
        try:
            value = pydantic_core.from_json(raw, allow_partial="trailing-strings")
        except ValueError:
            return False, None  # not JSON (yet); the final check reports it
        if value == self._last:
            return False, None
        self._last = value
        return True, value

    def finish(self) -> Any:
        """The complete, schema-valid value; raises OutputValidationError."""
        raw = "".join(self._parts)
        try:
            value = pydantic_core.from_json(raw)
        except ValueError as exc:
            raise OutputValidationError("$", f"not valid JSON: {exc}") from exc
        validator = jsonschema.validators.validator_for(self.schema)(self.schema)
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            raise OutputValidationError(_path(first.absolute_path), first.message)
        return value
