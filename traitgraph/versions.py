"""Versions that take part in content hashes, shared by every layer.

``graph.hashing`` puts :data:`TRAINER_VERSION` into each node's training hash
and the compiler is the code it versions; both import it from here, so the
graph never imports the compiler.

>>> TRAINER_VERSION
'1'
"""

#: Bump when a change to the training code changes the vectors it produces;
#: it is part of every node's training hash, so old cache entries go stale.
TRAINER_VERSION = "1"
