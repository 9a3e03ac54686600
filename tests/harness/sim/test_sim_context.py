"""The sim's context: the environment is read where the sim is configured, and nowhere below; a
context handed over explicitly needs no environment; fault injection is one seam."""

from __future__ import annotations

import ast
import time
import uuid
from pathlib import Path

import pytest
import torch.distributed as dist

from kvtest.backends import sim
from kvtest.backends.sim import context, control
from kvtest.backends.sim.context import SimConfigError, SimContext
from kvtest.backends.sim.faults import parse_faults
from kvtest.backends.sim.seam import FaultSeam
from kvtest.backends.sim.status import LLMException, LLMStatusCode

SIM = Path(sim.__file__).parent
SIM_VARS = ("KVTEST_SIM_FAULT", "KVTEST_SIM_FAULT_SCOPE", "KVTEST_SIM_FIXED", "KVTEST_SIM_STORE")
FIX = "transfer-layers-absolute-dst-index"


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SIM_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(context, "_bound", None)


def _init() -> sim.LLMDataDist:
    config = sim.LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    dd = sim.LLMDataDist(sim.LLMRole.PROMPT, 1)
    dd.init(config.generate_options())
    return dd


def _finalize_fails(dd: sim.LLMDataDist) -> bool:
    try:
        dd.finalize()
    except LLMException as exc:
        assert exc.status_code == LLMStatusCode.LLM_FAILED
        return True
    return False


def _configure(store: dist.Store) -> None:
    sim.configure(store, f"t-{uuid.uuid4().hex[:8]}", "p0")


def test_configure_reads_the_faults_then_and_only_then(monkeypatch: pytest.MonkeyPatch):
    store = dist.HashStore()
    monkeypatch.setenv("KVTEST_SIM_FAULT", "teardown@finalize:p0")
    _configure(store)
    monkeypatch.delenv("KVTEST_SIM_FAULT")
    assert _finalize_fails(_init()), "the fault named at configure acts though the variable is gone"
    _configure(store)
    monkeypatch.setenv("KVTEST_SIM_FAULT", "teardown@finalize:p0")
    assert not _finalize_fails(_init()), "a fault set after configure does not act"


def test_an_initialised_instance_keeps_its_context(monkeypatch: pytest.MonkeyPatch):
    store = dist.HashStore()
    monkeypatch.setenv("KVTEST_SIM_FAULT", "teardown@finalize:p0")
    _configure(store)
    dd = _init()
    monkeypatch.delenv("KVTEST_SIM_FAULT")
    _configure(store)  # a new context for later instances
    assert _finalize_fails(dd)


def test_init_reads_no_environment_under_a_bound_context(monkeypatch: pytest.MonkeyPatch):
    _configure(dist.HashStore())
    for name, bad in [
        ("KVTEST_SIM_FAULT", "boom"),
        ("KVTEST_SIM_FIXED", "nope"),
        ("KVTEST_SIM_STORE", "x://"),
    ]:
        monkeypatch.setenv(name, bad)
    assert not _finalize_fails(_init())


def test_the_fixes_are_read_at_configure(monkeypatch: pytest.MonkeyPatch):
    store = dist.HashStore()
    monkeypatch.setenv("KVTEST_SIM_FIXED", FIX)
    _configure(store)
    monkeypatch.delenv("KVTEST_SIM_FIXED")
    bound = context.current()
    assert bound is not None and bound.fixed == {FIX}
    dd = _init()
    assert dd.cache_manager.endpoint.fixed == {FIX}
    dd.finalize()


def test_a_context_handed_over_needs_no_environment():
    plane = control.ControlPlane(dist.HashStore(), "handed", "d1")
    context.bind(SimContext(plane, parse_faults("teardown@finalize:d1"), frozenset({FIX})))
    dd = _init()
    assert dd.cache_manager.endpoint.fixed == {FIX}
    assert plane.fetch(plane.key("agent", 1))["role"] == "d1", "the handed plane is the one used"
    assert _finalize_fails(dd)
    context.bind(SimContext(plane))
    assert not _finalize_fails(_init()), "no faults handed, none act"


