"""The world-model nets of the JEPA-on-Atari study (its reference code: simple-rl-worlds): Encoder
(frames -> z), Predictor ((z_t, a_t) -> z_{t+1}), Decoder (z -> frame), RewardPredictor ((z_t,
z_{t+1}) -> reward). CNNs whose sizes come from `WorldModelConfig`: the encoder halves the frame
at each of `channels`' stages, the decoder mirrors it. Frames enter as uint8 and are scaled to
[0, 1] here. The decoder's output is unbounded (a sigmoid there saturated and died in a reference
run: a black frame scores well on Atari, so the pre-activations fell until no gradient came back);
`as_frames` clamps it to [0, 1] for scoring.

Below the nets: building them from a config, their weights files (as the reference names them,
under each run folder), and loading trained ones frozen.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cccad.checkpoint import load_matching, load_weights
from cccad.config import ATARI_KEYS, Config, WorldModelConfig
from cccad.envs.atari import channels


class Encoder(nn.Module):
    def __init__(self, cfg: WorldModelConfig, in_channels: int, frame_size: int):
        super().__init__()
        layers, prev = [], in_channels
        for c in cfg.channels:
            layers += [nn.Conv2d(prev, c, 4, stride=2, padding=1), nn.GELU()]
            prev = c
        self.convs = nn.Sequential(*layers)
        side = frame_size // 2 ** len(cfg.channels)
        self.proj = nn.Linear(prev * side * side, cfg.latent_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames
        return self.proj(self.convs(x).flatten(1))


class Predictor(nn.Module):
    """z_{t+1} = z_t + MLP([z_t, embed(a_t)]): the residual form predicts the change."""

    def __init__(self, cfg: WorldModelConfig, n_actions: int):
        super().__init__()
        self.action = nn.Embedding(n_actions, cfg.action_embed)
        self.mlp = nn.Sequential(nn.Linear(cfg.latent_dim + cfg.action_embed, cfg.predictor_hidden), nn.GELU(),
                                 nn.Linear(cfg.predictor_hidden, cfg.predictor_hidden), nn.GELU(),
                                 nn.Linear(cfg.predictor_hidden, cfg.latent_dim))

    def forward(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return z + self.mlp(torch.cat([z, self.action(action)], dim=-1))


class Decoder(nn.Module):
    def __init__(self, cfg: WorldModelConfig, out_channels: int, frame_size: int):
        super().__init__()
        chans = list(reversed(cfg.channels))
        self.side = frame_size // 2 ** len(chans)
        self.proj = nn.Linear(cfg.latent_dim, chans[0] * self.side * self.side)
        layers = []
        for c, nxt in zip(chans, chans[1:] + [out_channels]):
            layers += [nn.ConvTranspose2d(c, nxt, 4, stride=2, padding=1), nn.GELU()]
        self.deconvs = nn.Sequential(*layers[:-1])  # no activation after the last
        self.first = chans[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.proj(z)).view(len(z), self.first, self.side, self.side)
        return self.deconvs(x)


def as_frames(decoded: torch.Tensor) -> torch.Tensor:
    """A decoder's output as frames in [0, 1], as they are scored and drawn."""
    return decoded.float().clamp(0, 1)


def input_norm(dim: int) -> nn.BatchNorm1d:
    """Standardises a probe's frozen input (BatchNorm without affine, as linear probes do): latents
    of different encoders differ in scale by orders of magnitude, and what varies between states
    can be a tiny part of a latent's size."""
    return nn.BatchNorm1d(dim, affine=False)


class RewardPredictor(nn.Module):
    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        self.mlp = nn.Sequential(input_norm(2 * cfg.latent_dim), nn.Linear(2 * cfg.latent_dim, cfg.reward_hidden), nn.GELU(),
                                 nn.Linear(cfg.reward_hidden, cfg.reward_hidden), nn.GELU(),
                                 nn.Linear(cfg.reward_hidden, 1))

    def forward(self, z: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([z, z_next], dim=-1)).squeeze(-1)


def latent_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over latent dimensions of the std across the batch."""
    return z.float().std(dim=0).mean()


def latent_spread(z: torch.Tensor) -> torch.Tensor:
    """latent_std over the latents' RMS: scale-free, near zero when every state maps to (almost)
    the same latent, whatever the latents' size. Collapse shows as this falling toward zero."""
    z = z.float()
    return z.std(dim=0).mean() / z.pow(2).mean().sqrt().clamp(min=1e-12)


# ----------------------------------------------------------------------------- from a config, and from runs

# a trained encoder's weights file (encoder, predictor and decoder or EMA target) inside its run folder
WEIGHTS = {"encoder_decoder": "weights/encoder_decoder/model.pt", "jepa": "weights/jepa/model.pt"}
# nets must be built and fed alike to be loaded: the config they were trained with must match these
NET_CONFIG = tuple(f"env.{k}" for k in ATARI_KEYS) + tuple(
    f"world_model.{k}" for k in ("latent_dim", "channels", "predictor_hidden", "action_embed"))


def build_encoder(cfg: Config) -> Encoder:
    return Encoder(cfg.world_model, cfg.env.frame_stack * channels(cfg.env), cfg.env.frame_size)


def build_decoder(cfg: Config) -> Decoder:
    return Decoder(cfg.world_model, channels(cfg.env), cfg.env.frame_size)


def next_frame(batch: dict) -> torch.Tensor:
    """The newest frame of next_state, in [0, 1]: what the decoders reconstruct."""
    return batch["next_state"][:, -batch["frame_channels"]:].float() / 255.0


def weights_file(model: nn.ModuleDict, parts, step: int, cfg: Config, n_actions: int) -> dict:
    """A world-model weights file: `<part>_state_dict` per part."""
    return {**{f"{p}_state_dict": model[p].state_dict() for p in parts}, "global_step": step,
            "config": cfg.to_dict(), "n_actions": n_actions}


def trained_run(cfg: Config, name: str) -> Path:
    """The run folder of trained encoder `name` (a key of WEIGHTS): inputs.<name>_run."""
    return Path(getattr(cfg.inputs, f"{name}_run"))


def decode_next(model: nn.Module, batch: dict) -> torch.Tensor:
    """The encoder-decoder's next frame: decode the latent its predictor gives for (s_t, a_t)."""
    return model.decoder(model.predictor(model.encoder(batch["state"]), batch["action"]))


def load_frozen(cfg: Config, name: str, parts=("encoder", "predictor")) -> nn.ModuleDict:
    """The nets (`parts`: encoder, predictor, the encoder-decoder's decoder) a world-model run
    trained, frozen, refused unless built and fed as this config builds and feeds them."""
    path = trained_run(cfg, name) / WEIGHTS[name]
    state = load_matching(path, tuple(f"{p}_state_dict" for p in parts) + ("n_actions",), cfg.to_dict(), NET_CONFIG)
    nets = nn.ModuleDict({"encoder": build_encoder(cfg), "predictor": Predictor(cfg.world_model, state["n_actions"])})
    if "decoder" in parts:
        nets["decoder"] = build_decoder(cfg)
    for p in parts:
        load_weights(nets[p], state[f"{p}_state_dict"], path, prefix=f"{p}.")
    return nets.requires_grad_(False).eval()
