"""The one config system: YAML files that extend each other, `key=value` overrides, a typed schema.

A config file is a mapping of sections (see `Config`). `extends: path` (or a list of paths,
relative to the file) merges the parents first; the file's own keys win. Every key is checked
against the dataclass schema below; any problem raises `ConfigError` with a one-line message
naming the key and the file (or "command line") that set it, before any work starts.
"""
from __future__ import annotations

import copy
import difflib
import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad config: the message is one line naming the key and where it came from."""


DARKROOM_KEYS = ("size", "horizon", "test_fraction", "split_seed", "train_tasks")
ATARI_KEYS = ("game", "frame_size", "grayscale", "frame_skip", "sticky_actions", "frame_stack")


@dataclass(frozen=True)
class DarkroomRules:
    """A Darkroom-family env (the agent sees only its own (x, y); the task is hidden): the agent must
    reach `targets` cells in order, each rewarded 1 on the first arrival; with `stay_rewarded`,
    every step on the last target is rewarded. A task is the targets' cells (all distinct)."""
    targets: int
    stay_rewarded: bool


# the Darkroom family: a new env of it is a row here and a configs/envs/<name>.yaml
DARKROOM_RULES = {
    "darkroom": DarkroomRules(targets=1, stay_rewarded=True),  # reward on every step spent on the goal
    "darkroom_hard": DarkroomRules(targets=1, stay_rewarded=False),  # reward on reaching the goal, once
    "dark_key_to_door": DarkroomRules(targets=2, stay_rewarded=False),  # the key, then the door
}


@dataclass
class EnvConfig:
    name: str = "darkroom"  # a Darkroom-family env (DARKROOM_RULES) or atari
    # Darkroom family
    size: int = 9  # grid side
    horizon: int = 20  # steps per episode
    test_fraction: float = 0.1  # share of tasks held out for in-context evaluation
    split_seed: int = 0  # the train/test split depends on this only, not on the run seed
    # learn from this many of the split's training tasks (a fixed subset, chosen by split_seed;
    # the held-out tasks stay the same); null: all of them. dark_key_to_door has 5,832.
    train_tasks: int | None = None
    # Atari (name: atari): any ALE game, preprocessed
    game: str = "ALE/Assault-v5"
    frame_size: int = 64  # frames resized to frame_size x frame_size
    grayscale: bool = True
    frame_skip: int = 4  # action repetition k: each action is applied for k emulator frames
    sticky_actions: float = 0.25  # ALE v5's repeat_action_probability
    frame_stack: int = 4  # a state is the last frame_stack frames (the agent's and the world model's)

    @property
    def family(self) -> str:
        return "atari" if self.name == "atari" else "darkroom"

    @property
    def rules(self) -> DarkroomRules:
        return DARKROOM_RULES[self.name]

    def check(self, err):
        if self.name != "atari" and self.name not in DARKROOM_RULES:
            err("name", f"'{self.name}' is not one of: {', '.join([*DARKROOM_RULES, 'atari'])}")
        if self.family == "atari":
            if not self.game.startswith("ALE/"):
                err("game", f"'{self.game}' is not an ALE game id (like ALE/Assault-v5)")
            if not 36 <= self.frame_size <= 256:  # 36: the least the agent's CnnPolicy (NatureCNN) takes
                err("frame_size", "must be within [36, 256]")
            for key in ("frame_skip", "frame_stack"):
                if getattr(self, key) < 1:
                    err(key, "must be positive")
            if not 0.0 <= self.sticky_actions < 1.0:
                err("sticky_actions", "must be within [0, 1)")
            return
        if self.size < 2:
            err("size", "must be at least 2")
        if self.horizon < 1:
            err("horizon", "must be positive")
        if not 0.0 < self.test_fraction < 1.0:
            err("test_fraction", "must be between 0 and 1 (exclusive)")
        elif self.size <= 256:  # (larger grids are refused below)
            n_tasks = math.perm(self.size ** 2, self.rules.targets)
            n_test = max(1, round(self.test_fraction * n_tasks))
            if n_test >= n_tasks:
                err("test_fraction", f"holds out all {n_tasks} tasks, leaving none to train on")
            elif self.train_tasks is not None and not 1 <= self.train_tasks <= n_tasks - n_test:
                err("train_tasks", f"must be within [1, {n_tasks - n_test}] (the training tasks of {self.name} "
                                   f"at size {self.size}), or null for all")
        if self.size > 256:
            err("size", "must be at most 256 (positions are stored as uint8)")


