"""The compiler: one behaviour node in, one task vector out.

Importing this package is cheap (no torch); the modules inside import it.
"""

from traitgraph.versions import TRAINER_VERSION  # re-exported: the version of the code in this package

__all__ = ["TRAINER_VERSION"]
