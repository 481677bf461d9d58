"""Models: the zoo of paper architectures, the `Classifier` wrapper, training and checkpoints."""
from neuroprint.models import zoo as _zoo  # noqa: F401  (registers the architectures)
from neuroprint.models.classifier import Classifier, check_images
from neuroprint.registry import MODELS


def build_model(name: str, **kwargs: object):  # type: ignore[no-untyped-def]
    """Instantiate a registered architecture (see `MODELS.available()`)."""
    return MODELS.create(name, **kwargs)


__all__ = ["MODELS", "Classifier", "build_model", "check_images"]
