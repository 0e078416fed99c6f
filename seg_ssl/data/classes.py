"""What a dataset's class list says: the names to show, and whether class 0 is background."""
from __future__ import annotations


def class_names(names, num_classes: int) -> list[str]:
    """The configured class names, or the class indices as names where a config gives none."""
    return list(names) if names else [str(i) for i in range(num_classes)]


def first_class_is_background(names) -> bool:
    """Whether class 0 is a background class (VOC, digits), not an object class (Cityscapes' road)."""
    return bool(names) and str(names[0]).lower() in ("background", "bg", "_background_")
