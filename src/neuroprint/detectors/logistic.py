"""`LogisticHead`: logistic regression fitted with scikit-learn, scored in torch (differentiable in the features).

LID (Ma et al. 2018, "Characterizing Adversarial Subspaces Using Local Intrinsic Dimensionality", arXiv 1801.02613)
and Mahalanobis (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", arXiv 1807.03888) both end in a logistic regression on a few per-layer scores. This head
standardises the features, fits `LogisticRegression` (with `C` chosen by cross-validation, as both papers'
`LogisticRegressionCV` does) and keeps only four tensors, so scoring is plain torch and adaptive attacks can differentiate through it.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from neuroprint.errors import ConfigError, InputError, NotFittedError

STATE_KEYS = ("shift", "scale", "coef", "intercept")
C_GRID = np.logspace(-4, 4, 10)  # LogisticRegressionCV's default grid of inverse regularisation strengths


class LogisticHead:
    """Standardise features `[N, F]` and return the logistic-regression logit `[N]` (higher = label 1 = adversarial).

    `cv_folds >= 2` chooses the inverse regularisation `C` from `C_GRID` by the log-loss of a seeded, stratified
    `cv_folds`-fold cross-validation, then refits on all data; `cv_folds = 0` fits `LogisticRegression(C=1)`.

    Example:
        >>> head = LogisticHead(random_state=0).fit(torch.randn(100, 3), torch.arange(100) % 2)
        >>> head(torch.randn(5, 3)).shape
        torch.Size([5])
    """

    def __init__(self, cv_folds: int = 5, random_state: int = 0) -> None:
        if cv_folds == 1 or cv_folds < 0:
            raise ConfigError(f"cv_folds must be 0 (no cross-validation) or >= 2, got {cv_folds}")
        self.cv_folds = cv_folds
        self.random_state = random_state
        self.shift_: torch.Tensor | None = None
        self.scale_: torch.Tensor | None = None
        self.coef_: torch.Tensor | None = None
        self.intercept_: torch.Tensor | None = None

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> LogisticHead:
        """Fit on `features` `[N, F]` (finite) and `labels` `[N]` in {0 = clean, 1 = adversarial}."""
        f = features.detach().double().cpu().numpy()
        t = labels.detach().cpu().numpy().astype(np.int64)
        if f.ndim != 2 or t.shape != (len(f),):
            raise InputError(f"features must be [N, F] with labels [N], got {list(f.shape)} and {list(t.shape)}")
        if not np.isfinite(f).all():
            raise InputError("features contain NaN or infinite values (degenerate inputs?)")
        counts = np.bincount(t, minlength=2)
        if len(counts) != 2 or counts.min() < max(self.cv_folds, 1):
            raise InputError(f"need >= {max(self.cv_folds, 1)} clean and adversarial examples, got {counts.tolist()}")
        shift = f.mean(0)
        scale = f.std(0)
        scale[scale < 1e-12] = 1.0
        z = (f - shift) / scale
        model = LogisticRegression(solver="newton-cholesky", max_iter=1000)  # few features: fast and exact
        if self.cv_folds:
            folds = StratifiedKFold(self.cv_folds, shuffle=True, random_state=self.random_state)
            search = GridSearchCV(model, {"C": C_GRID}, scoring="neg_log_loss", cv=folds).fit(z, t)
            model = search.best_estimator_
        else:
            model.fit(z, t)
        self.shift_ = torch.as_tensor(shift, dtype=torch.float32)
        self.scale_ = torch.as_tensor(scale, dtype=torch.float32)
        self.coef_ = torch.as_tensor(model.coef_[0], dtype=torch.float32)
        self.intercept_ = torch.as_tensor(model.intercept_[:1], dtype=torch.float32)
        return self

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Logit `[N]` of features `[N, F]`; differentiable with respect to `features`."""
        if self.coef_ is None or self.shift_ is None or self.scale_ is None or self.intercept_ is None:
            raise NotFittedError("logistic head is not fitted: call fit(features, labels) first")
        if features.ndim != 2 or features.shape[1] != len(self.coef_):
            raise InputError(f"features must be [N, {len(self.coef_)}], got {list(features.shape)}")
        dev, dt = features.device, features.dtype
        z = (features - self.shift_.to(dev, dt)) / self.scale_.to(dev, dt)
        return z @ self.coef_.to(dev, dt) + self.intercept_.to(dev, dt)

    def state_dict(self, prefix: str = "head.") -> dict[str, torch.Tensor]:
        """The fitted tensors, keyed `prefix + name`."""
        if self.coef_ is None:
            raise NotFittedError("logistic head is not fitted: call fit(features, labels) first")
        return {prefix + k: getattr(self, k + "_") for k in STATE_KEYS}

    def load_state(self, tensors: dict[str, torch.Tensor], prefix: str = "head.") -> LogisticHead:
        """Inverse of `state_dict`."""
        missing = [prefix + k for k in STATE_KEYS if prefix + k not in tensors]
        if missing:
            raise InputError(f"saved state lacks the logistic-head tensors {missing}")
        for k in STATE_KEYS:
            setattr(self, k + "_", tensors[prefix + k].float())
        return self
