"""The evaluation protocols (``eval.mode``) by name: their defaults resolved into the record that
``metrics.json`` keeps, and the line that says how an evaluation was scored. No torch here: a
metrics file is read and compared without it (``seg_ssl/evaluation/inference.py`` runs them)."""
from __future__ import annotations

WINDOW_MODES = ("slide", "slide_unimatch", "slide_cps", "slide_unimatch_v2")
MULTIPLE_MODES = {"pad_cac": 8, "resize_unimatch_v2": 14}  # the releases' multiples


def default_stride(mode: str, window: int) -> int:
    """2/3 of the window, rounded as each release rounds it: down in UniMatch's int(window * 2 / 3),
    up in CPS's np.ceil(window * stride_rate) and mmseg-style slide."""
    if mode in ("slide_unimatch", "slide_unimatch_v2"):
        return window * 2 // 3
    return -(-window * 2 // 3)


def protocol(mode: str = "whole", window: int | None = None, stride: int | None = None,
             multiple: int | None = None, scales=(1.0,), flip: bool = False, **_) -> dict:
    """What scored an evaluation, with every default resolved (``metrics.json``'s ``protocol``)."""
    out = {"mode": mode}
    if mode in WINDOW_MODES:
        window = window or 512
        out.update(window=window, stride=stride or default_stride(mode, window))
    if mode in MULTIPLE_MODES:
        out["multiple"] = multiple or MULTIPLE_MODES[mode]
    out.update(scales=[float(s) for s in scales], flip=bool(flip))
    return out


def describe(p: dict) -> str:
    """One line naming a protocol (``protocol``'s dict), as tools/eval.py prints it."""
    what = {
        "whole": "whole image",
        "slide": "windows of {window} at stride {stride}, last flush with the edge, logits averaged",
        "slide_unimatch": "UniMatch V1: windows of {window} from the origin at stride {stride}, cut at the "
                          "edges, softmax summed",
        "slide_cps": "CPS: centred on a window of {window} (mean colour) or flush windows at stride "
                     "{stride}, logits summed",
        "pad_cac": "CAC: reflect-padded to a multiple of {multiple}",
        "resize_unimatch_v2": "UniMatch V2: resized to the nearest multiple of {multiple}, logits "
                              "resized back",
        "slide_unimatch_v2": "UniMatch V2: windows of {window} at stride {stride}, last flush with the edge, "
                             "softmax summed",
    }.get(p["mode"], "")
    extra = ""
    if list(p.get("scales", [1.0])) != [1.0]:
        extra += f"; scales {p['scales']}"
    if p.get("flip"):
        extra += "; with flips"
    return f"{p['mode']} ({what.format(**p)}{extra})"
