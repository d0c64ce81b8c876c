"""IAA: intra-class adaptive augmentation with neighbor correction (Fu et al., IEEE TMM 2022).

arXiv 2211.16264; official code github.com/darkpromise98/IAA. An *augmenter*
(``methods.<m>.augmenter.iaa``) around any base loss of the registry:

1. class statistics (Eq. 7-8): every ``update_interval`` epochs, the maximum-likelihood mean mu_k
   and diagonal variance sigma2_k of the raw embeddings z of each class's training images;
2. neighbor correction (Eq. 9-13) of a class with n_k <= tau, from its K nearest classes by
   ||mu_i^2 - mu_k^2||:  Sigma_cr = (1 - a) sigma2_k + a [(1 - g) Sigma_nb + g Sigma_global],
   a = 1 / (1 + log(1 + beta (n_k - 1))),  Sigma_nb = sum_i w_i sigma2_i / sum_i w_i,
   w_i = n_i exp(-d_m^2 / (2 s_m^2) - d_cv^2 / (2 s_cv^2));
3. generation: M = ``copies`` synthetics per original, z_hat ~ N(z_i, lambda Sigma_{y_i});
4. loss: the B originals are the only anchors, originals + synthetics the candidates (``ref_emb``).

Why: synthetics drawn from a class's own spread cover more of its intra-class variation than
class-independent interpolations, and give harder, plausible pairs to mine; a class with few
samples borrows its neighbours' spread, as similar classes vary alike. ``variant: paper | code``
reproduces the paper or the released code, each difference also a switch of its own.
The details, the two choices the paper leaves open and the paper-versus-code table:
docs/methods/iaa.md.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..errors import DmlReproError
from .arguments import resolve_variant, variant_switch
from .criterion import AUGMENTERS, CriterionWrapper
from .kernels import multi_similarity_pairs

LABEL = "IAA"

#: The switches each variant sets (a switch given explicitly wins over its variant's value).
VARIANTS = {
    "paper": {"statistics": "reestimate", "update_interval": 4, "start": 0.0, "correction": "auto",
              "cumulative_sqrt": False, "exclude_own_copies": False, "lambda_decay": False,
              "statistics_views": "plain"},
    "code": {"statistics": "momentum", "update_interval": 2, "start": 0.3, "correction": False,
             "cumulative_sqrt": True, "exclude_own_copies": True, "lambda_decay": True,
             "statistics_views": "augmented"},
}
#: lambda_decay: (fraction of the epochs, factor from then on), the code's ``lamda_epoch``
LAMBDA_STEPS = ((0.4, 0.9), (0.6, 0.75), (0.8, 0.6))
#: correction: auto switches it on above this many training classes (the code's rule)
AUTO_CORRECTION_CLASSES = 1000



SCHEMA = {
    "variant": {"enum": ["paper", "code"], "default": "paper",
                "description": "paper: the method as published; code: every difference of the released code"},
    "lam": {"type": "number", "exclusiveMinimum": 0, "default": 0.8,
            "description": "lambda: synthetics ~ N(z, lambda Sigma) (paper: 0.8 CUB/Cars, 0.5-0.6 SOP/In-Shop)"},
    "copies": {"type": "integer", "minimum": 1, "default": 3, "description": "M: synthetics per original"},
    "sampling": {"enum": ["dynamic", "fixed"], "default": "dynamic",
                 "description": "dynamic: around z_i; fixed: around the class mean (Table XII)"},
    "covariance": {"enum": ["diagonal", "identity", "global"], "default": "diagonal",
                   "description": "the class's own diagonal Sigma, I, or one Sigma_global for all (Table IX)"},
    "samples_per_class": {"type": ["integer", "null"], "minimum": 1, "default": None,
                          "description": "estimate each class's statistics from this many images (Table XI); null: all"},
    "momentum": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2,
                 "description": "statistics: momentum keeps at most this share of the old statistics"},
    "neighbors": {"type": "integer", "minimum": 1, "default": 25, "description": "K: neighbour classes"},
    "tau": {"type": "number", "minimum": 0, "default": 40, "description": "classes with more samples are not corrected"},
    "beta": {"type": "number", "minimum": 0, "default": 0.1, "description": "a(n) = 1 / (1 + log(1 + beta (n - 1)))"},
    "gamma": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1,
              "description": "share of Sigma_global in the correction target"},
    "alpha": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "default": None,
              "description": "a fixed correction weight for every class (Table IX); null: the a(n) schedule"},
    "scale_mean": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": 1.0,
                   "description": "s_m of the neighbour weights; null: infinite (weights n_i only)"},
    "scale_cov": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": 1.0,
                  "description": "s_cv of the neighbour weights; null: infinite"},
    "normalize_distances": {"type": "boolean", "default": True,
                            "description": "min-max normalise d_m and d_cv over a class's K neighbours"},
    "statistics": variant_switch({"enum": ["reestimate", "momentum", None]}, "re-estimate or momentum-merge"),
    "update_interval": variant_switch({"type": ["integer", "null"], "minimum": 1}, "epochs between statistics updates"),
    "start": variant_switch({"type": ["number", "null"], "minimum": 0, "exclusiveMaximum": 1},
                     "fraction of the epochs before statistics and synthesis start"),
    "correction": variant_switch({"enum": ["auto", True, False, None]}, "neighbor correction: auto = above 1,000 classes"),
    "cumulative_sqrt": variant_switch({"type": ["boolean", "null"]}, "copy m uses Sigma^(1/2^m)"),
    "exclude_own_copies": variant_switch({"type": ["boolean", "null"]}, "an anchor's own synthetics are not positives"),
    "lambda_decay": variant_switch({"type": ["boolean", "null"]}, "lambda x 1/0.9/0.75/0.6 after 40/60/80 % of the epochs"),
    "statistics_views": variant_switch({"enum": ["plain", "augmented", None]},
                                       "statistics on each image's plain view or on one training-augmented view"),
}


def resolve(args: dict) -> dict:
    """The arguments with every null switch replaced by its variant's value."""
    return resolve_variant(args, VARIANTS)


