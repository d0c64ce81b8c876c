"""Stage `claims`: a paper's claims page (paired differences, verdicts) and its MLflow experiment."""
from __future__ import annotations

from ..reporting.claims import write_claims_page
from ..study.declarations import Study


def claims(study: Study, paper: str, record: bool = True) -> tuple[list, list, int | None]:
    """(the files written, the claim results, the MLflow entries logged or None when not recording)."""
    paths, results = write_claims_page(study, paper)
    if not record:
        return paths, results, None
    from ..reporting.table_record import log_claims

    return paths, results, log_claims(study.params, paper, results)
