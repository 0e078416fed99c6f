"""Where the tools and configs seg_ssl ships are: ``tools/`` and ``configs/`` at the top of a
checkout (an editable install runs those), or ``seg_ssl/tools`` and ``seg_ssl/configs`` inside an
installed wheel (setup.cfg maps the checkout's folders there)."""
from __future__ import annotations

import os

PACKAGE = os.path.dirname(os.path.abspath(__file__))


def shipped_dir(name: str) -> str:
    """``tools`` or ``configs``: the checkout's folder when this package sits in one, else the
    copy inside the installed package."""
    checkout = os.path.join(os.path.dirname(PACKAGE), name)
    if os.path.isfile(os.path.join(os.path.dirname(PACKAGE), "setup.cfg")) and os.path.isdir(checkout):
        return checkout
    return os.path.join(PACKAGE, name)


def config_names() -> list[str]:
    """The shipped configs by name (``digits_lite0_cac``), the ``_base_`` parts left out."""
    folder = shipped_dir("configs")
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))


def resolve_config_path(path: str) -> str:
    """``path`` if it is a file; else a shipped config it names: ``digits_lite0_cac``,
    ``digits_lite0_cac.yaml`` or ``configs/digits_lite0_cac.yaml`` (a path from the docs, run
    outside a checkout); else ``path`` unchanged (the caller reports it missing)."""
    if os.path.isfile(path):
        return path
    name = os.path.basename(path)
    file = name if name.endswith((".yaml", ".yml")) else name + ".yaml"
    candidate = os.path.join(shipped_dir("configs"), file)
    if os.path.isfile(candidate) and os.path.dirname(path) in ("", "configs"):
        return candidate
    return path