@dataclass
class CollectConfig:
    source: Literal["qlearning", "sb3_ppo"] = "qlearning"
    streams_per_task: int = 20  # independent learning histories per training task
    episodes: int = 120  # episodes in each learning history
    # batched tabular Q-learning
    q_lr: float = 1.0
    gamma: float = 0.9
    q_init: float = 1.0  # optimistic initial value: drives systematic exploration
    eps_start: float = 0.1
    eps_end: float = 0.0
    eps_decay_fraction: float = 0.5  # share of the history over which epsilon decays linearly
    backward_replay: bool = True  # after each episode, replay it backwards (fast credit assignment)
    # stable-baselines3 PPO (per task, slow; for fidelity with published setups)
    ppo_n_steps: int = 100
    ppo_batch_size: int = 50
    ppo_lr: float = 0.0003

    def check(self, err):
        for key in ("streams_per_task", "episodes", "ppo_batch_size"):
            if getattr(self, key) < 1:
                err(key, "must be positive")
        if self.ppo_n_steps < 2:
            err("ppo_n_steps", "must be at least 2")
        for key in ("q_lr", "gamma", "eps_start", "eps_end", "eps_decay_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                err(key, "must be within [0, 1]")
        if self.ppo_lr <= 0:
            err("ppo_lr", "must be positive")


@dataclass
class ModelConfig:
    kind: Literal["ad", "compressed_ad"] = "ad"
    context_len: int = 200  # AD: transitions the model attends to (one token each)
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.0
    # CompressedAD: the decoder window holds n_latent latents + recent_len recent transitions;
    # when it is full the oldest chunk_len transitions are compressed, together with the
    # previous latents, into new latents (depth = chunks behind the latents)
    recent_len: int = 80
    n_latent: int = 20
    chunk_len: int = 40
    max_compression_depth: int = 3
    encoder_n_layer: int = 2
    # the encoder's blocks: "self" (self-attention over [queries, previous latents, chunk]) or
    # "cross" (the queries alone attend to [previous latents, chunk]: cheaper)
    encoder: Literal["self", "cross"] = "self"

    def check(self, err):
        for key in ("context_len", "n_embd", "n_layer", "n_head", "recent_len", "n_latent", "chunk_len",
                    "max_compression_depth", "encoder_n_layer"):
            if getattr(self, key) < 1:
                err(key, "must be positive")
        if self.n_embd % max(self.n_head, 1):
            err("n_embd", f"must be divisible by n_head ({self.n_head})", related="n_head")
        if not 0.0 <= self.dropout < 1.0:
            err("dropout", "must be within [0, 1)")
        if self.chunk_len > self.recent_len:
            err("chunk_len", f"must be at most recent_len ({self.recent_len}): the oldest chunk of the "
                "recent transitions is what gets compressed", related="recent_len")


@dataclass
class CurriculumPhase:
    steps: int
    depths: list[int]


@dataclass
class PretrainConfig:
    """CompressedAD stage 1 (`pretrain_encoder`); key names as in the CompressedAD encoder
    pre-training guide's pretrain_encoder.yaml."""
    pretrain_steps: int = 50000
    pretrain_batch_size: int = 128
    pretrain_lr: float = 0.0003
    pretrain_warmup_steps: int = 1000
    pretrain_decoder_n_layer: int = 2
    # phases of allowed compression depths; their steps add up to pretrain_steps
    curriculum: list[CurriculumPhase] = field(default_factory=lambda: [
        CurriculumPhase(20000, [1]), CurriculumPhase(20000, [1, 2]), CurriculumPhase(10000, [1, 2, 3])])

    def check(self, err):
        for key in ("pretrain_steps", "pretrain_batch_size", "pretrain_decoder_n_layer"):
            if getattr(self, key) < 1:
                err(key, "must be positive")
        if self.pretrain_lr <= 0:
            err("pretrain_lr", "must be positive")
        if not 0 <= self.pretrain_warmup_steps <= self.pretrain_steps:
            err("pretrain_warmup_steps", f"must be within [0, pretrain_steps={self.pretrain_steps}]",
                related="pretrain_steps")
        if not self.curriculum:
            err("curriculum", "must have at least one phase")
        for i, phase in enumerate(self.curriculum):
            if phase.steps < 1:
                err(f"curriculum[{i}].steps", "must be positive")
            if not phase.depths or any(d < 1 for d in phase.depths):
                err(f"curriculum[{i}].depths", "must list depths of 1 or more")
        total = sum(p.steps for p in self.curriculum)
        if total != self.pretrain_steps:
            err("curriculum", f"phases add up to {total} steps, pretrain_steps is {self.pretrain_steps}",
                related="pretrain_steps")

    def phase_of(self, step: int) -> int:
        end = 0
        for i, phase in enumerate(self.curriculum):
            end += phase.steps
            if step < end:
                return i
        return len(self.curriculum) - 1


@dataclass
class TrainConfig:
    freeze_encoder: bool = False  # CompressedAD from a pre-trained encoder (inputs.pretrained_encoder_path): keep it as it is
    steps: int = 20000
    batch_size: int = 64
    lr: float = 0.0003
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    num_warmup_steps: int = 500
    grad_clip: float = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    # with several processes (SLURM tasks, accelerate launch): DDP, or DeepSpeed ZeRO stage 2 or 3
    strategy: Literal["ddp", "zero2", "zero3"] = "ddp"
    # how long a process waits in a collective before it fails (a peer lost with its node must
    # not hang the others until the job's time limit)
    collective_timeout_s: int = 600
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    val_fraction: float = 0.05  # share of streams held out for validation loss
    val_every: int = 1000
    val_batches: int = 8
    # CompressedAD: windows cut from the histories (train, pretrain_encoder, probe) start at an
    # episode's first step: with chunk_len and recent_len whole episodes, chunks are episodes, as in
    # evaluation (AD's windows start anywhere: its evaluation window slides a step at a time)
    align_to_episodes: bool = False
    # CompressedAD: weight of an auxiliary loss, reconstructing the compressed transitions from
    # the latents (a head like pre-training's, trained jointly); 0: none
    reconstruction_weight: float = 0.0
    # Darkroom policies: every eval_every steps (0: never) an in-context evaluation on the held-out
    # goals (evaluate.episodes, eval_streams_per_task streams each) goes into the logged history
    eval_every: int = 0
    eval_streams_per_task: int = 4

    def check(self, err):
        for key in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                    "val_every", "val_batches", "collective_timeout_s"):
            if getattr(self, key) < 1:
                err(key, "must be positive")
        if self.lr <= 0:
            err("lr", "must be positive")
        if self.num_warmup_steps < 0 or self.num_warmup_steps > self.steps:
            err("num_warmup_steps", f"must be within [0, steps={self.steps}]", related="steps")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            err("betas", "must be two numbers in [0, 1)")
        if self.grad_clip < 0:
            err("grad_clip", "must be >= 0 (0 disables clipping)")
        if not 0.0 <= self.val_fraction < 1.0:
            err("val_fraction", "must be within [0, 1)")
        if self.val_every % max(self.log_every, 1):
            err("val_every", f"must be a multiple of log_every ({self.log_every})", related="log_every")
        if self.eval_every < 0 or self.eval_every % max(self.log_every, 1):
            err("eval_every", f"must be 0 or a multiple of log_every ({self.log_every})", related="log_every")
        if self.eval_streams_per_task < 1:
            err("eval_streams_per_task", "must be positive")
        if self.reconstruction_weight < 0:
            err("reconstruction_weight", "must be >= 0")


