"""Unpack the archives of a submissions download without trusting anything in them.

Handles .zip, .tar, .tar.gz / .tgz and single-file .gz, with the standard library only,
for a top-level archive and for the archives found inside the submissions folder or
inside other archives (each unpacked into a folder named after it, as nbgrader's
zip_collect does).

An archive is refused, with a one-line reason saying what is wrong and what the TA can
do, when it holds: an absolute path, a `..` component, a link (symbolic or hard), a
device or fifo, a name with a control character, more members than MAX_MEMBERS, more
bytes (declared or actual) than MAX_ARCHIVE_BYTES, a compression ratio over MAX_RATIO,
nesting deeper than MAX_DEPTH, or when it is not the archive its name says. Declared
sizes are checked before anything is written, and every member is streamed with a byte
cap, so a header that lies cannot write more than the bounds. A refused archive leaves
nothing behind and stops nothing: the other archives and files are still unpacked.

What is written never takes its mode, owner or times from the archive: files are 0o644
and folders 0o755, every file is created with O_CREAT | O_EXCL | O_NOFOLLOW, and a member
whose parent exists as anything but a real folder (a link, a file) is refused.
"""
from __future__ import annotations

import gzip
import os
import shutil
import stat
import struct
import tarfile
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import text

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# Bounds. Read at the time of each check, so a test or a TA with a genuine huge download
# can change them (grader.archive.MAX_ARCHIVE_BYTES = ...).
MAX_ARCHIVE_BYTES = 2 * GiB   # one archive with all the archives nested in it: a notebook is 1-10 MB,
#                               so this holds an LMS download of 200 students even at 10 MB each
MAX_TOTAL_BYTES = 8 * GiB     # all archives of one collection together (a folder of per-student zips)
MAX_MEMBERS = 10_000          # files and folders in one archive with its nested ones: 500 students with
#                               a dozen files each (checkpoints, __MACOSX copies) stay under it
MAX_TOTAL_MEMBERS = 100_000   # files and folders unpacked in one collection
MAX_RATIO = 200               # unpacked bytes / archive bytes: notebooks deflate 2-10x (their base64
#                               images barely), zip bombs 1000x and more
RATIO_FLOOR = 16 * MiB        # an archive that unpacks to less may have any ratio: it cannot hurt
MAX_DEPTH = 3                 # LMS download > a student's zip > one more zip the student zipped
MAX_NAME_CHARS = 1024         # a member's path; each component is also held to 255 bytes (ext4's limit)
MAX_HEADER_BYTES = 1 * MiB    # a tar's long-name or pax extended header (they are read into memory)
CHUNK = 1 * MiB               # read and written at a time

ARCHIVE_SUFFIXES = {".tar.gz": "tar.gz", ".tgz": "tar.gz", ".tar": "tar", ".zip": "zip", ".gz": "gz"}
_ASK = "ask the student for the .ipynb itself"


@dataclass(frozen=True)
class Refusal:
    """An archive (or an entry of the submissions folder) that was not unpacked."""
    path: Path     # where it is, or would have been copied, under the destination folder
    reason: str    # one line: what is wrong, and what the TA can do


class Refused(Exception):
    """Raised while unpacking an archive that must be refused; str() is the one-line reason."""


def archive_kind(name: str) -> str | None:
    """'zip', 'tar', 'tar.gz' or 'gz' for a file name with an archive suffix (any case), else None."""
    lower = name.lower()
    for suffix, kind in ARCHIVE_SUFFIXES.items():
        if lower.endswith(suffix):
            return kind
    return None


def unpacked_name(name: str) -> str:
    """Where an archive is unpacked, beside it: 's01.zip' -> 's01', 'a.tar.gz' -> 'a', and for a
    single-file .gz, the file: 'lab.ipynb.gz' -> 'lab.ipynb'."""
    lower = name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return name[:-len(suffix)] or f"{name}.unpacked"
    return name


