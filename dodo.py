"""Build a personality: ``doit`` builds specs/ into out/.

    doit                          # base, train changed nodes, link, eval
    doit -n 2                     # train independent nodes in parallel
    doit specs=DIR out=DIR        # another personality
    doit list                     # the tasks and what they do

The tasks come from traitgraph.build.tasks; up-to-dateness is by content hash
(README, "Rebuild rules").
"""

import sys

from doit import get_var

from traitgraph.build.tasks import load_plan_or_exit, lock_output_or_exit, runs_tasks, task_creators

plan = load_plan_or_exit(get_var("specs", "specs"), get_var("out", "out"))
if runs_tasks(sys.argv[1:]):
    build_lock = lock_output_or_exit(plan)  # held until doit exits
globals().update(task_creators(plan))
