"""Training methods: one readable file each, on the contract of ``seg_ssl.methods.base``.

The registry below is the one place that lists them; the config schema takes each method's name
and section from it (``Method.name``, ``Method.config_section``).
"""
from seg_ssl.methods.cac import CAC
from seg_ssl.methods.cps import CPS
from seg_ssl.methods.fixmatch import FixMatch
from seg_ssl.methods.supervised import Supervised
from seg_ssl.methods.unimatch import UniMatch
from seg_ssl.methods.unimatch_v2 import UniMatchV2

METHODS = {m.name: m for m in (Supervised, CAC, CPS, UniMatch, FixMatch, UniMatchV2)}


def build_method(cfg, world_size: int = 1):
    return METHODS[cfg.method](cfg, world_size)