def hidden(parts: tuple[str, ...]) -> bool:
    """The default for unpack's `skip`: a path with a hidden part or macOS's __MACOSX folder."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def unpack(source: Path, dest: Path, skip: Callable[[tuple[str, ...]], bool] = hidden) -> list[Refusal]:
    """Copy or unpack `source` into the existing, empty folder `dest`; return what was refused.

    `source` may be a folder (its files copied, each archive in it unpacked into a folder named
    after it), an archive (unpacked into `dest` itself) or any other file (copied). Archives
    found in what was unpacked are unpacked in turn, up to MAX_DEPTH levels. Archives whose path
    (relative to `dest`, as a tuple of parts) `skip` accepts are copied or left packed. Raises
    only for a `source` that does not exist; whatever an archive holds becomes a Refusal."""
    unpacker = _Unpacker(Path(dest), skip)
    source = Path(source)
    if source.is_dir():
        unpacker.folder(source)
    elif source.is_file() and archive_kind(source.name):
        target = dest / unpacked_name(source.name) if archive_kind(source.name) == "gz" else dest
        unpacker.archive(source, target, dest / source.name, depth=1)
    elif source.is_file():
        _copy(source, dest / source.name)
    else:
        raise FileNotFoundError(f"no such file or folder: {source}")
    return unpacker.refused


# ----------------------------------------------------------------------------- bounds

class _Budget:
    """Bytes and members still allowed, for one archive (with its nested ones) or a collection."""

    def __init__(self, max_bytes: int, max_members: int, bytes_reason: str, members_reason: str,
                 parent: "_Budget | None" = None):
        self.max_bytes, self.max_members, self.parent = max_bytes, max_members, parent
        self.bytes_reason, self.members_reason = bytes_reason, members_reason
        self.bytes = self.members = 0

    def left(self) -> int:
        own = self.max_bytes - self.bytes
        return own if self.parent is None else min(own, self.parent.left())

    def check(self, nbytes: int = 0, members: int = 0) -> None:
        """Refuse if this much more would not fit (nothing is spent): for declared sizes."""
        if self.bytes + nbytes > self.max_bytes:
            raise Refused(self.bytes_reason)
        if self.members + members > self.max_members:
            raise Refused(self.members_reason)
        if self.parent is not None:
            self.parent.check(nbytes, members)

    def spend(self, nbytes: int = 0, members: int = 0) -> None:
        self.check(nbytes, members)
        self.bytes += nbytes
        self.members += members
        if self.parent is not None:
            self.parent.spend(nbytes, members)


def _archive_budget(parent: _Budget) -> _Budget:
    return _Budget(
        MAX_ARCHIVE_BYTES, MAX_MEMBERS,
        f"unpacks to more than {_size(MAX_ARCHIVE_BYTES)} (archive.MAX_ARCHIVE_BYTES): a zip bomb, or a "
        "download too large to unpack at once; if it is genuine, split it or raise the bound",
        f"holds more than {MAX_MEMBERS} files and folders (archive.MAX_MEMBERS): if it is genuine, "
        "split it or raise the bound", parent)


def _collection_budget() -> _Budget:
    return _Budget(
        MAX_TOTAL_BYTES, MAX_TOTAL_MEMBERS,
        f"the archives together unpack to more than {_size(MAX_TOTAL_BYTES)} (archive.MAX_TOTAL_BYTES): "
        "grade the submissions in smaller groups",
        f"the archives together hold more than {MAX_TOTAL_MEMBERS} files and folders "
        "(archive.MAX_TOTAL_MEMBERS): grade the submissions in smaller groups")


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _check_ratio(unpacked: int, packed: int) -> None:
    if unpacked > RATIO_FLOOR and unpacked > MAX_RATIO * max(packed, 1):
        raise Refused(f"unpacks to over {MAX_RATIO} times its size ({_size(unpacked)} from {_size(packed)}, "
                      f"archive.MAX_RATIO): a zip bomb; {_ASK}")


class _Capped:
    """A read-only stream that refuses once more than `limit` bytes came out of it, or more
    than MAX_RATIO times `packed` (the compressed size) past RATIO_FLOOR."""

    def __init__(self, stream, limit: int, packed: int | None, reason: str):
        self.stream, self.limit, self.packed, self.reason = stream, limit, packed, reason
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(CHUNK if n is None or n < 0 else min(n, CHUNK))
        self.total += len(data)
        if self.total > self.limit:
            raise Refused(self.reason)
        if self.packed is not None:
            _check_ratio(self.total, self.packed)
        return data


# ----------------------------------------------------------------------------- names and writing

def _quote(name: str) -> str:
    return "'" + text.terminal(name, limit=80) + "'"


def member_parts(name: str) -> tuple[str, ...]:
    """The parts of an archive member's path ('a//./b/' -> ('a', 'b')), or Refused if the name is
    empty, absolute, climbs out with '..', holds a control character or is too long."""
    what = f"member {_quote(name)}"
    if not name:
        raise Refused(f"a member has an empty name; {_ASK}")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise Refused(f"{what} has a control character in its name (NUL, newline, escape...); {_ASK}")
    if len(name) > MAX_NAME_CHARS:
        raise Refused(f"{what} has a name over {MAX_NAME_CHARS} characters; {_ASK}")
    if name.startswith("/") or (name[:1].isascii() and name[:1].isalpha() and name[1:2] == ":"
                                and name[2:3] in ("", "/")):  # /etc/x, or C:/x from Windows
        raise Refused(f"{what} has an absolute path, which would write outside its folder; {_ASK}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise Refused(f"{what} has a '..' in its path, which would write outside its folder; {_ASK}")
    if any(len(os.fsencode(p)) > 255 for p in parts):
        raise Refused(f"{what} has a name part over 255 bytes; {_ASK}")
    return parts


def _make_dirs(root: Path, parts: Iterable[str], name: str) -> Path:
    """root/parts..., each folder created 0o755 if missing; Refused where one exists as anything
    but a real folder (a file, a link: never followed)."""
    path = root
    for part in parts:
        path = path / part
        try:
            _new_folder(path)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise Refused(f"member {_quote(name)} needs {_quote(part)} as a folder, but the archive "
                              f"also has it as a file or link; {_ASK}") from None
    return path


def _new_folder(path: Path) -> None:
    """A new folder, 0o755 whatever the umask; FileExistsError if anything is there."""
    os.mkdir(path, 0o700)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)


def _write(path: Path, chunks: Iterable[bytes], name: str, budget: _Budget | None,
           declared: int | None = None) -> None:
    """A new file (0o644, never through a link, never over an existing one) with `chunks`,
    each spent from `budget`; Refused past `declared` bytes (a header that lies)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise Refused(f"member {_quote(name)} appears twice (or as a file and a folder); {_ASK}") from None
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, 0o644)
        written = 0
        for chunk in chunks:
            written += len(chunk)
            if declared is not None and written > declared:
                raise Refused(f"member {_quote(name)} holds more than the {declared} bytes its header "
                              f"declares: a forged archive; {_ASK}")
            if budget is not None:
                budget.spend(len(chunk))
            out.write(chunk)


