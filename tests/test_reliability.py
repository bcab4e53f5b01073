"""Faults the runners survive: a worker that dies mid-task or is killed, a task that raises once or
for good, a task that hangs, and a cluster address where nothing answers.

Every recovered run must end with the meta weights of an undisturbed run, bit for bit: a rerun is
the same job (same spec, same task seed) from a fresh start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import psutil
import pytest
import torch as th
from conftest import assert_same_weights, cartpole_kwargs, weights_of

from distributed_reptile import InnerLearner, ReptileMetaRL
from distributed_reptile.runners.base import Runner, TaskFailedError
from distributed_reptile.runners.ray_runner import RayRunner
from distributed_reptile.tasks.families import make_cartpole_task

#: Two outer steps of four 64-step PPO tasks: meta steps 0-3, then 4-7.
RUN: dict[str, Any] = {"inner_steps": 64, "outer_steps": 2, "task_batch_size": 4}
FAULT_META_STEP = 5


def run_kwargs(**overrides: Any) -> dict[str, Any]:
    return cartpole_kwargs(**{**RUN, "backend": "ray", "num_workers": 2, **overrides})


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, th.Tensor], list[dict[str, Any]]]:
    """The undisturbed run (serial: the same weights as Ray, see test_contracts)."""
    with ReptileMetaRL(**cartpole_kwargs(**RUN)) as meta:
        meta.learn()
        return weights_of(meta), meta.step_records


def first_time(marker: str) -> bool:
    """Create ``marker`` (holding this pid) and say whether this call created it."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


