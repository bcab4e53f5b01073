"""TaskGenerator: both modes, the three sampling methods, revisits, history and exact state."""

from __future__ import annotations

from collections import Counter

import gymnasium as gym
import pytest

from distributed_reptile import TaskGenerator, TaskSpec
from distributed_reptile.tasks.families import make_cartpole_task


def _static(n: int = 3) -> list[tuple[gym.Env, dict]]:
    return [(gym.make("CartPole-v1"), {"id": i}) for i in range(n)]


def test_static_cyclic_follows_meta_step_modulo_n():
    gen = TaskGenerator(tasks=_static(3), sampling_method="cyclic")
    ids = [gen.get_task(m)[1]["id"] for m in range(7)]
    assert ids == [0, 1, 2, 0, 1, 2, 0]
    assert gen.get_task(4)[2] is None  # static tasks have no origin


def test_static_random_is_seeded_and_covers_all_tasks():
    a = TaskGenerator(tasks=_static(3), sampling_method="random", generator_seed=5)
    b = TaskGenerator(tasks=_static(3), sampling_method="random", generator_seed=5)
    ids_a = [a.get_task(m)[1]["id"] for m in range(60)]
    assert ids_a == [b.get_task(m)[1]["id"] for m in range(60)]
    assert set(ids_a) == {0, 1, 2}


def test_static_weighted_follows_the_weights():
    gen = TaskGenerator(
        tasks=_static(2), sampling_method="weighted", sampling_weights=[0.9, 0.1], generator_seed=0
    )
    counts = Counter(gen.get_task(m)[1]["id"] for m in range(2000))
    assert 0.85 < counts[0] / 2000 < 0.95


def test_weighted_without_matching_weights_is_refused():
    with pytest.raises(ValueError, match="one weight per task"):
        TaskGenerator(tasks=_static(3), sampling_method="weighted", sampling_weights=[1.0])
    with pytest.raises(ValueError, match="sampling_weights"):
        TaskGenerator(tasks=_static(3), sampling_method="weighted")


def test_unknown_sampling_method_names_the_choices():
    with pytest.raises(ValueError, match="cyclic, random, weighted"):
        TaskGenerator(tasks=_static(2), sampling_method="roundrobin")


def test_task_callable_must_take_random_seed_by_name():
    def make(seed):  # wrong name
        return gym.make("CartPole-v1"), {}

    with pytest.raises(TypeError, match="random_seed"):
        TaskGenerator(task_callable=make)


def test_exactly_one_mode_is_required():
    with pytest.raises(ValueError, match="exactly one"):
        TaskGenerator()
    with pytest.raises(ValueError, match="exactly one"):
        TaskGenerator(tasks=_static(1), task_callable=make_cartpole_task)


def test_callable_mode_records_history_and_origin():
    gen = TaskGenerator(task_callable=make_cartpole_task, revisit_ratio=0.0, generator_seed=1)
    env, info, origin = gen.get_task(0)
    assert isinstance(env, gym.Env) and origin == 0 and info["family"] == "cartpole"
    gen.get_task(1, seed=1234)
    assert [r["seed"] for r in gen.selected_tasks][1] == 1234
    assert [r["first_meta_step"] for r in gen.selected_tasks] == [0, 1]
    gen.reset_history()
    assert gen.selected_tasks == [] and gen.revisit_counter == 0


def test_revisits_rebuild_a_past_task_from_its_seed():
    gen = TaskGenerator(
        task_callable=make_cartpole_task,
        revisit_ratio=1.0,
        revisit_start=2,
        sampling_method="cyclic",
        generator_seed=0,
    )
    s0, s1 = gen.sample_spec(0), gen.sample_spec(1)  # before revisit_start: new tasks
    s2, s3, s4 = gen.sample_spec(2), gen.sample_spec(3), gen.sample_spec(4)
    assert not s0.revisit and not s1.revisit
    assert [s.revisit for s in (s2, s3, s4)] == [True, True, True]
    # cyclic revisits walk the history in order
    assert [s.random_seed for s in (s2, s3, s4)] == [s0.random_seed, s1.random_seed, s0.random_seed]
    assert [s.origin_meta_step for s in (s2, s3, s4)] == [0, 1, 0]
    assert gen.selected_tasks[0]["meta_steps"] == [0, 2, 4]
    assert s2.info == s0.info


