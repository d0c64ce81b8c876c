"""Stage `extract`: cache a prepared dataset's frozen backbone features for the runs that use them."""
from __future__ import annotations

from ..backbones import resolve_device
from ..backbones.extract import extract_features
from ..paths import dataset_dir
from ..study.runs import FeatureSet
from .preflight import check_outputs, features_output


def extract(params: dict, features: FeatureSet, device: str | None = None) -> dict:
    """Extract `features` (the settings its runs resolved, plus params.yaml's machine-only batch size
    and threads) into its file; refuses an unwritable or full disk first."""
    check_outputs(features_output(params, features, 1 + int(features.config["extract"].get("train_views", 0))))
    machine = {k: params["extract"][k] for k in ("batch_size", "threads") if k in params["extract"]}
    return extract_features(dataset_dir(params, features.dataset), features.config["backbone"],
                            {**features.config["extract"], **machine}, features.path(params),
                            device=resolve_device(device or params["device"]))
