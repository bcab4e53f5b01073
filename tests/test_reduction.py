"""Exact fixed-point sums of per-task contributions: the same bits in any order or grouping,
overflow refused, and the workers' partial sums through real runs (non-finite tasks raised or
skipped, serial = Ray, reduced = every task's weights at the driver)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch as th
from conftest import assert_same_weights, cartpole_kwargs, weights_of

from distributed_reptile import (
    AdaptedResult,
    InnerLearner,
    NonFiniteWeightsError,
    ReptileMetaRL,
    TaskJob,
    TaskSpec,
)
from distributed_reptile.reduction import (
    FRACTION_BITS,
    RANGE,
    Contribution,
    FixedSum,
    SumOverflowError,
    TaskReducer,
    on_grid,
)
from distributed_reptile.runners.ray_batch import BatchScheduler

SHAPES = {"w": (7, 5), "b": (5,), "s": ()}


def _contributions(rng: np.random.Generator, n: int, weighted: bool) -> list[Contribution]:
    out = []
    for _ in range(n):
        scale = 10.0 ** rng.uniform(-9, 2)  # from far below the grid's 1e-12 to 100
        weight = on_grid(rng.uniform(0.5, 3.0)) if weighted else 1.0
        values = {k: rng.standard_normal(s) * scale * weight for k, s in SHAPES.items()}
        out.append(Contribution(values, weight))
    return out


def _grouped(contribs: list[Contribution], rng: random.Random) -> FixedSum:
    """The contributions in a random order, cut into random groups, each group summed, then the
    groups merged two by two in a random tree."""
    order = list(contribs)
    rng.shuffle(order)
    groups: list[FixedSum] = []
    i = 0
    while i < len(order):
        k = rng.randint(1, 4)
        part = FixedSum()
        for c in order[i : i + k]:
            part.add(c)
        groups.append(part)
        i += k
    while len(groups) > 1:
        a = groups.pop(rng.randrange(len(groups)))
        b = groups.pop(rng.randrange(len(groups)))
        merged = FixedSum()
        merged.merge(b)
        merged.merge(a)
        groups.append(merged)
    return groups[0]


def _bits(total: FixedSum) -> tuple[Any, ...]:
    mean = total.mean()
    return (
        total.count,
        total.weight,
        {k: v.tobytes() for k, v in total.sums.items()},
        {k: v.tobytes() for k, v in mean.items()},
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_any_order_and_grouping_gives_the_same_bits(weighted):
    rng = np.random.default_rng(0)
    contribs = _contributions(rng, 37, weighted)
    in_order = FixedSum()
    for c in contribs:
        in_order.add(c)
    expected = _bits(in_order)
    for seed in range(25):
        assert _bits(_grouped(contribs, random.Random(seed))) == expected
    # the float64 mean of the same terms, within the grid's rounding of each term
    weight = sum(c.weight for c in contribs)
    for k in SHAPES:
        exact = np.sum([c.values[k] for c in contribs], axis=0) / weight
        got = in_order.mean()[k]
        assert np.max(np.abs(got - exact)) <= 2.0 ** -(FRACTION_BITS + 1) * 1.001 + 1e-15 * np.max(
            np.abs(exact)
        )


def test_a_finished_sum_holds_the_same_means_and_squares_and_takes_no_more_tasks():
    """The last combine of a node-reduced step makes the means where the sum is: the same bits as
    the driver's own arithmetic (float32 for the parameters named), half the bytes for float32,
    and a finished sum cannot be added to, except as the first part of an empty one."""
    import pickle

    rng = np.random.default_rng(3)
    contribs = _contributions(rng, 9, weighted=True)
    total = FixedSum()
    for c in contribs:
        total.add(c)
    means64 = total.mean()
    int_bytes = total.nbytes
    finished = pickle.loads(pickle.dumps(total))  # as a worker would have it
    finished.finish(("w", "b"))
    assert finished.sums == {} and finished.names == ["w", "b", "s"]
    assert finished.means is not None and finished.squares is not None
    for k in SHAPES:
        want = means64[k].astype(np.float32) if k != "s" else means64[k]
        assert finished.means[k].dtype == want.dtype
        assert finished.means[k].tobytes() == want.tobytes()
        flat = means64[k].reshape(-1)
        assert finished.squares[k] == float(np.einsum("i,i->", flat, flat))
    assert finished.nbytes < int_bytes
    driver = pickle.loads(pickle.dumps(finished))  # as the driver receives it
    step = FixedSum()
    step.merge(driver)  # the step's stream adopts it
    assert (step.count, step.weight) == (total.count, total.weight)
    assert step.means is not None and step.means["w"].tobytes() == finished.means["w"].tobytes()
    with pytest.raises(ValueError, match="finished sum"):
        step.add(contribs[0])
    with pytest.raises(ValueError, match="finished sum"):
        step.merge(total)
    with pytest.raises(ValueError, match="finished sum"):
        total.merge(driver)
    with pytest.raises(ValueError, match="holds its means"):
        step.mean_of("w")
    empty = FixedSum()
    empty.finish(("w",))  # nothing to finish: the driver reports an empty step itself
    assert empty.means is None


def test_float32_deltas_give_the_reptile_mean_to_within_the_grid():
    rng = np.random.default_rng(1)
    phi = rng.standard_normal(1000).astype(np.float32)
    adapted = [phi + (rng.standard_normal(1000) * 1e-3).astype(np.float32) for _ in range(8)]
    total = FixedSum()
    for a in adapted:
        total.add(Contribution({"p": np.subtract(a, phi, dtype=np.float64)}))
    exact = np.mean([np.subtract(a, phi, dtype=np.float64) for a in adapted], axis=0)
    assert np.max(np.abs(total.mean()["p"] - exact)) <= 2.0 ** -(FRACTION_BITS + 1)
    assert total.weight == 8 * 2**FRACTION_BITS


def test_a_contribution_beyond_the_range_is_refused_with_the_parameter_and_the_fix():
    total = FixedSum()
    total.add(Contribution({"a": np.ones(3), "b": np.ones(2)}))
    big = np.array([0.0, -1.5 * RANGE, 1.0])
    with pytest.raises(
        SumOverflowError, match=r"'b'.*\|delta\| = 1\.2\d*e\+07.*inner learning rate"
    ):
        total.add(Contribution({"a": np.ones(3), "b": big}), task="task meta_step=3")
    assert total.count == 1 and total.sums["b"].tolist() == [2**FRACTION_BITS] * 2
    with pytest.raises(ValueError, match="NaN or infinite"):
        total.add(Contribution({"a": np.full(3, np.nan), "b": np.ones(2)}))


def test_sums_that_could_overflow_are_refused_in_any_grouping():
    """Each term fits; together they could pass 2**63: refused whatever the grouping, before
    anything wraps, and the sum refused is left as it was."""
    third = np.full(4, 0.4 * RANGE)
    contribs = [Contribution({"p": third * s}) for s in (1, -1, 1)]
    for seed in range(5):
        with pytest.raises(SumOverflowError, match=r"'p'.*over 3 tasks.*fewer tasks"):
            _grouped(contribs, random.Random(seed))
    two = FixedSum()
    two.add(contribs[0])
    two.add(contribs[1])
    before = two.sums["p"].copy()
    one = FixedSum()
    one.add(contribs[2])
    with pytest.raises(SumOverflowError):
        two.merge(one)
    assert np.array_equal(two.sums["p"], before) and two.count == 2


def _result(meta_step: int, weights: dict[str, np.ndarray]) -> AdaptedResult:
    return AdaptedResult(
        meta_step=meta_step, index=meta_step, weights=weights, episode_returns=[1.0], env_steps=5
    )


def test_a_call_folds_its_tasks_into_one_sum_and_leaves_non_finite_ones_out():
    meta = {"p": np.zeros(3, np.float32), "ignored": np.zeros(1, np.float32)}
    ok = {"p": np.ones(3, np.float32), "ignored": np.ones(1, np.float32)}
    bad = {"p": np.array([1, np.nan, 1], np.float32), "ignored": np.ones(1, np.float32)}
    results = [_result(0, dict(ok)), _result(1, bad), _result(2, dict(ok))]
    TaskReducer(("p",)).reduce(results, meta)
    partial = results[0].partial
    assert partial is not None and [r.partial for r in results[1:]] == [None, None]
    assert [r.nonfinite for r in results] == [[], ["p"], []]
    assert all(r.weights == {} for r in results)
    assert partial.count == 2 and list(partial.sums) == ["p"]
    assert partial.mean()["p"].tolist() == [1.0, 1.0, 1.0]


class _Pool:
    num_workers = 1


def test_a_call_is_counted_once():
    """A second answer for jobs already counted is dropped; one that overlaps them in part cannot
    be split and fails the run (the scheduler never sends one: this guards the book-keeping)."""
    jobs = [TaskJob(spec=TaskSpec(meta_step=i), task_seed=i, index=i) for i in range(3)]
    batch = BatchScheduler(
        _Pool(),  # type: ignore[arg-type]
        jobs,
        b"",
        chunk=2,
        pipeline_depth=1,
        task_retries=0,
        task_timeout_s=None,
        retry_events=[],
    )
    assert batch._first_delivery(jobs[:2])
    assert not batch._first_delivery(jobs[:2])
    with pytest.raises(RuntimeError, match="overlap"):
        batch._first_delivery(jobs[1:])


# ---------------------------------------------------------------------- real runs


class OddNaNLearner(InnerLearner):
    """Produces NaN weights on odd meta steps."""

    def run(self, job, meta_weights):
        self._meta_step = job.spec.meta_step
        return super().run(job, meta_weights)

    def inner_adapt(self, task_model) -> None:
        super().inner_adapt(task_model)
        if self._meta_step % 2:
            with th.no_grad():
                next(task_model.policy.parameters()).fill_(float("nan"))


class AllReptile(ReptileMetaRL):
    """Reptile with every task's weights sent to the driver, which computes the same terms."""

    combine = "all"


