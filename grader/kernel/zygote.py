"""Warm kernels: the lab's heavy imports done once per batch, every kernel still in a sandbox of its own.

A cold grading kernel can spend many seconds importing a lab's libraries (torch, TensorFlow...)
before the student's first line runs, in every submission. Here one process per batch, the
zygote, imports them once (IMPORTS, and the modules the lab names in PRELOAD_VAR) inside a
bubblewrap sandbox (same read-only view of the system and
the venv as a kernel's, no network); each submission's kernel is then a fork of it, which
confines itself further before any student code runs:

    client (host, the "kernel process" jupyter_client starts and kills)
      -> zygote (sandboxed, imports done)  forks  C: joins the submission's cgroup, sets the
         rlimits, takes new mount, pid, network, ipc and uts namespaces; over-mounts the batch's
         writable folders with empty read-only tmpfs, binds back only its own socket folder
         (and, read-only, its connection file's), gives itself a private /tmp and /dev/shm and
         a private working folder (a tmpfs bounded in size and in number of files, the lab's
         helper files bound read-only into it); relays the client's messages.
         C forks G: pid 1 of the new pid namespace, mounts a fresh /proc (with /proc/sys,
         sysrq-trigger, irq and bus read-only, as bubblewrap does), reaps; when it ends, Linux
         kills every process of the namespace.
         G forks K: drops every capability (bounding and ambient sets too), reseeds the random
         generators as a fresh interpreter would, restores the thread counts, installs the
         CPU-for-CUDA shim (boot.py) and becomes the ipykernel.

Isolation between submissions graded at the same time comes from the namespaces: a kernel
sees only its own processes (own /proc), its own folders, its own /tmp and working folder
(nothing of either is on the host, and both are gone with the kernel), no network at all
(not even loopback), and holds no capability with which to undo the mounts. The limits come
from the submission's cgroup, which C joins by writing 0 into the cgroup.procs files the
client opened (memory and pids are charged to the submission from then on; Linux checks the
right to move with the credentials of whoever opened the file). A warm kernel therefore needs
cgroups the grader makes itself: as root, or in a subtree delegated to its user. Before it
serves, the zygote tries all of it in a test fork, joining a test cgroup the grader opened for
it (--join); if anything fails it exits, and the grader starts cold kernels, each in its own
bubblewrap sandbox (kernel/sandbox.py).

This file is standalone on purpose: the zygote runs it inside the sandbox (bound read-only)
and the client runs it with `python -I -S`: the standard library only at module level.

    python zygote.py serve SOCKET [--join FD,...] ROOT...   the zygote (inside bwrap, with CAP_SYS_ADMIN,
                                                           CAP_NET_ADMIN, CAP_SETPCAP); FD: test cgroup.procs
    python zygote.py check [--join FD,...] ROOT...          the test fork alone, without the imports
    python zygote.py client SOCKET REQUEST -- ARG...        one kernel (host side; ARG: ipykernel's)
"""
from __future__ import annotations

import array
import ctypes
import json
import os
import re
import select
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field

# What every kernel needs; the lab's own libraries come in PRELOAD_VAR (comma-separated modules).
IMPORTS = ("numpy", "IPython", "ipykernel.kernelapp", "ipykernel.ipkernel", "threadpoolctl")
PRELOAD_VAR = "GRADER_PRELOAD"
# Not matplotlib_inline.backend_inline: imported without a running IPython shell it never hooks
# its figures into the kernel; pyplot loads it (cheaply) when the first figure needs it.
READY = "zygote ready"
INLINE = "module://matplotlib_inline.backend_inline"
MAX_FDS = 16

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 1, 24, 47, 4
PR_SET_NO_NEW_PRIVS = 38
PROC_COVERS = ("sys", "sysrq-trigger", "irq", "bus")  # what bubblewrap keeps read-only in /proc
# The host's /proc, bound here for the zygote only: Linux lets a sandbox mount a fresh /proc only
# if a fully visible one exists in its mount namespace (bwrap's own has covered parts). Every
# fork hides it under an empty tmpfs before anything else happens.
HOSTPROC_NAME = "hostproc"
HOSTPROC = os.path.join(os.path.dirname(os.path.abspath(__file__)), HOSTPROC_NAME)  # bound beside this file

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {source} on {target}")


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> int:
    return _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(arg3),
                              ctypes.c_ulong(0), ctypes.c_ulong(0)), f"prctl {option}")


