"""Versions that take part in content hashes, shared by every layer.

``graph.hashing`` puts :data:`TRAINER_VERSION` into each node's training hash
and the compiler is the code it versions; both import it from here, so the
graph never imports the compiler. :data:`LINKER_VERSION` versions the linker
the same way: the lock file records it and the builder relinks when it differs.

>>> TRAINER_VERSION, LINKER_VERSION
('1', '1')
"""

#: Bump when a change to the training code changes the vectors it produces;
#: it is part of every node's training hash, so old cache entries go stale.
TRAINER_VERSION = "1"

#: Bump when a change to the linking code changes the checkpoint it writes for the
#: same vectors and settings; the lock records it, so the next build relinks
#: (its vectors stay cached) and `traitgraph link --lock` refuses a lock of another version.
LINKER_VERSION = "1"