def test_revisit_ratio_is_respected_on_average():
    gen = TaskGenerator(task_callable=make_cartpole_task, revisit_ratio=0.3, generator_seed=0)
    specs = [gen.sample_spec(m) for m in range(300)]
    share = sum(s.revisit for s in specs) / 299
    assert 0.2 < share < 0.4


def test_weighted_revisits_use_the_weight_function():
    def only_first(history):
        return [1.0] + [0.0] * (len(history) - 1)

    gen = TaskGenerator(
        task_callable=make_cartpole_task,
        revisit_ratio=0.5,
        sampling_method="weighted",
        revisit_weight_fn=only_first,
        generator_seed=0,
    )
    specs = [gen.sample_spec(m) for m in range(40)]
    revisits = [s for s in specs if s.revisit]
    assert revisits and all(s.origin_meta_step == 0 for s in revisits)


def test_weight_function_with_wrong_length_is_refused():
    gen = TaskGenerator(
        task_callable=make_cartpole_task,
        revisit_ratio=1.0,
        sampling_method="weighted",
        revisit_weight_fn=lambda h: [1.0, 1.0, 1.0],
        generator_seed=0,
    )
    gen.sample_spec(0)
    with pytest.raises(ValueError, match="one weight per task"):
        gen.sample_spec(1)


def test_history_off_means_no_revisits():
    gen = TaskGenerator(
        task_callable=make_cartpole_task, revisit_ratio=1.0, history=False, generator_seed=0
    )
    assert not any(gen.sample_spec(m).revisit for m in range(20))
    assert gen.selected_tasks == []


def test_state_dict_continues_the_exact_same_stream():
    gen = TaskGenerator(task_callable=make_cartpole_task, revisit_ratio=0.5, generator_seed=3)
    for m in range(10):
        gen.sample_spec(m)
    state = gen.state_dict()
    expected = [gen.sample_spec(m).describe() for m in range(10, 30)]
    other = TaskGenerator(task_callable=make_cartpole_task, revisit_ratio=0.5, generator_seed=999)
    other.load_state_dict(state)
    assert [other.sample_spec(m).describe() for m in range(10, 30)] == expected


def test_spec_builds_the_same_env_as_get_task():
    a = TaskGenerator(task_callable=make_cartpole_task, generator_seed=2)
    b = TaskGenerator(task_callable=make_cartpole_task, generator_seed=2)
    spec = a.sample_spec(0)
    env, info, _ = b.get_task(0)
    assert isinstance(spec, TaskSpec) and spec.info == info
    assert spec.build_env().unwrapped.length == env.unwrapped.length


def test_wrong_return_type_of_task_callable_is_named():
    def make(random_seed):
        return gym.make("CartPole-v1")  # forgot the info dict

    gen = TaskGenerator(task_callable=make, generator_seed=0)
    with pytest.raises(TypeError, match=r"tuple \(env, info\)"):
        gen.get_task(0)


def _draw(gen: TaskGenerator, steps: range) -> list[dict]:
    return [gen.sample_spec(m).describe() for m in steps]


@pytest.mark.parametrize("sampling_method", ["random", "cyclic"])
def test_rollback_undoes_the_draws_since_mark_history_included(sampling_method):
    params = {
        "task_callable": make_cartpole_task,
        "revisit_ratio": 0.6,
        "sampling_method": sampling_method,
        "generator_seed": 5,
    }
    straight = TaskGenerator(**params)
    expected = _draw(straight, range(30))
    gen = TaskGenerator(**params)
    got = _draw(gen, range(10))
    gen.mark()
    ahead = _draw(gen, range(10, 18))  # drawn ahead, then undone
    assert sum(d["revisit"] for d in ahead) > 0  # the undone draws touched the history
    gen.rollback()
    got += _draw(gen, range(10, 30))
    assert got == expected
    assert gen.state_dict()["selected_tasks"] == straight.state_dict()["selected_tasks"]
    assert gen.revisit_counter == straight.revisit_counter