@dataclass
class EvaluateConfig:
    episodes: int = 40  # consecutive in-context episodes, context carried across them
    # independent evaluation streams per held-out task (16 x 8 Darkroom goals: a standard error of
    # the final normalised return of about 0.03)
    streams_per_task: int = 16
    greedy: bool = False  # sample actions (as AD does) unless true
    batch_size: int = 512  # (task, stream) pairs stepped at once
    # AD's window, once full, moves this many transitions at a time. 1: it slides every step and is
    # recomputed every step; env.horizon: it drops its oldest episode at once, then appends to its
    # KV cache (holding 1 to horizon transitions fewer, about horizon times cheaper; its
    # recent_only control then sees the current episode only, as CompressedAD's latents-off does
    # with chunk_len = recent_len = horizon). CompressedAD's window moves by model.chunk_len.
    window_stride: int = 1

    def check(self, err):
        for key in ("episodes", "streams_per_task", "batch_size", "window_stride"):
            if getattr(self, key) < 1:
                err(key, "must be positive")


@dataclass
class ProbeConfig:
    """Heads trained on frozen nets: the goal-position probe (Darkroom) and the world-model probes."""
    steps: int = 2000
    batch_size: int = 64
    lr: float = 0.001
    val_fraction: float = 0.2  # share of streams whose windows are only used to score the probe
    val_samples: int = 512

    def check(self, err):
        for key in ("steps", "batch_size", "val_samples"):
            if getattr(self, key) < 1:
                err(key, "must be positive")
        if self.lr <= 0:
            err("lr", "must be positive")
        if not 0.0 < self.val_fraction < 1.0:
            err("val_fraction", "must be between 0 and 1 (exclusive)")


