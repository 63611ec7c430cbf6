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

from traitgraph.build.tasks import runs_tasks, task_creators

globals().update(
    task_creators(
        specs_dir=get_var("specs", "specs"),
        out_dir=get_var("out", "out"),
        lock_output=runs_tasks(sys.argv[1:]),
    )
)
