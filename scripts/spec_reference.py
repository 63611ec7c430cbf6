"""Print the README's spec reference, generated from the schema; ``--write`` puts it into README.md.

python scripts/spec_reference.py           # print it
python scripts/spec_reference.py --write   # regenerate README.md's "Spec reference" section
"""

from __future__ import annotations

import sys
from pathlib import Path

from traitgraph.graph.reference import replace_section, spec_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        README.write_text(replace_section(README.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"wrote the spec reference into {README}")
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    print(spec_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