@dataclass
class AtariConfig:
    """World-model data: a stable-baselines3 PPO agent (CnnPolicy) learns the game (`train_agent`),
    then plays `episodes` episodes, each action random with `random_action_share` (`collect`)."""
    ppo_timesteps: int = 200000  # the agent's training budget (agent steps)
    ppo_n_envs: int = 8  # vectorised envs for PPO training
    ppo_n_steps: int = 128  # rollout length per env
    ppo_batch_size: int = 256
    ppo_n_epochs: int = 4
    ppo_lr: float = 0.00025
    ppo_ent_coef: float = 0.01
    ppo_clip_range: float = 0.1
    ppo_gamma: float = 0.99
    ppo_clip_rewards: bool = True  # the agent learns from each reward's sign (the dataset keeps the game's rewards)
    # the agent's training seed; null: the run's seed. Set, one agent serves every seed of a study
    # (its train_agent runs once) and each seed collects its own episodes with it
    agent_seed: int | None = None
    episodes: int = 100  # episodes collected into the dataset
    max_episode_steps: int = 2000  # an episode is truncated (done) after this many agent steps
    random_action_share: float = 0.1  # share of collected actions drawn uniformly at random
    n_envs: int = 8  # envs stepped together during collection
    val_fraction: float = 0.1  # share of episodes held out for validation and scoring

    def check(self, err):
        for key in ("ppo_timesteps", "ppo_n_envs", "ppo_n_epochs", "episodes", "max_episode_steps", "n_envs"):
            if getattr(self, key) < 1:
                err(key, "must be positive")
        if self.ppo_n_steps < 2:
            err("ppo_n_steps", "must be at least 2")
        if not 2 <= self.ppo_batch_size <= self.ppo_n_steps * self.ppo_n_envs:
            err("ppo_batch_size", f"must be within [2, ppo_n_steps x ppo_n_envs = {self.ppo_n_steps * self.ppo_n_envs}]",
                related="ppo_n_steps")
        for key in ("ppo_lr", "ppo_clip_range"):
            if getattr(self, key) <= 0:
                err(key, "must be positive")
        for key in ("ppo_ent_coef", "ppo_gamma", "random_action_share"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                err(key, "must be within [0, 1]")
        held_out = round(self.val_fraction * self.episodes)
        if not 1 <= held_out < self.episodes:  # the world-model stages score on held-out episodes
            err("val_fraction", f"holds out {held_out} of {self.episodes} episodes; it must hold out at least "
                "one and leave one to train on", related="episodes")


@dataclass
class WorldModelConfig:
    """The world-model nets (Encoder, Predictor, Decoder, RewardPredictor) and the JEPA target."""
    latent_dim: int = 256
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # stride-2 conv stages
    predictor_hidden: int = 512
    action_embed: int = 32
    reward_hidden: int = 128
    ema_momentum: float = 0.996  # JEPA target encoder: target = m * target + (1 - m) * encoder
    ema_momentum_end: float = 0.996  # m goes linearly from ema_momentum to this over training
    collapse_spread: float = 0.01  # warn when the JEPA latents' spread (std across the batch / RMS) falls below
    # JEPA anti-collapse terms on the online latents (VICReg's; 0: the seed's objective alone):
    # variance, the mean over latent dims of max(0, 1 - std across the batch); covariance, the
    # squared off-diagonal covariances over latent_dim
    vicreg_variance_weight: float = 0.0
    vicreg_covariance_weight: float = 0.0

    def check(self, err):
        for key in ("latent_dim", "predictor_hidden", "action_embed", "reward_hidden"):
            if getattr(self, key) < 1:
                err(key, "must be positive")
        if not self.channels or any(c < 1 for c in self.channels):
            err("channels", "must list at least one positive channel count")
        for key in ("ema_momentum", "ema_momentum_end"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                err(key, "must be within [0, 1]")
        for key in ("collapse_spread", "vicreg_variance_weight", "vicreg_covariance_weight"):
            if getattr(self, key) < 0:
                err(key, "must be >= 0")


@dataclass
class InputsConfig:
    """What a stage reads from other runs: paths, which the study runner fills in from the
    upstream tasks (by hand: give them on the command line). Never part of a run's identity: that
    is decided by the config that made the input (its own sections), not by where it lies."""
    agent: str = ""  # a train_agent run's agent folder (Atari collect)
    dataset: str = ""  # a collect run's dataset folder
    pretrained_encoder_path: str = ""  # a pretrain_encoder run's encoder-pretrained-final.pt (CompressedAD)
    train_run: str = ""  # a train run folder (evaluate, probe)
    encoder_decoder_run: str = ""  # a train_encoder_decoder run folder (world-model probes)
    jepa_run: str = ""  # a train_jepa run folder (world-model probes)


# every stage (a module of cccad/stages), in dependency order: the one list of them
STAGE_NAMES = ("train_agent", "collect", "pretrain_encoder", "train", "probe", "evaluate", "train_encoder_decoder", "train_jepa",
               "train_jepa_decoder", "train_reward_predictor", "train_dynamics_reward_predictor")


@dataclass
class StudyConfig:
    name: str = "study"
    envs: list[str] = field(default_factory=lambda: ["darkroom"])  # configs/envs/<name>.yaml
    seeds: list[int] = field(default_factory=lambda: [0])
    stages: list[str] = field(default_factory=lambda: list(STAGE_NAMES))
    # variant name -> {dotted key: value} applied to the per-variant stages (train, evaluate, probe)
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"AD": {}})
    # "A - B": the report shows, per seed, variant A's value less B's of each compared metric
    comparisons: list[str] = field(default_factory=list)

    def compared(self) -> list[tuple[str, str]]:
        return [tuple(part.strip() for part in c.split(" - ")) for c in self.comparisons]

    def check(self, err):
        if not self.envs:
            err("envs", "must list at least one env")
        if not self.seeds:
            err("seeds", "must list at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            err("seeds", "has duplicates")
        for stage in self.stages:
            if stage not in STAGE_NAMES:
                err("stages", f"unknown stage '{stage}' (known: {', '.join(STAGE_NAMES)})")
        if not self.variants:
            err("variants", "must name at least one variant")
        for i, pair in enumerate(self.compared()):
            if len(pair) != 2 or not all(v in self.variants for v in pair):
                err(f"comparisons[{i}]", f"'{self.comparisons[i]}' is not 'A - B' with A and B among study.variants "
                    f"({', '.join(self.variants)})")


@dataclass
class Config:
    seed: int = 0
    env: EnvConfig = field(default_factory=EnvConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    atari: AtariConfig = field(default_factory=AtariConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)

    def check(self, err):
        if self.env.family == "atari":
            levels = len(self.world_model.channels)
            if self.env.frame_size % 2 ** levels:
                err("env.frame_size", f"must be divisible by 2^{levels} (world_model.channels has {levels} "
                    "stride-2 stages)", related="world_model.channels")
        if self.model.kind == "ad":
            for key in ("inputs.pretrained_encoder_path", "train.freeze_encoder", "train.reconstruction_weight"):
                section, _, name = key.partition(".")
                if getattr(getattr(self, section), name):
                    err(key, "applies to model.kind compressed_ad only", related="model.kind")
        shortest = min(self.model.context_len, self.model.recent_len)  # AD's windows: normal and recent_only
        if self.model.kind == "ad" and self.evaluate.window_stride > shortest:
            err("evaluate.window_stride", f"must be at most {shortest}, AD's shortest evaluation window "
                "(model.context_len, or model.recent_len for its recent_only control)", related="model.recent_len")
        deepest = max((d for p in self.pretrain.curriculum for d in p.depths), default=0)
        if deepest > self.model.max_compression_depth:
            err("pretrain.curriculum", f"uses depth {deepest}, beyond model.max_compression_depth="
                f"{self.model.max_compression_depth}", related="model.max_compression_depth")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_train(self, **changes) -> Config:
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))

    def for_probe(self) -> Config:
        """Heads on frozen nets train with the probe section's steps, batch and lr, at a constant lr."""
        p = self.probe
        return self.with_train(steps=p.steps, batch_size=p.batch_size, lr=p.lr, num_warmup_steps=0,
                               schedule="constant", weight_decay=0.0)

    def for_pretraining(self) -> Config:
        """CompressedAD's encoder pre-training runs the training loop with the pretrain section's
        steps, batch, lr and warmup."""
        p = self.pretrain
        return self.with_train(steps=p.pretrain_steps, batch_size=p.pretrain_batch_size, lr=p.pretrain_lr,
                               num_warmup_steps=p.pretrain_warmup_steps)