def test_rollback_without_mark_is_refused():
    gen = TaskGenerator(task_callable=make_cartpole_task, generator_seed=0)
    with pytest.raises(RuntimeError, match="mark"):
        gen.rollback()
    gen.mark()
    with pytest.raises(RuntimeError, match="mark"):
        gen.rollback(1)


# ---------------------------------------------------------------------- a bounded history
class _Tiny(gym.Env):
    observation_space = gym.spaces.Discrete(1)
    action_space = gym.spaces.Discrete(1)


def _tiny_task(random_seed):
    return _Tiny(), {"goal": random_seed % 97}


def _bounded(size, **extra):
    params = {
        "task_callable": _tiny_task,
        "revisit_ratio": 0.5,
        "generator_seed": 11,
        "history_size": size,
    }
    return TaskGenerator(**{**params, **extra})


@pytest.mark.parametrize("sampling_method", ["random", "cyclic"])
def test_a_bounded_history_revisits_only_its_newest_tasks(sampling_method):
    gen = _bounded(5, sampling_method=sampling_method)
    new_seeds: list[int] = []
    revisits = 0
    for m in range(400):
        d = gen.sample_spec(m).describe()
        if d["revisit"]:
            revisits += 1
            assert d["random_seed"] in new_seeds[-5:]
        else:
            new_seeds.append(d["random_seed"])
    assert revisits > 100
    assert [r["seed"] for r in gen.selected_tasks] == new_seeds[-5:]
    assert len(gen.state_dict()["selected_tasks"]) == 5


def test_a_bounded_history_draws_what_an_unbounded_one_does_until_it_is_full():
    a, b = _bounded(300), _bounded(None)
    assert _draw(a, range(250)) == _draw(b, range(250))  # fewer than 300 new tasks: no drop
    assert a.state_dict() == b.state_dict()


def test_a_bounded_history_keeps_memory_and_state_flat():
    gen = _bounded(20)
    sizes = []
    for m in range(4000):
        if m % 7 == 0:
            gen.mark()
        gen.sample_spec(m)
        if m % 7 == 3:
            gen.release_marks()
        sizes.append(len(gen._records))
    assert max(sizes) <= 2 * 20 + 10
    assert len(gen.state_dict()["selected_tasks"]) == 20


@pytest.mark.parametrize("seed", range(6))
def test_a_bounded_history_rolls_back_and_restores_as_if_nothing_was_drawn_ahead(seed):
    """Random marks, draws ahead, rollbacks, releases, state reads and restores: the tasks drawn
    and the state equal those of a generator that drew the same steps straight."""
    import random

    rng = random.Random(seed)
    method = ["random", "cyclic"][seed % 2]
    straight, gen = _bounded(6, sampling_method=method), _bounded(6, sampling_method=method)
    expected = _draw(straight, range(600))
    got: list[dict] = []
    while len(got) < 600:
        step = len(got)
        ahead = []
        for i in range(min(rng.randint(1, 4), 600 - step)):  # draw ahead, a mark per step
            gen.mark()
            ahead.append(gen.sample_spec(step + i).describe())
        keep = rng.randint(0, len(ahead))  # the steps used; the rest are undone
        if keep < len(ahead):
            state = gen.state_dict_at(keep)
            gen.rollback(keep)
            assert gen.state_dict() == state
        gen.release_marks()
        got += ahead[:keep]
    assert got == expected
    assert gen.state_dict() == straight.state_dict()
    restored = _bounded(6, sampling_method=["random", "cyclic"][seed % 2])
    restored.load_state_dict(gen.state_dict())
    assert _draw(restored, range(600, 650)) == _draw(straight, range(600, 650))


def test_an_unbounded_state_loads_into_a_bounded_history_as_its_newest_tasks():
    big = _bounded(None)
    _draw(big, range(100))
    small = _bounded(10)
    small.load_state_dict(big.state_dict())
    assert small.selected_tasks == big.selected_tasks[-10:]


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_a_bad_history_size_is_refused(size):
    with pytest.raises(ValueError, match="history_size"):
        _bounded(size)


def test_the_config_default_is_the_generators():
    from distributed_reptile.config_checks import TaskGeneratorParams
    from distributed_reptile.tasks.generator import DEFAULT_HISTORY_SIZE

    assert TaskGeneratorParams().history_size == DEFAULT_HISTORY_SIZE
