"""Built-in task families: ranges, disjoint splits, determinism, env checks, gymnasium ids."""

from __future__ import annotations

import math
import pickle
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from distributed_reptile import TaskGenerator
from distributed_reptile.tasks import families
from distributed_reptile.tasks.families import (
    FAMILIES,
    CartPolePhysicsEnv,
    PendulumPhysicsEnv,
    PointNavEnv,
    cartpole,
    halfcheetah,
    held_out_seeds,
    held_out_tasks,
    make_cartpole_task,
    make_pendulum_task,
    make_pointnav_task,
    pendulum,
    pointnav,
)
from distributed_reptile.tasks.families._common import MUJOCO_INSTALL_HINT, intervals_overlap
from distributed_reptile.tasks.families.registration import ENV_SPECS, register_families

SEEDS = range(300)
MUJOCO_REASON = 'MuJoCo is not installed (pip install "distributed-reptile[mujoco]")'
METAWORLD_REASON = 'Meta-World is not installed (pip install "distributed-reptile[mujoco]")'


def check_both(env: gym.Env) -> None:
    """gymnasium's and SB3's env checkers, quietly (their style warnings are not failures)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env, warn=False)


def in_range(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def rollout(env: gym.Env, actions: list, seed: int = 0) -> list:
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        out.append((obs, reward, terminated, truncated))
        if terminated or truncated:
            break
    return out


def assert_same_rollout(a: list, b: list) -> None:
    np.testing.assert_array_equal(a[0], b[0])
    assert len(a) == len(b)
    for x, y in zip(a[1:], b[1:], strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]


# --------------------------------------------------------------------------- parametric families
PARAMETRIC = [
    (make_cartpole_task, cartpole),
    (make_pendulum_task, pendulum),
]


@pytest.mark.parametrize(("make", "module"), PARAMETRIC, ids=["cartpole", "pendulum"])
def test_parametric_ranges_and_disjoint_splits(make, module):
    train_ranges, test_ranges = module.TRAIN_RANGES, module.TEST_RANGES
    assert set(train_ranges) == set(test_ranges)
    key = module.DISJOINT_ON
    assert not intervals_overlap(train_ranges[key], test_ranges[key])
    seen = {"train": set(), "test": set()}
    for split, ranges in (("train", train_ranges), ("test", test_ranges)):
        for seed in SEEDS:
            env, info = make(random_seed=seed, split=split)
            assert info["split"] == split
            for name, bounds in ranges.items():
                assert in_range(info[name], bounds), (split, seed, name, info[name])
            seen[split].add(tuple(info[name] for name in ranges))
            env.close()
    assert not seen["train"] & seen["test"]
    assert len(seen["train"]) == len(SEEDS)  # seeds give different tasks
    # every train value of the split parameter is below every test value: no overlap at all
    idx = list(train_ranges).index(key)
    assert max(t[idx] for t in seen["train"]) < min(t[idx] for t in seen["test"])


@pytest.mark.parametrize("make", [m for m, _ in PARAMETRIC], ids=["cartpole", "pendulum"])
def test_parametric_same_seed_same_task(make):
    for split in ("train", "test"):
        env_a, info_a = make(random_seed=7, split=split)
        env_b, info_b = make(random_seed=7, split=split)
        assert info_a == info_b
        actions = [env_a.action_space.sample() for _ in range(20)]
        assert_same_rollout(rollout(env_a, actions, seed=3), rollout(env_b, actions, seed=3))
    assert make(random_seed=7)[1] != make(random_seed=8)[1]


@pytest.mark.parametrize("make", [m for m, _ in PARAMETRIC], ids=["cartpole", "pendulum"])
def test_bad_split_is_refused(make):
    with pytest.raises(ValueError, match="split"):
        make(random_seed=0, split="validation")


@pytest.mark.parametrize("family", ["cartpole", "pendulum", "pointnav"])
def test_env_checkers_pass(family):
    for split in ("train", "test"):
        env, _ = FAMILIES[family](random_seed=11, split=split)
        check_both(env)


def test_cartpole_derived_quantities_and_dynamics():
    for seed in range(50):
        env, info = make_cartpole_task(random_seed=seed)
        core = env.unwrapped
        assert isinstance(core, CartPolePhysicsEnv)
        assert core.length == info["length"]
        assert core.masspole == info["masspole"]
        assert core.gravity == info["gravity"]
        assert math.isclose(core.total_mass, core.masspole + core.masscart)
        assert math.isclose(core.polemass_length, core.masspole * core.length)
    # one Euler step against the textbook CartPole equations with these physics
    core = CartPolePhysicsEnv(length=0.9, masspole=0.15, gravity=8.0)
    core.reset(seed=0)
    x, x_dot, theta, theta_dot = (float(v) for v in core.state)
    force = core.force_mag  # action 1 pushes right
    total, pml = 0.15 + core.masscart, 0.15 * 0.9
    temp = (force + pml * theta_dot**2 * math.sin(theta)) / total
    theta_acc = (8.0 * math.sin(theta) - math.cos(theta) * temp) / (
        0.9 * (4.0 / 3.0 - 0.15 * math.cos(theta) ** 2 / total)
    )
    x_acc = temp - pml * theta_acc * math.cos(theta) / total
    tau = core.tau
    expected = [
        x + tau * x_dot,
        x_dot + tau * x_acc,
        theta + tau * theta_dot,
        theta_dot + tau * theta_acc,
    ]
    obs, *_ = core.step(1)
    np.testing.assert_allclose(obs, np.array(expected, dtype=np.float32), rtol=1e-5, atol=1e-6)


def test_pendulum_params_and_dynamics():
    for seed in range(50):
        env, info = make_pendulum_task(random_seed=seed, split="test")
        core = env.unwrapped
        assert isinstance(core, PendulumPhysicsEnv)
        assert (core.g, core.m, core.l) == (info["gravity"], info["mass"], info["length"])
        assert (core.gravity, core.mass, core.length) == (core.g, core.m, core.l)
    core = PendulumPhysicsEnv(gravity=9.0, mass=0.7, length=1.2)
    core.reset(seed=0)
    th, thdot = (float(v) for v in core.state)
    u = 1.5
    new_thdot = thdot + (3 * 9.0 / (2 * 1.2) * math.sin(th) + 3.0 / (0.7 * 1.2**2) * u) * core.dt
    new_thdot = float(np.clip(new_thdot, -core.max_speed, core.max_speed))
    new_th = th + new_thdot * core.dt
    obs, *_ = core.step(np.array([u], dtype=np.float32))
    np.testing.assert_allclose(
        obs, [math.cos(new_th), math.sin(new_th), new_thdot], rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError):
        PendulumPhysicsEnv(length=0.0)


# --------------------------------------------------------------------------- point navigation
def test_pointnav_goals_in_range_and_splits_disjoint():
    assert len(pointnav.TEST_CELLS) == 4
    assert {i for i, _ in pointnav.TEST_CELLS} == {0, 1, 2, 3}  # one per column
    assert {j for _, j in pointnav.TEST_CELLS} == {0, 1, 2, 3}  # one per row
    assert not set(pointnav.TRAIN_RANGES["cells"]) & set(pointnav.TEST_RANGES["cells"])
    goals = {"train": set(), "test": set()}
    for split in ("train", "test"):
        for seed in range(1000):
            _, info = make_pointnav_task(random_seed=seed, split=split)
            x, y = info["goal"]
            assert -0.5 <= x < 0.5 and -0.5 <= y < 0.5
            assert pointnav.goal_split(info["goal"]) == split
            assert (tuple(info["cell"]) in pointnav.TEST_CELLS) == (split == "test")
            x_lo, x_hi, y_lo, y_hi = pointnav.cell_bounds(info["cell"])
            assert x_lo <= x <= x_hi and y_lo <= y <= y_hi
            goals[split].add((x, y))
    assert not goals["train"] & goals["test"]
    # train goals cover all 12 train cells, test goals all 4 test cells
    assert {pointnav.goal_cell(g) for g in goals["train"]} == set(pointnav.TRAIN_RANGES["cells"])
    assert {pointnav.goal_cell(g) for g in goals["test"]} == set(pointnav.TEST_CELLS)


def test_pointnav_cell_boundaries():
    assert pointnav.goal_cell((-0.5, -0.5)) == (0, 0)
    assert pointnav.goal_cell((-0.25, 0.0)) == (1, 2)
    assert pointnav.goal_cell((np.nextafter(0.5, 0.0), np.nextafter(0.5, 0.0))) == (3, 3)
    with pytest.raises(ValueError):
        pointnav.goal_cell((0.5, 0.0))


def test_pointnav_rewards_clipping_and_horizon_by_hand():
    env, info = make_pointnav_task(random_seed=5)
    goal = np.array(info["goal"])
    core = env.unwrapped
    assert isinstance(core, PointNavEnv)
    np.testing.assert_array_equal(core.goal, goal)
    assert core.observation_space.dtype == np.float32 and core.observation_space.shape == (2,)
    np.testing.assert_allclose(core.action_space.low, [-0.1, -0.1])
    np.testing.assert_allclose(core.action_space.high, [0.1, 0.1])

    obs, _ = env.reset(seed=123)
    assert obs.dtype == np.float32
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    actions = [[0.05, -0.02], [0.3, -7.0], [-0.1, 0.1], [0.0, 0.0]]
    clipped = [[0.05, -0.02], [0.1, -0.1], [-0.1, 0.1], [0.0, 0.0]]
    pos = np.zeros(2)
    for action, move in zip(actions, clipped, strict=True):
        pos = pos + np.array(move)
        obs, reward, terminated, truncated, step_info = env.step(np.array(action, dtype=np.float32))
        np.testing.assert_allclose(obs, pos, atol=1e-6)
        expected = -math.hypot(pos[0] - goal[0], pos[1] - goal[1])
        assert reward == pytest.approx(expected, abs=1e-6)
        assert step_info["distance"] == pytest.approx(-expected, abs=1e-6)
        assert not terminated and not truncated

    env.reset(seed=0)
    for t in range(1, 101):
        _, _, terminated, truncated, _ = env.step(np.array([0.1, 0.1], dtype=np.float32))
        assert not terminated
        assert truncated == (t == 100)
    np.testing.assert_allclose(core._position, [10.0, 10.0])  # 100 full moves, none lost

    # a fresh reset goes back to the origin; seeded resets are deterministic
    a = rollout(env, [np.array([0.07, -0.03], dtype=np.float32)] * 5, seed=9)
    b = rollout(env, [np.array([0.07, -0.03], dtype=np.float32)] * 5, seed=9)
    assert_same_rollout(a, b)
    np.testing.assert_array_equal(a[0], [0.0, 0.0])


def test_pointnav_same_seed_same_goal():
    for split in ("train", "test"):
        assert make_pointnav_task(3, split)[1] == make_pointnav_task(3, split)[1]
    assert make_pointnav_task(3)[1]["goal"] != make_pointnav_task(4)[1]["goal"]
    with pytest.raises(ValueError):
        PointNavEnv(goal=(0.1, 0.2, 0.3))


# --------------------------------------------------------------------------- registry and helpers
def test_gymnasium_ids_for_classic_families():
    env = gym.make("distributed_reptile/CartPolePhysics-v0", length=0.9, gravity=7.5)
    assert env.spec.max_episode_steps == 500
    assert (env.unwrapped.length, env.unwrapped.gravity) == (0.9, 7.5)
    assert math.isclose(env.unwrapped.polemass_length, 0.9 * env.unwrapped.masspole)
    env.reset(seed=0)
    env.step(env.action_space.sample())

    env = gym.make("distributed_reptile/Pendulum-v0", mass=1.3)
    assert env.spec.max_episode_steps == 200 and env.unwrapped.m == 1.3
    env.reset(seed=0)
    env.step(env.action_space.sample())

    env = gym.make("distributed_reptile/PointNav-v0", goal=(0.1, -0.2))
    assert env.spec.max_episode_steps == 100
    np.testing.assert_array_equal(env.unwrapped.goal, [0.1, -0.2])
    env.reset(seed=0)
    _, reward, *_ = env.step(np.zeros(2, dtype=np.float32))
    assert reward == pytest.approx(-math.hypot(0.1, 0.2))


def test_registration_is_idempotent():
    assert register_families() == []  # already registered on import
    for env_id in ENV_SPECS:
        assert env_id in gym.registry
        assert env_id.startswith("distributed_reptile/")


def test_families_dict_and_held_out_tasks():
    assert set(FAMILIES) == {
        "cartpole",
        "pendulum",
        "pointnav",
        "halfcheetah_vel",
        "halfcheetah_dir",
        "metaworld_ml1",
    }
    assert held_out_seeds(3, seed=10) == [10, 11, 12]
    tasks = held_out_tasks("pointnav", 5, seed=2)
    assert len(tasks) == 5
    for (env, info), seed in zip(tasks, held_out_seeds(5, seed=2), strict=True):
        assert info["split"] == "test"
        assert info == make_pointnav_task(seed, split="test")[1]
        assert isinstance(env.unwrapped, PointNavEnv)
    assert [i for _, i in held_out_tasks("pointnav", 5, seed=2)] == [i for _, i in tasks]
    tasks = held_out_tasks("cartpole", 3, max_episode_steps=50)
    assert all(env._max_episode_steps == 50 for env, _ in tasks)
    with pytest.raises(ValueError, match="Unknown task family"):
        held_out_tasks("walker", 2)


def test_families_plug_into_task_generator_and_pickle():
    gen = TaskGenerator(
        task_callable=make_pointnav_task, task_callable_params={"split": "test"}, generator_seed=0
    )
    env, info, _ = gen.get_task(0)
    assert info["split"] == "test" and pointnav.goal_split(info["goal"]) == "test"
    static = TaskGenerator(tasks=held_out_tasks("pendulum", 2), sampling_method="cyclic")
    env, info, _ = static.get_task(1)
    assert info["split"] == "test"
    for family in ("cartpole", "pendulum", "pointnav"):
        env, info = FAMILIES[family](random_seed=1, split="test")
        clone = pickle.loads(pickle.dumps(env))
        actions = [env.action_space.sample() for _ in range(5)]
        assert_same_rollout(rollout(env, actions), rollout(clone, actions))


# --------------------------------------------------------------------------- MuJoCo families
def test_mujoco_families_import_without_mujoco_and_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco", None)  # `import mujoco` now raises ImportError
    monkeypatch.setitem(sys.modules, "metaworld", None)
    monkeypatch.delitem(
        sys.modules, "distributed_reptile.tasks.families._mujoco_envs", raising=False
    )
    monkeypatch.delattr(families, "_mujoco_envs", raising=False)
    with pytest.raises(ImportError, match=r"distributed-reptile\[mujoco\]"):
        families.make_halfcheetah_vel_task(random_seed=0)
    with pytest.raises(ImportError, match=r"distributed-reptile\[mujoco\]"):
        families.make_halfcheetah_dir_task(random_seed=0)
    with pytest.raises(ImportError, match=r"distributed-reptile\[mujoco\]"):
        families.make_metaworld_ml1_task(random_seed=0, benchmark_seed=987654)
    assert MUJOCO_INSTALL_HINT == 'pip install "distributed-reptile[mujoco]"'


def test_halfcheetah_vel_ranges_and_disjoint_splits():
    pytest.importorskip("mujoco", reason=MUJOCO_REASON)
    train = halfcheetah.VEL_TRAIN_RANGES["target_velocity"]
    test = halfcheetah.VEL_TEST_RANGES["target_velocity"]
    assert not intervals_overlap(train, test)
    values = {"train": [], "test": []}
    for split, bounds in (("train", train), ("test", test)):
        for seed in range(40):
            env, info = families.make_halfcheetah_vel_task(random_seed=seed, split=split)
            assert in_range(info["target_velocity"], bounds)
            assert env.unwrapped.target_velocity == info["target_velocity"]
            values[split].append(info["target_velocity"])
            env.close()
    assert max(values["train"]) < min(values["test"])
    assert families.make_halfcheetah_vel_task(3)[1] == families.make_halfcheetah_vel_task(3)[1]


def test_halfcheetah_envs_build_step_and_check():
    pytest.importorskip("mujoco", reason=MUJOCO_REASON)
    for make in (families.make_halfcheetah_vel_task, families.make_halfcheetah_dir_task):
        env, info = make(random_seed=4, split="test")
        check_both(env)
        assert env._max_episode_steps == 200
        a = env.action_space.sample()
        rollout_a = rollout(env, [a] * 3, seed=1)
        clone = pickle.loads(pickle.dumps(env))
        assert_same_rollout(rollout_a, rollout(clone, [a] * 3, seed=1))
        env.reset(seed=0)
        _, reward, _, _, step_info = env.step(a)
        ctrl = 0.05 * float(np.sum(np.square(a)))
        v = step_info["x_velocity"]
        if "target_velocity" in info:
            expected = -abs(v - info["target_velocity"]) - ctrl
        else:
            expected = info["direction"] * v - ctrl
        assert reward == pytest.approx(expected, rel=1e-5, abs=1e-6)  # float32 action
        env.close()
    directions = {families.make_halfcheetah_dir_task(s)[1]["direction"] for s in range(20)}
    assert directions == {-1, 1}
    # Held-out tasks alternate directions: any n consecutive seeds are balanced.
    for n, start in ((20, 0), (7, 3)):
        pairs = families.held_out_tasks("halfcheetah_dir", n, start)
        held = [info["direction"] for _, info in pairs]
        for env, _ in pairs:
            env.close()
        assert sorted((held.count(-1), held.count(1))) == [n // 2, n - n // 2]
    assert halfcheetah.DIR_SPLITS_DISJOINT is False  # documented: a two-task family
    assert families.HalfCheetahDirEnv(direction=-1).direction == -1
    with pytest.raises(ValueError):
        families.HalfCheetahDirEnv(direction=0)


def test_halfcheetah_gymnasium_ids():
    pytest.importorskip("mujoco", reason=MUJOCO_REASON)
    env = gym.make("distributed_reptile/HalfCheetahVel-v0", target_velocity=0.7)
    assert env.unwrapped.target_velocity == 0.7 and env.spec.max_episode_steps == 200
    env.reset(seed=0)
    env.step(env.action_space.sample())
    env = gym.make("distributed_reptile/HalfCheetahDir-v0", direction=-1)
    assert env.unwrapped.direction == -1
    env.reset(seed=0)
    env.step(env.action_space.sample())


@pytest.mark.parametrize("env_name", ["reach-v3", "push-v3"])
def test_metaworld_ml1_splits_are_metaworlds_and_disjoint(env_name):
    pytest.importorskip("metaworld", reason=METAWORLD_REASON)
    from distributed_reptile.tasks.families import metaworld_ml1

    train = metaworld_ml1.ml1_tasks(env_name, "train")
    test = metaworld_ml1.ml1_tasks(env_name, "test")
    assert len(train) == len(test) == metaworld_ml1.N_TASKS_PER_SPLIT
    train_vecs = {tuple(metaworld_ml1._rand_vec(t)) for t in train}
    test_vecs = {tuple(metaworld_ml1._rand_vec(t)) for t in test}
    assert len(train_vecs) == len(test_vecs) == 50 and not train_vecs & test_vecs

    env, info = families.make_metaworld_ml1_task(random_seed=53, split="test", env_name=env_name)
    assert info["task_index"] == 3 and info["split"] == "test"
    assert tuple(info["rand_vec"]) in test_vecs
    check_both(env)
    a = env.action_space.sample()
    first = rollout(env, [a] * 3, seed=2)
    again, info_again = families.make_metaworld_ml1_task(53, split="test", env_name=env_name)
    assert info_again == info
    assert_same_rollout(first, rollout(again, [a] * 3, seed=2))
    clone = pickle.loads(pickle.dumps(env))
    assert_same_rollout(first, rollout(clone, [a] * 3, seed=2))
    env.close()


def test_metaworld_horizon_registry_and_held_out():
    pytest.importorskip("metaworld", reason=METAWORLD_REASON)
    env, _ = families.make_metaworld_ml1_task(0, max_episode_steps=5)
    env.reset(seed=0)
    truncated = [env.step(env.action_space.sample())[3] for _ in range(5)]
    assert truncated == [False] * 4 + [True]
    env, _ = families.make_metaworld_ml1_task(0, max_episode_steps=10_000)
    assert env._max_episode_steps == 500
    env = gym.make("distributed_reptile/MetaWorldML1-v0", split="test", task_index=7)
    assert env.unwrapped.task_index == 7 and env.spec.max_episode_steps == 500
    env.reset(seed=0)
    env.step(env.action_space.sample())
    infos = [i for _, i in held_out_tasks("metaworld_ml1", 3, seed=48)]
    assert [i["task_index"] for i in infos] == [48, 49, 0]
    assert {i["split"] for i in infos} == {"test"}
