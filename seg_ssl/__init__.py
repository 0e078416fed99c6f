"""seg_ssl: semi-supervised semantic segmentation (labeled-only, CAC, CPS, UniMatch) on one trainer."""
__version__ = "0.1.0"
