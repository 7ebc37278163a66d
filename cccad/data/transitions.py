"""Transitions for the world-model study (its reference's DataCollectionPipeline): a stable-baselines3
PPO agent (CnnPolicy, vectorised envs) learns the game, then plays `atari.episodes` episodes with
a share of random actions while every (state, action, reward, next_state, done) is recorded.

Layout (one dataset): each frame is stored once, uint8, and a state is rebuilt from frame indices
(`stack_indices`), so stacking costs no storage:
  frames (F, C, S, S) uint8            every episode's frames in order: its reset frame, then one per step
  frame_index (N,) int64               the newest frame of state t; next_state's newest is frame_index + 1
  episode (N,) int32, actions (N,) uint8, rewards (N,) float32, dones (N,) bool (terminated or
  truncated), terminated (N,) bool, random_action (N,) bool
  episode_first_frame, episode_length, episode_return (E,), episode_is_val (E,) bool
  episode_env, episode_seed (E,)       the collection env that played it and that env's seed: its
                                       first episode resets with the seed, the next ones unseeded
Validation holds out whole episodes.
"""
from __future__ import annotations

import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv

from cccad.checkpoint import CheckpointError, load_checkpoint
from cccad.config import ATARI_KEYS, Config, config_hash
from cccad.data.collected import open_collected
from cccad.data.store import DatasetWriter
from cccad.envs.atari import Stacks, frame_shape, frames, stack_indices, vector_env
from cccad.fs import atomic_torch_save
from cccad.runtime import device, threads

AGENT_FILE = "ppo_policy.pt"


def agent_seed(cfg: Config) -> int:
    return cfg.seed if cfg.atari.agent_seed is None else cfg.atari.agent_seed


def agent_config(cfg: Config) -> dict:
    """What decides the agent: a saved agent is loaded only when this matches."""
    a = cfg.to_dict()["atari"]
    return {"seed": agent_seed(cfg), "env": {k: getattr(cfg.env, k) for k in ATARI_KEYS},
            "atari": {k: v for k, v in a.items() if k.startswith("ppo_")} | {"max_episode_steps": a["max_episode_steps"]}}


def state_space(cfg: Config) -> gym.spaces.Box:
    """What the agent sees: a state of `env.frame_stack` stacked frames."""
    c, h, w = frame_shape(cfg.env)
    return gym.spaces.Box(0, 255, (cfg.env.frame_stack * c, h, w), np.uint8)


class AgentEnvs(VecEnv):
    """The PPO agent's envs for stable-baselines3: `atari.ppo_n_envs` envs of ALE's vectorised env
    stepped together, states stacked by the dataset's rule (`Stacks`). With `atari.ppo_clip_rewards`
    the agent learns from each reward's sign (Atari PPO's usual signal: a kill in Assault is worth
    21); each finished episode's info holds its unclipped return, as SB3's Monitor puts it."""

    def __init__(self, cfg: Config):
        a, k = cfg.atari, cfg.env.frame_stack
        self.envs = vector_env(cfg.env, a.ppo_n_envs, a.max_episode_steps)
        self.k, self.clip = k, a.ppo_clip_rewards
        super().__init__(a.ppo_n_envs, state_space(cfg), self.envs.single_action_space)
        self.returns, self.lengths = np.zeros(self.num_envs), np.zeros(self.num_envs, dtype=np.int64)

    def reset(self) -> np.ndarray:
        seeds = None if None in self._seeds else np.asarray(self._seeds)
        obs, _ = self.envs.reset(seed=seeds)
        self._reset_seeds()
        self.stacks = Stacks(frames(obs), self.k)
        self.returns[:], self.lengths[:] = 0, 0
        return self.stacks.states()

    def step_async(self, actions: np.ndarray) -> None:
        self.actions = np.asarray(actions)

    def step_wait(self):
        obs, reward, terminated, truncated, info = self.envs.step(self.actions)
        done = terminated | truncated
        self.returns += reward
        self.lengths += 1
        infos = [{} for _ in range(self.num_envs)]
        final = frames(info["final_obs"]) if done.any() else None
        for i in np.flatnonzero(done):
            infos[i] = {"episode": {"r": float(self.returns[i]), "l": int(self.lengths[i])},
                        "terminal_observation": self.stacks.after(i, final[i]),
                        "TimeLimit.truncated": bool(truncated[i] and not terminated[i])}
        self.returns[done], self.lengths[done] = 0, 0
        self.stacks.push(frames(obs), done)
        rewards = np.sign(reward) if self.clip else reward
        return self.stacks.states(), rewards.astype(np.float32), done, infos

    def close(self) -> None:
        self.envs.close()

    def get_attr(self, name, indices=None):
        return [getattr(self.envs, name, None)] * len(self._get_indices(indices))

    def set_attr(self, name, value, indices=None):
        raise NotImplementedError("the vectorised Atari envs have no per-env attributes to set")

    def env_method(self, name, *args, indices=None, **kwargs):
        raise NotImplementedError("the vectorised Atari envs have no per-env methods")

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._get_indices(indices))


