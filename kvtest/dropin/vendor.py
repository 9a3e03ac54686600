"""The vendor's llm_datadist sample scripts as tests: ``pytest --kv-vendor-samples DIR``.

Each known script in DIR becomes one test, ``vendor/<script>``, that runs its prompt and decoder
commands through :func:`kvtest.dropin.runner.run_group` with the arguments the vendor's
``examples/run_example.sh`` (hicann/hixl, ``smoke_test_samples``) gives them on one host: device ids
0 and 1, ``127.0.0.1``, ``HCCL_INTRA_ROCE_ENABLE=1``, the script's folder as working directory, and
its pass rule: every command exits 0 and no line contains "error" (``grep -qi ERROR``). Scripts
kvtest does not know are listed in the header and not run. kvtest ships none of the vendor's code.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvtest.settings import Settings

ROUTE = "vendor"
FLAG = "--kv-vendor-samples"
HOST_IP = "127.0.0.1"
#: run_example.sh takes two device ids; these unless --device-id gives two
DEVICES = (0, 1)
ENV_PREFIX = "HCCL_INTRA_ROCE_ENABLE=1"
#: the samples listen on fixed ports (26000/26001, 16000/16001, gloo 29500): one at a time per host
PORT_LOCK = Path(tempfile.gettempdir()) / "kvtest-vendor-samples.lock"
TAIL_LINES = 15


@dataclass(frozen=True)
class Sample:
    """A known vendor script and the per-role arguments run_example.sh passes it ({p}, {d}: device ids)."""

    script: str
    prompt_args: str
    decoder_args: str


def _host_pair(script: str) -> Sample:
    common = f"--local_host_ip {HOST_IP} --remote_host_ip {HOST_IP}"
    return Sample(script, f"--device_id {{p}} --role p {common}", f"--device_id {{d}} --role d {common}")


def _single_pair(script: str) -> Sample:
    common = f"--is_single true --host_ip {HOST_IP}"
    return Sample(
        script,
        f"--device_id {{p}} --cluster_id 1 {common}",
        f"--device_id {{d}} --cluster_id 2 {common}",
    )


#: hicann/hixl examples/python/llm_datadist/, arguments from examples/run_example.sh smoke_test_samples
KNOWN: dict[str, Sample] = {
    s.script: s
    for s in (
        _host_pair("push_blocks_sample.py"),
        _host_pair("hixl_transfer_backend_sample.py"),
        _host_pair("push_cache_sample.py"),
        _host_pair("switch_role_sample.py"),
        Sample(
            "pull_blocks_xpyd_sample.py",
            f"--device_id {{p}} --role p --local_ip_port {HOST_IP}:16000",
            f"--device_id {{d}} --role d --local_ip_port {HOST_IP}:16001 --remote_ip_port {HOST_IP}:16000",
        ),
        _host_pair("transfer_cache_async_sample.py"),
        _single_pair("pull_cache_sample.py"),
        _single_pair("pull_blocks_sample.py"),
        _single_pair("pull_from_cache_to_blocks.py"),
    )
}


def commands(sample: Sample, script: Path, devices: Sequence[int] = DEVICES) -> list[str]:
    """The prompt and decoder command lines, as run_example.sh writes them (with this Python)."""
    python = shlex.quote(sys.executable)
    path = shlex.quote(str(script))
    ids = {"p": devices[0], "d": devices[1]}
    return [
        f"{ENV_PREFIX} {python} {path} {sample.prompt_args.format(**ids)}",
        f"{ENV_PREFIX} {python} {path} {sample.decoder_args.format(**ids)}",
    ]


def scan(folder: Path) -> tuple[list[Path], list[str]]:
    """(known scripts found in ``folder``, names of the other ``*.py`` files), sorted by name."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".py")
    known = [p for p in found if p.name in KNOWN]
    unknown = [p.name for p in found if p.name not in KNOWN]
    return known, unknown


class VendorSampleFailed(Exception):
    """The group failed: the summary names the command and why; the log tails follow."""


