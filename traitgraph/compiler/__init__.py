"""The compiler: one behaviour node in, one task vector out.

Importing this package is cheap (no torch); the modules inside import it.
"""

#: Bump when a change to the training code changes the vectors it produces;
#: it is part of every node's training hash, so old cache entries go stale.
TRAINER_VERSION = "1"
