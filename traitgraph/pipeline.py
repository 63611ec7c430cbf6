"""The whole pipeline as doit tasks: ``base``, ``train:<node>``, ``link``, ``eval``.

The one place where the builder's tasks meet evaluation's, so that neither
package imports the other's way back up. ``dodo.py`` and ``traitgraph build``
both get their tasks from here::

    build = open_build("specs", "out")        # plan + the output lock when tasks run
    build.tasks()["eval"]()                   # the doit task dict of ``eval``
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitgraph.builder.output_dir import check_output_dir, clean_after_crash
from traitgraph.builder.output_lock import OutputLock
from traitgraph.builder.plan import BuildPlan
from traitgraph.builder.tasks import base_task, doit_config, link_task, train_tasks
from traitgraph.environment import check_thread_settings
from traitgraph.errors import UserError
from traitgraph.evaluate.run import eval_task

#: the tasks ``doit`` runs with no task named
DEFAULT_TASKS = ["eval"]


@dataclass
class Build:
    """One build of a specs directory into an output directory."""

    plan: BuildPlan
    output_lock: OutputLock | None = None

    @property
    def doit_config(self) -> dict[str, Any]:
        return doit_config(self.plan, DEFAULT_TASKS)

    def tasks(self) -> dict[str, Callable[[], Any]]:
        """Task creators by name (``base``, ``train``, ``link``, ``eval``)."""
        plan = self.plan
        return {
            "base": lambda: base_task(plan),
            "train": lambda: train_tasks(plan),
            "link": lambda: link_task(plan),
            "eval": lambda: eval_task(plan),
        }

    def doit_namespace(self) -> dict[str, Any]:
        """What doit's ``ModuleTaskLoader`` reads: ``DOIT_CONFIG`` and one ``task_<name>`` per task."""
        return {"DOIT_CONFIG": self.doit_config, **{f"task_{name}": fn for name, fn in self.tasks().items()}}


def open_build(specs_dir: str | Path, out_dir: str | Path, *, runs_tasks: bool = True, ray: str | None = None) -> Build:
    """Load the plan and, when the command will run tasks, lock OUT for the life
    of the build. A bad spec or a build already writing to OUT is a :class:`UserError`.

    ``ray``: train on Ray at this address (``"settings"``: the personality's ``ray:``
    address, else a local Ray); None trains here unless ``personality.yaml`` has ``ray:``.
    """
    plan = BuildPlan.load(specs_dir, out_dir)
    settings = plan.spec.personality.ray
    if ray is not None or settings is not None:
        from traitgraph.builder.ray_executor import FROM_SETTINGS, RayExecutor
        from traitgraph.graph.schema import RaySettings

        plan.executor = RayExecutor(settings or RaySettings(), FROM_SETTINGS if ray is None else ray)
    if not runs_tasks:
        return Build(plan, None)
    check_thread_settings()  # before anything is written, not when a task first reads one
    check_output_dir(plan.out.root, plan.spec)  # a file, unwritable, or the base's own directory: refused
    lock = OutputLock(plan.out).acquire()
    clean_after_crash(plan.out)
    return Build(plan, lock)


def open_build_or_exit(specs_dir: str | Path, out_dir: str | Path, *, runs_tasks: bool = True) -> Build:
    """:func:`open_build` for a dodo file: a user mistake is printed (every problem, no traceback) and exits 2."""
    try:
        return open_build(specs_dir, out_dir, runs_tasks=runs_tasks)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
