"""Atari on ALE's own vectorised env, in one run, each case in a process of its own, alternating:
- collection (the PPO agent's policy acting, a share of random actions, every transition recorded
  into a dataset) with this code, against the env-worker collector it replaced (its last commit,
  checked out beside this one) and against raw ALE stepping (the same preprocessing, envs and
  resets, random actions, nothing recorded, one env after another in one process);
- the vectorised env's own stepping (random actions, nothing recorded) at 1, 2 and 4 threads,
  against the same raw ALE;
- PPO training (SB3's learn: rollouts and updates) in agent steps/s, against the env-worker
  commit's PPO (gymnasium envs one after another).
Threads: 2 per process, this machine's cores."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, Row, report

BASELINE = "1772880"  # the last commit with the env-worker collector and gymnasium envs for PPO

COLLECT = """
import sys, tempfile
from cccad.config import load_config
from cccad.data.store import DatasetWriter
from cccad.data.transitions import collect_transitions, make_agent
cfg = load_config("{root}/configs/studies/worldmodel.yaml", sys.argv[1:])
policy = make_agent(cfg).policy  # an untrained agent costs the same to run as a trained one
with tempfile.TemporaryDirectory() as tmp:
    writer = DatasetWriter(f"{{tmp}}/ds", "atari_transitions", {{}}, "bench")
    stats = collect_transitions(cfg, policy, writer)
print("RESULT", stats["transitions_per_s"], stats["transitions"])
"""

PPO = """
import sys, time
from cccad.config import load_config
from cccad.data.transitions import make_agent
cfg = load_config("{root}/configs/studies/worldmodel.yaml", sys.argv[2:])
agent = make_agent(cfg)
agent.learn(total_timesteps=cfg.atari.ppo_n_steps * cfg.atari.ppo_n_envs)  # warm-up: one rollout and update
t = time.perf_counter()
agent.learn(total_timesteps=int(sys.argv[1]), reset_num_timesteps=False)
print("RESULT", int(sys.argv[1]) / (time.perf_counter() - t), 0)
"""

RAW = """
import sys, time
import gymnasium as gym, numpy as np, ale_py, cv2
from cccad.config import load_config
cfg = load_config("{root}/configs/studies/worldmodel.yaml", sys.argv[2:])
gym.register_envs(ale_py)
e = cfg.env
def make():
    return gym.make(e.game, obs_type="grayscale", frameskip=e.frame_skip, repeat_action_probability=e.sticky_actions,
                    full_action_space=False, max_episode_steps=cfg.atari.max_episode_steps)
envs = [make() for _ in range(cfg.atari.n_envs)]
stacks = [[None] * e.frame_stack for _ in envs]
def keep(i, obs, fill=False):  # resize and stack as the dataset's states are
    small = cv2.resize(obs, (e.frame_size, e.frame_size), interpolation=cv2.INTER_AREA)
    stacks[i] = [small] * e.frame_stack if fill else stacks[i][1:] + [small]
    np.stack(stacks[i])
rng = np.random.default_rng(0)
steps = int(sys.argv[1]) // len(envs) * len(envs)
t = time.perf_counter()
for i, env in enumerate(envs):
    keep(i, env.reset(seed=cfg.seed * 1_000_003 + i)[0], fill=True)
for _ in range(steps // len(envs)):
    for i, (env, action) in enumerate(zip(envs, rng.integers(0, envs[0].action_space.n, len(envs)))):
        obs, _, terminated, truncated, _ = env.step(int(action))
        keep(i, obs)
        if terminated or truncated:
            keep(i, env.reset()[0], fill=True)
print("RESULT", steps / (time.perf_counter() - t), steps)
"""

VECTOR = """
import sys, time
import numpy as np
from cccad.config import load_config
from cccad.envs.atari import Stacks, frames, vector_env
cfg = load_config("{root}/configs/studies/worldmodel.yaml", sys.argv[2:])
n = cfg.atari.n_envs
envs = vector_env(cfg.env, n, cfg.atari.max_episode_steps)
rng = np.random.default_rng(0)
steps = int(sys.argv[1]) // n
t = time.perf_counter()
obs, _ = envs.reset(seed=np.arange(n))
stacks = Stacks(frames(obs), cfg.env.frame_stack)
for _ in range(steps):
    obs, _, terminated, truncated, _ = envs.step(rng.integers(0, envs.single_action_space.n, n))
    stacks.push(frames(obs), terminated | truncated)
    stacks.states()
print("RESULT", steps * n / (time.perf_counter() - t), steps * n)
"""


def run(script: str, root: Path, args: list[str], threads: int = 2) -> tuple[float, int]:
    """Run a case in a process of its own on the code at `root`: (per second, count)."""
    env = dict(os.environ, PYTHONPATH=str(root), CCCAD_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", script.format(root=root), *args], cwd=root, env=env,
                         capture_output=True, text=True)
    found = re.search(r"RESULT (\S+) (\S+)", out.stdout)
    if out.returncode or not found:
        sys.exit(f"bench case failed on {root}:\n{out.stdout}\n{out.stderr}")
    return float(found[1]), int(found[2])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=24)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--ppo-steps", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    overrides = [f"atari.n_envs={a.n_envs}", f"atari.episodes={a.episodes}", f"atari.max_episode_steps={a.max_steps}"]
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), BASELINE], check=True,
                       capture_output=True)
        try:
            best: dict[str, float] = {}
            for _ in range(a.repeats):  # alternating, best of each: this machine's speed drifts by tens of percent
                cases = {"collect": run(COLLECT, ROOT, overrides), "collect_old": run(COLLECT, old, overrides)}
                steps = str(cases["collect"][1])
                cases["raw"] = run(RAW, ROOT, [steps, *overrides])
                for t in (1, 2, 4):
                    cases[f"vector{t}"] = run(VECTOR, ROOT, [steps, *overrides], threads=t)
                ppo = [str(a.ppo_steps), f"atari.ppo_n_envs={a.n_envs}"]
                cases["ppo"], cases["ppo_old"] = run(PPO, ROOT, ppo), run(PPO, old, ppo)
                for k, (v, _) in cases.items():
                    best[k] = max(best.get(k, 0.0), v)
                print("  " + ", ".join(f"{k} {v:,.0f}/s" for k, (v, _) in cases.items()), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=True)
    what = f"{a.n_envs} envs, 64x64 grey, stack 4"
    raw = "raw ALE steps/s (gymnasium, one env after another, same preprocessing and resets, random actions)"
    rows = [Row("atari collect", f"transitions/s recorded by the PPO policy, ALE's vectorised env ({what}, 2 threads)",
                best["collect"], f"the env-worker collector ({BASELINE}), same run", best["collect_old"], "faster"),
            Row("atari collect", "transitions/s recorded by the PPO policy (above)", best["collect"], raw, best["raw"],
                ">= 0.8x raw")]
    rows += [Row("atari stepping", f"ALE's vectorised env steps/s, random actions, {t} thread{'s' * (t > 1)} ({what})",
                 best[f"vector{t}"], raw, best["raw"], "(measure)") for t in (1, 2, 4)]
    rows.append(Row("atari PPO", f"PPO training agent steps/s (SB3 CnnPolicy, {a.n_envs} envs, 128-step rollouts, 4 epochs "
                    "of batch 256)", best["ppo"], f"the same with gymnasium envs ({BASELINE}), same run", best["ppo_old"],
                    "(measure)"))
    report(rows, "atari_collect_throughput")


if __name__ == "__main__":
    main()
