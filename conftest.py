"""Root pytest configuration: doctest examples marked ``+SKIP`` are illustrations
(they need the real base or a build), not tests; a module whose every example is
one is deselected instead of being reported as a skipped test."""

from __future__ import annotations

import doctest


def pytest_collection_modifyitems(config, items):
    from _pytest.doctest import DoctestItem

    def only_illustrations(item) -> bool:
        examples = item.dtest.examples if isinstance(item, DoctestItem) else None
        return bool(examples) and all(ex.options.get(doctest.SKIP) for ex in examples)

    illustrations = [item for item in items if only_illustrations(item)]
    if illustrations:
        config.hook.pytest_deselected(items=illustrations)
        items[:] = [item for item in items if not only_illustrations(item)]
