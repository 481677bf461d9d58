"""Model ownership (what the literature calls model fingerprinting): make a query set for a source model from
conferrable adversarial examples (CEM, Lukas et al. 2021, arXiv 1912.00888) or IPGuard points, verify a suspect
model by its CAEAcc on those ownership queries, and evaluate against removal attacks.

Example:
    >>> queries = generate_cem_queries(source, surrogates, references, x_val, y_val, size=100, tau=0.9)
    >>> queries.save("runs/queries")
    >>> verify(LocalSuspect(suspect_model), QuerySet.load("runs/queries"), rho=0.65).is_surrogate
"""
from neuroprint.ownership import extraction as _extraction  # noqa: F401  (registers distill, jacobian, knockoff, transfer)
from neuroprint.ownership.cem import CEMConfig, run_cem
from neuroprint.ownership.conferrability import conferrability, predictions, transfer
from neuroprint.ownership.generate import generate_cem_queries
from neuroprint.ownership.ipguard import IPGuardConfig, generate_ipguard_queries
from neuroprint.ownership.queries import QuerySet
from neuroprint.ownership.removal import REMOVALS, make_removal
from neuroprint.ownership.verify import HTTPSuspect, LocalSuspect, Verification, cae_accuracy, verify

__all__ = [
    "REMOVALS",
    "CEMConfig",
    "HTTPSuspect",
    "IPGuardConfig",
    "LocalSuspect",
    "QuerySet",
    "Verification",
    "cae_accuracy",
    "conferrability",
    "generate_cem_queries",
    "generate_ipguard_queries",
    "make_removal",
    "predictions",
    "run_cem",
    "transfer",
    "verify",
]