# ------------------------------------------------------------------------------------------------
# Class statistics
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def class_moments(z: torch.Tensor, labels: torch.Tensor, num_classes: int, chunk: int = 16384):
    """(counts (C,), mean (C, d), var (C, d)): the ML diagonal Gaussian of each class's rows of z.

    Two passes (mean, then squared deviations), each an index_add over row chunks: no loop over
    classes, no N x C matrix. A class without rows has count 0, mean 0, var 0."""
    d = z.shape[1]
    counts = torch.bincount(labels, minlength=num_classes).to(z.dtype)
    total = z.new_zeros(num_classes, d)
    for i in range(0, len(z), chunk):
        total.index_add_(0, labels[i : i + chunk], z[i : i + chunk])
    mean = total / counts.clamp_min(1)[:, None]
    square = z.new_zeros(num_classes, d)
    for i in range(0, len(z), chunk):
        y = labels[i : i + chunk]
        square.index_add_(0, y, (z[i : i + chunk] - mean[y]).square())
    return counts, mean, square / counts.clamp_min(1)[:, None]


def per_class_subset(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask keeping n seeded rows of each class (all of a class with fewer)."""
    order = torch.randperm(len(labels), generator=generator)
    by_class = order[torch.sort(labels[order], stable=True).indices]  # grouped by class, shuffled within
    sorted_labels = labels[by_class]
    first = torch.searchsorted(sorted_labels, sorted_labels)  # position where each row's class begins
    rank = torch.arange(len(labels)) - first
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[by_class[rank < n]] = True
    return mask


@torch.no_grad()
def momentum_merge(mean, var, seen, new_mean, new_var, new_counts, momentum: float):
    """The code's ISDA-style update: w = n / (n + seen), at least 1 - momentum for a class with new
    rows (0 without); var <- (1-w) var + w new_var + w (1-w) (mean - new_mean)^2; mean <- (1-w) mean
    + w new_mean; seen += n. Returns (mean, var, seen)."""
    w = new_counts / (new_counts + seen).clamp_min(1)
    w = torch.where(new_counts > 0, w.clamp_min(1 - momentum), torch.zeros_like(w))[:, None]
    var = (1 - w) * var + w * new_var + w * (1 - w) * (mean - new_mean).square()
    return (1 - w) * mean + w * new_mean, var, seen + new_counts


def correction_weight(counts: torch.Tensor, tau: float, beta: float) -> torch.Tensor:
    """a(n) = 1 / (1 + log(1 + beta (n - 1))) for n <= tau, else 0."""
    a = 1.0 / (1.0 + torch.log1p(beta * (counts - 1).clamp_min(0)))
    return torch.where(counts <= tau, a, torch.zeros_like(a))


@torch.no_grad()
def nearest_classes(points: torch.Tensor, eligible: torch.Tensor, k: int, block: int = 2048) -> torch.Tensor:
    """For every row of ``points`` the indices (C, k') of its k' = min(k, #eligible - 1) nearest
    eligible other rows by Euclidean distance (itself excluded).

    One Gram block per pair of row blocks (i <= j) serves both blocks' rows, so only about half of
    the C x C distances are computed and never all held at once; a running top-k merges the blocks."""
    c = len(points)
    k_eff = max(min(k, int(eligible.sum()) - 1), 1)
    sq = points.square().sum(1)
    penalty = torch.zeros(c, dtype=points.dtype, device=points.device).masked_fill(~eligible, math.inf)
    best_d = points.new_full((c, k_eff), math.inf)
    best_i = torch.zeros((c, k_eff), dtype=torch.long, device=points.device)
    starts = list(range(0, c, block))

    def merge(rows: slice, cols: slice, d2: torch.Tensor):
        top = torch.topk(d2 + penalty[None, cols], min(k_eff, d2.shape[1]), dim=1, largest=False, sorted=False)
        cand_d = torch.cat([best_d[rows], top.values], 1)
        cand_i = torch.cat([best_i[rows], top.indices + cols.start], 1)
        keep = torch.topk(cand_d, k_eff, dim=1, largest=False, sorted=False).indices
        best_d[rows], best_i[rows] = cand_d.gather(1, keep), cand_i.gather(1, keep)

    for bi, i0 in enumerate(starts):
        ri = slice(i0, min(i0 + block, c))
        for j0 in starts[bi:]:
            rj = slice(j0, min(j0 + block, c))
            # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, one addmm
            d2 = torch.addmm(sq[None, rj], points[ri], points[rj].T, alpha=-2).add_(sq[ri, None])
            if i0 == j0:
                d2.fill_diagonal_(math.inf)  # a class is not its own neighbour
                merge(ri, rj, d2)
            else:
                merge(ri, rj, d2)
                merge(rj, ri, d2.T.contiguous())
    return best_i


def _pair_values(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    """The sparse C x C matrix with ``values`` at (rows[i], cols[i, j]) (CSR: K entries per row)."""
    import warnings

    k = cols.shape[1]
    crow = torch.arange(0, len(rows) * k + 1, k, device=cols.device)
    with warnings.catch_warnings():  # CSR is "beta" in torch; these ops are covered by tests
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols.reshape(-1), values.reshape(-1), (len(rows), size))


def _neighbor_distances(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """||x_i - x_{idx[i, j]}|| for every class i and neighbour j, via one sampled dense product
    (no (C, K, d) gather)."""
    import warnings

    c, k = idx.shape
    pattern = _pair_values(torch.arange(c), idx, torch.zeros(c * k, dtype=x.dtype), len(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dots = torch.sparse.sampled_addmm(pattern, x, x.T).values().reshape(c, k)
    sq = x.square().sum(1)
    return (sq[:, None] + sq[idx] - 2 * dots).clamp_min(0).sqrt()


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(x))


@torch.no_grad()
def neighbor_correction(mean, var, counts, *, neighbors=25, tau=40.0, beta=0.1, gamma=0.1, alpha=None,
                        scale_mean=1.0, scale_cov=1.0, normalize_distances=True):
    """(Sigma_cr (C, d), Sigma_global (d,)): the paper's neighbor correction (module docstring).

    Classes with fewer than two samples are never neighbours nor part of Sigma_global; they are
    corrected (a(1) = 1: their own variance is 0). With fewer than two eligible classes nothing is
    corrected."""
    import warnings

    eligible = counts >= 2
    weights = counts * eligible
    global_var = (weights[:, None] * var).sum(0) / weights.sum().clamp_min(1)
    a = correction_weight(counts, tau, beta) if alpha is None else torch.full_like(counts, float(alpha))
    if int(eligible.sum()) < 2 or not bool((a > 0).any()):
        return var.clone(), global_var
    squared = mean.square()  # Eq. (9): means compared by their element-wise squares
    idx = nearest_classes(squared, eligible, neighbors)
    d_m, d_cv = _neighbor_distances(squared, idx), _neighbor_distances(var, idx)
    if normalize_distances:
        d_m, d_cv = _minmax(d_m), _minmax(d_cv)
    log_w = torch.log(counts[idx].clamp_min(1))
    if scale_mean is not None:
        log_w = log_w - d_m.square() / (2 * scale_mean ** 2)
    if scale_cov is not None:
        log_w = log_w - d_cv.square() / (2 * scale_cov ** 2)
    w = torch.softmax(log_w, dim=1)  # w_i / sum w_i, computed in log space
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sigma_nb = _pair_values(torch.arange(len(idx)), idx, w, len(var)) @ var
    target = (1 - gamma) * sigma_nb + gamma * global_var
    return (1 - a[:, None]) * var + a[:, None] * target, global_var


# ------------------------------------------------------------------------------------------------
# The augmenter
# ------------------------------------------------------------------------------------------------
class IntraClassAugmenter(CriterionWrapper):
    """Base loss on the batch plus M synthetics per original drawn from its class's Gaussian."""

    def __init__(self, base, args: dict, num_classes: int, embedding_dim: int):
        super().__init__(base)
        if base.name == "npair":
            raise DmlReproError("IAA cannot wrap the npair loss: its pairs are the first two batch positions of a "
                                "class, so synthetics would never be used; choose another loss")
        if num_classes < 1 or embedding_dim < 1:
            raise DmlReproError(f"IAA needs num_classes >= 1 and embedding_dim >= 1, got {num_classes}, {embedding_dim}")
        self.args = resolve(args)
        self.n_classes = num_classes
        c, d = num_classes, embedding_dim
        self.register_buffer("mean", torch.zeros(c, d))
        self.register_buffer("var", torch.zeros(c, d))  # the class's own estimate
        self.register_buffer("sample_var", torch.zeros(c, d))  # what synthesis uses (corrected, or I, or global)
        self.register_buffer("counts", torch.zeros(c))
        self.register_buffer("seen", torch.zeros(c))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        # drawn from the torch RNG the trainer seeded with the run's seed: a fixed subset per run
        self.register_buffer("subset_seed", torch.randint(2 ** 62, ()))
        self.active, self.lam_now = False, float(self.args["lam"])

    # -- schedule -------------------------------------------------------------------------------
    def start_epoch(self, epoch: int, epochs: int, train_embeddings: Callable) -> None:
        super().start_epoch(epoch, epochs, train_embeddings)
        first = math.floor(self.args["start"] * epochs) + 1  # the first epoch with statistics
        if epoch >= first and (epoch - first) % self.args["update_interval"] == 0:
            augmented = self.args["statistics_views"] == "augmented"  # plain: the call without arguments
            self.update_statistics(*(train_embeddings(augmented=True) if augmented else train_embeddings()))
        self.active = epoch >= first and bool(self.ready)
        self.lam_now = self.args["lam"] * (lambda_factor(epoch / epochs) if self.args["lambda_decay"] else 1.0)

    def correction_on(self) -> bool:
        on = self.args["correction"]
        return self.n_classes > AUTO_CORRECTION_CLASSES if on == "auto" else bool(on)

    @torch.no_grad()
    def update_statistics(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        z, labels = z.detach().to(self.mean), labels.to(self.mean.device)
        if self.args["samples_per_class"] is not None:
            gen = torch.Generator().manual_seed(int(self.subset_seed))
            keep = per_class_subset(labels.cpu(), self.args["samples_per_class"], gen).to(labels.device)
            z, labels = z[keep], labels[keep]
        counts, mean, var = class_moments(z, labels, self.n_classes)
        if self.args["statistics"] == "momentum":
            mean, var, self.seen = momentum_merge(self.mean, self.var, self.seen, mean, var, counts, self.args["momentum"])
        self.mean, self.var, self.counts = mean, var, counts
        a = self.args
        if self.correction_on():
            own, global_var = neighbor_correction(
                mean, var, counts, neighbors=a["neighbors"], tau=a["tau"], beta=a["beta"], gamma=a["gamma"],
                alpha=a["alpha"], scale_mean=a["scale_mean"], scale_cov=a["scale_cov"],
                normalize_distances=a["normalize_distances"])
        else:
            several = counts * (counts >= 2)  # as in the correction: one-image classes have no variance
            own, global_var = var, (several[:, None] * var).sum(0) / several.sum().clamp_min(1)
        if a["covariance"] == "identity":
            own = torch.ones_like(var)
        elif a["covariance"] == "global":
            own = global_var.expand_as(var).clone()
        self.sample_var = own
        self.ready = torch.ones((), dtype=torch.bool, device=self.ready.device)

    # -- one step -------------------------------------------------------------------------------
    def synthesize(self, z: torch.Tensor, labels: torch.Tensor):
        """(M*B, d) synthetics and their labels; copy m occupies rows m*B .. (m+1)*B - 1."""
        m = self.args["copies"]
        centre = z if self.args["sampling"] == "dynamic" else self.mean[labels]
        var = self.sample_var[labels]
        noise = torch.randn((m, *z.shape), device=z.device, dtype=z.dtype)
        if self.args["cumulative_sqrt"]:  # the code: the square root is re-applied for every copy
            std = torch.stack([var.pow(0.5 ** (j + 1)) for j in range(m)])
        else:
            std = var.sqrt().expand(m, -1, -1)
        synthetic = centre + math.sqrt(self.lam_now) * std * noise
        return synthetic.reshape(-1, z.shape[1]), labels.repeat(m)

    def candidate_indices(self, z, labels, ref, ref_labels):
        """Mined (or all) pairs / triplets from the B anchors into ref = [originals, synthetics],
        an anchor's pair with itself removed (and with its own copies, ``exclude_own_copies``).

        The Multi-Similarity miner is run here on the masked pairs (:func:`multi_similarity_pairs`),
        so the excluded candidates take no part in its thresholds either, as in the released code;
        any other miner runs as PML has it and its pairs are filtered afterwards."""
        b = len(z)
        own = (lambda a, p: (p % b) == a) if self.args["exclude_own_copies"] else (lambda a, p: p == a)
        miner = getattr(self.base, "miner", None)
        if isinstance(miner, pml_miners.MultiSimilarityMiner):
            same = labels[:, None] == ref_labels[None, :]
            rows, cols = torch.arange(b, device=z.device)[:, None], torch.arange(len(ref), device=z.device)[None, :]
            pos = same & ~own(rows, cols)
            return multi_similarity_pairs(miner.distance(z, ref), pos, ~same, miner.epsilon, miner.distance.is_inverted)
        mined = self.base.mine(z, labels, ref, ref_labels)
        tuples = mined if mined is not None else lmu.get_all_pairs_indices(labels, ref_labels)
        if len(tuples) == 4:
            a1, p, a2, n = tuples
            keep = ~own(a1, p)
            return a1[keep], p[keep], a2, n
        a, p, n = tuples
        keep = ~own(a, p)
        return a[keep], p[keep], n[keep]

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None, indices_tuple=None):
        if not (self.training and self.active):
            return self.base(embeddings, labels, ref_emb, ref_labels, indices_tuple)
        if ref_emb is not None or indices_tuple is not None:
            raise ValueError("IAA builds the candidate set itself: no ref_emb / indices_tuple from outside")
        synthetic, synthetic_labels = self.synthesize(embeddings, labels)
        if not self.base.supports_ref:  # proxy losses: synthetics are more samples for the proxies
            return self.base(torch.cat([embeddings, synthetic]), torch.cat([labels, synthetic_labels]))
        ref = torch.cat([embeddings, synthetic])
        ref_labels = torch.cat([labels, synthetic_labels])
        return self.base(embeddings, labels, ref, ref_labels, self.candidate_indices(embeddings, labels, ref, ref_labels))

    def extra_repr(self) -> str:
        return f"{LABEL}: " + ", ".join(f"{k}={v}" for k, v in self.args.items())


def lambda_factor(progress: float) -> float:
    """The code's lambda schedule at ``progress`` = epoch / epochs: 1, then 0.9, 0.75, 0.6 after
    40, 60, 80 % (a step applies strictly after its fraction, as ``lamda_epoch`` does)."""
    factor = 1.0
    for fraction, value in LAMBDA_STEPS:
        if progress > fraction:
            factor = value
    return factor


@AUGMENTERS.register("iaa", schema=SCHEMA, label=LABEL)
def iaa(base, args, num_classes: int, embedding_dim: int) -> IntraClassAugmenter:
    """IAA: M synthetics per original from N(z_i, lambda Sigma_y), Sigma_y the class's (neighbour-corrected) diagonal covariance."""
    return IntraClassAugmenter(base, args, num_classes, embedding_dim)
