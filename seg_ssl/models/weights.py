"""Strict weight loading that says what differs."""
from __future__ import annotations


def load_strict(model, state: dict) -> None:
    """Load every weight or raise ValueError naming what differs (a few keys of each kind)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        def few(keys):
            listed = " (" + ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "") + ")" if keys else ""
            return f"{len(keys)}" + listed
        raise ValueError(f"weights do not match the model: missing {few(missing)}, unexpected "
                         f"{few(unexpected)}, wrong shape {few(shape)}")
    model.load_state_dict(state, strict=True)
