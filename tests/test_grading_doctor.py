"""What a TA is told on each kind of machine (`python -m grader doctor`, the refusal to grade, the
batch's statement): machines described by hand as probe.probe() would find them, so that every
kind is checked here whatever this machine is. Then the cgroup v2 delegation on a fake hierarchy.
Quick: no kernel runs (one test runs the real doctor on this machine)."""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from grader import batch, doctor
from grader.kernel import cgroups, probe, warm
from grader.kernel.probe import (
    SYSTEMD_DELEGATE,
    V1_DELEGATE,
    V2_DELEGATE,
    Capabilities,
)

DEBIAN = Capabilities(
    bwrap="/usr/bin/bwrap", namespaces=True, namespaces_error="", cgroup="v1", cgroup_error="", root=False,
    userns_restricted=False, system="Linux", kernel=(6, 1), hierarchy="v1",
    cgroup_where="/sys/fs/cgroup/memory/craft-lab-ta, /sys/fs/cgroup/pids/craft-lab-ta",
    distro=("debian",), os_name="Debian GNU/Linux 12 (bookworm)", systemd_run=True)
UBUNTU = dataclasses.replace(  # 24.04, a TA's laptop: AppArmor blocks bwrap; a systemd user session
    DEBIAN, namespaces=False, namespaces_error="bwrap: setting up uid map: Permission denied",
    userns_restricted=True, cgroup="systemd", hierarchy="v2", cgroup_where="", distro=("ubuntu", "debian"),
    os_name="Ubuntu 24.04.1 LTS", kernel=(6, 8))
NO_CGROUP_V1 = dataclasses.replace(DEBIAN, cgroup=None, cgroup_where="", cgroup_error="cgroup v1: Permission denied")
MACOS = Capabilities(bwrap=None, namespaces=False, namespaces_error="bubblewrap is not installed", cgroup=None,
                     cgroup_error="Darwin has no cgroups", root=False, userns_restricted=False, system="Darwin",
                     kernel=(0, 0), os_name="macOS")