def drop_capabilities() -> None:
    """No capability left, none to regain: bounding set emptied, ambient cleared, sets zeroed."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        try:
            _prctl(PR_CAPBSET_DROP, cap)
        except OSError:  # without CAP_SETPCAP the bounding set holds only what bwrap gave
            pass
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()                 # effective, permitted, inheritable x 2: all 0
    _check(_libc.capset(header, data), "capset")
    held = [line for line in open("/proc/self/status") if line.startswith(("CapEff", "CapPrm", "CapBnd"))]
    if any(int(line.split()[1], 16) for line in held):
        raise RuntimeError(f"capabilities still held: {held}")


# ----------------------------------------------------------------------------- the request

@dataclass
class Request:
    """What a fork needs to become one submission's kernel: built by the host side (sandbox.py),
    written as JSON beside the kernelspec, sent to the zygote by the client, read here."""
    env: dict                  # the kernel's whole environment
    rlimits: dict              # RLIMIT_* name -> value
    cwd: str                   # its private working folder, inside
    writable: list             # host folders it sees read-write (its socket folder)
    readable: list             # host folders it sees read-only (its connection file's)
    files: dict                # host copy -> path inside its working folder (read-only)
    tmp_bytes: int             # size of its /tmp and /dev/shm
    run_bytes: int             # size of its working folder
    run_inodes: int            # files and folders in it
    threads: str | None        # thread counts to restore (OMP_NUM_THREADS's value)
    boot: str                  # the entry point it runs, inside
    cgroup_procs: list = field(default_factory=list)  # cgroup.procs files the client opens for it
    argv: list = field(default_factory=list)          # ipykernel's arguments, set by the client

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f)

    @classmethod
    def read(cls, path: str) -> "Request":
        with open(path) as f:
            return cls(**json.load(f))


# ----------------------------------------------------------------------------- messages

def send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = json.dumps(message).encode()
    header = len(data).to_bytes(4, "big")
    sock.sendmsg([header + data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else [])


def receive(sock: socket.socket) -> tuple[dict, list[int]]:
    fds = array.array("i")
    data, ancillary, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    size = int.from_bytes(data[:4], "big")
    while len(data) < 4 + size:
        more = sock.recv(1 << 20)
        if not more:
            raise ConnectionError("request cut short")
        data += more
    return json.loads(data[4: 4 + size]), list(fds)


# ----------------------------------------------------------------------------- zygote (in the sandbox)

def serve(path: str, roots: list[str], join: list[int]) -> None:
    """Import once, then fork one confined kernel per request, for ever (the batch ends it).
    join: open cgroup.procs files of a test cgroup, for the test fork."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ logs quiet, should it be preloaded
    os.environ.setdefault("MPLBACKEND", INLINE)  # as ipykernel does before the notebook imports pyplot
    wanted_blas = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # no BLAS thread pool yet: fork only a single thread
    started = time.monotonic()
    import importlib
    for name in (*IMPORTS, *filter(None, os.environ.get(PRELOAD_VAR, "").split(","))):
        importlib.import_module(name)
    import boot  # noqa: F401  (bound beside this file; the kernels activate it)
    if wanted_blas is None:
        os.environ.pop("OPENBLAS_NUM_THREADS")
    else:
        os.environ["OPENBLAS_NUM_THREADS"] = wanted_blas
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise SystemExit(f"zygote: {threads} threads after the imports; forking it would not be safe")
    why = _self_test(roots, join)
    for fd in join:
        os.close(fd)
    if why:
        raise SystemExit(f"zygote: a fork cannot be confined here ({why}); kernels must start cold")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernels' first processes are reaped by Linux
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # the socket appears only once it can be used
    server.listen(64)
    print(f"{READY}: imports took {time.monotonic() - started:.1f} s", flush=True)
    while True:
        conn, _ = server.accept()
        try:
            message, fds = receive(conn)
            request = Request(**message)
        except (OSError, ValueError, TypeError) as exc:
            print(f"zygote: bad request ({exc})", flush=True)
            conn.close()
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            child = os.fork()
        except OSError as exc:  # out of processes or memory: this kernel fails, the zygote lives on
            send(conn, {"exit": 1, "error": f"the zygote could not fork: {exc}"})
            child = -1
        if child == 0:
            server.close()
            _first(conn, request, fds, roots)  # never returns
        conn.close()
        for fd in fds:
            os.close(fd)


