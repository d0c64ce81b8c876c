"""Stage `prepare`: build a dataset's images and manifest (the embedded glyphs, or a real release)."""
from __future__ import annotations

from ..data import prepare_dataset
from ..paths import dataset_dir


def prepare(params: dict, dataset: str) -> dict:
    """Prepare params.yaml's `datasets.<dataset>` into its folder; returns its summary (counts)."""
    return prepare_dataset(dataset, params["datasets"][dataset], dataset_dir(params, dataset))
