"""SGAR: Proxy-Anchor with graded synthesis of positives and an intra-class ranking (Liu et al., EAAI 2024).

arXiv 2304.10941; official code github.com/Liuzt1999/SCAR. An *augmenter*
(``methods.<m>.augmenter.sgar``) around the ``proxy_anchor`` loss only (it needs the proxies P_c).
With x = z / ||z||, a projector q(v) = ReLU(L2norm(W v + b)) that only the loss sees, and
S_c = {i : y_i = c, <P_c, x_i> >= tau} (a gate without gradient)::

    r_i^j     = x_i + j * alpha * u_j,  j = 1..N                 synthetics of graded intensity
    L_rank(i) = (1/s) log(1 + sum_{j<k} exp(s (c_k - c_j + delta))),  c_j = <q(r_i^j), q(x_i)>
    L_sp(c)   = log(1 + sum_{i in S_c} sum_j exp(a (m - <q(r_i^j), q(P_c)>)))
    L         = L_PA(x) + lambda sum_{c: S_c non-empty} [rho_m L_sp(c) + rho_g mean_{i in S_c} L_rank(i)]

Why: pulling every positive onto its proxy erases the intra-class variance that generalises to
unseen classes; the ranking keeps a weaker synthesis closer than a stronger one, so the embedding
keeps an ordered intra-class structure, and L_sp keeps the synthetics of a class near its proxy.
``variant: paper | code`` reproduces the paper or the released code, each difference also a
switch of its own (``clip_by_value`` acts through :meth:`clip_gradients`). Notation, learning
rates, vectorisation, cost and the paper-versus-code table: docs/methods/sgar.md.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from ..errors import DmlReproError
from .arguments import resolve_variant, variant_switch
from .criterion import AUGMENTERS, CriterionWrapper

LABEL = "SGAR"
_EPS = 1e-12  # F.normalize's floor under a norm

#: The switches each variant sets (a switch given explicitly wins over its variant's value).
VARIANTS = {
    "paper": {"directions": "random", "normalize_offsets": False, "metric_on_projection": False,
              "double_ranking": False, "sp_last_sample_only": False, "repeated_proxy_projection": False,
              "projector_lr_multiplier": 1.0, "sp_margin": "base", "clip_by_value": False},
    "code": {"directions": "learned", "normalize_offsets": True, "metric_on_projection": True,
             "double_ranking": True, "sp_last_sample_only": True, "repeated_proxy_projection": True,
             "projector_lr_multiplier": 100.0, "sp_margin": 0.1, "clip_by_value": True},
}
DIRECTIONS = ("random", "random_per_sample", "learned")



SCHEMA = {
    "variant": {"enum": ["paper", "code"], "default": "paper",
                "description": "paper: the method as published; code: every difference of the released code"},
    "N": {"type": "integer", "minimum": 1, "default": 5, "description": "N: synthetic positives per gated sample"},
    "alpha": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
              "description": "alpha: intensity step, r^j = x + j alpha u_j (the code's r)"},
    "tau": {"type": ["number", "null"], "default": 0.05,
            "description": "gate: synthesise x_i when <P_{y_i}, x_i> >= tau (raw proxy); null: every sample"},
    "scale": {"type": "number", "exclusiveMinimum": 0, "default": 32.0, "description": "s of the ranking loss"},
    "delta": {"type": "number", "default": 0.11, "description": "delta: ranking margin between consecutive intensities"},
    "lam": {"type": "number", "minimum": 0, "default": 0.23, "description": "lambda: weight of the SGAR terms"},
    "rho_m": {"type": "number", "minimum": 0, "default": 0.9, "description": "rho_m: weight of L_sp"},
    "rho_g": {"type": "number", "minimum": 0, "default": 0.9, "description": "rho_g: weight of the mean L_rank"},
    "sp_alpha": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                 "description": "scale of L_sp; null: the base Proxy-Anchor's alpha"},
    "clip_value": {"type": "number", "exclusiveMinimum": 0, "default": 10.0,
                   "description": "clip_by_value: each gradient value is clipped to [-clip_value, clip_value]"},
    "projector_dim": {"type": ["integer", "null"], "minimum": 1, "default": None,
                      "description": "d' (rows of W); null: the embedding size"},
    "directions": variant_switch({"enum": [*DIRECTIONS, None]},
                          "random (fresh per step) | random_per_sample | learned (the code's shuffled bank)"),
    "normalize_offsets": variant_switch({"type": ["boolean", "null"]}, "offsets re-normalised to unit length"),
    "metric_on_projection": variant_switch({"type": ["boolean", "null"]}, "Proxy-Anchor on q(x) instead of x"),
    "double_ranking": variant_switch({"type": ["boolean", "null"]}, "the ranking term counted twice"),
    "sp_last_sample_only": variant_switch({"type": ["boolean", "null"]}, "L_sp from the last gated sample of a class only"),
    "repeated_proxy_projection": variant_switch({"type": ["boolean", "null"]}, "L_sp against q^{|S_c|}(P_c)"),
    "projector_lr_multiplier": variant_switch({"type": ["number", "null"], "exclusiveMinimum": 0},
                                       "lr of W, b (and the bank D) / the head's lr"),
    "sp_margin": variant_switch({"type": ["number", "string", "null"], "pattern": "^base$"},
                                "margin of L_sp: a number, or base (the base Proxy-Anchor's margin)"),
    "clip_by_value": variant_switch({"type": ["boolean", "null"]},
                                    "clip each gradient value at +-clip_value instead of the trainer's norm clipping"),
}


def resolve(args: dict) -> dict:
    """The arguments with every null switch replaced by its variant's value."""
    return resolve_variant(args, VARIANTS)


