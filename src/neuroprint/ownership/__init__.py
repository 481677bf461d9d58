"""Model ownership: fingerprint a source model with conferrable adversarial examples (CEM, Lukas et al. 2021,
arXiv 1912.00888) or IPGuard points, verify a suspect model by its CAEAcc, and evaluate against removal attacks.

Example:
    >>> fp = generate_cem_fingerprint(source, surrogates, references, x_val, y_val, size=100, tau=0.9)
    >>> fp.save("runs/fingerprint")
    >>> verify(LocalSuspect(suspect_model), Fingerprint.load("runs/fingerprint"), rho=0.75).is_surrogate
"""
from neuroprint.ownership.cem import CEMConfig, run_cem
from neuroprint.ownership.conferrability import conferrability, predictions, transfer
from neuroprint.ownership.fingerprint import Fingerprint
from neuroprint.ownership.generate import generate_cem_fingerprint
from neuroprint.ownership.ipguard import IPGuardConfig, generate_ipguard_fingerprint
from neuroprint.ownership.removal import REMOVALS, make_removal
from neuroprint.ownership.verify import HTTPSuspect, LocalSuspect, Verification, cae_accuracy, verify

__all__ = [
    "REMOVALS",
    "CEMConfig",
    "Fingerprint",
    "HTTPSuspect",
    "IPGuardConfig",
    "LocalSuspect",
    "Verification",
    "cae_accuracy",
    "conferrability",
    "generate_cem_fingerprint",
    "generate_ipguard_fingerprint",
    "make_removal",
    "predictions",
    "run_cem",
    "transfer",
    "verify",
]
