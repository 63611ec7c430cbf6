"""Build a personality with doit: specs/ -> out/.

    doit                          # base, train changed nodes, link, eval
    doit -n 2                     # train independent nodes in parallel
    doit specs=DIR out=DIR        # another personality
    doit list                     # the tasks and what they do

Up-to-dateness is by content hash, never file times (README, "Rebuild rules").
"""

import sys

from doit import get_var

from traitgraph.builder.tasks import runs_tasks
from traitgraph.pipeline import open_build_or_exit

build = open_build_or_exit(get_var("specs", "specs"), get_var("out", "out"), runs_tasks=runs_tasks(sys.argv[1:]))
DOIT_CONFIG = build.doit_config


def task_base():
    """Prepare the base model (converted once into the cache)."""
    return build.tasks()["base"]()


def task_train():
    """Train every node whose training hash changed."""
    yield from build.tasks()["train"]()


def task_link():
    """Link the task vectors into OUT/checkpoint and write the lock file."""
    return build.tasks()["link"]()


def task_eval():
    """Score behaviour and retention, write the report, apply the gates."""
    return build.tasks()["eval"]()