# ------------------------------------------------------------------------------------------------
# The terms, on tensors
# ------------------------------------------------------------------------------------------------
def ranking_loss(c: torch.Tensor, scale: float, delta: float) -> torch.Tensor:
    """L_rank per row of c (S, N): (1/s) log(1 + sum_{j<k} exp(s (c_k - c_j + delta))), computed as
    softplus(logsumexp(.)) / s (no overflow for any s). N = 1: no pair, 0."""
    n = c.shape[1]
    if n < 2:
        return c.new_zeros(c.shape[0]) + 0 * c.sum(1)
    j, k = torch.triu_indices(n, n, 1, device=c.device)
    t = scale * (c[:, k] - c[:, j] + delta)
    return F.softplus(torch.logsumexp(t, dim=1)) / scale


def grouped_log1p_sum_exp(values: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """log(1 + sum_{v in group g} exp(v)) for g = 0..n_groups-1, one scatter: M_g = max(0, max v)
    (no gradient), M_g + log(exp(-M_g) + sum exp(v - M_g))."""
    m = values.new_zeros(n_groups).scatter_reduce(0, group, values.detach(), "amax", include_self=True)
    total = values.new_zeros(n_groups).index_add(0, group, torch.exp(values - m[group]))
    return m + torch.log(torch.exp(-m) + total)


def project(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """q(v) = ReLU(L2norm(W v + b)) on the last dimension."""
    return F.relu(F.normalize(F.linear(v, weight, bias), dim=-1))


# ------------------------------------------------------------------------------------------------
# The augmenter
# ------------------------------------------------------------------------------------------------
class SyntheticRanking(CriterionWrapper):
    """Proxy-Anchor + lambda sum_c [rho_m L_sp(c) + rho_g mean_{S_c} L_rank] (module docstring)."""

    def __init__(self, base, args: dict, num_classes: int, embedding_dim: int):
        super().__init__(base)
        loss = getattr(base, "loss", None)
        if getattr(base, "name", None) != "proxy_anchor" or not isinstance(loss, pml_losses.ProxyAnchorLoss):
            raise DmlReproError(
                f"SGAR wraps the proxy_anchor loss only (it gates and synthesises with its proxies); got "
                f"{getattr(base, 'name', type(base).__name__)!r}: set the method's loss: proxy_anchor")
        if embedding_dim < 1:
            raise DmlReproError(f"SGAR needs embedding_dim >= 1, got {embedding_dim}")
        a = self.args = resolve(args)
        d = int(embedding_dim)
        dp = int(a["projector_dim"] or d)
        for switch, why in (("metric_on_projection", "compares q(x) with the proxies"),
                            ("repeated_proxy_projection", "projects q(P_c) again")):
            if a[switch] and dp != d:
                raise DmlReproError(f"SGAR {switch} {why}: projector_dim must be null or {d}, got {dp}")
        self.projector = torch.nn.Linear(d, dp)
        torch.nn.init.orthogonal_(self.projector.weight)
        torch.nn.init.zeros_(self.projector.bias)
        self.directions = None
        if a["directions"] == "learned":
            self.directions = torch.nn.Parameter(torch.empty(a["N"], d))
            torch.nn.init.kaiming_normal_(self.directions, mode="fan_out")  # as the code
        self.sp_alpha = float(loss.alpha if a["sp_alpha"] is None else a["sp_alpha"])
        self.sp_margin = float(loss.margin if a["sp_margin"] == "base" else a["sp_margin"])

    # -- optimizer and schedule ------------------------------------------------------------------
    def param_groups(self, lr: float) -> list:
        own = [p for n, p in self.named_parameters() if not n.startswith("base.") and p.requires_grad]
        return self.base.param_groups(lr) + [
            {"params": own, "lr": lr * float(self.args["projector_lr_multiplier"]), "name": "sgar:projector"}]

    def start_epoch(self, epoch: int, epochs: int, train_embeddings: Callable) -> None:
        # the authors' warm-up epoch freezes the backbone only: there is none here (module docstring)
        super().start_epoch(epoch, epochs, train_embeddings)

    def clip_gradients(self, parameters: list, max_norm=None) -> None:
        if not self.args["clip_by_value"]:
            return super().clip_gradients(parameters, max_norm)
        # train.py: clip_grad_value_(model.parameters(), 10), then the same on criterion.parameters()
        torch.nn.utils.clip_grad_value_(parameters, self.args["clip_value"])

    # -- pieces ----------------------------------------------------------------------------------
    @property
    def proxies(self) -> torch.Tensor:
        return self.base.loss.proxies

    def q(self, v: torch.Tensor) -> torch.Tensor:
        return project(v, self.projector.weight, self.projector.bias)

    @torch.no_grad()
    def gate(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,) bool: <P_{y_i}, x_i> >= tau, x = z / ||z||, P raw; all True when tau is null."""
        if self.args["tau"] is None:
            return torch.ones(len(labels), dtype=torch.bool, device=labels.device)
        x = F.normalize(embeddings, dim=1)
        return (x * self.proxies.to(x)[labels]).sum(1) >= self.args["tau"]

    def permutations(self, n_rows: int, device) -> torch.Tensor:
        """(n_rows, N): one random order of the bank's rows per gated class (global torch RNG)."""
        return torch.argsort(torch.rand(n_rows, self.args["N"], device=device), dim=1)

    def offsets(self, n_samples: int, slot: torch.Tensor, n_classes: int, like: torch.Tensor):
        """(o (K, N, d), which (S,)): offset j of gated sample i is o[which[i], j]; r_i^j = x_i + o[which[i], j].

        o_j = j alpha u_j with unit u_j (random: K = 1, one draw per step; random_per_sample: K = S;
        learned: K = gated classes, the bank's rows shuffled per class), re-normalised to unit length
        when ``normalize_offsets``."""
        a = self.args
        n, d = a["N"], like.shape[1]
        kind = a["directions"]
        if kind == "learned":
            u = F.normalize(self.directions.to(like), dim=1)[self.permutations(n_classes, like.device)]
            which = slot
        else:
            k = 1 if kind == "random" else n_samples
            u = F.normalize(torch.randn(k, n, d, device=like.device, dtype=like.dtype), dim=2)
            which = torch.zeros_like(slot) if kind == "random" else torch.arange(n_samples, device=like.device)
        steps = torch.arange(1, n + 1, device=like.device, dtype=like.dtype) * a["alpha"]
        o = u * steps[None, :, None]
        if a["normalize_offsets"]:
            o = F.normalize(o, dim=2)
        return o, which

    def projected_proxies(self, p: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """q(P_c) for the rows of p (the gated classes' raw proxies), or q^{|S_c|}(P_c) with
        ``repeated_proxy_projection`` (counts = |S_c|)."""
        if not self.args["repeated_proxy_projection"]:
            return self.q(p)
        depth = counts.long()
        out, cur = p.new_zeros(len(p), self.projector.out_features), p
        for t in range(1, int(depth.max()) + 1):  # loop over the depth (<= samples per class), not classes
            cur = self.q(cur)
            out = torch.where((depth == t)[:, None], cur, out)
        return out

    # -- one step --------------------------------------------------------------------------------
    def terms(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict:
        """Every part of the loss of one batch: ``total``, ``pa``, ``gate`` (B,), and over the gated
        classes (``classes``, in increasing order) ``sp`` and ``rank_mean``; over the gated samples
        (batch order) ``c`` (S, N) and ``rank`` (S,)."""
        a = self.args
        w, b = self.projector.weight, self.projector.bias
        x = F.normalize(embeddings, dim=1)
        hx_all = None
        if a["metric_on_projection"]:
            hx_all = F.linear(x, w, b)
            pa = self.base(F.relu(F.normalize(hx_all, dim=1)), labels)
        else:
            pa = self.base(embeddings, labels)  # first: it checks the labels and finiteness
        gate = self.gate(embeddings, labels)
        out = {"pa": pa, "gate": gate, "total": pa}
        gated = torch.nonzero(gate).squeeze(1)
        if len(gated) == 0 or a["lam"] == 0:
            return out
        yg = labels[gated]
        classes, slot = torch.unique(yg, return_inverse=True)
        s_n, g_n, n = len(gated), len(classes), a["N"]
        counts = x.new_zeros(g_n).index_add(0, slot, x.new_ones(s_n))

        proxies = self.proxies.to(x)[classes]
        if hx_all is None and not a["repeated_proxy_projection"]:  # one product for W x_i + b and W P_c + b
            both = F.linear(torch.cat([x[gated], proxies]), w, b)
            hx, qp = both[:s_n], F.relu(F.normalize(both[s_n:], dim=1))
        else:
            hx = hx_all[gated] if hx_all is not None else F.linear(x[gated], w, b)
            qp = self.projected_proxies(proxies, counts)
        qx = F.relu(F.normalize(hx, dim=1))
        o, which = self.offsets(s_n, slot, g_n, x)
        ho = F.linear(o, w)  # W o_j: K x N rows only
        # W (x_i + o_j) + b = (W x_i + b) + W o_j, (S, N, d'); one shared draw (K = 1) broadcasts
        h = hx[:, None, :] + (ho if len(ho) == 1 else ho[which])
        # <q(r), v> = <ReLU(h), v> / max(||h||, eps): q(r) itself is never formed (two
        # multiply-and-sums beat a batched product of 150 tiny matrices here)
        rh, inv = F.relu(h), 1 / torch.linalg.vector_norm(h, dim=2).clamp_min(_EPS)
        c = (rh * qx[:, None, :]).sum(2) * inv  # c_j = <q(r_i^j), q(x_i)>, (S, N)
        cp = (rh * qp[slot][:, None, :]).sum(2) * inv  # <q(r_i^j), q(P_c)>

        rank = ranking_loss(c, a["scale"], a["delta"])
        rank_mean = x.new_zeros(g_n).index_add(0, slot, rank) / counts
        if a["double_ranking"]:
            rank_mean = 2 * rank_mean

        logits = self.sp_alpha * (self.sp_margin - cp)
        if a["sp_last_sample_only"]:
            order = torch.arange(s_n, device=x.device)
            last = torch.zeros(g_n, dtype=torch.long, device=x.device).scatter_reduce(
                0, slot, order, "amax", include_self=False)
            logits, groups = logits[last], torch.arange(g_n, device=x.device)
        else:
            groups = slot
        sp = grouped_log1p_sum_exp(logits.reshape(-1), groups.repeat_interleave(n), g_n)

        total = pa + a["lam"] * (a["rho_m"] * sp + a["rho_g"] * rank_mean).sum()
        out.update({"total": total, "classes": classes, "sp": sp, "rank_mean": rank_mean, "c": c, "rank": rank,
                    "gated": gated, "offsets": o, "which": which})
        return out

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None, indices_tuple=None):
        if ref_emb is not None or indices_tuple is not None:
            raise ValueError("SGAR (Proxy-Anchor) takes no ref_emb / indices_tuple")
        return self.terms(embeddings, labels)["total"]

    def extra_repr(self) -> str:
        return f"{LABEL}: " + ", ".join(f"{k}={v}" for k, v in self.args.items())


@AUGMENTERS.register("sgar", schema=SCHEMA, label=LABEL)
def sgar(base, args, num_classes: int, embedding_dim: int) -> SyntheticRanking:
    """SGAR: Proxy-Anchor + lambda sum_c [rho_m L_sp(c) + rho_g mean L_rank], N graded synthetics x + j alpha u_j of each gated sample."""
    return SyntheticRanking(base, args, num_classes, embedding_dim)
