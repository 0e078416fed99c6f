"""seg_ssl: semi-supervised semantic segmentation (labeled-only, CAC, CPS, UniMatch, FixMatch,
UniMatch V2) on one trainer."""
__version__ = "0.2.1"


def load(checkpoint, config=None, overrides=(), device=None):
    """A trained model from a checkpoint (its stored config), with ``predict`` and ``predict_proba``:
    see :mod:`seg_ssl.api`. Imported lazily: ``import seg_ssl`` stays free of torch."""
    from seg_ssl.api import load as _load
    return _load(checkpoint, config, overrides, device)
