"""params.yaml's schema: the single definition of what params.yaml may hold (Snakemake validates
with it too), and one line per violation naming the key, the bad value and what is allowed.

Cross-references the schema cannot express (batch size a multiple of m_per_class, a loss's
arguments, ...) are checked by :mod:`dmlrepro.study.params`, which loads params.yaml.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from typing import Any

from .errors import DmlReproError

DEFAULT_PARAMS = os.environ.get("DMLREPRO_PARAMS", "params.yaml")  # Snakemake jobs set it


@lru_cache(maxsize=1)
def schema() -> dict:
    text = resources.files("dmlrepro").joinpath("schema/params.schema.json").read_text("utf-8")
    return json.loads(text)


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def describe(error) -> str:
    """One line per schema violation: the key, the bad value and what is allowed."""
    key = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"{key}." if error.absolute_path else ""
        return f"unknown key {', '.join(where + e for e in extra)}; allowed here: {', '.join(allowed)}"
    if error.validator == "required":
        return f"{key}: {error.message}"
    if error.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in error.validator_value)
        return f"{key}: {json.dumps(error.instance)} is not allowed; choose one of: {allowed}"
    bound = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if error.validator in bound:
        hint = error.schema.get("description") if isinstance(error.schema, dict) else None
        return (f"{key}: {json.dumps(error.instance)} is out of range; it must be {bound[error.validator]} "
                f"{error.validator_value}" + (f": {hint}" if hint else ""))
    return f"{key}: {error.message}"


def schema_problems(params: Any) -> list[str]:
    """params.yaml's violations of the schema, one line each (sorted by key)."""
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(schema())
    errors = sorted(validator_cls(schema()).iter_errors(params), key=lambda e: list(map(str, e.absolute_path)))
    return [describe(e) for e in errors]


def check_defined(params: dict, section: str, name: str) -> None:
    """`name` must be an entry of params[section] (datasets, methods)."""
    if name not in params[section]:
        raise DmlReproError(f"{section[:-1]} {name!r} is not defined in params.yaml "
                            f"(defined under {section}: {', '.join(params[section])})")
