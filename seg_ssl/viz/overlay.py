"""One palette and overlay helper for every tool that draws masks (infer, Grad-CAM, reports)."""
from __future__ import annotations

import numpy as np


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard PASCAL VOC bit-interleaved colour map, (n, 3) uint8."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def get_palette(palette: list | None, ignore_index: int = 255) -> np.ndarray:
    """A 256-entry lookup: the config's colours (or VOC's), ignore drawn white."""
    lut = voc_palette(256)
    if palette:
        cols = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        lut[:len(cols)] = cols
    lut[ignore_index] = (255, 255, 255)
    return lut


def colorize(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """HxW class ids -> HxWx3 uint8 colours."""
    return lut[np.asarray(mask, dtype=np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, lut: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised mask over an HxWx3 uint8 image (the colours are mixed with the image's,
    so they no longer match a legend: see :func:`outlined` and :func:`side_by_side`)."""
    col = colorize(mask, lut).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + col * alpha).round().clip(0, 255).astype(np.uint8)


def boundaries(mask: np.ndarray) -> np.ndarray:
    """HxW bool: pixels with a 4-neighbour of another class (the inside edge of every region)."""
    m = np.asarray(mask)
    edge = np.zeros(m.shape, bool)
    edge[1:] |= m[1:] != m[:-1]
    edge[:-1] |= m[:-1] != m[1:]
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    edge[:, :-1] |= m[:, :-1] != m[:, 1:]
    return edge


def outlined(image: np.ndarray, mask: np.ndarray, lut: np.ndarray, skip=()) -> np.ndarray:
    """The image with each region's 1-pixel outline in its class colour at full strength (classes
    in ``skip``, e.g. a background, get none); every other pixel is the image's own."""
    out = np.array(image, copy=True)
    edge = boundaries(mask) & ~np.isin(mask, list(skip))
    out[edge] = colorize(mask, lut)[edge]
    return out


def side_by_side(image: np.ndarray, mask: np.ndarray, lut: np.ndarray, skip=(), gap: int = 2) -> np.ndarray:
    """``outlined`` image | the mask in its class colours at full strength, so each colour drawn is
    exactly a legend's colour (a 50% blend over coloured digits turns grey into yellow)."""
    sep = np.full((image.shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([outlined(image, mask, lut, skip), sep, colorize(mask, lut)], 1)


def categorical_palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours for scatter plots of n classes: matplotlib's tab10 (designed to be told
    apart), then black, then tab20's light shades. The VOC palette is a bit pattern, not a
    categorical one: its classes 1 and 8 are two dark reds, (128, 0, 0) and (64, 0, 0)."""
    from matplotlib import colormaps
    tab10 = np.asarray(colormaps["tab10"].colors)
    light = np.asarray(colormaps["tab20"].colors)[1::2]
    cols = np.concatenate([tab10, [[0.0, 0.0, 0.0]], light])
    if n > len(cols):
        extra = colormaps["hsv"](np.linspace(0, 1, n - len(cols), endpoint=False))[:, :3]
        cols = np.concatenate([cols, extra])
    return (cols[:n] * 255).round().astype(np.uint8)



def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A [0, 1] heat map in matplotlib's jet colours blended over an HxWx3 uint8 image."""
    from matplotlib import colormaps

    col = (colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + col * alpha).round().clip(0, 255).astype(np.uint8)


def annotated_figure(picture: np.ndarray, title: str, legend: dict | None = None, heat_scale: bool = False):
    """A matplotlib figure of an HxWx3 picture with a title, and a legend of ``{name: (r, g, b)}``
    (the classes drawn) or a colour bar for a [0, 1] heat map in jet: what a reader of a saved
    overlay needs to read it. The caller saves it (``fig.savefig``) and closes it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    h, w = picture.shape[:2]
    scale = max(1.0, 256 / max(h, w))  # small images are drawn larger, so the text stays readable
    fig, ax = plt.subplots(figsize=(w * scale / 100 + (1.6 if legend or heat_scale else 0.4),
                                    h * scale / 100 + 0.6),
                           dpi=100)
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    if heat_scale:  # the heat's colours (jet over [0, 1]), not the picture's pixels
        fig.colorbar(plt.cm.ScalarMappable(norm=Normalize(0, 1), cmap="jet"), ax=ax, fraction=0.046, pad=0.04,
                     label="Grad-CAM")
    if legend:
        handles = [Patch(color=np.asarray(rgb) / 255.0, label=name) for name, rgb in legend.items()]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    return fig
