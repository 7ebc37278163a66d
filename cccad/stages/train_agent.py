"""Stage `train_agent` (Atari family): a stable-baselines3 PPO agent (CnnPolicy) learns the game on
`atari.ppo_n_envs` vectorised envs for `atari.ppo_timesteps` agent steps; `collect` plays it. With
`atari.agent_seed` set, its outputs do not depend on the study's seed: one run serves every seed.
A second run of the same config finds the saved agent and trains nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from cccad.checkpoint import CheckpointError
from cccad.config import Config
from cccad.plots import line_plot
from cccad.sections import Column, Curves, Section

NEEDS: tuple = ()
INPUT_KEYS: dict = {}
PER_VARIANT = False
FAMILIES = ("atari",)
TRAINS = False
AGENT_DIR = "agent"

REPORT = (Section(
    "PPO agent", "The agent that collects the world models' data: agent steps it trained for, its training "
    "time, and the mean return of the first and last tenth of its training episodes (the game's returns; "
    "it learns from their signs when atari.ppo_clip_rewards is set). With atari.agent_seed set, one agent, trained "
    "once, serves every seed of the study: its row counts one run.",
    (Column("agent steps", lambda m: m.get("agent_steps"), 0),
     Column("training episodes", lambda m: m.get("agent_episodes"), 0),
     Column("first tenth's return", lambda m: m.get("agent_first_return"), 1),
     Column("last tenth's return", lambda m: m.get("agent_last_return"), 1),
     Column("seconds", lambda m: m.get("agent_seconds"), 0)), labels=("env",),
    plots=(Curves("agent", "PPO agent's training episodes ({env})", "agent step", "return",
                  tags=("train_agent/return",)),)),)


def summary(m: dict) -> str:
    line = f"PPO agent: {m['agent_steps']:,} steps in {m['agent_seconds']:.0f}s, {m['agent_episodes']} episodes"
    if m["agent_episodes"]:
        line += f", return {m['agent_first_return']:.1f} (first tenth) -> {m['agent_last_return']:.1f} (last tenth)"
    return line


def decided_by(cfg: Config) -> dict:
    from cccad.data.transitions import agent_config
    return agent_config(cfg)


def preflight(cfg: Config) -> None:
    from cccad.envs.atari import check_game
    check_game(cfg.env)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    from cccad.data.transitions import saved_agent
    try:
        saved_agent(cfg, Path(run_dir) / AGENT_DIR)
        return True
    except CheckpointError:
        return False


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    from cccad.data.transitions import AGENT_FILE, agent_seed, saved_agent, train_agent

    agent_dir = Path(run_dir) / AGENT_DIR
    if (agent_dir / AGENT_FILE).exists():
        agent = saved_agent(cfg, agent_dir)  # refuses another config's agent, never overwrites it
        log(f"found the trained PPO agent in {agent_dir}")
    else:
        agent = train_agent(cfg, agent_dir, log)
    returns = agent["returns"]
    with SummaryWriter(Path(run_dir) / "tb") as tb:
        for steps, r in returns:
            tb.add_scalar("train_agent/return", r, int(steps))
    line_plot(Path(run_dir) / "agent_return.png", {"PPO agent": [r for _, r in returns]},
              f"PPO agent learning curve ({cfg.env.game})", "training episode", "return")
    tenth = max(1, len(returns) // 10)
    first = [r for _, r in returns[:tenth]]
    last = [r for _, r in returns[-tenth:]]
    return {"agent_steps": cfg.atari.ppo_timesteps, "agent_episodes": len(returns),
            "agent_seconds": float(agent["seconds"]), "agent_seed": agent_seed(cfg),
            "agent_first_return": float(np.mean(first)) if first else None,
            "agent_last_return": float(np.mean(last)) if last else None, "return_curve": returns}
