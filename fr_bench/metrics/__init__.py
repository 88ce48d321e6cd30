"""Dataset metrics: identity separability, identity consistency, intra-class LPIPS, FID and P/R.

Each metric has a torchmetrics-style object (``update``/``compute``) and a functional twin:

* :mod:`.separability` — :class:`SeparabilityMetric` / :func:`.separability.separability` (exact all-pairs EER,
  FMR100/FMR1000 under pyeer's and the strict rule, G/I statistics, FDR, d′);
* :mod:`.consistency` — :class:`ConsistencyMetric` / :func:`identity_consistency`;
* :mod:`.diversity` — :class:`IntraClassLPIPS` / :func:`intra_class_lpips`;
* :mod:`.fidelity` — FID and Improved Precision/Recall through torch-fidelity.

Heavy dependencies (lpips, torch-fidelity) are imported only when those metrics run.
"""

from .consistency import ConsistencyMetric, ConsistencyResult, identity_consistency
from .separability import (
    SeparabilityMetric,
    SeparabilityResult,
    pair_scores,
    separability_from_scores,
)

__all__ = [
    "ConsistencyMetric",
    "ConsistencyResult",
    "SeparabilityMetric",
    "SeparabilityResult",
    "identity_consistency",
    "pair_scores",
    "separability_from_scores",
]