def _self_test(roots: list[str], join: list[int], fresh: bool = True) -> str:
    """'' if a fork can do what a kernel's does (_first, _init, _kernel): join a cgroup (through the
    cgroup.procs files open as `join`), take the namespaces, bring up loopback, make the mounts and
    a fresh /proc, drop its capabilities and (fresh) reseed, else why not."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        why = ""
        try:
            for fd in join:
                try:
                    os.write(fd, b"0")
                except OSError as exc:
                    raise OSError(exc.errno, f"joining a cgroup: {exc.strerror}") from None
            seen = [p for p in sys.path if p and os.path.exists(p)]
            _unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
            _loopback_up()
            _confine_files(Request(env={}, rlimits={}, cwd=os.getcwd(), writable=[], readable=[], files={},
                                   tmp_bytes=1 << 20, run_bytes=1 << 20, run_inodes=64, threads=None, boot=""),
                           roots)
            gone = [p for p in seen if not os.path.exists(p)]
            if gone:
                raise FileNotFoundError(f"the confined fork lost {gone}")
            init = os.fork()
            if init == 0:
                try:
                    _fresh_proc()
                    if sorted(os.listdir("/proc"))[0] != "1":
                        os._exit(3)
                    drop_capabilities()
                    if fresh:
                        _fresh_state(1)
                    os._exit(0)
                except BaseException:
                    os._exit(4)
            status = os.waitpid(init, 0)[1]
            why = "" if os.waitstatus_to_exitcode(status) == 0 else \
                "a fresh /proc, dropping the capabilities or reseeding failed in a test fork"
        except BaseException as exc:
            why = f"{type(exc).__name__}: {exc}"
        os.write(write, why.encode())
        os._exit(0)
    os.close(write)
    why = os.read(read, 4096).decode()
    os.close(read)
    os.waitpid(pid, 0)
    return why


def _fresh_proc() -> None:
    """This pid namespace's own /proc, with what bubblewrap keeps read-only kept so."""
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_COVERS:
        path = f"/proc/{name}"
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _first(conn: socket.socket, request: Request, fds: list[int], roots: list[str]) -> None:
    """C: join the cgroup, new namespaces and mounts, then relay the client's messages to G."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the zygote gone: nothing of its forks stays
        stdio, cgroups = fds[:3], fds[3:]
        for fd in cgroups:
            os.write(fd, b"0")  # "0": this process; its descendants follow
            os.close(fd)
        import resource
        for name, value in request.rlimits.items():
            resource.setrlimit(getattr(resource, name), (value, value))
        _unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
        _loopback_up()
        _confine_files(request, roots)
        init = os.fork()
        if init == 0:
            conn.close()
            _init(request, stdio)  # never returns
        for fd in stdio:
            os.close(fd)
        _relay(conn, init)
        code = 0
    except BaseException as exc:
        try:
            os.write(2, f"[grader] could not start a warm kernel: {type(exc).__name__}: {exc}\n".encode())
            send(conn, {"exit": 1, "error": f"{type(exc).__name__}: {exc}"})
        except OSError:
            pass
    os._exit(code)


def _loopback_up() -> None:
    """The new network namespace's loopback, up (as bubblewrap leaves it): nothing else exists."""
    import fcntl
    import struct

    siocsifflags, iff_up_loopback_running = 0x8914, 0x1 | 0x8 | 0x40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", iff_up_loopback_running))