def test_bad_environment_values_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KVTEST_SIM_FIXED", "nope")
    with pytest.raises(SimConfigError, match=r"^KVTEST_SIM_FIXED: nope is not an issue the sim reproduces; "):
        _configure(dist.HashStore())
    monkeypatch.setenv("KVTEST_SIM_STORE", f"file://{tmp_path}/store")  # the kvtest-run path: init reads it
    with pytest.raises(
        LLMException, match=r"Failed to initialize llm datadist \(KVTEST_SIM_FIXED: nope is not "
    ):
        _init()
    monkeypatch.delenv("KVTEST_SIM_FIXED")
    monkeypatch.setenv("KVTEST_SIM_FAULT", "boom")
    with pytest.raises(ValueError, match=r"^invalid KVTEST_SIM_FAULT kind 'boom' in 'boom'; accepted: "):
        _configure(dist.HashStore())
    with pytest.raises(ValueError, match=r"^invalid KVTEST_SIM_FAULT kind 'boom'"):
        _init()
    monkeypatch.setenv("KVTEST_SIM_FAULT", "")
    monkeypatch.setenv("KVTEST_SIM_STORE", "x://")
    with pytest.raises(
        LLMException, match=r"\(KVTEST_SIM_STORE='x://' must be tcp://HOST:PORT or file:///PATH\)"
    ):
        _init()


def test_the_environment_path_builds_a_context_at_each_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KVTEST_SIM_STORE", f"file://{tmp_path}/store")
    monkeypatch.setenv("KVTEST_SIM_ROLE", "d0")
    monkeypatch.setenv("KVTEST_SIM_FAULT", "teardown@finalize:d0")
    assert _finalize_fails(_init())
    monkeypatch.setenv("KVTEST_SIM_FAULT", "teardown@finalize:p0")  # another role's fault
    assert not _finalize_fails(_init())


# -- the seam ------------------------------------------------------------------------------------
PAIRS = [(0, 0), (1, 1)]
SPANS = [(0, 0, 8)]


def test_a_seam_without_faults_for_this_role_is_fault_free():
    kinds = [
        "drop",
        "nextblock",
        "flip",
        "stall",
        "lie",
        "batch",
        "slow=50",
        "linkfail",
        "relinkrace",
        "crash",
    ]
    for seam in (FaultSeam(), FaultSeam(parse_faults(",".join(f"{k}:d0" for k in kinds)), "p0")):
        seam.enter("pull_blocks")
        seam.released("finalize")
        assert seam.moves("pull_blocks", PAIRS, SPANS, 32, 2) == [(PAIRS, SPANS)]
        assert not (seam.corrupts("pull_blocks") or seam.stalls("pull_blocks") or seam.link_fails("link"))
        assert seam.reported("link_clusters", LLMStatusCode.LLM_LINK_FAILED) == LLMStatusCode.LLM_LINK_FAILED
        assert seam.batch_index("pull_cache", 3) == 3
        assert not seam.link_reaped(relink=True)
        began = time.monotonic()
        with seam.slowed("pull_blocks"):
            time.sleep(0.01)
        assert time.monotonic() - began < 0.3


def test_the_seam_answers_for_the_faults_of_its_role():
    seam = FaultSeam(
        parse_faults("drop@pull_blocks,nextblock@pull_blocks,lie,batch,slow=3,relinkrace=2:d0"), "d0"
    )
    assert seam.moves("pull_blocks", PAIRS, SPANS, 32, 2) == [(PAIRS, []), ([], [])], (
        "drop, then nothing to spill"
    )
    # the last span dropped; the spill lands in the first bytes the remaining ones do not write
    assert seam.moves("pull_blocks", PAIRS, [(0, 0, 8), (8, 8, 8)], 32, 2)[1] == ([(0, 0)], [(0, 8, 8)])
    assert seam.reported("link_clusters", LLMStatusCode.LLM_LINK_FAILED) == LLMStatusCode.LLM_SUCCESS
    assert seam.batch_index("pull_cache", 3) == 0
    assert [seam.link_reaped(relink=r) for r in (False, True, True, True)] == [False, True, True, False]
    began = time.monotonic()
    with seam.slowed("pull_blocks"):
        time.sleep(0.05)
    assert time.monotonic() - began >= 0.15
    with pytest.raises(RuntimeError), seam.slowed("pull_blocks"):
        raise RuntimeError("a failed call is not stretched")


def _imports_and_env_reads(path: Path) -> tuple[set[str], bool]:
    tree = ast.parse(path.read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    reads = any(
        isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv", "environb") for n in ast.walk(tree)
    )
    return imported, reads


def test_only_the_entry_reads_the_environment_and_only_the_seam_knows_fault_kinds():
    for path in sorted(SIM.glob("*.py")):
        imported, reads = _imports_and_env_reads(path)
        if path.name != "context.py":
            assert not reads, f"{path.name} reads the environment: only context.py may"
        if path.name not in ("context.py", "seam.py", "faults.py"):
            assert "kvtest.backends.sim.faults" not in imported, f"{path.name} asks faults.py, not the seam"
