r"""One key for the whole task-vector cache of a build, for CI caches (GitHub Actions' ``actions/cache``).

The key is the sha256 of every node's training hash, so it changes exactly
when some node must retrain (a changed example, training setting or base),
and not when only weights, merge settings, eval cases or comments change.

>>> training_hashes_key({"b": "22", "a": "11"}) == "tv-" + hashlib.sha256(b"a=11\nb=22\n").hexdigest()[:40]
True
"""

from __future__ import annotations

import hashlib


def training_hashes_key(hashes: dict[str, str]) -> str:
    """``tv-`` and 40 hex digits of sha256 over the sorted ``node id = training hash`` lines."""
    text = "".join(f"{node_id}={h}\n" for node_id, h in sorted(hashes.items()))
    return "tv-" + hashlib.sha256(text.encode()).hexdigest()[:40]
