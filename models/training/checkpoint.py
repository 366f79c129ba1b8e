"""Resumable training state: model, optimiser, step and RNG saved atomically every few steps.

Why atomic: training runs in the background for an hour and may be killed at any moment (session
end, Ctrl-C); a half-written checkpoint must never replace the last good one.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch


def save(path: Path, model: torch.nn.Module, opt: Optional[torch.optim.Optimizer], step: int,
         rng: np.random.Generator, extra: Optional[dict] = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict() if opt else None, "step": step,
                "rng": rng.bit_generator.state, "extra": extra or {}}, tmp)
    tmp.replace(path)


def load(path: Path, model: torch.nn.Module, opt: Optional[torch.optim.Optimizer],
         rng: Optional[np.random.Generator]) -> tuple[int, dict]:
    """Restore into ``model``/``opt``/``rng``; returns (step, extra). (0, {}) when absent."""
    if not path.exists():
        return 0, {}
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if opt is not None and state.get("opt"):
        opt.load_state_dict(state["opt"])
    if rng is not None and state.get("rng"):
        rng.bit_generator.state = state["rng"]
    return int(state["step"]), dict(state.get("extra") or {})


class Log:
    """Progress to stdout and one JSON object per line to ``path`` (the model card reads it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()

    def __call__(self, **rec) -> None:
        rec = {"time": round(time.time() - self.t0, 1), **rec}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()),
              flush=True)