def _nan_run(cls: type = ReptileMetaRL, **overrides: Any) -> tuple[dict[str, th.Tensor], Any]:
    kwargs = cartpole_kwargs(
        inner_learner_cls=OddNaNLearner,
        outer_steps=2,
        task_batch_size=4,
        on_nonfinite="skip",
        **overrides,
    )
    with cls(**kwargs) as meta, pytest.warns(RuntimeWarning, match="Skipped"):
        meta.learn()
        return weights_of(meta), meta.step_records


def test_skipped_tasks_are_left_out_on_every_path_with_the_same_bits(ray_session):
    serial, records = _nan_run()
    assert [r["skipped_tasks"] for r in records] == [[1, 3], [5, 7]]
    assert [len(r["task_timings"]) for r in records] == [2, 2]
    assert all(th.isfinite(v).all() for v in serial.values())
    # every task's weights at the driver: the same sum, so the same bits
    assert_same_weights(serial, _nan_run(AllReptile)[0])
    # on Ray, the non-finite tasks inside calls of two and of four tasks
    for per_call in (1, 2, "auto"):
        ray_weights, ray_records = _nan_run(backend="ray", num_workers=2, tasks_per_call=per_call)
        assert_same_weights(serial, ray_weights)
        assert [r["skipped_tasks"] for r in ray_records] == [[1, 3], [5, 7]]