def _chunks(stream) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


def _copy(source: Path, dest: Path) -> None:
    """A plain file of the submissions folder, copied without following a link."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        _write(dest, _chunks(f), source.name, None)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _empty(folder: Path) -> None:
    for entry in folder.iterdir():
        _remove(entry)


# ----------------------------------------------------------------------------- the formats

def _zip_directory(path: Path) -> tuple[int, int]:
    """(members, bytes) of a zip's central directory, as its end record declares them, read
    before zipfile loads the directory into memory; Refused if there is no end record."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - (22 + 0xFFFF)))
        tail = f.read()
        # as zipfile looks for it: at the very end (no comment), else the last signature
        at = len(tail) - 22 if tail[-22:-18] == b"PK\x05\x06" else tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise Refused(f"is not a zip archive, though its name ends in .zip; {_ASK}")
        members, directory = struct.unpack("<10xHL6x", tail[at:at + 22])
        locator = tail[at - 20:at] if at >= 20 else b""
        if (members == 0xFFFF or directory == 0xFFFFFFFF) and locator[:4] == b"PK\x06\x07":
            f.seek(struct.unpack("<8xQ4x", locator)[0])
            record = f.read(56)
            if record[:4] == b"PK\x06\x06" and len(record) == 56:
                members, directory = struct.unpack("<32xQQ8x", record)
    return members, directory


