"""The compiled core: detectors' hot modules built with mypyc, used only when built from these sources.

    python -m detectors.build_native          # scripts/bootstrap.sh runs it; a no-op when built
    python -m detectors.build_native --status

mypyc (part of mypy, which checks these modules strictly already) compiles the modules of
COMPILED, from the same source, to C extension modules: the offline replay takes about a fifth
less CPU a record (docs/performance.md). A build lives in detectors/_native/<key>/, where <key> hashes
the modules' sources and the Python build; `activate` (detectors/__init__.py) puts it first on
the package's path when it is there. An edited source has another key, so a stale build is never
loaded: the modules then load as Python, as they always can.

NOTIFGUARD_NATIVE: "auto" (the default: compiled when built), "0" (Python, e.g. to debug or to
patch the modules' internals in a test), "1" (compiled, or an ImportError: the test suite and the
container image, so that they run what runs in production).

Modules that define msgspec Structs or Protocols are not compiled (mypyc passes no class keywords
to a metaclass, and builds Protocols as classes): detectors/messages.py and detectors/stores.py
hold the engine's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Final

PACKAGE: Final = Path(__file__).resolve().parent
COMPILED: Final = (
    "arrival",
    "engine",
    "expiry",
    "kinds",
    "patterns",
    "privacy",
    "rules",
    "text",
    "timefmt",
    "verdicts",
    "wording",
)
ENV: Final = "NOTIFGUARD_NATIVE"
# bumped when how a build is made changes (its options), so that builds made otherwise are not used
_RECIPE: Final = "mypyc opt 3, one group, v1"
_DONE: Final = "BUILT"  # written last: a build without it is unfinished


def key() -> str:
    """The build's key: the compiled modules' sources, the Python build and the recipe."""
    h = hashlib.sha256()
    for part in (_RECIPE, sys.version, sysconfig.get_config_var("EXT_SUFFIX") or ""):
        h.update(part.encode() + b"\0")
    for name in COMPILED:
        h.update(name.encode() + b"\0" + (PACKAGE / f"{name}.py").read_bytes() + b"\0")
    return h.hexdigest()[:20]


def build_dir() -> Path:
    return PACKAGE / "_native" / key()


def built() -> bool:
    return (build_dir() / _DONE).is_file()


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "0", "1"):
        raise ValueError(f"{ENV} is {value!r}: auto, 0 or 1")
    return value


def activate(package_path: list[str]) -> bool:
    """Put the build for these sources first on the package's path (before any module of the
    package is imported); returns whether it did."""
    wanted = mode()
    if wanted == "0":
        return False
    where = build_dir()
    if not (where / _DONE).is_file():
        if wanted == "1":
            raise ImportError(
                f"{ENV}=1 and no compiled build of detectors for these sources: run python -m detectors.build_native"
            )
        return False
    if str(where) not in sys.path:
        sys.path.append(str(where))  # (the modules' shared library, a top-level module)
    package_path.insert(0, str(where / "detectors"))
    return True


def active() -> bool:
    """Whether the compiled modules are the ones loaded."""
    import detectors.engine

    return not (detectors.engine.__file__ or "").endswith(".py")


def build(quiet: bool = True) -> Path:
    """Compile COMPILED into build_dir() unless it is there; older builds go. Needs mypy and a C compiler."""
    where = build_dir()
    if (where / _DONE).is_file():
        return where
    from mypyc.build import mypycify  # (build time only)
    from setuptools import setup

    root = PACKAGE.parent
    work = Path(tempfile.mkdtemp(prefix="notifguard-native-"))
    here = Path.cwd()
    try:
        os.chdir(root)  # mypyc names the modules by their paths from here
        extensions = mypycify(
            [f"{PACKAGE.name}/{name}.py" for name in COMPILED],
            opt_level="3",
            target_dir=str(work / "c"),
            verbose=not quiet,
        )
        staging = work / "lib"
        args = ["build_ext", "--build-lib", str(staging), "--build-temp", str(work / "tmp")]
        setup(name="notifguard-native", ext_modules=extensions, script_args=[*(["-q"] if quiet else []), *args])
        (staging / _DONE).write_text(f"{_RECIPE}\n{sys.version}\n")
        for old in (PACKAGE / "_native").glob("*"):
            shutil.rmtree(old, ignore_errors=True)
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(where))
    finally:
        os.chdir(here)
        shutil.rmtree(work, ignore_errors=True)
    return where
