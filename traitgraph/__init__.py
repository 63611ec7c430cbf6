"""traitgraph: build language-model personalities from a graph of behaviour specs.

A personality is source code (``specs/``), weights are the build output:
``graph`` loads and hashes the specs, ``compiler`` trains one task vector per
node, ``build`` links them into one Hugging Face checkpoint with a lock file.
"""

__version__ = "0.1.0"