def _extract_zip(src: Path, out: Path, budget: _Budget) -> None:
    members, directory = _zip_directory(src)
    budget.check(members=members)
    if directory > MAX_MEMBERS * KiB:  # a real entry is ~50 bytes plus its name
        raise Refused(f"has a central directory of {_size(directory)}, more than {MAX_MEMBERS} members "
                      "need: a forged archive; " + _ASK)
    try:
        zf = zipfile.ZipFile(src)
    except zipfile.BadZipFile as exc:
        raise Refused(f"is not a readable zip archive ({exc}); {_ASK}") from None
    with zf:
        plan = []
        for info in zf.infolist():
            name = info.filename.replace("\\", "/")  # zips made on Windows may use \ between folders
            parts = member_parts(name)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise Refused(f"member {_quote(name)} is a symbolic link, which could point anywhere; {_ASK}")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise Refused(f"member {_quote(name)} is a device, fifo or socket, not a file; {_ASK}")
            if info.flag_bits & 0x1:
                raise Refused(f"member {_quote(name)} is encrypted: ask the student for a zip without a password")
            is_dir = name.endswith("/") or kind == stat.S_IFDIR
            if not is_dir and info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise Refused(f"member {_quote(name)} uses compression method {info.compress_type}; ask the "
                              "student for a zip made by their system's own 'compress' (deflate)")
            plan.append((info, name, parts, is_dir))
        declared = sum(info.file_size for info, _, _, is_dir in plan if not is_dir)
        budget.check(declared, len(plan))
        _check_ratio(declared, src.stat().st_size)
        for info, name, parts, is_dir in plan:
            budget.spend(members=1)
            if is_dir:
                _make_dirs(out, parts, name)
            elif parts:
                folder = _make_dirs(out, parts[:-1], name)
                with zf.open(info) as member:
                    _write(folder / parts[-1], _chunks(member), name, budget, declared=info.file_size)


class _TarInfo(tarfile.TarInfo):
    """tarfile reads long-name and pax headers whole into memory: refuse big ones first."""

    def _proc_member(self, tarfile_):  # the hook tarfile documents for subclasses
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                         tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) and self.size > MAX_HEADER_BYTES:
            raise Refused(f"has an extended header of {_size(self.size)}: a forged archive; {_ASK}")
        return super()._proc_member(tarfile_)


def _tar_members(src: Path, compressed: bool, budget: _Budget) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """The members of a tar, read as a stream (decompressed here, with a cap)."""
    packed = src.stat().st_size
    with open(src, "rb") as raw:
        if compressed and raw.read(2) != b"\x1f\x8b":
            raise Refused(f"is not gzip-compressed, though its name says .tar.gz or .tgz; {_ASK}")
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        # the members' data, plus room for their headers (a few blocks each)
        capped = _Capped(stream, budget.left() + (MAX_MEMBERS + 1) * 4 * KiB,
                         packed if compressed else None, budget.bytes_reason)
        try:
            tar = tarfile.open(fileobj=capped, mode="r|", tarinfo=_TarInfo)
        except tarfile.ReadError as exc:
            raise Refused(f"is not a readable tar archive ({exc}); {_ASK}") from None
        with tar:
            for member in tar:
                yield tar, member


def _tar_member(member: tarfile.TarInfo) -> tuple[str, tuple[str, ...]]:
    name = member.name
    parts = member_parts(name)
    if member.issym() or member.islnk():
        raise Refused(f"member {_quote(name)} is a {'symbolic' if member.issym() else 'hard'} link, "
                      f"which could point anywhere; {_ASK}")
    if member.ischr() or member.isblk() or member.isfifo():
        raise Refused(f"member {_quote(name)} is a device or fifo, not a file; {_ASK}")
    if not (member.isdir() or member.type in (tarfile.REGTYPE, tarfile.AREGTYPE)):
        raise Refused(f"member {_quote(name)} has a type this grader does not unpack ({member.type!r}); {_ASK}")
    return name, parts


def _extract_tar(src: Path, out: Path, budget: _Budget, compressed: bool) -> None:
    # First pass: every name, type and declared size checked; nothing written.
    declared = count = 0
    packed = src.stat().st_size
    for _, member in _tar_members(src, compressed, budget):
        _tar_member(member)
        count += 1
        declared += member.size if member.isreg() else 0
        budget.check(declared, count)
        _check_ratio(declared, packed)
    # Second pass: the same checks, and the files written.
    for tar, member in _tar_members(src, compressed, budget):
        name, parts = _tar_member(member)
        budget.spend(members=1)
        if member.isdir():
            _make_dirs(out, parts, name)
        elif parts:
            folder = _make_dirs(out, parts[:-1], name)
            data = tar.extractfile(member)
            _write(folder / parts[-1], _chunks(data), name, budget, declared=member.size)