def commands(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def test_each_gap_is_one_sentence_with_at_most_one_command():
    machines = [UBUNTU, NO_CGROUP_V1, MACOS, dataclasses.replace(DEBIAN, bwrap=None, namespaces=False),
                dataclasses.replace(NO_CGROUP_V1, hierarchy="v2", systemd_run=False)]
    for caps in machines:
        for gap in caps.gaps():
            assert gap.what.endswith(".") and len(commands(gap.what)) == 0, gap
            assert len(commands(gap.fix)) <= 1, gap
            assert "\n" not in gap.fix
        assert caps.missing() == [str(gap) for gap in caps.gaps()]
        assert caps.missing()[0].count(" Fix: ") == 1


def test_a_machine_with_everything_grades_with_warm_kernels():
    assert DEBIAN.gaps() == [] and warm.unavailable(DEBIAN) == ""
    lines, refused = doctor.report(DEBIAN, "")
    assert not refused
    assert lines[-1] == "Verdict: grading runs with every protection on, with warm kernels."
    assert any(re.match(r"\s+memory limit\s+ON\s+cgroup v1, a subtree delegated to you", line) for line in lines)
    assert any("/sys/fs/cgroup/memory/craft-lab-ta" in line for line in lines)
    said = doctor.statement(DEBIAN, True)
    assert said.startswith("isolation ON (bubblewrap") and "warm kernels" in said
    assert "memory limit ON (cgroup v1, a subtree delegated to you)" in said
    assert "OFF" not in said


def test_ubuntu_24_04_is_told_the_apparmor_profile_for_bwrap(tmp_path):
    gap = UBUNTU.gaps()[0]
    assert gap.what.startswith("no isolation") and "setting up uid map" in gap.what
    [command] = commands(gap.fix)
    assert "Ubuntu 24.04" in gap.fix and command == probe.apparmor_command("/usr/bin/bwrap")
    # the command, run with a stand-in for sudo, writes exactly this profile and loads it
    target = tmp_path / "bwrap"
    fake = command.replace(probe.APPARMOR_FILE, str(target))
    loaded = tmp_path / "loaded"
    done = subprocess.run(["bash", "-c", f'sudo() {{ if [ "$1" = apparmor_parser ]; then echo "$@" > {loaded}; '
                                         f'else "$@"; fi; }}\n{fake}'], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert target.read_text() == ("abi <abi/4.0>,\ninclude <tunables/global>\n"
                                  "profile bwrap /usr/bin/bwrap flags=(unconfined) {\n  userns,\n"
                                  "  include if exists <local/bwrap>\n}\n")
    assert loaded.read_text().split() == ["apparmor_parser", "-r", str(target)]
    # memory and processes come from a systemd scope per kernel: on, but warm kernels need a delegated one
    assert all(not g.what.startswith(("no real memory", "no limit on the number")) for g in UBUNTU.gaps())
    fixed = dataclasses.replace(UBUNTU, namespaces=True, namespaces_error="")
    assert fixed.gaps() == [] and SYSTEMD_DELEGATE in warm.unavailable(fixed)
    lines, refused = doctor.report(fixed, warm.unavailable(fixed))
    assert not refused and lines[-1].endswith("with cold kernels (slower; see above).")
    assert f"      {SYSTEMD_DELEGATE}" in lines  # the command on a line of its own, to copy


@pytest.mark.parametrize("distro, install", [(("debian",), "sudo apt-get install bubblewrap"),
                                             (("ubuntu", "debian"), "sudo apt-get install bubblewrap"),
                                             (("fedora",), "sudo dnf install bubblewrap"),
                                             (("arch",), "sudo pacman -S bubblewrap"),
                                             (("opensuse-leap", "suse", "opensuse"), "sudo zypper install bubblewrap")])
def test_no_bubblewrap_names_the_package_command_of_the_distribution(distro, install):
    caps = dataclasses.replace(DEBIAN, bwrap=None, namespaces=False, namespaces_error="bubblewrap is not installed",
                               distro=distro)
    assert commands(caps.gaps()[0].fix) == [install]


def test_user_namespaces_turned_off_by_a_sysctl_or_a_container():
    off = dataclasses.replace(DEBIAN, namespaces=False, namespaces_error="bwrap: No permissions to create new namespace",
                              userns_sysctl="kernel.unprivileged_userns_clone")
    [command] = commands(off.gaps()[0].fix)
    assert "kernel.unprivileged_userns_clone=1" in command and "sysctl -p" in command
    zero = dataclasses.replace(off, userns_sysctl="user.max_user_namespaces")
    assert "user.max_user_namespaces=10000" in commands(zero.gaps()[0].fix)[0]
    boxed = dataclasses.replace(off, userns_sysctl="", container=True)
    assert "grade on the host or in a VM" in boxed.gaps()[0].fix


def test_no_cgroup_gives_the_delegation_command_for_this_kind_of_system():
    v1 = NO_CGROUP_V1.gaps()
    assert [g.what.split(":")[0] for g in v1] == ["no real memory limit"]  # processes: RLIMIT_NPROC in the userns
    assert commands(v1[0].fix) == [V1_DELEGATE] and "again after a reboot" in v1[0].fix
    v2_systemd = dataclasses.replace(NO_CGROUP_V1, hierarchy="v2")
    assert commands(v2_systemd.gaps()[0].fix) == [SYSTEMD_DELEGATE]
    no_bus = dataclasses.replace(v2_systemd, cgroup_error="systemd-run: Failed to connect to bus: No medium found")
    assert "su and sudo have no systemd user manager" in no_bus.gaps()[0].fix
    v2_bare = dataclasses.replace(v2_systemd, systemd_run=False)
    assert commands(v2_bare.gaps()[0].fix) == [V2_DELEGATE]
    root_v2 = dataclasses.replace(v2_bare, root=True)
    assert "cgroup.subtree_control" in commands(root_v2.gaps()[0].fix)[0]
    assert "RLIMIT_NPROC never applies to root" in root_v2.missing()[1]
    assert "container" in dataclasses.replace(NO_CGROUP_V1, root=True, container=True).gaps()[0].fix
    for command in (V1_DELEGATE, V2_DELEGATE, SYSTEMD_DELEGATE, probe.apparmor_command()):
        assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0, command  # valid shell


def test_macos_is_refused_and_told_what_allow_unsafe_leaves(monkeypatch, capsys):
    said = " ".join(MACOS.missing())
    assert "needs Linux" in said and "macOS does not enforce" in said and "can outlive" in said
    lines, refused = doctor.report(MACOS, warm.unavailable(MACOS))
    assert refused and "REFUSES" in lines[-1] and "--allow-unsafe" in lines[-1]
    assert any(re.match(r"\s+isolation\s+OFF", line) for line in lines)
    assert any(re.match(r"\s+kernels\s+COLD\s+with --allow-unsafe only", line) for line in lines)
    assert any(re.match(r"\s+CPU time and file size limits\s+ON", line) for line in lines)
    monkeypatch.setattr(probe, "probe", lambda *a, **k: MACOS)
    assert doctor.main() == 1
    assert "Grading on this machine: macOS" in capsys.readouterr().out
    said = doctor.statement(MACOS, False, batch.cold_reason(batch.Options(Path("."), Path(".")),
                                                            batch.Settings(2, 60, 600, 1, 1, ("x",), MACOS)))
    assert "isolation OFF" in said and "memory limit OFF (none)" in said and "warm kernels need every protection on" in said


def test_the_batch_says_what_it_graded_with_and_export_keeps_it(tmp_path):
    opts = batch.Options(tmp_path, tmp_path)
    settings = batch.Settings(2, 60, 600, 1, 1, (), DEBIAN)
    line = batch.graded_with(settings, opts, True)
    assert line == "Graded with: " + doctor.statement(DEBIAN, True)
    cold = batch.graded_with(settings, batch.Options(tmp_path, tmp_path, warm=False), False)
    assert cold.endswith("warm ones are off: --cold-kernels).")
    unsafe = batch.Settings(2, 60, 600, 1, 1, tuple(NO_CGROUP_V1.missing()), NO_CGROUP_V1)
    summary = tmp_path / "summary.md"
    summary.write_text("\n".join(["# Grading summary", *batch.graded_with_lines(batch.graded_with(unsafe, opts, False)),
                                  *batch.unsafe_lines(unsafe), "", "## Later", "x"]))
    kept = batch._kept_summary_lines(summary)
    assert kept[1] == batch.GRADED_WITH and "memory limit OFF" in kept[3]
    assert "## Protections that were OFF (--allow-unsafe)" in kept and "## Later" not in kept


def test_the_doctor_on_this_machine_agrees_with_the_probe():
    done = subprocess.run([sys.executable, "-m", "grader", "doctor"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    caps = probe.probe()
    assert done.returncode == (1 if caps.missing() else 0), done.stdout + done.stderr
    assert done.stdout.startswith("Grading on this machine:") and "Verdict:" in done.stdout
    for name, on, _ in caps.protections():
        assert re.search(rf"^\s+{re.escape(name)}\s+{'ON' if on else 'OFF'}\s", done.stdout, re.M), done.stdout


# ----------------------------------------------------------------------------- cgroup v2 delegation, faked

@pytest.fixture
def fake_v2(tmp_path, monkeypatch):
    """A cgroup v2 hierarchy of plain files, with this process in `top`, owned by uid 4242 (us, here)."""
    root = tmp_path / "cgroup"
    top = root / "craft-lab-ta"
    top.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    for name, text in {"cgroup.controllers": "memory pids\n", "cgroup.subtree_control": "",
                       "cgroup.procs": "101\n102\n"}.items():
        (top / name).write_text(text)
    if os.geteuid() == 0:
        for path in [top, *top.iterdir()]:
            os.chown(path, 4242, 4242)
    uid = os.stat(top).st_uid
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: uid if uid else 4242)
    own = {"path": "/craft-lab-ta"}
    monkeypatch.setattr(cgroups, "own_cgroup", lambda controller: own["path"])
    return root, top, own


def test_a_delegated_v2_cgroup_is_made_ready_then_holds_the_sandboxes(fake_v2):
    root, top, own = fake_v2
    assert cgroups.v2_parent() == top
    leaf = top / cgroups.V2_LEAF
    assert leaf.is_dir() and (leaf / "cgroup.procs").read_text() == "102"  # each pid moved (a file keeps the last)
    assert (top / "cgroup.subtree_control").read_text() == "+memory +pids"
    own["path"] = f"/craft-lab-ta/{cgroups.V2_LEAF}"  # where the grader now runs: its workers find the same folder
    (top / "cgroup.subtree_control").write_text("memory pids")
    assert cgroups.v2_parent() == top
    plan = cgroups.Cgroup.plan("v2", "grader-sandbox-x", probe.PROBE_LIMITS)
    assert plan == {top / "grader-sandbox-x": {"memory.max": 256 * 2 ** 20, "memory.swap.max": 0, "pids.max": 64}}


def test_a_v2_cgroup_not_delegated_is_refused_with_why(fake_v2, monkeypatch):
    root, top, own = fake_v2
    (top / "cgroup.controllers").write_text("pids\n")
    with pytest.raises(OSError, match="not given the memory controller"):
        cgroups.v2_parent()
    (top / "cgroup.controllers").write_text("memory pids\n")
    scope = top / "run-u7.scope"
    scope.mkdir()
    for name in ("cgroup.controllers", "cgroup.subtree_control", "cgroup.procs"):
        shutil.copy(top / name, scope / name)
    if os.getuid() == 0:  # (geteuid is the fake's)
        for path in [scope, *scope.iterdir()]:
            os.chown(path, os.stat(top).st_uid, -1)
    own["path"] = "/craft-lab-ta/run-u7.scope"
    monkeypatch.setattr(cgroups, "systemd_delegated", lambda unit: False)
    with pytest.raises(OSError, match="systemd's run-u7.scope.*Delegate=yes"):
        cgroups.v2_parent()
    monkeypatch.setattr(cgroups, "systemd_delegated", lambda unit: unit.name == "run-u7.scope")
    assert cgroups.v2_parent() == scope
    own["path"] = "/"
    with pytest.raises(OSError, match="root of the hierarchy"):
        cgroups.v2_parent()