# keys that say how a run goes, not what it makes: never part of a run's identity (a study done
# under DDP is done for ZeRO-2 too; a checkpoint records its strategy and is refused by another)
HOW_NOT_WHAT = ("train.strategy", "train.collective_timeout_s")
# what decides a training run's logged history but not its weights: when it logs, validates and
# checkpoints. Part of its outputs' identity, not of its checkpoints' (a checkpoint resumes under
# other values)
HISTORY_ONLY = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.val_every",
                "train.val_batches", "train.eval_every", "train.eval_streams_per_task",
                "evaluate.episodes", "evaluate.greedy", "evaluate.batch_size", "evaluate.window_stride")


# keys since removed, kept in identities at the value every run had then, so runs from before keep
# theirs, and accepted in a config at that value, so configs from before load (the learning-speed
# thresholds: set by the report since 2026-12-07)
RETIRED = {"train.converged_loss": 1.0, "train.converged_return": 0.8}


def pick(cfg: Config, *sections: str, drop: tuple[str, ...] = ()) -> dict:
    """What decides a stage's outputs: the given top-level sections of cfg as a dict, less the
    dotted keys in `drop` and HOW_NOT_WHAT (and never `inputs`: see InputsConfig)."""
    d = cfg.to_dict()
    out = {s: copy.deepcopy(d[s]) for s in sections}
    for key, value in RETIRED.items():
        section, _, name = key.partition(".")
        if section in out:
            out[section][name] = value
    for key in drop + HOW_NOT_WHAT:
        section, _, name = key.partition(".")
        if section in out:
            out[section].pop(name, None)
    return out