def _extract_gz(src: Path, dest: Path, budget: _Budget) -> None:
    with open(src, "rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            raise Refused(f"is not a gzip file, though its name ends in .gz; {_ASK}")
        raw.seek(0)
        capped = _Capped(gzip.GzipFile(fileobj=raw, mode="rb"), budget.left(), src.stat().st_size,
                         budget.bytes_reason)
        budget.spend(members=1)
        _write(dest, _chunks(capped), dest.name, budget)


def _failure(kind: str, exc: Exception) -> str:
    """The reason for an error the checks did not foresee (a damaged archive, mostly)."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and not isinstance(exc, (EOFError, gzip.BadGzipFile)):
        return f"could not be unpacked here ({detail}); check the disk, or unpack it by hand after a look"
    return f"is damaged or not a {kind} archive ({detail}); {_ASK}"


# ----------------------------------------------------------------------------- the walk

class _Unpacker:
    def __init__(self, dest: Path, skip: Callable[[tuple[str, ...]], bool]):
        self.dest, self.skip = dest, skip
        self.refused: list[Refusal] = []
        self.total = _collection_budget()

    def folder(self, source: Path) -> None:
        """Copy a submissions folder: folders and plain files as they are, then each archive
        unpacked beside where it was (after the copies, so a clash refuses the archive)."""
        archives = []
        for top, dirs, files in os.walk(source):
            rel = Path(top).relative_to(source)
            for name in sorted(dirs):
                if os.path.islink(Path(top) / name):
                    dirs.remove(name)
                    self.refuse(self.dest / rel / name, "is a link to a folder, which is not followed; "
                                "copy the folder itself into the submissions")
                else:
                    _new_folder(self.dest / rel / name)
            dirs.sort()
            for name in sorted(files):
                path, target = Path(top) / name, self.dest / rel / name
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    self.refuse(target, "is a link, which is not followed; copy the file itself into the submissions")
                elif not stat.S_ISREG(mode):
                    self.refuse(target, "is not a regular file (a device, fifo or socket)")
                elif archive_kind(name) and not self.skip((rel / name).parts):
                    archives.append((path, target))
                else:
                    try:
                        _copy(path, target)
                    except (OSError, Refused) as exc:
                        self.refuse(target, f"could not be copied ({exc}); check the file's permissions")
        for path, target in archives:
            self.archive(path, target.with_name(unpacked_name(target.name)), target, depth=1)

    def archive(self, src: Path, out: Path, shown: Path, depth: int, budget: _Budget | None = None) -> bool:
        """Unpack `src` into `out` (a new folder, or `dest` itself; for a .gz, the new file),
        then the archives it held. On refusal, remove what was written and record it under
        `shown`. `budget`: the outer archive's, for a nested one."""
        kind = archive_kind(src.name) or "zip"
        budget = budget or _archive_budget(self.total)
        made = False
        try:
            if depth > MAX_DEPTH:
                raise Refused(f"is an archive nested {depth} deep, more than {MAX_DEPTH} (archive.MAX_DEPTH): "
                              "unpack the outer ones by hand after a look, or " + _ASK)
            if out != self.dest and os.path.lexists(out):
                raise Refused(f"would be unpacked into {_quote(out.name)}, which is already there; rename "
                              "one of them")
            if kind == "gz":
                made = True
                _extract_gz(src, out, budget)
            else:
                if out != self.dest:
                    _new_folder(out)
                    made = True
                if kind == "zip":
                    _extract_zip(src, out, budget)
                else:
                    _extract_tar(src, out, budget, compressed=kind == "tar.gz")
            for inner in self._archives_in(out):
                self.archive(inner, inner.with_name(unpacked_name(inner.name)), inner, depth + 1, budget)
            return True
        except Refused as exc:
            reason = str(exc)
        except Exception as exc:  # anything else in a hostile archive: refuse it, go on with the rest
            reason = _failure(kind, exc)
        if out == self.dest:
            _empty(out)
        elif made:
            _remove(out)
        self.refuse(shown, reason)
        return False

    def _archives_in(self, path: Path) -> list[Path]:
        """The archives in what was just unpacked (a folder, or the file a .gz held)."""
        if path.is_file():
            found = [path]
        else:
            found = []
            for top, dirs, files in os.walk(path):
                dirs.sort()
                found += [Path(top) / name for name in sorted(files)]
        return [p for p in found if archive_kind(p.name) and not self.skip(p.relative_to(self.dest).parts)]

    def refuse(self, path: Path, reason: str) -> None:
        self.refused.append(Refusal(path, text.terminal(reason)))