def make_agent(cfg: Config):
    """A fresh SB3 PPO agent (CnnPolicy) on `atari.ppo_n_envs` vectorised, frame-stacked envs."""
    from stable_baselines3 import PPO

    a = cfg.atari
    envs = AgentEnvs(cfg)
    envs.seed(agent_seed(cfg))
    return PPO("CnnPolicy", envs, n_steps=a.ppo_n_steps, batch_size=a.ppo_batch_size, n_epochs=a.ppo_n_epochs,
               learning_rate=a.ppo_lr, ent_coef=a.ppo_ent_coef, clip_range=a.ppo_clip_range, gamma=a.ppo_gamma,
               seed=agent_seed(cfg), device=device(), verbose=0)


def saved_agent(cfg: Config, agent_dir: str | Path) -> dict:
    """A trained agent saved in `agent_dir` (weights, the returns of its training episodes, its
    training seconds), refused unless this config trained it."""
    path = Path(agent_dir) / AGENT_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no trained PPO agent")
    state = load_checkpoint(path, ("policy_state_dict", "config_hash", "config", "returns", "seconds"))
    if state["config_hash"] != config_hash(agent_config(cfg)):
        raise CheckpointError(f"{path}: agent trained by another config (its atari.ppo_* keys, seed or game differ)")
    return state


def load_agent(cfg: Config, agent_dir: str | Path) -> torch.nn.Module:
    """The policy of the agent saved in `agent_dir` for this config, built as PPO("CnnPolicy")
    builds it, without the agent's envs (its action count is in the weights)."""
    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    weights = saved_agent(cfg, agent_dir)["policy_state_dict"]
    policy = ActorCriticCnnPolicy(state_space(cfg), gym.spaces.Discrete(weights["action_net.weight"].shape[0]),
                                  lambda _: 0.0)
    policy.load_state_dict(weights)
    return policy.to(device())


