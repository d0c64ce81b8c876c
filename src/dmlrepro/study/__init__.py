"""The study: every run, table and figure the paper declarations ask for, resolved once."""
from .declarations import PROTOCOLS, Needs, Study, Sweep, Table, load_study  # noqa: F401
from .runs import FeatureSet, Run, config_hash, resolve_run  # noqa: F401
