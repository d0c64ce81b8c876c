"""The criterion a trainer calls, and the base of the wrappers that make a paper's method of it.

A :class:`Criterion` is a standard loss (:mod:`.standard`) plus an optional miner:
``criterion(z, y, ref_emb=None, ref_labels=None, indices_tuple=None) -> scalar``. A paper's method
is a :class:`CriterionWrapper` around it with the same call, registered with the JSON schema of its
arguments and its table label, and configured under a method's ``augmenter:`` or ``regularizer:``
key, e.g. ``methods.triplet_da: {loss: triplet, regularizer: {density: {weight: 1.0}}}``:

* an *augmenter* (``AUGMENTERS``: IAA, SGAR) synthesises embeddings R and calls
  ``base(z, y, ref_emb=R, ref_labels=y_R)``: only the rows of z anchor, R is the candidate set;
* a *regulariser* (``REGULARIZERS``: DA) adds a term: ``total = base(z, y) + w * R(z, y)``.

:func:`build_criterion` builds one ``methods.<name>`` block of params.yaml: the base, then each
augmenter, then each regulariser (innermost first); :func:`method_problems` checks a block before
any training starts. The ``ref_emb`` contract and the wrappers' hooks: docs/methods/standard.md.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, Optional

import torch

from ..errors import DmlReproError
from ..registry import Registry
from .arguments import resolve_args, wrapper_args
from .standard import LOSSES, MINERS

#: ``fn(base: Criterion, args: dict) -> CriterionWrapper``; metadata ``schema`` (JSON-schema
#: properties of its arguments, each with its ``default``) and ``label`` (how tables name it).
REGULARIZERS: Registry = Registry("regularizer", ("schema", "label"))
#: ``fn(base, args, num_classes, embedding_dim) -> CriterionWrapper`` that synthesises embeddings
#: (IAA, SGAR); same metadata as REGULARIZERS. Wraps the base loss before any regulariser does.
AUGMENTERS: Registry = Registry("augmenter", ("schema", "label"))

#: The method keys whose value maps wrapper names to their arguments, and their registries, in
#: the order build_criterion applies them (innermost first).
WRAPPER_KEYS = {"augmenter": AUGMENTERS, "regularizer": REGULARIZERS}

#: Keys of a ``methods.<name>`` block that :func:`build_criterion` consumes.
METHOD_KEYS = ("loss", "loss_args", "miner", "miner_args", "loss_lr_multiplier", *WRAPPER_KEYS)


class Criterion(torch.nn.Module):
    """A base loss plus an optional miner: ``criterion(z, labels) -> scalar``.

    ``parameters()`` holds the loss's trainable tensors (Proxy-Anchor's proxies; empty otherwise);
    give them ``lr * lr_multiplier`` (see :meth:`param_groups`).
    """

    def __init__(
        self,
        loss: torch.nn.Module,
        miner: Optional[torch.nn.Module] = None,
        *,
        lr_multiplier: float = 1.0,
        name: str = "",
        supports_ref: bool = True,
        num_classes: Optional[int] = None,
    ):
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.lr_multiplier = float(lr_multiplier)
        self.name = name
        self.supports_ref = supports_ref
        #: labels must lie in [0, num_classes) when the loss owns per-class parameters
        self.num_classes = num_classes

    def mine(self, embeddings, labels, ref_emb=None, ref_labels=None):
        """The miner's indices tuple, or None (all pairs / triplets) without a miner."""
        if self.miner is None:
            return None
        return self.miner(embeddings, labels, ref_emb, ref_labels)

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None, indices_tuple=None):
        """Loss of a batch. ``ref_emb``/``ref_labels``: candidate set replacing the batch (augmenters);
        ``indices_tuple``: explicit pairs/triplets (skips the miner)."""
        self._check(embeddings, labels, ref_emb, ref_labels)
        if indices_tuple is None:
            indices_tuple = self.mine(embeddings, labels, ref_emb, ref_labels)
        return self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def start_epoch(self, epoch: int, epochs: int, train_embeddings: Callable) -> None:
        """Called by the trainer before each epoch's first step (after the epoch's generators are
        re-seeded). ``train_embeddings(augmented=False)`` returns (z, labels) of the whole training
        set (raw, un-normalised, no gradient; each image's plain view, or with ``augmented`` one
        view drawn as the training steps draw theirs), computed on demand: wrappers that keep
        statistics (IAA) use it; the base loss has nothing to do."""

    def clip_gradients(self, parameters: list, max_norm: Optional[float] = None) -> None:
        """Clip a step's gradients (after backward, before the optimizer step; AMP unscaled): their
        global norm at the trainer's ``max_norm`` (None: no clipping). A method whose released code
        clips otherwise overrides it (SGAR's code variant clips each value)."""
        if max_norm:
            torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def param_groups(self, lr: float) -> list:
        """Optimizer parameter groups for the loss's own parameters ([] when it has none)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr * self.lr_multiplier, "name": f"loss:{self.name}"}] if params else []

    def _check(self, embeddings, labels, ref_emb, ref_labels):
        if embeddings.ndim != 2 or labels.ndim != 1 or len(labels) != len(embeddings):
            raise ValueError(
                f"expected embeddings (N, D) and labels (N,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
            )
        if (ref_emb is None) != (ref_labels is None):
            raise ValueError("ref_emb and ref_labels go together")
        if ref_emb is not None and not self.supports_ref:
            raise ValueError(f"loss {self.name!r} does not accept ref_emb/ref_labels (PML limitation)")
        if not torch.isfinite(embeddings).all():
            raise FloatingPointError(
                f"non-finite embeddings reached loss {self.name!r} (diverged training?); "
                "try a lower train.lr or loss_lr_multiplier"
            )
        if self.num_classes is not None and len(labels):
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"loss {self.name!r} needs labels in [0, {self.num_classes}), got range [{lo}, {hi}]"
                )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, lr_multiplier={self.lr_multiplier}"


class CriterionWrapper(torch.nn.Module):
    """A method composed around a base :class:`Criterion` (DA's regulariser; IAA's and SGAR's
    augmenters). ``forward`` keeps Criterion's signature; everything else is the base's, plus the
    wrapper's own trainable parameters (at the base lr) if it has any."""

    def __init__(self, base: torch.nn.Module):
        super().__init__()
        self.base = base

    name = property(lambda self: self.base.name)
    supports_ref = property(lambda self: self.base.supports_ref)
    lr_multiplier = property(lambda self: self.base.lr_multiplier)
    num_classes = property(lambda self: self.base.num_classes)

    def mine(self, embeddings, labels, ref_emb=None, ref_labels=None):
        return self.base.mine(embeddings, labels, ref_emb, ref_labels)

    def start_epoch(self, epoch: int, epochs: int, train_embeddings: Callable) -> None:
        self.base.start_epoch(epoch, epochs, train_embeddings)

    def clip_gradients(self, parameters: list, max_norm: Optional[float] = None) -> None:
        self.base.clip_gradients(parameters, max_norm)

    def param_groups(self, lr: float) -> list:
        own = [p for n, p in self.named_parameters() if not n.startswith("base.") and p.requires_grad]
        return self.base.param_groups(lr) + ([{"params": own, "lr": lr, "name": f"wrapper:{self.name}"}] if own else [])


