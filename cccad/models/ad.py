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


def token_features(states, actions, rewards, next_states, query, n_actions: int, scale: float):
    """(B, K, ...) integer transitions to (B, K, F) float features; token 0 has no previous
    transition (its features are zero and its `has_prev` flag is 0)."""
    has_prev = torch.ones(states.shape[:2] + (1,), device=states.device)
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


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd), nn.Dropout(cfg.dropout))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ADTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, obs_dim: int, n_actions: int):
        super().__init__()
        self.cfg, self.n_actions = cfg, n_actions
        # names shared with CompressedAD (seed: embed_context, embed_ln)
        self.embed_context = nn.Linear(n_token_features(obs_dim, n_actions), cfg.n_embd)
        self.embed_ln = nn.LayerNorm(cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.context_len, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, n_actions)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, F) token features -> (B, K, n_actions) logits."""
        K = features.shape[1]
        if K > self.cfg.context_len:
            raise ValueError(f"{K} tokens exceed model.context_len={self.cfg.context_len}")
        x = self.embed_ln(self.embed_context(features)) + self.pos_emb.weight[:K]
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward): 6 x weights + attention (PaLM appendix B)."""
        n = sum(p.numel() for name, p in self.named_parameters() if "pos_emb" not in name)
        c = self.cfg
        return 6 * n + 12 * c.n_layer * c.n_embd * c.context_len
