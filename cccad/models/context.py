"""In-context acting: a batch of streams appends one transition per step; a context object turns
the history so far into the next action's logits, with a KV cache.

- `SlidingWindow` (AD): the last context_len transitions. While the window is not full, each step
  appends one token to the cache; once full, it moves `stride` transitions and is recomputed
  (learned absolute positions shift), as in training. Stride 1 (the default) recomputes it every
  step; a stride of one episode drops the oldest episode at once and then appends, so the window
  holds context_len - stride + 1 to context_len transitions at about 1/stride of the cost.
- `CompressedWindow` (CompressedAD): when the window is full the oldest chunk is compressed into
  the latents (see cccad/models/compressed_ad.py); between compressions each step appends one
  token to the cache of [latents, recent]. The cost of a step does not grow with the history.

Both build token features exactly as training windows do: the first token of the context has no
previous transition.
"""
from __future__ import annotations

import copy

import torch

from cccad.models.ad import ADTransformer, token_features
from cccad.models.compressed_ad import CompressedAD


class History:
    """Raw transitions of n streams over up to `steps` steps."""

    def __init__(self, n: int, steps: int, obs_dim: int, n_actions: int, scale: float, device):
        self.n_actions, self.scale, self.device = n_actions, scale, device
        self.states = torch.zeros(n, steps + 1, obs_dim, dtype=torch.long)
        self.actions = torch.zeros(n, steps, dtype=torch.long)
        self.rewards = torch.zeros(n, steps)
        self.next_states = torch.zeros(n, steps, obs_dim, dtype=torch.long)

    def select(self, ids) -> "History":
        """The streams `ids` of this history (e.g. another task's, as a source of foreign latents)."""
        out = copy.copy(self)
        out.states, out.actions = self.states[ids], self.actions[ids]
        out.rewards, out.next_states = self.rewards[ids], self.next_states[ids]
        return out

    def features(self, lo: int, hi: int, first_of_window: bool = True) -> torch.Tensor:
        """Token features of steps lo..hi-1 (token t: transition t-1 and state t)."""
        prev = (torch.arange(lo, hi) - 1).clamp(min=0)
        return token_features(self.states[:, prev], self.actions[:, prev], self.rewards[:, prev],
                              self.next_states[:, prev], self.states[:, lo:hi], self.n_actions, self.scale,
                              mask_first=first_of_window).to(self.device)


class SlidingWindow:
    """AD's context: the last `window` transitions (default: all the model was trained on; a
    shorter one is the control that cuts it to its recent part), moving `stride` at a time."""

    def __init__(self, model: ADTransformer, history: History, window: int | None = None, stride: int = 1):
        self.model, self.history = model, history
        self.window = window or model.n_positions
        if not 1 <= stride <= self.window:
            raise ValueError(f"stride {stride} must be within [1, {self.window}] (the window)")
        self.stride, self.start, self.cache = stride, 0, None
        self.compressions = 0

    @torch.no_grad()
    def logits(self, t: int) -> torch.Tensor:
        if self.cache is not None and t - self.start < self.window:
            x = self.history.features(t, t + 1, first_of_window=False)
            return self.model.decode(x, cache=self.cache, start=t - self.start)[:, -1]
        while t - self.start >= self.window:  # full: drop the oldest `stride` transitions
            self.start += self.stride
        self.cache = self.model.new_cache()
        return self.model.decode(self.history.features(self.start, t + 1), cache=self.cache)[:, -1]


class CompressedWindow:
    """CompressedAD's context: latents of the compressed past, then the recent transitions.
    `memory`: "latents" (its own past), "none" (no latents: the recent transitions alone, as the
    depth-0 training windows are), or "foreign" (the latents of the same steps of `source`, a
    stream of another task: what the latents carry is then another goal's)."""

    def __init__(self, model: CompressedAD, history: History, memory: str = "latents", source: History | None = None):
        self.model, self.history, self.memory, self.source = model, history, memory, source
        self.chunk_starts: list[int] = []  # the chunks behind the latents, oldest first
        self.recent, self.cache = 0, None  # first recent step; cache of [latents, recent]
        self.compressions = 0

    @property
    def depth(self) -> int:
        return len(self.chunk_starts)

    @torch.no_grad()
    def logits(self, t: int) -> torch.Tensor:
        c = self.model.cfg
        while t - self.recent + 1 > c.recent_len:  # window full: compress the oldest chunk
            self.chunk_starts = (self.chunk_starts + [self.recent])[-c.max_compression_depth:]
            self.recent += c.chunk_len
            self.compressions += 1
            self.cache = None
        if self.cache is not None:
            x = self.history.features(t, t + 1, first_of_window=False)
            return self.model.decode(x, cache=self.cache, start=t - self.recent)[:, -1]
        self.cache = self.model.new_cache()
        if self.memory == "none" or not self.chunk_starts:
            return self.model.decode(self.history.features(self.recent, t + 1), cache=self.cache)[:, -1]
        chunks = (self.source if self.memory == "foreign" else self.history).features(self.chunk_starts[0], self.recent)
        recent = self.history.features(self.recent, t + 1, first_of_window=False)
        return self.model.decode(recent, prefix=self.model.latents(chunks), cache=self.cache)[:, -1]


def context_for(model, history: History, condition: str = "normal", source: History | None = None,
                stride: int = 1):
    """The context a model acts from under an evaluation condition (cccad/incontext.py); `stride`:
    how far AD's window moves when full."""
    if isinstance(model, CompressedAD):
        return CompressedWindow(model, history, {"normal": "latents", "no_latents": "none",
                                                 "foreign_latents": "foreign"}[condition], source)
    return SlidingWindow(model, history, model.cfg.recent_len if condition == "recent_only" else None, stride)