class VendorSampleItem(pytest.Item):
    """One vendor script run by both roles on this host."""

    def __init__(self, *, script: Path, settings: Settings, logdir: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.script = script
        self.settings = settings
        self.logdir = logdir

    def runtest(self) -> None:
        from filelock import FileLock, Timeout

        from kvtest.dropin.runner import DEFAULT_TIMEOUT_S, resolve_backend, run_group

        if not self.settings.local_mode:
            pytest.skip("vendor samples run both roles on one host: drop --role (local mode)")
        backend, _ = resolve_backend(self.settings.backend)
        logs = self.logdir / self.script.stem
        lock = FileLock(str(PORT_LOCK))
        try:
            lock.acquire(timeout=self.settings.join_timeout)
        except Timeout:
            pytest.fail(
                f"another vendor sample held {PORT_LOCK} (the samples' fixed ports) for "
                f"{self.settings.join_timeout:g}s",
                pytrace=False,
            )
        try:
            outcome = run_group(
                commands(KNOWN[self.script.name], self.script, self._devices()),
                backend=backend,
                roles=["p0", "d0"],
                timeout=max(DEFAULT_TIMEOUT_S, self.settings.timeout),
                logs=logs,
                cwd=self.script.parent,
            )
        finally:
            lock.release()
        if not outcome.ok:
            tails = []
            for member in outcome.members:
                lines = member.log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
                tails.append(f"--- {member.role} ({member.describe_exit()}), last lines of {member.log}:")
                tails.extend(lines)
            raise VendorSampleFailed("\n".join([f"{backend}: {outcome.summary}", *tails]))

    def _devices(self) -> Sequence[int]:
        given = self.settings.device_ids
        return given[:2] if len(given) >= 2 else DEVICES

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, VendorSampleFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, None, str]:
        # the domain is the failure's headline; one that ends the node id would have its dots printed as "::"
        return self.script, None, f"vendor sample {self.script.name}"


class VendorFolder(pytest.Collector):
    """The folder of vendor scripts, so pytest counts and reports their items as collected."""

    def __init__(self, *, scripts: Sequence[Path], settings: Settings, logdir: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scripts = list(scripts)
        self.settings = settings
        self.logdir = logdir

    def collect(self) -> list[pytest.Item]:
        return [
            VendorSampleItem.from_parent(
                self,
                name=script.name,
                nodeid=f"{ROUTE}/{script.name}",
                script=script,
                settings=self.settings,
                logdir=self.logdir,
            )
            for script in self.scripts
        ]


class VendorSamples:
    """The plugin ``--kv-vendor-samples`` registers: adds one item per known script, reports the rest."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        assert settings.vendor_samples is not None
        if FLAG in (str(a) for a in config.invocation_params.args):
            # pytest picks its root directory before plugins add their options, so the folder given as
            # a separate word was taken for a test path (rootdir, ini file and testpaths are then wrong)
            raise pytest.UsageError(
                f"kvtest: {FLAG} {settings.vendor_samples} from the command line: write {FLAG}=DIR "
                f"(with '='), or set KVTEST_VENDOR_SAMPLES=DIR: pytest took {settings.vendor_samples} "
                "for a test path"
            )
        self.config = config
        self.settings = settings
        self.folder = settings.vendor_samples.resolve()
        self.known, self.unknown = scan(self.folder)

    def pytest_collection_modifyitems(self, session: pytest.Session, items: list[pytest.Item]) -> None:
        # after kvtest's session took its digest of the collection (the other roles never see these
        # items: both roles of a vendor sample run from this process), before -k/-m deselection
        logdir = (self.settings.logs / f"vendor-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        folder = VendorFolder.from_parent(
            session, name=ROUTE, nodeid=ROUTE, scripts=self.known, settings=self.settings, logdir=logdir
        )
        report = folder.ihook.pytest_make_collect_report(collector=folder)
        folder.ihook.pytest_collectreport(report=report)
        if report.failed:
            raise pytest.UsageError(
                f"kvtest: could not collect the vendor samples in {self.folder}: {report.longrepr}"
            )
        items.extend(node for node in report.result if isinstance(node, pytest.Item))

    def pytest_report_collectionfinish(
        self, config: pytest.Config, start_path: Path, items: Sequence[pytest.Item]
    ) -> list[str]:
        lines = [
            f"kvtest: vendor samples in {self.folder}: {len(self.known)} known "
            f"({', '.join(p.name for p in self.known) or 'none'})"
        ]
        if self.unknown:
            lines.append(
                "kvtest: vendor samples not run (kvtest does not know their arguments): "
                + ", ".join(self.unknown)
            )
        return lines
