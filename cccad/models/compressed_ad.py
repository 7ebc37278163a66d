"""CompressedAD: Algorithm Distillation whose long context is compressed into latent tokens.

The decoder window holds `n_latent` latents and up to R = `recent_len` recent transitions. When it is full, the oldest `chunk_len` transitions are compressed: the encoder
reads [previous latents, chunk] and writes new latents (learned queries attending to both), so
latents of depth d summarise the d chunks behind the recent transitions. Depth is capped at
`max_compression_depth` D: the latents are always the recursive compression of the last (at
most) D chunks, re-encoded from those chunks' transitions, so a context of any length costs at
most n_latent + recent_len decoder tokens and D encoder passes per compression.

Shared parts carry the names of the CompressedAD encoder pre-training guide: `embed_context`,
`embed_ln` (token embedding, used by both encoder and decoder) and `encoder`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cccad.config import ModelConfig, PretrainConfig
from cccad.models.ad import ADTransformer, Block, init_weights, mlp, n_token_features
from cccad.models.attention import attention


class CrossAttention(nn.Module):
    """Multi-head attention of `x` (queries) to `context` (keys and values), no mask."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.q, self.kv = nn.Linear(cfg.n_embd, cfg.n_embd), nn.Linear(cfg.n_embd, 2 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, context):
        (B, M, C), N, h = x.shape, context.shape[1], self.n_head
        q = self.q(x).view(B, M, h, C // h).transpose(1, 2)
        k, v = self.kv(context).view(B, N, 2, h, C // h).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, False, self.dropout, self.training)
        return self.proj(y.transpose(1, 2).reshape(B, M, C))


class CrossBlock(nn.Module):
    """A block of the cross-attention encoder: the latents attend to a fixed context, then an MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_q, self.ln_context, self.ln2 = (nn.LayerNorm(cfg.n_embd) for _ in range(3))
        self.attn = CrossAttention(cfg)
        self.mlp = mlp(cfg)

    def forward(self, x, context):
        x = x + self.attn(self.ln_q(x), self.ln_context(context))
        return x + self.mlp(self.ln2(x))


class LatentEncoder(nn.Module):
    """[previous latents (optional), chunk embeddings] -> n_latent latents, read by learned
    queries: `model.encoder` "self" runs self-attention blocks over [queries, previous, chunk]
    (every token updated in every layer); "cross" runs blocks in which only the queries attend
    to the fixed [previous, chunk] (a fifth of the tokens through the layers at the usual sizes)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(cfg.n_latent, cfg.n_embd) * 0.02)
        self.chunk_pos = nn.Parameter(torch.randn(cfg.chunk_len, cfg.n_embd) * 0.02)
        self.latent_type = nn.Parameter(torch.zeros(cfg.n_embd))  # marks the previous latents
        self.cross = cfg.encoder == "cross"
        self.blocks = nn.ModuleList(CrossBlock(cfg) if self.cross else Block(cfg, causal=False)
                                    for _ in range(cfg.encoder_n_layer))
        self.ln = nn.LayerNorm(cfg.n_embd)

    def forward(self, chunk: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        B, m = chunk.shape[0], self.queries.shape[0]
        context = [] if previous is None else [previous + self.latent_type]
        context = torch.cat(context + [chunk + self.chunk_pos[:chunk.shape[1]]], 1)
        x = self.queries.expand(B, -1, -1)
        if self.cross:
            for block in self.blocks:
                x = block(x, context)
            return self.ln(x)
        x = torch.cat([x, context], 1)
        for block in self.blocks:
            x = block(x)
        return self.ln(x[:, :m])


def compress(embed, encoder: LatentEncoder, chunks: torch.Tensor, chunk_len: int) -> torch.Tensor | None:
    """(B, d*chunk_len, F) token features of d consecutive chunks -> latents of depth d (or None)."""
    latents = None
    for i in range(chunks.shape[1] // chunk_len):
        latents = encoder(embed(chunks[:, i * chunk_len:(i + 1) * chunk_len]), latents)
    return latents


class CompressedAD(ADTransformer):
    def __init__(self, cfg: ModelConfig, obs_dim: int, n_actions: int):
        super().__init__(cfg, obs_dim, n_actions, n_positions=cfg.recent_len)
        self.n_prefix = cfg.n_latent
        self.encoder = LatentEncoder(cfg)
        self.latent_pos = nn.Parameter(torch.randn(cfg.n_latent, cfg.n_embd) * 0.02)
        init_weights(self.encoder, cfg.encoder_n_layer)

    def depth_of(self, n_tokens: int) -> int:
        """Training windows are d chunks followed by R recent transitions."""
        c = self.cfg
        depth, rest = divmod(n_tokens - c.recent_len, c.chunk_len)
        if n_tokens < c.recent_len or rest or depth > c.max_compression_depth:
            raise ValueError(f"{n_tokens} tokens are not d x {c.chunk_len} + {c.recent_len} "
                             f"with d <= {c.max_compression_depth}")
        return depth

    def latents(self, chunks: torch.Tensor) -> torch.Tensor | None:
        latents = compress(self.embed, self.encoder, chunks, self.cfg.chunk_len)
        return None if latents is None else latents + self.latent_pos

    def forward(self, features: torch.Tensor, with_latents: bool = False):
        """(B, d*chunk_len + R, F) -> logits (B, R, n_actions) for the R recent transitions (and,
        `with_latents`, the encoder's latents of the d chunks, or None for d = 0)."""
        n_chunk = self.depth_of(features.shape[1]) * self.cfg.chunk_len
        latents = compress(self.embed, self.encoder, features[:, :n_chunk], self.cfg.chunk_len)
        logits = self.decode(features[:, n_chunk:], prefix=None if latents is None else latents + self.latent_pos)
        return (logits, latents) if with_latents else logits

    def flops_per_token(self) -> float:
        c = self.cfg
        return 6 * sum(p.numel() for p in self.parameters()) + 12 * c.n_layer * c.n_embd * (c.n_latent + c.recent_len)


def transition_columns(obs_dim: int, n_actions: int) -> slice:
    """The (s, a, r, s') part of token features: what pre-training reconstructs."""
    return slice(1, 1 + 2 * obs_dim + n_actions + 1)


class ReconstructionDecoder(nn.Module):
    """Pre-training head: reads latents of depth d and reconstructs the d*chunk_len compressed
    transitions (one learned query per position, bidirectional attention over [latents, queries])."""

    def __init__(self, cfg: ModelConfig, pcfg: PretrainConfig, n_targets: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(cfg.max_compression_depth * cfg.chunk_len, cfg.n_embd) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg, causal=False) for _ in range(pcfg.pretrain_decoder_n_layer))
        self.ln = nn.LayerNorm(cfg.n_embd)
        self.out = nn.Linear(cfg.n_embd, n_targets)
        init_weights(self, pcfg.pretrain_decoder_n_layer)

    def forward(self, latents: torch.Tensor, n: int) -> torch.Tensor:
        m = latents.shape[1]
        x = torch.cat([latents, self.queries[:n].expand(latents.shape[0], -1, -1)], 1)
        for block in self.blocks:
            x = block(x)
        return self.out(self.ln(x[:, m:]))


class EncoderPretrainer(nn.Module):
    """Stage 1: the shared embedding and the encoder, trained to reconstruct what they compress."""

    def __init__(self, cfg: ModelConfig, pcfg: PretrainConfig, obs_dim: int, n_actions: int):
        super().__init__()
        self.cfg = cfg
        self.embed_context = nn.Linear(n_token_features(obs_dim, n_actions), cfg.n_embd)
        self.embed_ln = nn.LayerNorm(cfg.n_embd)
        self.encoder = LatentEncoder(cfg)
        init_weights(self.encoder, cfg.encoder_n_layer)
        nn.init.normal_(self.embed_context.weight, std=0.02)
        nn.init.zeros_(self.embed_context.bias)
        self.reconstruction = ReconstructionDecoder(cfg, pcfg, n_targets=2 * obs_dim + n_actions + 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, d*chunk_len, F) -> reconstructed transitions (B, d*chunk_len, targets)."""
        embed = lambda f: self.embed_ln(self.embed_context(f))  # noqa: E731
        return self.reconstruction(compress(embed, self.encoder, features, self.cfg.chunk_len), features.shape[1])


class WithReconstruction(nn.Module):
    """CompressedAD trained with an auxiliary reconstruction loss (train.reconstruction_weight):
    the policy, and a head like pre-training's that reconstructs, from the policy's latents, the
    transitions they compress; both learn together from the start."""

    def __init__(self, policy: CompressedAD, pcfg: PretrainConfig, obs_dim: int, n_actions: int):
        super().__init__()
        self.policy = policy
        self.reconstruction = ReconstructionDecoder(policy.cfg, pcfg, n_targets=2 * obs_dim + n_actions + 1)
