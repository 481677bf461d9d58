"""neuroprint: detect adversarial inputs with neural fingerprints."""
__version__ = "0.1.0"