def _confine_files(request: Request, roots: list[str]) -> None:
    """Only the request's socket and connection-file folders stay visible in the batch's folders;
    a private /tmp and /dev/shm; a private working folder (request.cwd, this process's cwd in
    the zygote) holding the request's files, read-only."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    keep = {folder: (os.open(folder, os.O_PATH | os.O_DIRECTORY), False) for folder in request.writable}
    keep |= {folder: (os.open(folder, os.O_PATH | os.O_DIRECTORY), True) for folder in request.readable}
    files = {inside: os.open(source, os.O_PATH | os.O_NOFOLLOW) for source, inside in request.files.items()}
    for path in [*keep, *request.files]:
        if not _inside(path, roots):
            raise PermissionError(f"{path} is not inside the batch's folders {roots}")
    cwd = request.cwd
    if cwd == "/" or _inside(cwd, roots) or any(os.path.dirname(p) != cwd or os.path.basename(p) in ("", ".", "..")
                                                for p in files):
        raise PermissionError(f"the working folder {cwd} must be a folder of its own, the files directly in it")
    size = f"size={int(request.tmp_bytes)},mode=1777"
    if os.path.isdir(HOSTPROC):
        _mount("tmpfs", HOSTPROC, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4096,mode=0555")
    below = _mounts_below(("/tmp", "/dev/shm"), roots)  # e.g. a venv in /tmp: it must stay visible
    for target in ("/tmp", "/dev/shm"):
        _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, size)
    for path, (fd, read_only) in below.items():
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        _bind(fd, path, read_only)
    for root in roots:
        os.makedirs(root, exist_ok=True)  # a root under /tmp is gone from the new /tmp
        _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=65536,mode=0755")
    for folder, (fd, read_only) in keep.items():
        os.makedirs(folder, exist_ok=True)
        _bind(fd, folder, read_only)
    for root in roots:
        _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=65536,mode=0755")
    # The working folder: bounded in bytes and in inodes, its pages charged to the cgroup C joined.
    _mount("tmpfs", cwd, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={int(request.run_bytes)},nr_inodes={int(request.run_inodes)},mode=0755")
    for inside, fd in files.items():
        open(inside, "x").close()
        _bind(fd, inside, True)


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _bind(fd: int, target: str, read_only: bool) -> None:
    """Bind what the O_PATH descriptor fd is onto target (read-only if asked), then close fd."""
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.close(fd)


def _mounts_below(tops: tuple[str, ...], roots: list[str]) -> dict[str, tuple[int, bool]]:
    """The zygote's mounts under `tops` (outside the batch's roots): {path: (O_PATH fd, read-only)},
    so that a fresh tmpfs over a top can get them back (bubblewrap mounts its binds after /tmp)."""
    found = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            path = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            inside = any(path.startswith(top.rstrip("/") + "/") for top in tops)
            in_root = any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)
            if inside and not in_root and path not in found:
                found[path] = "ro" in fields[5].split(",")
    ordered = sorted(found, key=lambda p: p.count("/"))  # parents before what is mounted in them
    return {path: (os.open(path, os.O_PATH), found[path]) for path in ordered}


def _relay(conn: socket.socket, init: int) -> None:
    """Pass the client's INT on to the kernel; its hang-up or KILL ends the namespace; report the end."""
    while True:
        ready, _, _ = select.select([conn], [], [], 0.2)
        if ready:
            data = conn.recv(64)
            if data.startswith(b"INT"):
                os.kill(init, signal.SIGINT)
            elif not data or data.startswith(b"KILL"):
                os.kill(init, signal.SIGKILL)
        pid, status = os.waitpid(init, os.WNOHANG)
        if pid:
            code = os.waitstatus_to_exitcode(status)
            try:
                send(conn, {"exit": code})
            except OSError:
                pass
            return


