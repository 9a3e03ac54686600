"""``kvtest run`` and the shims: unmodified llm_datadist programs (vendor-style scripts) on the sim.

The scripts in ``dropin_samples/`` are kvtest's own, written the way the vendor's samples are
(llm_datadist, torch_npu, torchair, gloo barriers, a byte check, an exit code).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvtest.dropin.runner import RunError, assign_roles
from kvtest.dropin.shimdevices import logical_devices, physical_devices
from kvtest.host import devices

SAMPLES = Path(__file__).parent / "dropin_samples"
PUSH = SAMPLES / "push_blocks_sample.py"
PY = sys.executable


def push_pair() -> list[str]:
    return [f"{PY} {PUSH} --device_id 0 --role p", f"{PY} {PUSH} --device_id 1 --role d"]


def kvtest_run(tmp_path: Path, *args: str, fault: str | None = None, limit: float = 150):
    env = {k: v for k, v in os.environ.items() if k != "KVTEST_SIM_FAULT"}
    if fault:
        env["KVTEST_SIM_FAULT"] = fault
    start = time.monotonic()
    proc = subprocess.run(
        [PY, "-m", "kvtest.cli", "run", "--backend", "sim", "-q", "--logs", str(tmp_path / "logs"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=limit,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def verdict(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("kvtest run: passed") or "FAILED" in line)


# -- the group on sim ---------------------------------------------------------------------------------


def test_vendor_style_pair_passes(tmp_path):
    code, out, _ = kvtest_run(tmp_path, *push_pair())
    assert code == 0, out
    assert "passed" in verdict(out)
    assert "byte check passed: 2 tensors x 4 blocks" in (tmp_path / "logs" / "p0.log").read_text()
    assert "push_blocks success" in (tmp_path / "logs" / "d0.log").read_text()


def test_flipped_byte_fails_naming_the_command(tmp_path):
    code, out, _ = kvtest_run(tmp_path, *push_pair(), fault="flip@push_blocks:d0")
    line = verdict(out)
    assert code == 1, out
    assert f"p0 `{PY} {PUSH} --device_id 0 --role p` failed" in line
    assert "ERROR byte check failed: tensor 0 block 3 offset 0: 1 byte(s) differ" in line


def test_a_killed_side_stops_the_other_within_the_deadline(tmp_path):
    code, out, seconds = kvtest_run(tmp_path, "--timeout", "60", *push_pair(), fault="crash@push_blocks:d0")
    line = verdict(out)
    assert code == 1, out
    assert "d0 `" in line and "failed: exited with code 70" in line, line
    # p0 is stopped, unless the crash ended it first (gloo sees the peer gone within the settle window)
    assert "stopped p0" in line or "p0 exited with code" in line, line
    assert seconds < 60, f"took {seconds:.1f}s"


@pytest.mark.full
def test_a_hang_ends_at_the_deadline_naming_the_hung_command(tmp_path):
    sleeper = f"{PY} -c 'import time; time.sleep(300)'"
    code, out, seconds = kvtest_run(tmp_path, "--timeout", "6", f"{PY} {PUSH} --device_id 0 --role p", sleeper)
    line = verdict(out)
    assert code == 1, out
    assert "deadline of 6s passed; still running (hung):" in line
    assert f"d0 `{sleeper}`" in line  # p0 waits for d0 in gloo's rendezvous: hung as well, and named
    assert seconds < 6 + 20


@pytest.mark.full
def test_only_the_commands_still_running_are_named_hung(tmp_path):
    code, out, _ = kvtest_run(tmp_path, "--timeout", "3", "true", "sleep 30")
    assert code == 1
    assert verdict(out).endswith("still running (hung): d0 `sleep 30`")


@pytest.mark.full
def test_a_line_matching_fail_on_fails_its_command(tmp_path):
    loud = f"{PY} -c \"print('2026 ERROR something broke')\""
    code, out, _ = kvtest_run(tmp_path, loud, "true")
    assert code == 1
    assert "p0 `" in verdict(out) and "printed a line matching '(?i)ERROR': 2026 ERROR something broke" in out
    code, out, _ = kvtest_run(tmp_path, "--fail-on", "", loud, "true")
    assert code == 0, out


@pytest.mark.full
def test_bad_invocations_are_one_line_errors(tmp_path):
    code, out, _ = kvtest_run(tmp_path, "--roles", "p0", "true", "true")
    assert code == 2 and "--roles names 1 role(s) (p0) for 2 command(s)" in out
    code, out, _ = kvtest_run(tmp_path, "--fail-on", "(", "true")
    assert code == 2 and "is not a regular expression" in out
    assert "Traceback" not in out


# -- the shims stay out of ordinary processes ----------------------------------------------------------


@pytest.mark.full
def test_no_shim_leaks_into_a_normal_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVTEST_SIM_")}
    plain = subprocess.run([PY, "-c", "import llm_datadist"], env=env, capture_output=True, text=True)
    assert plain.returncode != 0 and "No module named 'llm_datadist'" in plain.stderr
    npu = subprocess.run([PY, "-c", "import torch; print(hasattr(torch, 'npu'))"], env=env, capture_output=True, text=True)
    assert npu.stdout.strip() == "False"
    # the same program under kvtest run gets the shims
    code, out, _ = kvtest_run(tmp_path, f"{PY} -c 'import llm_datadist, torch; torch.npu.set_device(1)'")
    assert code == 0, out


@pytest.mark.full
def test_sim_init_without_a_store_says_to_use_kvtest_run(tmp_path):
    program = (
        "from kvtest.backends.sim import LLMDataDist, LLMRole, LLMException\n"
        "try:\n    LLMDataDist(LLMRole.PROMPT, 1).init({'llm.EnableCacheManager': '1'})\n"
        "except LLMException as exc:\n    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVTEST_SIM_")}
    out = subprocess.run([PY, "-c", program], env=env, capture_output=True, text=True).stdout
    assert "start the program with `kvtest run`" in out and "KVTEST_SIM_STORE=tcp://HOST:PORT" in out
    env["KVTEST_SIM_STORE"] = "http://127.0.0.1:1"
    out = subprocess.run([PY, "-c", program], env=env, capture_output=True, text=True).stdout
    assert "KVTEST_SIM_STORE='http://127.0.0.1:1' must be tcp://HOST:PORT or file:///PATH" in out


# -- units ---------------------------------------------------------------------------------------------


def test_roles_follow_the_commands_role_flags_else_halves():
    assert assign_roles(["a --role d", "b --role p", "c --role d"]) == ["d0", "p0", "d1"]
    assert assign_roles(["a", "b", "c"]) == ["p0", "p1", "d0"]
    assert assign_roles(["a", "b"], ["d0", "p0"]) == ["d0", "p0"]
    with pytest.raises(RunError, match="names a role twice"):
        assign_roles(["a", "b"], ["p0", "p0"])
    with pytest.raises(RunError, match="not a role name"):
        assign_roles(["a"], ["x0"])


def test_shim_devices_renumber_like_the_driver():
    env = {"KVTEST_SHIM_DEVICES": "0,1,2,3", "ASCEND_RT_VISIBLE_DEVICES": "2,3"}
    assert physical_devices(env) == [0, 1, 2, 3]
    assert logical_devices(env) == [2, 3]
    assert logical_devices({"ASCEND_RT_VISIBLE_DEVICES": "1,9,2"}) == [1]  # stops at the first unusable id


def test_fake_hccn_tool_speaks_the_real_tools_format():
    def tool(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "kvtest.dropin.hccn_tool", *args], capture_output=True, text=True)

    assert devices.parse_device_ip(tool("-i", "3", "-ip", "-g").stdout, 3) == "127.0.100.4"
    assert devices.parse_ping(tool("-i", "0", "-ping", "-g", "address", "127.0.100.2").stdout, 0, "x").ok
    assert not devices.parse_ping(tool("-i", "0", "-ping", "-g", "address", "10.0.0.1").stdout, 0, "x").ok
    assert devices.parse_tls(tool("-i", "0", "-tls", "-g").stdout, 0) is False
    assert tool("-i", "42", "-ip", "-g").returncode == 1


# -- the vendor's scripts as tests ---------------------------------------------------------------------


@pytest.fixture
def sample_dir(tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    for script in ("push_blocks_sample.py", "pull_cache_sample.py"):
        (folder / script).write_text((SAMPLES / script).read_text())
    (folder / "my_helper.py").write_text("print('not a vendor sample')\n")
    return folder


def test_vendor_samples_are_one_test_per_known_script(pytester, sample_dir):
    result = pytester.runpytest_subprocess(f"--kv-vendor-samples={sample_dir}", "--backend", "sim", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "*vendor samples in*: 2 known (pull_cache_sample.py, push_blocks_sample.py)*",
        "*vendor samples not run*: my_helper.py*",
        "*vendor/pull_cache_sample.py PASSED*",
        "*vendor/push_blocks_sample.py PASSED*",
    ])


@pytest.mark.full
def test_a_vendor_sample_that_moves_a_wrong_byte_fails(pytester, sample_dir, monkeypatch):
    monkeypatch.setenv("KVTEST_SIM_FAULT", "flip@pull_cache:d0")
    result = pytester.runpytest_subprocess(f"--kv-vendor-samples={sample_dir}", "--backend", "sim", "-k", "pull_cache", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*sim: d0 `*pull_cache_sample.py --device_id 1 --cluster_id 2*` failed: printed a line*ERROR byte check failed*"])


@pytest.mark.full
def test_vendor_samples_folder_errors_are_usage_errors(pytester, tmp_path):
    missing = tmp_path / "nope"
    result = pytester.runpytest_subprocess(f"--kv-vendor-samples={missing}", "-p", "no:cacheprovider")
    assert result.ret == 4
    result.stderr.fnmatch_lines([f"*{str(missing)!r} from the command line (--kv-vendor-samples) is invalid: the folder {missing} does not exist*"])
    result = pytester.runpytest_subprocess("--kv-vendor-samples", str(tmp_path), "-p", "no:cacheprovider")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*write --kv-vendor-samples=DIR (with '=')*"])


# -- the npu backend on the shims ----------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def npu_on_shims(tmp_path: Path, fault: str | None = None):
    suite = f"{PY} -m pytest -p no:cacheprovider --rootdir {ROOT} -c {ROOT / 'pytest.ini'} --backend npu --kv-logs {tmp_path / 'roles'}"
    test = f"{ROOT / 'tests/samples/test_push_blocks.py'} -k fp32"
    return kvtest_run(tmp_path, "--fail-on", "", "--timeout", "200", f"{suite} {test}", fault=fault, limit=260)


@pytest.mark.full
def test_the_npu_backend_passes_the_samples_on_the_shims(tmp_path):
    code, out, _ = npu_on_shims(tmp_path)
    log = (tmp_path / "logs" / "p0.log").read_text()
    assert code == 0, out + log
    assert "backend npu (npu requested; RUNNING ON KVTEST'S SHIMS, not Ascend hardware" in log
    assert "1 passed" in log


@pytest.mark.full
def test_a_flipped_byte_is_caught_by_the_npu_backend_on_the_shims(tmp_path):
    code, out, _ = npu_on_shims(tmp_path, fault="flip@push_blocks:d0")  # d0: the role names reach the sim
    log = (tmp_path / "logs" / "p0.log").read_text()
    assert code == 1, out + log
    assert "1 failed" in log and "differ" in log, log


@pytest.mark.full
def test_on_npu_the_commands_run_as_they_are(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVTEST_SIM_")}
    proc = subprocess.run(
        [PY, "-m", "kvtest.cli", "run", "--backend", "npu", "-q", "--logs", str(tmp_path), f"{PY} -c 'import llm_datadist'"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, proc.stdout
    assert "No module named 'llm_datadist'" in proc.stdout  # no shims: this host has no CANN


def test_stopping_kvtest_run_stops_its_commands(tmp_path):
    import signal

    cmds = [f"echo $$ > {tmp_path}/{name}.pid; exec sleep 120" for name in ("a", "b")]
    proc = subprocess.Popen(
        [PY, "-m", "kvtest.cli", "run", "--backend", "npu", "-q", "--logs", str(tmp_path / "logs"), *cmds],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"{n}.pid").exists() and (tmp_path / f"{n}.pid").read_text().strip() for n in "ab"):
        assert time.monotonic() < deadline and proc.poll() is None, "the commands did not start"
        time.sleep(0.1)
    pids = [int((tmp_path / f"{n}.pid").read_text()) for n in "ab"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    for pid in pids:
        assert _ended(pid), f"command pid {pid} still runs after kvtest run was stopped"


def _ended(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` is gone, or a zombie (dead, waiting for whoever inherited it to reap it)."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            return True
        if state == "Z" or time.monotonic() > deadline:
            return state == "Z"
        time.sleep(0.1)


def test_the_environment_names_the_sims_control_plane(tmp_path):
    from kvtest.backends.sim import control

    assert control.from_environment({}) is None
    plane = control.from_environment({"KVTEST_SIM_STORE": f"file://{tmp_path}/store", "KVTEST_SIM_ROLE": "d1"})
    assert plane is not None and (plane.namespace, plane.role) == ("kvtest-run", "d1")
    plane.put(plane.key("x"), {"a": 1})
    again = control.from_environment({"KVTEST_SIM_STORE": f"file://{tmp_path}/store", "KVTEST_SIM_NAMESPACE": "g"})
    assert again is not None and again.role.startswith("pid") and again.key("x") == "g/sim/x"
    assert again.fetch(plane.key("x")) == {"a": 1}  # the same store, one client per process
    for bad, message in (("file://relative", "needs an absolute path"), ("tcp://nohost", "is not tcp://HOST:PORT")):
        with pytest.raises(control.ControlPlaneError, match=message):
            control.from_environment({"KVTEST_SIM_STORE": bad})