def build_criterion(
    method_cfg: Mapping[str, Any], num_classes: int, embedding_dim: int, *, name: Optional[str] = None
) -> torch.nn.Module:
    """Build the Criterion of one ``methods.<name>`` block of params.yaml.

    Keys: ``loss`` (required, a LOSSES name), ``loss_args`` (mapping, optional), ``miner``
    (optional, a MINERS name or null), ``miner_args`` (mapping, optional, needs ``miner``),
    ``loss_lr_multiplier`` (optional positive number; default per loss: 100 for proxy_anchor,
    1 otherwise). ``num_classes`` = number of training classes (labels 0..C-1),
    ``embedding_dim`` = head output size. ``name`` only improves error messages.
    ``augmenter`` / ``regularizer`` (optional mappings, an AUGMENTERS / REGULARIZERS name -> its
    arguments) wrap the base Criterion in each augmenter, then each regularizer, in turn (each a
    :class:`CriterionWrapper`).
    Seed torch before calling: Proxy-Anchor draws its proxies from the torch RNG.
    """
    where = f"methods.{name}" if name else "method"
    if not isinstance(method_cfg, Mapping):
        raise DmlReproError(f"{where} must be a mapping with at least a 'loss' key, got {method_cfg!r}")
    unknown = sorted(set(method_cfg) - set(METHOD_KEYS))
    if unknown:
        raise DmlReproError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; allowed: {', '.join(METHOD_KEYS)}"
        )
    loss_name = method_cfg.get("loss")
    if loss_name is None:
        raise DmlReproError(f"{where} has no 'loss'; available: {', '.join(LOSSES.names())}")
    if loss_name == "none":
        raise DmlReproError(
            f"{where}: loss 'none' (frozen backbone) trains nothing and has no criterion; "
            "the trainer handles it before building one"
        )
    loss_entry = LOSSES.get(loss_name)
    loss = loss_entry(method_cfg.get("loss_args"), num_classes, embedding_dim, where=f"{where}.loss_args")

    miner = None
    miner_name = method_cfg.get("miner")
    if miner_name is not None:
        miner = MINERS.get(miner_name)(method_cfg.get("miner_args"), num_classes, embedding_dim,
                                       where=f"{where}.miner_args")
    elif method_cfg.get("miner_args"):
        raise DmlReproError(f"{where}.miner_args is set but {where}.miner is not; add a miner or drop miner_args")

    lr_mult = method_cfg.get("loss_lr_multiplier", loss_entry.lr_multiplier)
    if (
        not isinstance(lr_mult, numbers.Real)
        or isinstance(lr_mult, bool)
        or not math.isfinite(lr_mult)
        or lr_mult <= 0
    ):
        raise DmlReproError(f"{where}.loss_lr_multiplier must be a positive number, got {lr_mult!r}")

    criterion = Criterion(
        loss,
        miner,
        lr_multiplier=float(lr_mult),
        name=str(loss_name),
        supports_ref=loss_entry.supports_ref,
        num_classes=num_classes if any(True for _ in loss.parameters()) else None,  # proxies: labels < C
    )
    for aug_name, args in wrapper_args(f"{where}.augmenter", method_cfg.get("augmenter"), AUGMENTERS).items():
        criterion = AUGMENTERS.get(aug_name)(criterion, args, num_classes, embedding_dim)
    for reg_name, args in wrapper_args(f"{where}.regularizer", method_cfg.get("regularizer"), REGULARIZERS).items():
        criterion = REGULARIZERS.get(reg_name)(criterion, args)
    return criterion


def method_labels(method_cfg: Mapping[str, Any]) -> list:
    """How tables and MLflow name what wraps the base loss, e.g. ['DA (reconstructed)']."""
    return [registry.metadata(n)["label"] for key, registry in WRAPPER_KEYS.items()
            for n in (method_cfg.get(key) or {}) if n in registry]


def method_problems(method_cfg: Mapping[str, Any]) -> list:
    """Problems in a method's ``loss_args`` / ``miner_args`` / ``regularizer`` (typos, wrong types),
    found before any training starts; [] when the method is sound."""
    problems = []
    for key, registry in WRAPPER_KEYS.items():
        try:
            wrapper_args(key, method_cfg.get(key), registry)
        except DmlReproError as exc:
            problems.append(str(exc))
    for kind, registry in (("loss", LOSSES), ("miner", MINERS)):
        name = method_cfg.get(kind)
        if name in (None, "none") or name not in registry:
            continue
        entry = registry.get(name)
        try:
            resolve_args(f"{kind}_args", method_cfg.get(f"{kind}_args"), entry.defaults, entry.choices)
        except DmlReproError as exc:
            problems.append(str(exc))
    return problems
