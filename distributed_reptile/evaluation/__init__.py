"""Meta-test evaluation: returns on held-out tasks before and after adaptation, with intervals.

* :func:`evaluate_inits` adapts several initialisations (meta-init, random init, multi-task
  baseline) to the same held-out tasks with the same budgets and seeds, through a runner (a
  trainer's own workers, or :func:`build_eval_runner`), and summarises them with
  :func:`summarize`: mean and Student-t interval per init and budget, the gain from adaptation,
  and paired differences task by task.
* :func:`select_adaptation_lr` chooses each initialisation's adaptation step on meta-train tasks.
* :func:`save_report` writes the report as JSON, a PNG of adaptation curves and Markdown tables.
* :class:`MetaEvalCallback` runs the evaluation every few outer steps during meta-training.
* :func:`cli_main` is ``distributed-reptile evaluate CHECKPOINT ...``.
"""

from distributed_reptile.evaluation.callback import MetaEvalCallback
from distributed_reptile.evaluation.cli import cli_main
from distributed_reptile.evaluation.core import (
    DEFAULT_BUDGET_ROLLOUTS,
    Budgets,
    adaptation_returns,
    build_eval_runner,
    evaluate_inits,
    held_out_specs,
    random_init_weights,
    resolve_budgets,
    resolve_task_callable,
    rollout_size,
    summarize,
)
from distributed_reptile.evaluation.report import (
    plot_report,
    report_to_markdown,
    save_report,
    write_json,
)
from distributed_reptile.evaluation.select import (
    RunnersByStep,
    adaptation_runner,
    select_adaptation_lr,
)
from distributed_reptile.evaluation.stats import (
    paired_difference,
    student_t_cdf,
    student_t_ppf,
    t_interval,
)

__all__ = [
    "DEFAULT_BUDGET_ROLLOUTS",
    "Budgets",
    "MetaEvalCallback",
    "RunnersByStep",
    "adaptation_returns",
    "adaptation_runner",
    "build_eval_runner",
    "cli_main",
    "evaluate_inits",
    "held_out_specs",
    "paired_difference",
    "plot_report",
    "random_init_weights",
    "report_to_markdown",
    "resolve_budgets",
    "resolve_task_callable",
    "rollout_size",
    "save_report",
    "select_adaptation_lr",
    "student_t_cdf",
    "student_t_ppf",
    "summarize",
    "t_interval",
    "write_json",
]