def config_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading

def read_yaml(path: Path) -> dict:
    """A YAML mapping with its `extends` chain merged; each key is tagged with its source file."""
    tree, _ = _read_with_sources(Path(path), seen=())
    return tree


def _read_with_sources(path: Path, seen: tuple) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    try:
        node = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
        refuse_duplicate_keys(node, path)
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    parents = data.pop("extends", [])
    parents = [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: extends: must be a path or a list of paths")
    tree, sources = {}, {}
    for parent in parents:
        ptree, psources = _read_with_sources(path.parent / parent, seen + (path.resolve(),))
        merge_into(tree, ptree)
        set_by(sources, psources)
    merge_into(tree, data)
    set_by(sources, {k: str(path) for k in flatten(data)})
    return tree, sources


def set_by(sources: dict, keys: dict) -> None:
    """Record who set `keys` ({dotted key: source}); `sources` stays in the order the keys were
    last set, so of two keys the later-set one is later in it."""
    for key, source in keys.items():
        sources.pop(key, None)
        sources[key] = source


def refuse_duplicate_keys(node, path: Path, prefix: str = "") -> None:
    """YAML lets a later key silently replace an earlier one; a config may not say a key (or a
    whole section) twice."""
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value in node.value:
            key = key_node.value
            if key in seen:
                raise ConfigError(f"{path}: line {key_node.start_mark.line + 1}: '{prefix}{key}' appears twice "
                                  f"(first at line {seen[key]})")
            seen[key] = key_node.start_mark.line + 1
            refuse_duplicate_keys(value, path, f"{prefix}{key}.")
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            refuse_duplicate_keys(item, path, prefix)


def flatten(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        dotted = f"{prefix}{k}"
        # a variant's overrides are validated when the study's tasks are built (cccad/study.py)
        if isinstance(v, dict) and v and dotted != "study.variants":
            keys += flatten(v, dotted + ".")
        else:
            keys.append(dotted)
    return keys


# mappings a later layer replaces whole instead of merging into (a study's variants)
REPLACED = ("study.variants",)
# keys that go with a replaced mapping: a layer that replaces it without setting them drops them
# (a study's comparisons name its variants)
GOES_WITH = {"study.variants": "comparisons"}


def merge_into(base: dict, update: dict, prefix: str = "") -> dict:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and f"{prefix}{k}" not in REPLACED:
            merge_into(base[k], v, f"{prefix}{k}.")
        else:
            base[k] = copy.deepcopy(v)
            if (other := GOES_WITH.get(f"{prefix}{k}")) and other not in update:
                base.pop(other, None)
    return base


def parse_overrides(overrides: list[str]) -> dict:
    """`a.b=value` strings to a nested mapping; values are parsed as YAML scalars/lists."""
    pairs = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key=value")
        key, _, raw = item.partition("=")
        try:
            pairs[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            raise ConfigError(f"command line: {key}: cannot parse value '{raw}'") from None
    return nest(pairs, "command line")


def nest(pairs: dict[str, Any], source: str) -> dict:
    """{"a.b": v} to {"a": {"b": v}}."""
    tree: dict = {}
    for key, value in pairs.items():
        node = tree
        parts = str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {key}: conflicts with another key")
        node[parts[-1]] = value
    return tree


def load_config(path: str | Path | None, overrides: list[str] | tuple = (),
                extra: list[tuple[dict, str]] = ()) -> Config:
    """Load, merge and validate. `extra` holds (mapping, source name) layers applied after the
    file and before the command-line overrides (the study runner's env and variant layers)."""
    tree, sources = read_with_sources(path) if path else ({}, {})
    for layer, name in list(extra) + [(parse_overrides(list(overrides)), "command line")]:
        merge_into(tree, layer)
        set_by(sources, {k: name for k in flatten(layer)})
    return build(tree, sources)


def source_of(path: str | Path | None, overrides: list[str] | tuple, key: str) -> str:
    """Where `key`'s value came from under `load_config(path, overrides)`: a file, "command line"
    or "defaults"."""
    _, sources = read_with_sources(path) if path else ({}, {})
    set_by(sources, {k: "command line" for k in flatten(parse_overrides(list(overrides)))})
    return _source(sources, key)


def build(tree: dict, sources: dict[str, str], schema=Config):
    """`tree` as an instance of the dataclass `schema` (Config, or another file's schema such as
    a cluster profile's), every key checked."""
    cfg = _build_dataclass(schema, tree, "", sources)
    _check_all(cfg, "", sources)
    return cfg


def read_with_sources(path: Path) -> tuple[dict, dict]:
    """read_yaml's mapping and, for each dotted key, the file that set it (for `build`)."""
    return _read_with_sources(Path(path), seen=())


def _setter(sources: dict, key: str) -> str | None:
    """The entry of `sources` that set `key` (itself, a mapping above it, or the last key set
    inside it), or None: a default."""
    key = re.sub(r"\[\d+\]", "", key)  # list items are set by whoever set the list
    inside = [k for k in sources if k.startswith(key + ".")]  # a mapping: who set its keys
    if key not in sources and inside:
        return inside[-1]
    while key:
        if key in sources:
            return key
        key = key.rpartition(".")[0]
    return None


def _source(sources: dict, key: str) -> str:
    setter = _setter(sources, key)
    return sources[setter] if setter else "defaults"


def _set_later(sources: dict, a: str, b: str) -> bool:
    """Whether key `b` was set after key `a` (a default is set before everything)."""
    order = {k: i for i, k in enumerate(sources)}
    return order.get(_setter(sources, b), -1) > order.get(_setter(sources, a), -1)


def _fail(sources, key, message):
    raise ConfigError(f"{_source(sources, key)}: {key}: {message}")


def _build_dataclass(cls, data: Any, prefix: str, sources: dict):
    if not isinstance(data, dict):
        _fail(sources, prefix.rstrip("."), f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # in schema order: defaults before what uses them
    for key in data:
        if key not in names:
            dotted = f"{prefix}{key}"
            if dotted in RETIRED:  # (resolved configs of studies submitted before hold it)
                if data[key] == RETIRED[dotted]:
                    continue
                raise ConfigError(f"{_source(sources, dotted)}: '{dotted}' was removed (the report sets learning-speed "
                                  f"thresholds from the study's runs); delete it")
            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{_source(sources, dotted)}: unknown key '{dotted}'{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _fail(sources, prefix.rstrip("."), f"missing key '{f.name}'")
    for name in names:
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}", sources)
    return cls(**kwargs)


def _coerce(tp, value, key, sources):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, key + ".", sources)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(str(a) for a in typing.get_args(tp))
            _fail(sources, key, f"'{value}' is not one of: {choices}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            _fail(sources, key, f"expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]", sources) for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            _fail(sources, key, f"expected a mapping, got {type(value).__name__}")
        return {str(k): _coerce(val_tp, v, f"{key}.{k}", sources) for k, v in value.items()}
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):  # `X | None`
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(inner, value, key, sources)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(sources, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(sources, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(sources, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(sources, key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported schema type {tp} for {key}")


def _check_all(obj, prefix: str, sources: dict):
    def err(key, message, related=None):
        """`related`: the other key of a cross-field check; when it was set after `key` (the
        command line over a file, a file over a default), it made the pair wrong: its source is named."""
        key = f"{prefix}{key}"
        if related and _set_later(sources, key, prefix + related):
            raise ConfigError(f"{_source(sources, prefix + related)}: {key}: {message} (set by {prefix}{related})")
        _fail(sources, key, message)

    if hasattr(obj, "check"):
        obj.check(err)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_all(value, f"{prefix}{f.name}.", sources)
        elif isinstance(value, dict):  # e.g. a profile's stages: {name: Resources}
            for k, v in value.items():
                if dataclasses.is_dataclass(v):
                    _check_all(v, f"{prefix}{f.name}.{k}.", sources)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
