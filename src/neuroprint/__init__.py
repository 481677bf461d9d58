"""neuroprint: detect adversarial inputs to image classifiers with neural fingerprints, and evaluate detectors
honestly. Importing the package registers every dataset, model, attack, detector and adaptive attack.
"""
from neuroprint.adaptive import ADAPTIVE_ATTACKS, detector_view, make_adaptive_attack
from neuroprint.attacks import AdversarialSet, build_adversarial_set, make_attack
from neuroprint.data import load_dataset
from neuroprint.detectors import Detector, make_detector
from neuroprint.errors import ConfigError, InputError, NeuroprintError, NotFittedError
from neuroprint.models import Classifier, build_model
from neuroprint.registry import ATTACKS, DATASETS, DETECTORS, MODELS

__version__ = "0.1.0"

__all__ = [
    "ADAPTIVE_ATTACKS", "ATTACKS", "DATASETS", "DETECTORS", "MODELS", "AdversarialSet", "Classifier", "ConfigError",
    "Detector", "InputError", "NeuroprintError", "NotFittedError", "build_adversarial_set", "build_model",
    "detector_view", "load_dataset", "make_adaptive_attack", "make_attack", "make_detector",
]