class FaultLearner(InnerLearner):
    """Misbehaves inside the inner loop the first time it runs meta step ``fault_meta_step``.

    ``fault``: ``"exit"`` ends the worker process halfway through ``learn``; ``"hang"`` never
    returns; ``"pause"`` waits long enough for the driver to kill the worker.
    """

    fault = "exit"
    fault_meta_step = FAULT_META_STEP
    marker = ""

    def run(self, job, meta_weights):
        self._meta_step = job.spec.meta_step
        return super().run(job, meta_weights)

    def inner_adapt(self, task_model) -> None:
        if self._meta_step == self.fault_meta_step and first_time(self.marker):
            if self.fault == "exit":
                task_model.learn(self.inner_steps // 2, reset_num_timesteps=True)
                os._exit(1)
            time.sleep(3600 if self.fault == "hang" else 30)
            Path(self.marker + ".finished").touch()  # reached only if nobody stopped the wait
        super().inner_adapt(task_model)


def fault_learner(fault: str, marker: Path) -> type[InnerLearner]:
    return type(f"{fault.title()}Once", (FaultLearner,), {"fault": fault, "marker": str(marker)})


class ReliableReptile(ReptileMetaRL):
    """ReptileMetaRL whose Ray runner gets extra options (``task_retries``, ``task_timeout_s``)."""

    def __init__(self, runner_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.runner_options = dict(runner_options or {})
        super().__init__(**kwargs)

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            settings = self.execution.settings
            self._runner = RayRunner(
                self._learner_factory(),
                num_workers=settings.num_workers,
                worker_resources=settings.worker_resources,
                **{
                    "max_restarts": settings.max_worker_restarts,
                    "max_task_retries": settings.max_task_retries,
                    **self.runner_options,
                },
            )
        return self._runner


def ray_runner(meta: ReptileMetaRL) -> RayRunner:
    runner = meta.runner
    assert isinstance(runner, RayRunner)
    return runner


def events(meta: ReptileMetaRL, kind: str) -> list[dict[str, Any]]:
    """The runner's records of reruns and worker changes of one kind."""
    runner: Any = meta.runner  # RayRunner or SerialRunner: both keep retry_events
    return [e for e in runner.retry_events if e["kind"] == kind]


# ---------------------------------------------------------------------- workers that die


def test_worker_process_exiting_mid_task_is_restarted_and_the_task_rerun(
    ray_session, reference, tmp_path
):
    marker = tmp_path / "exited"
    with ReptileMetaRL(**run_kwargs(inner_learner_cls=fault_learner("exit", marker))) as meta:
        pids_before = [w["pid"] for w in ray_runner(meta).worker_info]
        meta.learn()
        dead_pid = int(marker.read_text())
        assert dead_pid in pids_before
        assert [e["meta_step"] for e in events(meta, "worker_restarted")]
        pids_after = [w["pid"] for w in ray_runner(meta).worker_info]
        assert dead_pid not in pids_after and None not in pids_after
        assert meta.num_outer_steps == 2
        assert_same_weights(weights_of(meta), reference[0])


def test_worker_beyond_ray_restarts_is_replaced_and_the_task_rerun(
    ray_session, reference, tmp_path
):
    marker = tmp_path / "exited"
    kwargs = run_kwargs(
        inner_learner_cls=fault_learner("exit", marker),
        max_worker_restarts=0,
        max_task_retries=0,
        num_workers=1,
    )
    with ReptileMetaRL(**kwargs) as meta:
        meta.learn()
        assert ray_runner(meta).replacements == 1
        lost = events(meta, "worker_lost")
        assert [e["meta_step"] for e in lost] == [FAULT_META_STEP]
        assert int(marker.read_text()) not in [w["pid"] for w in ray_runner(meta).worker_info]
        assert_same_weights(weights_of(meta), reference[0])


def test_worker_killed_by_the_driver_mid_task_is_restarted_and_the_task_rerun(
    ray_session, reference, tmp_path
):
    marker = tmp_path / "paused"
    killed: list[int] = []
    with ReptileMetaRL(**run_kwargs(inner_learner_cls=fault_learner("pause", marker))) as meta:
        runner = ray_runner(meta)
        pids = [w["pid"] for w in runner.worker_info]

        def kill_when_paused() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if marker.exists() and marker.read_text():
                    pid = int(marker.read_text())
                    ray_session.kill(runner.actors[pids.index(pid)], no_restart=False)
                    killed.append(pid)
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_paused, daemon=True)
        killer.start()
        meta.learn()
        killer.join(timeout=5)
        assert killed, "the paused task was never seen: the kill did not happen"
        assert not Path(f"{marker}.finished").exists(), "the paused task ran on after the kill"
        assert events(meta, "worker_restarted")
        assert killed[0] not in [w["pid"] for w in runner.worker_info]
        assert_same_weights(weights_of(meta), reference[0])


# ---------------------------------------------------------------------- tasks that raise


class Exploding(gym.Wrapper):
    """An env whose ``step`` raises; each raise appends a line to ``log_path``."""

    def __init__(self, env: gym.Env, log_path: str, once_marker: str | None) -> None:
        super().__init__(env)
        self.log_path = log_path
        self.once_marker = once_marker

    def step(self, action):
        if self.once_marker is not None:
            first_time(self.once_marker)
        with open(self.log_path, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        raise RuntimeError("simulator crashed")


def make_flaky_cartpole(
    random_seed: int, bad_seeds: list[int], log_path: str, once_marker: str | None = None
) -> tuple[gym.Env, dict[str, Any]]:
    """The CartPole family, whose tasks with a seed in ``bad_seeds`` crash on ``step``: always, or,
    with ``once_marker``, until the first crash."""
    env, info = make_cartpole_task(random_seed)
    if random_seed in bad_seeds and not (once_marker is not None and os.path.exists(once_marker)):
        env = Exploding(env, log_path, once_marker)
    return env, info


def flaky_params(bad_seed: int, tmp_path: Path, once: bool) -> dict[str, Any]:
    """Task-generator parameters of the flaky CartPole family: the task with seed ``bad_seed``
    crashes (logged to ``tmp_path/crashes.log``) always, or with ``once`` only the first time."""
    params: dict[str, Any] = {"bad_seeds": [bad_seed], "log_path": str(tmp_path / "crashes.log")}
    if once:
        params["once_marker"] = str(tmp_path / "crashed")
    return {"task_callable": make_flaky_cartpole, "task_callable_params": params}


def second_step_task(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A task first drawn in outer step 2 (so outer step 1 never meets it)."""
    return next(t for t in records[1]["tasks"] if not t["revisit"])


def test_task_that_keeps_failing_fails_the_run_after_its_retries_and_keeps_the_checkpoint(
    ray_session, reference, tmp_path
):
    bad = second_step_task(reference[1])
    log = tmp_path / "crashes.log"
    params = flaky_params(bad["random_seed"], tmp_path, once=False)
    ckpts = tmp_path / "ckpt"
    kwargs = run_kwargs(tasks_generator_params=params, num_workers=1)
    with ReliableReptile(runner_options={"task_retries": 1}, **kwargs) as meta:
        with pytest.raises(TaskFailedError) as info:
            meta.learn(save_freq=1, save_path=str(ckpts))
        assert meta.num_outer_steps == 1
    message = str(info.value)
    assert f"meta_step={bad['meta_step']} " in message
    assert f"random_seed={bad['random_seed']}" in message
    assert f"'length': {bad['info']['length']}" in message
    assert "failed after 2 attempts: RuntimeError: simulator crashed" in message
    assert isinstance(info.value.cause, RuntimeError) and info.value.attempts == 2
    assert len(log.read_text().splitlines()) == 2  # the first run and task_retries=1 rerun
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["meta_ckpt_outer_1"]

    resumed = ReptileMetaRL.load(
        ckpts / "meta_ckpt_outer_1",
        tasks_generator_params={"task_callable": make_cartpole_task},
        backend="ray",
        num_workers=1,
    )
    with resumed:
        assert resumed.num_outer_steps == 1
        resumed.learn(reset_num_timesteps=False)
        assert_same_weights(weights_of(resumed), reference[0])


def test_task_that_fails_once_is_rerun_and_the_run_matches_an_undisturbed_one(
    ray_session, reference, tmp_path
):
    bad = second_step_task(reference[1])
    params = flaky_params(bad["random_seed"], tmp_path, once=True)
    with ReptileMetaRL(**run_kwargs(tasks_generator_params=params, num_workers=1)) as meta:
        meta.learn()
        errors = events(meta, "error")
        assert [(e["meta_step"], e["attempt"]) for e in errors] == [(bad["meta_step"], 1)]
        assert "RuntimeError: simulator crashed" in errors[0]["reason"]
        assert_same_weights(weights_of(meta), reference[0])


def test_task_failing_inside_a_multi_task_call_is_rerun_alone_and_the_run_matches(
    ray_session, reference, tmp_path
):
    # the last task of outer step 2, so that it is not the first of its call
    fresh = [t for t in reference[1][1]["tasks"] if not t["revisit"]]
    bad = fresh[-1]
    assert bad["meta_step"] != reference[1][1]["tasks"][0]["meta_step"]
    params = flaky_params(bad["random_seed"], tmp_path, once=True)
    # one worker, "auto": the whole batch of four goes in one call
    kwargs = run_kwargs(tasks_generator_params=params, num_workers=1, tasks_per_call="auto")
    with ReptileMetaRL(**kwargs) as meta:
        meta.learn()
        errors = events(meta, "error")
        # the failed task is named (not the first of its call), and counted once
        assert [(e["meta_step"], e["attempt"]) for e in errors] == [(bad["meta_step"], 1)]
        assert_same_weights(weights_of(meta), reference[0])


def test_worker_dying_inside_a_multi_task_call_is_replaced_and_the_run_matches(
    ray_session, reference, tmp_path
):
    marker = tmp_path / "exited"
    kwargs = run_kwargs(
        inner_learner_cls=fault_learner("exit", marker), tasks_per_call=2, max_worker_restarts=0
    )
    with ReptileMetaRL(**kwargs) as meta:
        meta.learn()
        assert ray_runner(meta).replacements >= 1
        assert events(meta, "worker_lost")
        assert_same_weights(weights_of(meta), reference[0])


def test_serial_runner_reruns_a_failed_task_like_the_ray_runner(reference, tmp_path):
    bad = second_step_task(reference[1])
    log = tmp_path / "crashes.log"
    params = flaky_params(bad["random_seed"], tmp_path, once=True)
    with ReptileMetaRL(**cartpole_kwargs(**RUN, tasks_generator_params=params)) as meta:
        meta.learn()
        assert [e["meta_step"] for e in events(meta, "error")] == [bad["meta_step"]]
        assert_same_weights(weights_of(meta), reference[0])
    assert len(log.read_text().splitlines()) == 1


def test_serial_runner_gives_up_after_the_default_two_retries(reference, tmp_path):
    bad = second_step_task(reference[1])
    log = tmp_path / "crashes.log"
    params = flaky_params(bad["random_seed"], tmp_path, once=False)
    with ReptileMetaRL(**cartpole_kwargs(**RUN, tasks_generator_params=params)) as meta:
        with pytest.raises(
            TaskFailedError, match=r"failed after 3 attempts: RuntimeError: simulator"
        ):
            meta.learn()
    assert len(log.read_text().splitlines()) == 3


# ---------------------------------------------------------------------- tasks that hang


def test_task_past_its_timeout_is_cancelled_and_rerun(ray_session, reference, tmp_path):
    marker = tmp_path / "hung"
    kwargs = run_kwargs(inner_learner_cls=fault_learner("hang", marker), num_workers=1)
    with ReliableReptile(runner_options={"task_timeout_s": 5.0}, **kwargs) as meta:
        meta.learn()
        timeouts = events(meta, "timeout")
        assert FAULT_META_STEP in [e["meta_step"] for e in timeouts]
        assert "no result within task_timeout_s=5 s" in timeouts[0]["reason"]
        assert ray_runner(meta).replacements >= 1
        assert_same_weights(weights_of(meta), reference[0])
    hung_pid = int(marker.read_text())
    deadline = time.monotonic() + 30
    while psutil.pid_exists(hung_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(hung_pid), "the hung worker process was left running"


def test_bad_runner_options_are_refused():
    factory: Any = InnerLearner  # never called: the options are checked first
    with pytest.raises(ValueError, match="task_retries must be an integer >= 0"):
        RayRunner(factory, num_workers=1, task_retries=-1)
    with pytest.raises(ValueError, match="task_timeout_s must be a positive number of seconds"):
        RayRunner(factory, num_workers=1, task_timeout_s=0)
    for bad in (0, "all", 1.5, True):
        with pytest.raises(
            ValueError, match="tasks_per_call must be an integer >= 1 .* 'auto' .* or 'guided'"
        ):
            RayRunner(factory, num_workers=1, tasks_per_call=bad)
    with pytest.raises(ValueError, match="tasks_per_call must be"):
        ReptileMetaRL(**cartpole_kwargs(tasks_per_call=0))


# ---------------------------------------------------------------------- an address with no cluster

CONNECT_SCRIPT = textwrap.dedent(
    """
    import json, socket, threading, time
    import ray
    from distributed_reptile.ray_utils import ensure_ray

    def free_port():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    silent = socket.socket()            # accepts connections and never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(silent.accept()) for _ in iter(int, 1)],
                     daemon=True).start()

    out = {}
    for case, port in (("nobody_listens", free_port()), ("silent", silent.getsockname()[1])):
        t0 = time.monotonic()
        try:
            ensure_ray(f"127.0.0.1:{port}", connect_timeout_s=2)
            out[case] = {"error": None}
        except Exception as exc:
            out[case] = {"error": type(exc).__name__, "message": str(exc),
                         "is_conn": isinstance(exc, ConnectionError)}
        out[case]["seconds"] = time.monotonic() - t0
        out[case]["initialized"] = ray.is_initialized()
    print(json.dumps(out))
    """
)


def test_unanswering_ray_address_fails_within_the_connect_timeout():
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # keep Ray on 127.0.0.1
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", CONNECT_SCRIPT], capture_output=True, text=True, timeout=180, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for case in ("nobody_listens", "silent"):
        got = out[case]
        assert got["error"] == "RayConnectionError" and got["is_conn"], got
        assert "did not answer within 2 s" in got["message"]
        assert "ray_address=None" in got["message"] and "connect_timeout_s" in got["message"]
        # Ray alone retries such an address for many minutes; the check gives up after ~2 s.
        assert got["seconds"] < 30, got
        assert got["initialized"] is False
