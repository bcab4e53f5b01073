"""Built-in meta-RL task families: ``task_callable(random_seed, **params) -> (env, info)``."""

from distributed_reptile.tasks.families.cartpole import CartPolePhysicsEnv, make_cartpole_task

__all__ = ["CartPolePhysicsEnv", "make_cartpole_task"]
