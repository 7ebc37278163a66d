"""Algorithm Distillation: a causal transformer over a cross-episode learning history.

Token t is one transition: the embedding of the previous transition (s, a, r, s') together with
the state s_t the agent now acts in; the output at token t predicts a_t. A window of K tokens thus
trains K predictions at once, and at evaluation the last token's output is the action.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cccad.config import ModelConfig
from cccad.models.attention import attention


def token_features(states, actions, rewards, next_states, query, n_actions: int, scale: float,
                   mask_first: bool = True):
    """(B, K, ...) integer transitions to (B, K, F) float features. The first token of a window
    has no previous transition (its features are zero and its `has_prev` flag is 0); `mask_first`
    false: the tokens continue a window."""
    has_prev = torch.ones(states.shape[:2] + (1,), device=states.device)
    if mask_first:
        has_prev[:, 0] = 0
    feats = torch.cat([
        has_prev,
        states.float() / scale,
        F.one_hot(actions.long(), n_actions).float(),
        rewards.float().unsqueeze(-1),
        next_states.float() / scale,
    ], dim=-1) * has_prev
    return torch.cat([feats, query.float() / scale], dim=-1)


def n_token_features(obs_dim: int, n_actions: int) -> int:
    return 1 + obs_dim + n_actions + 1 + obs_dim + obs_dim


class SelfAttention(nn.Module):
    """Multi-head self-attention; causal for the decoders, bidirectional for the encoders. With a
    `cache` (one dict per layer, from `new_cache`), keys and values are kept in a buffer of the
    cache's capacity, and a call either fills an empty cache (any number of tokens) or appends
    one token."""

    def __init__(self, cfg: ModelConfig, causal: bool = True):
        super().__init__()
        self.n_head, self.dropout, self.causal = cfg.n_head, cfg.dropout, causal
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, cache: dict | None = None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        causal = self.causal
        if cache is not None:
            n = cache.get("n", 0)
            if n == 0:
                shape = (B, self.n_head, cache["capacity"], C // self.n_head)
                cache["k"], cache["v"] = x.new_empty(shape), x.new_empty(shape)
            elif T != 1:
                raise ValueError("a filled cache takes one token at a time")
            else:
                causal = False  # the one new token attends to everything before it
            if n + T > cache["capacity"]:
                raise ValueError(f"cache full ({cache['capacity']} tokens)")
            cache["k"][:, :, n:n + T], cache["v"][:, :, n:n + T] = k, v
            cache["n"] = n + T
            k, v = cache["k"][:, :, :n + T], cache["v"][:, :, :n + T]
        y = attention(q, k, v, causal, self.dropout, self.training)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def mlp(cfg: ModelConfig) -> nn.Sequential:
    """A block's feed-forward part."""
    return nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd),
                         nn.Dropout(cfg.dropout))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool = True):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg, causal)
        self.mlp = mlp(cfg)

    def forward(self, x, cache: dict | None = None):
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


def init_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation, residual projections scaled down by depth."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
    for name, p in model.named_parameters():
        if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
            nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))


class ADTransformer(nn.Module):
    """The AD decoder. `n_positions` tokens of context (default model.context_len); CompressedAD
    puts latents in front of them as a `prefix`."""

    def __init__(self, cfg: ModelConfig, obs_dim: int, n_actions: int, n_positions: int | None = None):
        super().__init__()
        self.cfg, self.n_actions = cfg, n_actions
        self.n_positions = n_positions or cfg.context_len
        self.n_prefix = 0  # tokens a subclass puts in front (CompressedAD: latents)
        # names shared with CompressedAD (as the encoder pre-training guide names them)
        self.embed_context = nn.Linear(n_token_features(obs_dim, n_actions), cfg.n_embd)
        self.embed_ln = nn.LayerNorm(cfg.n_embd)
        self.pos_emb = nn.Embedding(self.n_positions, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, n_actions)
        init_weights(self, cfg.n_layer)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.embed_ln(self.embed_context(features))

    def decode(self, features: torch.Tensor, prefix: torch.Tensor | None = None,
               cache: list[dict] | None = None, start: int = 0) -> torch.Tensor:
        """(B, K, F) token features at positions start.. (after `prefix` (B, P, C) embeddings, if
        any) -> (B, K, n_actions) logits. `cache`: one dict per layer (see SelfAttention)."""
        K = features.shape[1]
        if start + K > self.n_positions:
            raise ValueError(f"{start + K} tokens exceed the model's {self.n_positions} positions")
        x = self.embed(features) + self.pos_emb.weight[start:start + K]
        if prefix is not None:
            x = torch.cat([prefix, x], 1)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        return self.head(self.ln_f(x[:, x.shape[1] - K:]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, F) token features -> (B, K, n_actions) logits."""
        return self.decode(features)

    def new_cache(self) -> list[dict]:
        """Empty KV caches (one per layer) for up to the model's window of tokens."""
        return [{"capacity": self.n_prefix + self.n_positions} for _ in self.blocks]

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward): 6 x weights + attention (PaLM appendix B)."""
        n = sum(p.numel() for name, p in self.named_parameters() if "pos_emb" not in name)
        c = self.cfg
        return 6 * n + 12 * c.n_layer * c.n_embd * c.context_len
