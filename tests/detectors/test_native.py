"""The compiled core (detectors.native): what loads when, and that it answers as the Python modules do."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import detectors
from detectors import native
from tests.pipelines import CHANGES, HOUR, Pipeline, pipelines

ROOT = Path(__file__).resolve().parents[2]

# Replays a capture with the core as NOTIFGUARD_NATIVE says, and writes what came out: the alerts
# and dead letters (their wall-clock fields blanked), the counters, every number's stored state.
_REPLAY = """
import dataclasses, json, sys
import msgspec
import detectors
from detectors.codec import encode_number
from detectors.engine import Engine
from detectors.settings import Settings
from streams.replay_offline import replay
settings = Settings(correction_horizon_s=12 * 3600)
engine = Engine(settings, new_id=lambda: "x")
dead = []
class Sink:
    def write(self, data):
        dead.append(msgspec.json.decode(data) | {"detected_at": ""})
summary, alerts = replay([sys.argv[1]], settings, deadletter_out=Sink(), engine=engine, jobs=int(sys.argv[3]))
out = {
    "native": detectors.NATIVE,
    "alerts": [msgspec.to_builtins(msgspec.structs.replace(a, alert_id="", detected_at="")) for a in alerts],
    "dead": dead,
    "stats": dataclasses.asdict(engine.stats),
    "states": {ref: encode_number(s).hex() for ref, s in sorted(engine.numbers.items())},
}
open(sys.argv[2], "w").write(json.dumps(out, sort_keys=True))
"""


def _replay(capture: Path, out: Path, native_mode: str, jobs: int) -> dict[str, object]:
    env = {**os.environ, native.ENV: native_mode}
    subprocess.run([sys.executable, "-c", _REPLAY, str(capture), str(out), str(jobs)], check=True, cwd=ROOT, env=env)
    result: dict[str, object] = json.loads(out.read_text())
    return result


def _lagging(pipeline: Pipeline, seed: int) -> Pipeline:
    """The contract changes arrive up to 10 hours after the rest (late ones are corrected: within
    the replay's 12-hour correction horizon)."""
    rng = random.Random(seed)
    records = [
        dataclasses.replace(r, arrival=r.arrival + rng.randrange(10 * HOUR)) if r.topic == CHANGES else r
        for r in pipeline.records
    ]
    records.sort(key=lambda r: (r.arrival, r.seq))
    return Pipeline(pipeline.shape, records, pipeline.stats)


def test_the_suite_runs_the_compiled_core_where_it_is_required():
    if os.environ.get(native.ENV) != "1":
        pytest.skip(f"{native.ENV} is not 1 (scripts/test sets it)")
    assert detectors.NATIVE and native.active()
    for name in native.COMPILED:
        module = __import__(f"detectors.{name}", fromlist=["_"])
        assert not module.__file__.endswith(".py"), name


def _package_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "detectors", copy / "detectors", ignore=shutil.ignore_patterns("_native", "__pycache__"))
    return copy


def test_a_build_is_keyed_by_the_sources_it_compiles(tmp_path, monkeypatch):
    copy = _package_copy(tmp_path) / "detectors"
    ours = native.key()
    monkeypatch.setattr(native, "PACKAGE", copy)
    assert native.key() == ours
    codec = copy / "codec.py"  # not compiled
    codec.write_text(codec.read_text() + "\n# edited\n")
    assert native.key() == ours
    rules = copy / "rules.py"
    rules.write_text(rules.read_text() + "\n# edited\n")
    assert native.key() != ours


def test_edited_sources_load_as_python_and_a_required_build_that_is_missing_fails(tmp_path):
    tree = _package_copy(tmp_path)
    if (ROOT / "detectors" / "_native").is_dir():  # the build for the unedited sources, copied
        shutil.copytree(ROOT / "detectors" / "_native", tree / "detectors" / "_native")
    probe = "import detectors, detectors.engine as e; print(detectors.NATIVE, e.__file__.endswith('.py'))"

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, native.ENV: mode, "PYTHONPATH": str(tree)}
        return subprocess.run([sys.executable, "-c", probe], cwd=tree, env=env, capture_output=True, text=True)

    unedited = run("auto")
    assert unedited.returncode == 0, unedited.stderr
    assert unedited.stdout.split() == (["True", "False"] if native.built() else ["False", "True"])
    engine = tree / "detectors" / "engine.py"
    engine.write_text(engine.read_text() + "\n# edited\n")
    edited = run("auto")
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.split() == ["False", "True"]  # the Python modules: the build is for other sources
    assert run("0").stdout.split() == ["False", "True"]
    required = run("1")
    assert required.returncode != 0
    assert "no compiled build of detectors for these sources" in required.stderr


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pipelines(numbers=st.integers(80, 300)), st.integers(0, 2**16), st.sampled_from([1, 2]))
def test_the_compiled_core_answers_as_the_python_modules_do(tmp_path_factory, pipeline, seed, jobs):
    """Generated pipelines with their contract changes hours late (corrections, retractions, Relinks):
    the same alerts, dead letters, counters and stored state, compiled and not."""
    if not native.built():
        pytest.skip("no compiled build for these sources (python -m detectors.build_native)")
    where = tmp_path_factory.mktemp("native")
    capture = _lagging(pipeline, seed).write(where / "capture.jsonl")
    python = _replay(capture, where / "python.json", "0", jobs)
    compiled = _replay(capture, where / "compiled.json", "1", jobs)
    assert (python.pop("native"), compiled.pop("native")) == (False, True)
    assert compiled["stats"]["corrections"]["changes"] > 0  # type: ignore[index]
    assert compiled == python


@pytest.mark.slow
def test_an_installed_package_builds_its_compiled_core_in_place(tmp_path):
    """As the container image does (deploy/docker/Dockerfile): the package installed (not editable),
    built where it is installed, then required; this checkout's own build is not used."""
    # what the image copies, installed from a copy: pip builds in the tree it installs from
    source = _package_copy(tmp_path)
    shutil.copytree(ROOT / "streams", source / "streams", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    subprocess.run(
        [*pip, str(source)], check=True, cwd=tmp_path, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    build = [sys.executable, "-m", "detectors.build_native"]
    subprocess.run(build, check=True, cwd=tmp_path, env={**env, native.ENV: "0"}, capture_output=True)
    probe = "import detectors, detectors.engine as e; print(detectors.__file__); print(e.__file__)"
    run = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        cwd=tmp_path,
        env={**env, native.ENV: "1"},
        capture_output=True,
        text=True,
    )
    package, engine = run.stdout.split()
    assert Path(package).parent == site / "detectors"
    assert Path(engine).is_relative_to(site / "detectors" / "_native") and engine.endswith(".so")


def test_patching_the_compiled_core_fails_a_test_that_is_not_marked(monkeypatch):
    """tests/conftest.py: such a patch would change nothing the compiled code runs."""
    if not detectors.NATIVE:
        pytest.skip("the core's Python modules are loaded: patching them works")
    from detectors import codec, engine

    with pytest.raises(AssertionError, match="python_core"):
        monkeypatch.setattr(engine, "Link", None)
    with pytest.raises(AssertionError, match="python_core"):
        monkeypatch.setattr(engine.Engine, "tick", None)
    with pytest.raises(AssertionError, match="python_core"):
        monkeypatch.setattr("detectors.expiry.PAST_BYTES", 1)
    monkeypatch.setattr(codec, "_log_head", codec._log_head)  # (not compiled: allowed)
