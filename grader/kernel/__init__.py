"""Kernel confinement: where a submission's Jupyter kernel runs, and how it is held in.

    sandbox.py   one kernel's sandbox (bubblewrap namespaces, a cgroup, rlimits): its limits and layout
    probe.py     what this machine offers a sandbox, and the command that brings each missing protection
    cgroups.py   cgroup plumbing: where this process may make cgroups, one sandbox's cgroup, systemd scopes
    reap.py      what a sandbox leaves on the host, removed by the sandbox or by another process (reap)
    warm.py      the batch's zygote (a pre-imported process) and how a worker finds it
    zygote.py    the zygote itself and its confined forks (standalone: runs inside the sandbox)
    boot.py      every grading kernel's entry point: the CPU standing in for CUDA (standalone)

Nothing here knows a lab: what a kernel imports ahead of time and which variables it gets come
from the caller.
"""
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSIDE = "/opt/grader"          # where the kernel's own scripts are bound, read-only, in a sandbox
BOOT = f"{INSIDE}/boot.py"      # the kernel's entry point there (boot.py)
ZYGOTE = f"{INSIDE}/zygote.py"  # the zygote's script there, beside boot.py, which it imports
MB = 2 ** 20                    # the sandbox's limits are in MiB