def test_a_non_finite_task_inside_a_call_is_named_at_the_driver(ray_session):
    kwargs = cartpole_kwargs(
        inner_learner_cls=OddNaNLearner,
        outer_steps=1,
        task_batch_size=4,
        backend="ray",
        num_workers=1,
        tasks_per_call="auto",
    )
    with ReptileMetaRL(**kwargs) as meta:
        before = weights_of(meta)
        with pytest.raises(NonFiniteWeightsError, match=r"meta_step=1 \(info=\{.*on_nonfinite"):
            meta.learn()
        assert_same_weights(before, weights_of(meta))
        assert meta.num_outer_steps == 0


def test_ray_calls_send_one_partial_sum_and_no_weights(ray_session):
    from distributed_reptile.runners.ray_runner import RayRunner
    from distributed_reptile.weights import module_to_numpy

    with ReptileMetaRL(**cartpole_kwargs(task_batch_size=4)) as meta:
        specs = meta.task_source.sample_specs([0, 1, 2, 3], [None] * 4)
        jobs = [TaskJob(spec=s, task_seed=10 + i, index=i) for i, s in enumerate(specs)]
        weights = module_to_numpy(meta.meta_policy)
        reducer = meta.task_reducer()
        n_params = sum(p.numel() for p in meta.meta_params().values())
        serial = list(meta.runner.run_batch(jobs, weights, reducer=reducer))
        runner = RayRunner(meta._learner_factory(), num_workers=1, tasks_per_call=2)
        try:
            on_ray = list(runner.run_batch(jobs, weights, reducer=reducer))
        finally:
            runner.close()
    assert all(r.weights == {} for r in on_ray)
    assert [r.partial is not None for r in on_ray] == [True, False, True, False]
    assert all(r.partial is not None for r in serial)
    # two calls of two tasks: 2 x P x 8 bytes of sums, where the weights were 4 x P x 4
    assert sum(r.partial.nbytes for r in on_ray if r.partial) == 2 * 8 * n_params
    a = FixedSum.of(r.partial for r in serial if r.partial)
    b = FixedSum.of(r.partial for r in on_ray if r.partial)
    assert _bits(a) == _bits(b)
