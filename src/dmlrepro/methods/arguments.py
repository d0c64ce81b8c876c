"""Argument checking of a method's settings, before anything is built.

Two kinds of arguments reach the methods from params.yaml:

* ``loss_args`` / ``miner_args`` of a standard loss or miner (:mod:`.standard`): the accepted keys
  are the named ``__init__`` parameters of its pytorch-metric-learning class, with the PML
  defaults, overridden by the paper's (:func:`pml_entry`);
* the arguments of a wrapper (an ``augmenter`` or ``regularizer``, :mod:`.criterion`): the keys of
  its registered JSON schema (:func:`wrapper_args`).

Either way, an unknown key, a wrongly typed or non-finite value, or a value outside its choices is
a :class:`DmlReproError` that names the key, and the result is the full argument mapping with
every default filled in. A paper-versus-code ``variant`` sets several switches at once
(:func:`variant_switch`, :func:`resolve_variant`). Why: docs/methods/standard.md.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ..errors import DmlReproError
from ..registry import Registry

#: Constructor arguments that are PML plumbing (objects, not YAML values) or supplied by the
#: builder itself; they are never accepted from ``loss_args`` / ``miner_args``.
_NOT_FROM_CONFIG = {"self", "num_classes", "embedding_size"}


def _signature_defaults(cls: type) -> Dict[str, Any]:
    """Named ``__init__`` parameters of a PML class with their defaults (``**kwargs`` excluded)."""
    out: Dict[str, Any] = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in _NOT_FROM_CONFIG:
            continue
        out[p.name] = None if p.default is p.empty else p.default
    return out


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, numbers.Real):
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def resolve_args(
    where: str,
    user_args: Optional[Mapping[str, Any]],
    allowed: Dict[str, Any],
    choices: Mapping[str, Tuple[Any, ...]],
    nullable: frozenset = frozenset(),
) -> Dict[str, Any]:
    """``allowed`` (every key with its default) updated with ``user_args``, each of which must be a
    key of ``allowed``, of its default's type (or None where ``nullable``) and one of its ``choices``."""
    if user_args is None:
        user_args = {}
    if not isinstance(user_args, Mapping):
        raise DmlReproError(f"{where} must be a mapping of argument names to values, got {user_args!r}")
    for key, value in user_args.items():
        if key not in allowed:
            raise DmlReproError(
                f"unknown key {key!r} in {where}; allowed: {', '.join(sorted(allowed)) or '(none)'}"
            )
        if not (value is None and key in nullable) and not _type_ok(value, allowed[key]):
            raise DmlReproError(
                f"{where}.{key} = {value!r} has the wrong type; expected a "
                f"{type(allowed[key]).__name__} like the default {allowed[key]!r}"
            )
        if key in choices and value not in choices[key]:
            raise DmlReproError(
                f"{where}.{key} = {value!r} is not one of: {', '.join(map(repr, choices[key]))}"
            )
    return {**allowed, **dict(user_args)}


def pml_entry(
    kind: str,
    pml_class: type,
    *,
    defaults: Optional[Mapping[str, Any]] = None,
    extras: Optional[Mapping[str, Any]] = None,
    hidden: Tuple[str, ...] = (),
    choices: Optional[Mapping[str, Tuple[Any, ...]]] = None,
    supports_ref: bool = True,
    lr_multiplier: float = 1.0,
) -> Callable[[Callable], Callable]:
    """Turn ``fn(args, num_classes, embedding_dim) -> nn.Module`` into a validated registry entry.

    ``defaults`` override the PML signature defaults with the paper's values; ``extras`` are
    wrapper-level arguments the PML class does not have; ``hidden`` are PML arguments that are
    deliberately not configurable here.
    """
    allowed = {k: v for k, v in _signature_defaults(pml_class).items() if k not in hidden}
    unknown = set(defaults or {}) - set(allowed)
    if unknown:  # a programming error in the factory's module, caught at import time
        raise TypeError(f"{pml_class.__name__} has no arguments {sorted(unknown)}")
    allowed.update(defaults or {})
    allowed.update(extras or {})

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def build(user_args=None, num_classes: int = 0, embedding_dim: int = 0, *, where: str = kind):
            return fn(resolve_args(where, user_args, allowed, choices or {}), num_classes, embedding_dim)

        build.pml_class = pml_class
        build.defaults = dict(allowed)
        build.choices = dict(choices or {})
        build.formula = (fn.__doc__ or "").strip().splitlines()[0]
        build.supports_ref = supports_ref
        build.lr_multiplier = lr_multiplier
        return build

    return decorator


def wrapper_args(where: str, cfg: Any, registry: Registry) -> Dict[str, Dict[str, Any]]:
    """A method's ``regularizer`` (or ``augmenter``) block, validated: {name: its arguments with
    the defaults filled in}. Unknown names or keys, wrong types and out-of-range values name the key."""
    import jsonschema

    if cfg is None:
        return {}
    if not isinstance(cfg, Mapping):
        raise DmlReproError(f"{where} must map {registry.kind} names to their arguments, got {cfg!r}")
    resolved = {}
    for name, args in cfg.items():
        schema = registry.metadata(name)["schema"]  # an unknown name lists the known ones
        nullable = frozenset(k for k, v in schema.items() if "null" in str(v.get("type")) or None in v.get("enum", ()))
        args = resolve_args(f"{where}.{name}", args, {k: v["default"] for k, v in schema.items()}, {}, nullable)
        for e in jsonschema.Draft202012Validator({"properties": schema}).iter_errors(args):
            key = ".".join(map(str, e.absolute_path))
            raise DmlReproError(f"{where}.{name}.{key} = {e.instance!r}: {e.message}")
        resolved[name] = args
    return resolved


def variant_switch(kind: Mapping[str, Any], description: str) -> Dict[str, Any]:
    """The schema of a paper-versus-code switch: null (the default) takes the chosen variant's value."""
    return {**kind, "default": None, "description": f"{description} (null: the variant's value)"}


def resolve_variant(args: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """``args`` with every null switch replaced by the value of ``variants[args["variant"]]``; a
    switch given explicitly wins over its variant."""
    preset = variants[args["variant"]]
    return {**args, **{k: preset[k] if args.get(k) is None else args[k] for k in preset}}