def train_agent(cfg: Config, agent_dir: Path, log=print) -> dict:
    """Train the PPO agent for `atari.ppo_timesteps` and save it in `agent_dir` (weights only,
    loadable without pickle, with its training episodes' returns and seconds); returns those."""
    from stable_baselines3.common.callbacks import BaseCallback

    agent = make_agent(cfg)
    returns: list[list[float]] = []
    every = max(1, cfg.atari.ppo_timesteps // 10)

    class EpisodeReturns(BaseCallback):
        """Records each finished episode's return; logs progress every tenth of the budget."""

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    returns.append([float(self.num_timesteps), float(info["episode"]["r"])])
            if self.num_timesteps // every != (self.num_timesteps - self.training_env.num_envs) // every:
                recent = [r for _, r in returns[-10:]]
                log(f"PPO agent: {self.num_timesteps:,}/{cfg.atari.ppo_timesteps:,} steps, {len(returns)} episodes"
                    + (f", last 10 mean return {np.mean(recent):.1f}" if recent else ""))
            return True

    t0 = time.perf_counter()
    agent.learn(total_timesteps=cfg.atari.ppo_timesteps, callback=EpisodeReturns())
    seconds = time.perf_counter() - t0
    expect = agent_config(cfg)
    atomic_torch_save(Path(agent_dir) / AGENT_FILE, {"policy_state_dict": agent.policy.state_dict(), "config": expect,
                                                    "config_hash": config_hash(expect), "returns": returns,
                                                    "seconds": seconds})
    log(f"trained PPO agent for {cfg.atari.ppo_timesteps:,} steps in {seconds:.0f}s "
        f"({len(returns)} episodes, last 10 mean return {np.mean([r for _, r in returns[-10:]] or [0]):.1f})")
    return {"returns": returns, "seconds": seconds}


def env_seed(cfg: Config, env: int) -> int:
    """The seed of collection env `env`'s first reset; its later episodes reset unseeded and go on
    with its random stream (a seeded reset makes ALE reload the ROM: about 100 ms, a fifth of a
    500-step episode's emulation)."""
    return (cfg.seed * 1_000_003 + env) % 2**31


def action_probs(policy: torch.nn.Module, obs: torch.Tensor) -> torch.Tensor:
    """The SB3 CnnPolicy's action probabilities for uint8 states `obs`, as
    `policy.get_distribution(obs)` has them, without its distribution objects (a fifth of the
    call's time on 2 CPU cores)."""
    features = policy.features_extractor(obs.float().div_(255))
    return policy.action_net(policy.mlp_extractor.forward_actor(features)).softmax(-1)


def write_episode(writer: DatasetWriter, ep: dict, index: int, first_frame: int) -> None:
    """Append a finished episode (its frames, then per-step and per-episode arrays) to `writer`."""
    n = len(ep["actions"])
    writer.append("frames", np.stack(ep["frames"]))
    writer.append("frame_index", first_frame + np.arange(n, dtype=np.int64))
    writer.append("episode", np.full(n, index, dtype=np.int32))
    writer.append("actions", np.asarray(ep["actions"], dtype=np.uint8))
    writer.append("rewards", np.asarray(ep["rewards"], dtype=np.float32))
    writer.append("dones", np.arange(n) == n - 1)
    writer.append("terminated", np.asarray(ep["terminated"], dtype=bool))
    writer.append("random_action", np.asarray(ep["random"], dtype=bool))
    writer.append("episode_first_frame", np.array([first_frame], dtype=np.int64))
    writer.append("episode_length", np.array([n], dtype=np.int32))
    writer.append("episode_return", np.array([sum(ep["rewards"])], dtype=np.float32))
    writer.append("episode_env", np.array([ep["env"]], dtype=np.int32))
    writer.append("episode_seed", np.array([ep["seed"]], dtype=np.int64))


def play(cfg: Config, policy: torch.nn.Module | None, random_share: float, finished) -> tuple[int, float]:
    """Play `atari.episodes` episodes, handing each to `finished` as it ends (a dict: its env, the
    env's seed, frames, actions, rewards, terminated and random flags); returns the action count
    and the seconds of play (from the first reset: making the envs, which loads the ROM, is not play).

    The `atari.n_envs` envs are two groups, each a vectorised env of its own (ALE's C++ threads,
    half the process's CPUs each). The groups take turns: while one emulates its step, this
    process records the other's and picks its next actions in one batched policy call (none:
    uniform actions), each replaced by a uniform one with `random_share`. An env whose last needed
    episode ended stops. Turns, draws and the episodes handed out go in a fixed order: every run
    plays the same."""
    a = cfg.atari
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 7])
    n = min(a.n_envs, a.episodes)
    seeds = np.asarray([env_seed(cfg, i) for i in range(n)])
    split = [np.arange(n)[g::2] for g in range(min(2, n))]  # env i is in group i % 2
    groups = [vector_env(cfg.env, len(ids), a.max_episode_steps, max(1, threads() // len(split))) for ids in split]
    n_actions = int(groups[0].single_action_space.n)
    episodes: list[dict | None] = [None] * n
    started = 0

    def hand_out(i: int, first: np.ndarray) -> None:
        nonlocal started
        episodes[i] = None
        if started < a.episodes:
            episodes[i] = {"env": i, "seed": int(seeds[i]), "frames": [first], "actions": [], "rewards": [],
                           "terminated": [], "random": []}
            started += 1

    def act(g: int) -> None:
        """Pick group g's actions (its envs without an episode step too, unrecorded) and send them."""
        actions = rng.integers(0, n_actions, len(split[g]))
        random = rng.random(len(split[g])) < random_share
        if policy is not None:
            with torch.inference_mode():
                chosen = torch.multinomial(action_probs(policy, torch.from_numpy(stacks[g].states()).to(device())), 1)
            actions = np.where(random, actions, chosen.squeeze(1).cpu().numpy())
        sent[g] = actions, random | (policy is None)
        groups[g].send(actions)

    def record(g: int) -> None:
        obs, reward, terminated, truncated, info = groups[g].recv()
        new, done = frames(obs), terminated | truncated
        final = frames(info["final_obs"]) if done.any() else None
        actions, random = sent[g]
        for j, i in enumerate(split[g]):
            if (ep := episodes[i]) is None:
                continue
            ep["actions"].append(int(actions[j]))
            ep["random"].append(bool(random[j]))
            ep["rewards"].append(float(reward[j]))
            ep["terminated"].append(bool(terminated[j]))
            ep["frames"].append(final[j] if done[j] else new[j])
            if done[j]:
                finished(ep)
                hand_out(i, new[j])
        stacks[g].push(new, done)

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a policy batch of 4 gains little from more, and ALE's threads want the cores
    t0 = time.perf_counter()
    try:
        stacks, sent = [], [None] * len(split)
        for g, ids in enumerate(split):
            obs, _ = groups[g].reset(seed=seeds[ids])
            stacks.append(Stacks(frames(obs), cfg.env.frame_stack))
            for i, first in zip(ids, frames(obs)):
                hand_out(i, first)
        for g in range(len(split)):
            act(g)
        playing = list(range(len(split)))
        while playing:
            for g in list(playing):
                record(g)
                if any(episodes[i] is not None for i in split[g]):
                    act(g)
                else:
                    playing.remove(g)
        seconds = time.perf_counter() - t0
    finally:
        for envs in groups:
            envs.close()
        torch.set_num_threads(torch_threads)
    return n_actions, seconds


def collect_transitions(cfg: Config, policy: torch.nn.Module, writer: DatasetWriter) -> dict:
    """Play `atari.episodes` episodes with the policy (`atari.random_action_share` of its actions
    random) into `writer`; returns counts and timing."""
    policy.eval()
    written = [0, 0]  # episodes, frames

    def write(ep: dict) -> None:
        write_episode(writer, ep, *written)
        written[0], written[1] = written[0] + 1, written[1] + len(ep["frames"])

    n_actions, seconds = play(cfg, policy, cfg.atari.random_action_share, write)
    episodes, frames_written = written
    order = np.random.default_rng([cfg.seed, 1]).permutation(episodes)
    is_val = np.zeros(episodes, dtype=bool)
    is_val[order[:int(round(cfg.atari.val_fraction * episodes))]] = True
    writer.add("episode_is_val", is_val)
    transitions = frames_written - episodes
    return {"transitions": transitions, "episodes": episodes, "frames": frames_written, "seconds": seconds,
            "transitions_per_s": transitions / max(seconds, 1e-9), "frame_shape": list(frame_shape(cfg.env)),
            "n_actions": n_actions, "val_episodes": int(is_val.sum())}


def random_policy_returns(cfg: Config) -> list[float]:
    """The returns of uniformly random actions in the episodes collection plays (the same envs, seeds
    and count): the floor the agent's returns are measured against."""
    returns: list[float] = []
    play(cfg, None, 1.0, lambda ep: returns.append(float(sum(ep["rewards"]))))
    return returns


def draw(n: int, rng: np.random.Generator, size: int, part: slice) -> np.ndarray:
    """A batch's positions among `n` samples: `size` drawn from `rng`, of which this process takes `part`."""
    return rng.integers(0, n, size)[part]


def open_transitions(cfg: Config) -> Transitions:
    """The transitions of inputs.dataset, checked against this config."""
    return Transitions(open_collected(cfg.inputs.dataset, cfg), cfg.env.frame_stack)


class Transitions:
    """Reads (state, action, reward, next_state, done) batches from a transitions dataset;
    states are stacks of `frame_stack` frames gathered from the memory-mapped frames. Training
    draws from the training episodes, validation and scoring from the held-out ones."""

    def __init__(self, ds, frame_stack: int):
        self.frames, self.k = ds["frames"], frame_stack
        self.newest = np.asarray(ds["frame_index"])
        episode = np.asarray(ds["episode"])
        self.first = np.asarray(ds["episode_first_frame"])[episode]
        self.actions, self.rewards = np.asarray(ds["actions"]), np.asarray(ds["rewards"])
        self.dones = np.asarray(ds["dones"])
        is_val = np.asarray(ds["episode_is_val"])[episode]
        self.train_ids, self.val_ids = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        self.n_actions = int(ds.meta["n_actions"])
        self.frame_shape = tuple(self.frames.shape[1:])

    def stacked(self, newest: np.ndarray, first: np.ndarray) -> np.ndarray:
        idx = stack_indices(newest, first, self.k)
        c, h, w = self.frame_shape
        return self.frames[idx.ravel()].reshape(len(newest), self.k * c, h, w)

    def batch(self, ids: np.ndarray) -> dict:
        ids = np.asarray(ids)
        newest, first = self.newest[ids], self.first[ids]
        return {"state": torch.from_numpy(self.stacked(newest, first)),
                "next_state": torch.from_numpy(self.stacked(newest + 1, first)),
                "action": torch.from_numpy(self.actions[ids].astype(np.int64)),
                "reward": torch.from_numpy(self.rewards[ids]),
                "done": torch.from_numpy(self.dones[ids]), "frame_channels": self.frame_shape[0]}

    def sample(self, ids: np.ndarray, rng: np.random.Generator, size: int, part: slice) -> dict:
        """A random batch of `size` from `ids`; loads only `part` (every process draws the same)."""
        return self.batch(ids[draw(len(ids), rng, size, part)])

    def train_batch(self, rng: np.random.Generator, size: int, part: slice, step: int) -> dict:
        """A training step's batch (the training loop's `Objective.batch`)."""
        return self.sample(self.train_ids, rng, size, part)

    def val_batch(self, rng: np.random.Generator, size: int, i: int) -> dict:
        """A validation batch from the held-out episodes (`Objective.val_batch`)."""
        return self.sample(self.val_ids, rng, size, slice(None))

    def scoring_set(self, seed: int, n: int) -> dict:
        """The fixed held-out transitions every model and probe of a seed is scored on."""
        rng = np.random.default_rng([seed, 3])
        return self.batch(np.sort(rng.choice(self.val_ids, min(n, len(self.val_ids)), replace=False)))

    def mean_frame(self, seed: int, n: int = 1024) -> torch.Tensor:
        """The mean newest frame of n training transitions: a floor for next-frame decoders."""
        ids = np.sort(np.random.default_rng([seed, 4]).choice(self.train_ids, min(n, len(self.train_ids)), replace=False))
        newest = self.frames[self.newest[ids] + 1]
        return torch.from_numpy(np.asarray(newest, dtype=np.float32).mean(0) / 255.0)
