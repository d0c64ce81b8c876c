"""Evaluation sets: which searches a prepared dataset is evaluated by, read off its splits.

=================  =========================  ==============================================
dataset            manifest splits            evaluation sets (name: query -> search set)
=================  =========================  ==============================================
CUB, Cars, SOP,    ``test``                   ``test``: every test image queries the other
glyphs                                        test images (leave-one-out)
In-Shop            ``query``, ``gallery``     ``test``: each query searched in the gallery
VehicleID          ``test_800``,              one set per test list, each leave-one-out over
                   ``test_1600``,             its own images, as Roth et al.'s MIC code does
                   ``test_2400``              (ICCV 2019, evaluate.py, evaluate_multiple_datasets)
=================  =========================  ==============================================

A set's name is what a table column's ``split`` refers to and the block of metrics.json that holds
its metrics: ``<name>`` (honest protocol), ``<name>_last_epoch`` and ``<name>_paper``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..data.manifest import VEHICLEID_TEST_SPLITS
from ..errors import DmlReproError


@dataclass(frozen=True)
class EvaluationSet:
    name: str                  # a table column's `split`; the metrics.json block
    query: str                 # the manifest split whose images query
    gallery: str | None = None  # the split searched; None: leave-one-out within `query`

    @property
    def splits(self) -> tuple[str, ...]:
        return (self.query,) if self.gallery is None else (self.query, self.gallery)


def evaluation_sets(splits: Iterable[str], where: str = "the dataset") -> list[EvaluationSet]:
    """The evaluation sets of a dataset with these manifest splits (see the module doc)."""
    present = set(splits)
    sets = []
    if "test" in present:
        sets.append(EvaluationSet("test", "test"))
    if "query" in present or "gallery" in present:
        if not {"query", "gallery"} <= present:
            raise DmlReproError(f"{where} has a {'query' if 'query' in present else 'gallery'} split but no "
                                f"{'gallery' if 'query' in present else 'query'} split; re-run `dmlrepro prepare`")
        if sets:
            raise DmlReproError(f"{where} has both a test split and query/gallery splits; one or the other")
        sets.append(EvaluationSet("test", "query", "gallery"))
    sets += [EvaluationSet(s, s) for s in VEHICLEID_TEST_SPLITS if s in present]
    if not sets:
        raise DmlReproError(f"{where} has no evaluation split (test, query/gallery or test_800/1600/2400); "
                            "re-run `dmlrepro prepare`")
    return sets


def metrics_block(set_name: str, protocol: str) -> str:
    """The metrics.json block of a set under a selection protocol (honest, last_epoch, paper)."""
    return set_name if protocol == "honest" else f"{set_name}_{protocol}"


def score_set(embed, feats, eset: EvaluationSet, ks, compute_nmi: bool = False) -> dict:
    """Metrics of one evaluation set; `embed` maps (n, D) features to embeddings, `feats` is a
    loaded features file (dmlrepro.backbones.extract.load_features) holding the set's splits."""
    from .metrics import evaluate_retrieval

    query = embed(feats[f"{eset.query}_features"][0])
    if eset.gallery is None:
        return evaluate_retrieval(query, feats[f"{eset.query}_labels"], ks=ks, compute_nmi=compute_nmi)
    return evaluate_retrieval(query, feats[f"{eset.query}_labels"], embed(feats[f"{eset.gallery}_features"][0]),
                              feats[f"{eset.gallery}_labels"], ks=ks, compute_nmi=compute_nmi)
