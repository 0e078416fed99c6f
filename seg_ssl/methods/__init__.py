"""Training methods. Each is one readable file with a ``training_step``; this maps config names."""
from seg_ssl.methods.cac import CAC
from seg_ssl.methods.cps import CPS
from seg_ssl.methods.supervised import Supervised
from seg_ssl.methods.unimatch import UniMatch

METHODS = {"supervised": Supervised, "cac": CAC, "cps": CPS, "unimatch": UniMatch}


def build_method(cfg):
    return METHODS[cfg.method](cfg)
