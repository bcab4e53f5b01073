"""The Ray backend: loopback-only local Ray, joining a cluster, resources, queueing, the task-source
actor, user generators and override points on workers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import gymnasium as gym
import torch as th
from conftest import cartpole_kwargs, weights_of

from distributed_reptile import ReptileMetaRL

LOCAL_RAY_SCRIPT = textwrap.dedent(
    """
    import json, os, psutil, ray
    from stable_baselines3 import PPO
    from distributed_reptile import ReptileMetaRL, TaskGenerator
    from distributed_reptile.tasks.families import make_cartpole_task

    me = psutil.Process()
    meta = ReptileMetaRL(
        tasks_generator_cls=TaskGenerator, tasks_generator_params={"task_callable": make_cartpole_task},
        rl_algorithm=PPO, rl_algo_kwargs={"policy": "MlpPolicy", "n_steps": 32, "batch_size": 32, "n_epochs": 1},
        inner_steps=32, outer_steps=1, task_batch_size=2, meta_lr=0.5, num_workers=2, backend="ray", seed=0,
        ray_init_kwargs={"include_dashboard": True},
    )
    meta.learn()
    procs = me.children(recursive=True)
    listening = set()
    for p in procs + [me]:
        try:
            listening |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    names = sorted({p.name() for p in procs if p.is_running()})
    meta.close()
    gone, alive = psutil.wait_procs(procs, timeout=30)
    print(json.dumps({"listening": sorted(listening), "names": names, "initialized": ray.is_initialized(),
                      "alive": [p.pid for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]}))
    """
)


def _run_script(
    script: str, env: dict[str, str] | None = None, timeout: int = 240
) -> dict[str, Any]:
    import json
    import os

    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_library_started_ray_listens_on_loopback_only_and_stops_on_close():
    out = _run_script(LOCAL_RAY_SCRIPT)
    assert out["listening"], "found no listening socket: the check saw nothing"
    assert set(out["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, out["listening"]
    assert any("raylet" in n for n in out["names"]) and any("gcs_server" in n for n in out["names"])
    assert out["initialized"] is False
    assert out["alive"] == [], "Ray processes left behind after close()"


JOIN_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # the test cluster binds 127.0.0.1 only
    import ray
    from ray.cluster_utils import Cluster
    from stable_baselines3 import PPO
    from distributed_reptile import ReptileMetaRL, TaskGenerator
    from distributed_reptile.tasks.families import make_cartpole_task

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    kwargs = dict(
        tasks_generator_cls=TaskGenerator, tasks_generator_params={"task_callable": make_cartpole_task},
        rl_algorithm=PPO, rl_algo_kwargs={"policy": "MlpPolicy", "n_steps": 32, "batch_size": 32, "n_epochs": 1},
        inner_steps=32, outer_steps=1, task_batch_size=2, meta_lr=0.5, num_workers=2, backend="ray", seed=0,
    )
    out = {}
    with ReptileMetaRL(ray_address=cluster.address, **kwargs) as meta:
        meta.learn()
        out["explicit_node"] = list(meta.step_records[0]["tasks_per_node"])
        out["head_node"] = cluster.head_node.node_id
    out["disconnected"] = not ray.is_initialized()
    os.environ["RAY_ADDRESS"] = cluster.address   # what ray job submit sets
    with ReptileMetaRL(**kwargs) as meta:
        meta.learn()
        out["env_node"] = list(meta.step_records[0]["tasks_per_node"])
    ray.init(address=cluster.address)
    out["cluster_alive"] = all(n["Alive"] for n in ray.nodes())
    ray.shutdown()
    cluster.shutdown()
    print(json.dumps(out))
    """
)


def test_trainer_joins_a_given_cluster_and_leaves_it_running():
    out = _run_script(JOIN_SCRIPT)
    assert out["explicit_node"] == [out["head_node"]]
    assert out["env_node"] == [out["head_node"]]
    assert out["disconnected"] and out["cluster_alive"]


def test_worker_resources_pass_through_and_torch_uses_one_thread(ray_session):
    kwargs = cartpole_kwargs(
        backend="ray", num_workers=2, worker_resources={"num_cpus": 0.5, "learner_slot": 1}
    )
    with ReptileMetaRL(**kwargs) as meta:
        info = meta.runner.worker_info
    assert len(info) == 2
    for worker in info:
        assert worker["resources"] == {"CPU": 0.5, "learner_slot": 1.0}
        assert worker["torch_threads"] == 1


def test_more_tasks_than_workers_queue_and_results_keep_task_order(ray_session):
    with ReptileMetaRL(
        **cartpole_kwargs(backend="ray", num_workers=2, task_batch_size=5, outer_steps=2)
    ) as meta:
        actor_pids = {w["pid"] for w in meta.runner.worker_info}
        meta.learn()
        records = meta.step_records
    for outer, record in enumerate(records):
        assert [t["meta_step"] for t in record["tasks"]] == [outer * 5 + i for i in range(5)]
        assert set(record["task_pids"]) <= actor_pids
    assert len({pid for r in records for pid in r["task_pids"]}) == 2  # both workers took tasks


def test_task_source_is_a_named_actor_with_its_state(ray_session):
    with ReptileMetaRL(**cartpole_kwargs(backend="ray", outer_steps=1)) as meta:
        meta.learn()
        actor = ray_session.get_actor(meta.task_source.name)
        state = ray_session.get(actor.state_dict.remote())
        assert len(state["generator"]["selected_tasks"]) >= 1
        assert state["generator"]["rng"]["bit_generator"] == "PCG64"


class SimpleCartPoleTaskGenerator:
    """The original trainer's README example, unchanged."""

    def __init__(self, env_id: str = "CartPole-v1"):
        self.env_id = env_id

    def reset_history(self) -> None:
        pass

    def get_task(
        self, meta_step: int, seed: int | None = None
    ) -> tuple[gym.Env, dict[str, Any], int | None]:
        env = gym.make(self.env_id)
        info: dict[str, Any] = {"meta_step": meta_step}
        return env, info, meta_step


def test_original_readme_generator_works_on_both_backends(ray_session):
    kwargs = cartpole_kwargs(
        tasks_generator_cls=SimpleCartPoleTaskGenerator, tasks_generator_params={}, outer_steps=2
    )
    with ReptileMetaRL(**kwargs) as serial:
        serial.learn()
    with ReptileMetaRL(**{**kwargs, "backend": "ray", "num_workers": 2}) as on_ray:
        on_ray.learn()
    assert [t["info"] for t in on_ray.step_records[1]["tasks"]] == [
        {"meta_step": m} for m in range(4, 8)
    ]
    a, b = weights_of(serial), weights_of(on_ray)
    assert all(th.equal(a[k], b[k]) for k in a)


class HalfBudgetReptile(ReptileMetaRL):
    """A trainer subclass overriding the original trainer's inner_adapt hook."""

    def inner_adapt(self, task_model) -> None:
        task_model.learn(self.inner_steps // 2, reset_num_timesteps=True)


def test_trainer_subclass_inner_adapt_override_runs_on_the_workers(ray_session):
    with HalfBudgetReptile(**cartpole_kwargs(backend="ray", num_workers=2, outer_steps=1)) as meta:
        meta.learn()
    assert meta.step_records[0]["env_steps"] == 4 * 64
