"""Build the compiled core (detectors.native) for the sources here, unless it is built; or say its state.

python -m detectors.build_native [-v]
python -m detectors.build_native --status
"""

from __future__ import annotations

import sys

from detectors import native


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--status" in args:
        loaded = "compiled" if native.active() else "Python"
        print(f"key {native.key()}: {'built' if native.built() else 'not built'}; loaded: {loaded}")
        return 0
    where = native.build(quiet="-v" not in args)
    print(f"detectors.build_native: built in {where.relative_to(native.PACKAGE.parent)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
