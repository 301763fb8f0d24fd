"""`python -m grader doctor`: what grading will look like on this machine, and how to fix what is missing.

It prints each protection a submission's kernel gets (on or off, and by what), whether kernels
will be warm or cold, and for each missing piece one sentence with the one command that brings
it, for this system. It exits with 1 when `python -m grader grade` would refuse to grade here
(a protection is off), else 0. statement() is the same facts in one line, which a batch prints
and writes in summary.md.
"""
from __future__ import annotations

import getpass
import platform
import sys

from . import course
from .kernel import probe, sandbox, warm

WARM = "warm kernels (forks of one process that imported the lab's libraries once)"
COLD = "cold kernels (each imports the lab's libraries itself: seconds more per submission)"


def protections_text(caps: probe.Capabilities) -> str:
    """'isolation ON (bubblewrap: ...), memory limit OFF (...), ...'"""
    return ", ".join(f"{name} {'ON' if on else 'OFF'} ({how})" for name, on, how in caps.protections())


def statement(caps: probe.Capabilities, warm_used: bool, cold_why: str = "") -> str:
    """What a batch runs with, in one line: each protection, and the kind of kernels."""
    kernels = WARM if warm_used else COLD[:-1] + (f"; warm ones are off: {cold_why})" if cold_why else ")")
    return f"{protections_text(caps)}; {kernels}."


def _fix_lines(fix: str, indent: str) -> list[str]:
    """A fix on screen: its sentence, then its command on a line of its own (to copy)."""
    sentence, tick, rest = fix.partition("`")
    command, _, after = rest.rpartition("`")
    if not tick or not command:
        return [f"{indent}Fix: {fix}"]
    return [f"{indent}Fix: {sentence.rstrip().rstrip(':')}:", f"{indent}  {command}"] + \
        ([f"{indent}{after.strip()}"] if after.strip(" .") else [])


def report(caps: probe.Capabilities, warm_why: str) -> tuple[list[str], bool]:
    """(the lines to print, whether grading would be refused here)."""
    user = getpass.getuser()
    where = f"Linux {'.'.join(map(str, caps.kernel))}" if caps.system == "Linux" else caps.system
    cgroups = f"cgroup {caps.hierarchy}" if caps.hierarchy else "no cgroup filesystem"
    lines = [f"Grading on this machine: {caps.os_name}, {where}, {cgroups}, as {user}"
             f"{'' if caps.root else ' (not root)'}, Python {platform.python_version()}", ""]
    rows = [(name, "ON" if on else "OFF", how) for name, on, how in caps.protections()]
    gaps = caps.gaps()
    if gaps:  # grading would be refused; with --allow-unsafe kernels are cold
        warm_why = ""
        rows.append(("kernels", "COLD", "with --allow-unsafe only: warm kernels need every protection on"))
    else:
        rows.append(("kernels", "COLD" if warm_why else "WARM", (COLD if warm_why else WARM).split(" (", 1)[1][:-1]))
    width = max(len(name) for name, _, _ in rows)
    lines += [f"  {name:<{width}}  {state:<4}  {how}" for name, state, how in rows]
    if caps.cgroup_where:
        lines += ["", f"  The kernels' cgroups go in {caps.cgroup_where}."]
    if gaps:
        lines += ["", "What is off, and the fix:"]
        for gap in gaps:
            lines.append(f"  - {gap.what}")
            lines += _fix_lines(gap.fix, "    ") if gap.fix else []
    if warm_why:
        lines += ["", "Why cold kernels:"]
        sentence, _, command = warm_why.partition("`")
        lines.append(f"  - {sentence.rstrip().rstrip(':')}" + (":" if command else "."))
        lines += [f"      {command.rstrip('`.')}"] if command else []
    lines.append("")
    if gaps:
        lines.append("Verdict: `python -m grader grade` REFUSES to grade here until what is OFF above is fixed "
                     "(then run `python -m grader doctor` again). With --allow-unsafe it grades anyway, with "
                     "those protections off (listed on screen and in summary.md): only for submissions you trust.")
    else:
        lines.append("Verdict: grading runs with every protection on, with "
                     + ("cold kernels (slower; see above)." if warm_why else "warm kernels."))
    return lines, bool(gaps)


def main() -> int:
    caps = probe.probe()
    lines, refused = report(caps, warm.check(sandbox.Limits.load(course.course_file()), caps))
    print("\n".join(lines))
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
