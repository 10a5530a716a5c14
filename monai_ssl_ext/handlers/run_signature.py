"""Checkpointable run settings: resuming a run written with other settings fails loudly."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["RunSignature"]


class RunSignature:
    """Settings stored in a resumable checkpoint and compared when it is loaded: resuming a run
    that was written with another label budget, seed or encoder raises instead of continuing it.

    Args:
        kwargs: the settings, e.g. ``label_budget="1%", pretrained_encoder=".../encoder.pt"``.
    """

    def __init__(self, **kwargs: Any):
        self.settings = {k: json.dumps(v, sort_keys=True, default=str) for k, v in kwargs.items()}

    def state_dict(self) -> dict:
        return dict(self.settings)

    def load_state_dict(self, state: dict) -> None:
        diff = {k: (state.get(k), v) for k, v in self.settings.items() if state.get(k) != v}
        if diff:
            text = ", ".join(f"{k}: checkpoint {old} vs now {new}" for k, (old, new) in diff.items())
            raise RuntimeError(
                f"the checkpoint to resume was written with other settings ({text}): "
                "set `resume` to false, or use another output folder"
            )
