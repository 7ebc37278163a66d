"""Where a process computes: the device, chosen at run time (a CUDA GPU when there is one)."""
from __future__ import annotations

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