def _init(request: Request, stdio: list[int]) -> None:
    """G, pid 1: a fresh /proc, then the kernel; pass signals on, reap, end with the kernel."""
    code = 1
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _fresh_proc()
        kernel = os.fork()
        if kernel == 0:
            _kernel(request, stdio)  # never returns
        for fd in stdio:
            os.close(fd)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: os.kill(kernel, signum))
        while True:
            pid, status = os.wait()
            if pid == kernel:
                code = os.waitstatus_to_exitcode(status)
                break
    except BaseException as exc:
        os.write(2, f"[grader] warm kernel init failed: {type(exc).__name__}: {exc}\n".encode())
    os._exit(code if code >= 0 else 128 - code)


def _kernel(request: Request, stdio: list[int]) -> None:
    """K: no capabilities, the environment of a fresh kernel, then ipykernel with the given arguments."""
    try:
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        os.closerange(3, 1 << 16)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        drop_capabilities()
        os.chdir(request.cwd)
        os.environ.clear()
        os.environ.update(request.env)
        _fresh_state(request.threads)
        sys.argv = [request.boot, *request.argv]
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path[:] = [p for p in sys.path if os.path.abspath(p) != here]
        sys.modules["boot"].activate()
        from ipykernel import kernelapp
        kernelapp.launch_new_instance()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        os.write(2, f"[grader] warm kernel failed: {type(exc).__name__}: {exc}\n".encode())
        code = 1
    sys.stdout.flush()
    os._exit(code)


def _fresh_state(threads_wanted: str | int | None) -> None:
    """What a fresh interpreter would have: random seeds from the OS, the asked-for thread counts."""
    import random

    import numpy as np
    import threadpoolctl

    random.seed()
    np.random.seed()
    threads = int(threads_wanted or os.cpu_count() or 1)
    torch = sys.modules.get("torch")  # preloaded by the lab, or not at all
    if torch is not None:
        torch.seed()
        torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads)


# ----------------------------------------------------------------------------- client (host side)

def client(path: str, request_file: str, argv: list[str]) -> int:
    """Ask the zygote for a kernel; live as long as it does (jupyter_client watches this process)."""
    request = Request.read(request_file)
    request.argv = argv
    fds = [0, 1, 2] + [os.open(p, os.O_WRONLY) for p in request.cgroup_procs]
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    send(conn, asdict(request), fds)

    def relay(signum, frame):
        try:
            conn.sendall(b"INT" if signum == signal.SIGINT else b"KILL")
        except OSError:
            pass
        if signum != signal.SIGINT:
            os._exit(1)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, relay)
    try:
        answer, _ = receive(conn)
    except (OSError, ValueError):
        return 1
    if answer.get("error"):
        print(f"[grader] warm kernel: {answer['error']}", file=sys.stderr)
    return int(answer.get("exit", 1)) & 0xFF


def _join_option(args: list[str]) -> tuple[list[int], list[str]]:
    """(the file descriptors of a leading `--join FD,...`, the arguments after it)."""
    if args[:1] == ["--join"] and len(args) >= 2:
        return [int(fd) for fd in args[1].split(",") if fd], args[2:]
    return [], args


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) >= 3:
        join, roots = _join_option(argv[2:])
        serve(argv[1], roots, join)
        return 0
    if argv[:1] == ["check"] and len(argv) >= 2:
        join, roots = _join_option(argv[1:])
        why = _self_test(roots, join, fresh=False)
        print(why or "a confined fork works here")
        return 1 if why else 0
    if argv[:1] == ["client"] and len(argv) >= 4 and argv[3] == "--":
        return client(argv[1], argv[2], argv[4:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
