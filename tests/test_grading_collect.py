"""Collecting submissions: file and folder names to student ids (no notebook is executed)."""
from __future__ import annotations

import csv
import gzip
import io
import os
import stat
import struct
import tarfile
import zipfile

import pytest

from grader import archive, collect

NOTEBOOK = "craft_lab"


def touch(path, text='{"cells": []}', mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def gather(course, folder, **kw):
    return collect.collect(folder, NOTEBOOK, course.named_regexps, **kw)


def test_one_folder_per_student_with_colab_names(course, tmp_path):
    touch(tmp_path / "s001" / "Copy of craft_lab.ipynb")
    touch(tmp_path / "s002" / "craft_lab (1).ipynb")
    touch(tmp_path / "jane.doe" / "sub" / "my lab.ipynb")
    found = gather(course, tmp_path)
    assert {s: f.relpath for s, f in found.submissions.items()} == {
        "s001": "s001/Copy of craft_lab.ipynb", "s002": "s002/craft_lab (1).ipynb",
        "jane.doe": "jane.doe/sub/my lab.ipynb"}
    assert found.unmapped == []


def test_loose_colab_files_are_reported_not_guessed(course, tmp_path):
    touch(tmp_path / "Copy of lab5.ipynb")
    touch(tmp_path / "lab5 (1).ipynb")
    found = gather(course, tmp_path)
    assert found.submissions == {}
    assert sorted(f.relpath for f in found.unmapped) == ["Copy of lab5.ipynb", "lab5 (1).ipynb"]
    assert all("no student id" in f.reason for f in found.unmapped)


def test_a_mapping_csv_names_the_owner_of_loose_files(course, tmp_path):
    inbox = tmp_path / "in"
    touch(inbox / "Copy of lab5.ipynb")
    touch(inbox / "lab5 (1).ipynb")
    (tmp_path / "map.csv").write_text("file,student_id\nCopy of lab5.ipynb,s010\nlab5 (1).ipynb,s011\n")
    found = gather(course, inbox, mapping=collect.read_mapping(tmp_path / "map.csv"))
    assert {s: f.rule for s, f in found.submissions.items()} == {"s010": "map", "s011": "map"}


def test_roster_maps_lms_folders_by_name_and_refuses_strangers(course, tmp_path):
    (tmp_path / "roster.csv").write_text("id,first_name,last_name,email\n"
                                         "s001,Jane,Doe,jane@uni.edu\ns002,John,Smith,\ns003,Ann,Doe,\n")
    roster = collect.read_roster(tmp_path / "roster.csv")
    inbox = tmp_path / "in"
    touch(inbox / "Jane Doe_48213_assignsubmission_file_" / "Copy of lab5.ipynb")  # Moodle
    touch(inbox / "Smith John_48214_assignsubmission_file_" / "lab5.ipynb")
    touch(inbox / "s003" / "lab5.ipynb")
    touch(inbox / "s999" / "lab5.ipynb")      # not in the roster
    touch(inbox / "Doe_48215" / "lab5.ipynb")  # two Does: ambiguous
    found = gather(course, inbox, roster=roster)
    assert {s: f.rule for s, f in found.submissions.items()} == {
        "s001": "roster", "s002": "roster", "s003": "regexp"}
    reasons = {f.relpath.split("/")[0]: f.reason for f in found.unmapped}
    assert "not in the roster" in reasons["s999"]
    assert set(reasons) == {"s999", "Doe_48215"}


def test_nbgrader_filename_regexp_with_timestamp(course, tmp_path):
    touch(tmp_path / "lab5_jdoe_attempt_2026-01-30-15-00-00_Copy of lab5.ipynb")
    found = gather(course, tmp_path)
    assert found.submissions["jdoe"].timestamp == "2026-01-30-15-00-00"


def test_several_notebooks_of_one_student_grade_the_lab_one_and_list_the_others(course, tmp_path):
    touch(tmp_path / "s001" / "scratch.ipynb", mtime=2_000_000_000)
    touch(tmp_path / "s001" / "Copy of craft_lab.ipynb", mtime=1_000_000_000)
    touch(tmp_path / "s001" / "craft_lab (1).ipynb", mtime=1_500_000_000)
    found = gather(course, tmp_path)
    assert found.submissions["s001"].relpath == "s001/craft_lab (1).ipynb"
    superseded = sorted(f.relpath for f in found.files if f.status == "superseded")
    assert superseded == ["s001/Copy of craft_lab.ipynb", "s001/scratch.ipynb"]


def test_system_files_and_other_files_are_ignored(course, tmp_path):
    touch(tmp_path / "s001" / "craft_lab.ipynb")
    touch(tmp_path / "s001" / ".ipynb_checkpoints" / "craft_lab-checkpoint.ipynb")
    touch(tmp_path / "__MACOSX" / "s001" / "._craft_lab.ipynb")
    touch(tmp_path / "s001" / "rabbit.npz", "x")
    found = gather(course, tmp_path)
    assert list(found.submissions) == ["s001"]
    assert {f.status for f in found.files} == {"submission", "ignored"}


def test_invalid_ids_are_refused(course, tmp_path):
    (tmp_path / "map.csv").write_text("file,student_id\nlab.ipynb,../../etc\n")
    touch(tmp_path / "in" / "lab.ipynb")
    found = gather(course, tmp_path / "in", mapping=collect.read_mapping(tmp_path / "map.csv"))
    assert found.submissions == {} and "not usable as a student id" in found.unmapped[0].reason


def test_an_lms_zip_with_a_wrapper_folder_and_zips_inside(course, tmp_path):
    inner = tmp_path / "s002.zip"
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("Copy of craft_lab.ipynb", '{"cells": []}')
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("lab5_submissions/s001/Copy of craft_lab.ipynb", '{"cells": []}')
        z.write(inner, "lab5_submissions/s002.zip")
        z.writestr("lab5_submissions/__MACOSX/s001/._x.ipynb", "junk")
    root = collect.unpack(archive, tmp_path / "collected")
    found = gather(course, root)
    assert sorted(found.submissions) == ["s001", "s002"]


def test_a_zip_of_loose_files_in_a_folder_maps_nobody(course, tmp_path):
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("lab5/Copy of craft_lab.ipynb", '{"cells": []}')
        z.writestr("lab5/craft_lab (1).ipynb", '{"cells": []}')
    found = gather(course, collect.unpack(archive, tmp_path / "collected"))
    assert found.submissions == {} and len(found.unmapped) == 2


def test_a_folder_with_per_student_zips_unpacks_each_into_its_folder(course, tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    with zipfile.ZipFile(inbox / "s007.zip", "w") as z:
        z.writestr("lab5.ipynb", '{"cells": []}')
    touch(inbox / "s008" / "lab5.ipynb")
    root = collect.unpack(inbox, tmp_path / "collected")
    found = gather(course, root)
    assert sorted(found.submissions) == ["s007", "s008"]
    assert (inbox / "s007.zip").exists() and not (inbox / "s007").exists()  # the input is untouched


def test_report_lists_every_file(course, tmp_path):
    touch(tmp_path / "in" / "s001" / "craft_lab.ipynb")
    touch(tmp_path / "in" / "Copy of craft_lab.ipynb")
    found = gather(course, tmp_path / "in")
    collect.write_report(found, tmp_path / "collect.csv")
    rows = list(csv.DictReader(open(tmp_path / "collect.csv")))
    assert [(r["file"], r["status"], r["student_id"]) for r in rows] == [
        ("Copy of craft_lab.ipynb", "unmapped", ""), ("s001/craft_lab.ipynb", "submission", "s001")]


@pytest.mark.parametrize("name, stem", [("Copy of craft_lab (2).ipynb", "craft_lab"),
                                        ("craft_lab.ipynb", "craft_lab"),
                                        ("Copy of Copy of craft-lab.ipynb", "craft_lab")])
def test_colab_copy_names_are_normalised(name, stem):
    assert collect.normalised_stem(name) == stem


# ----------------------------------------------------------------------------- hostile archives
# Each is built here with zipfile/tarfile and put in a submissions folder beside a good
# student folder (s001) and a good zip (s002.zip): it must be refused with its reason,
# leave nothing behind, and the good submissions must still be collected.

NB = b'{"cells": []}'


def make_zip(path, members, compression=zipfile.ZIP_DEFLATED):
    """members: name -> bytes, or (bytes, st_mode for external_attr)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            data, mode = data if isinstance(data, tuple) else (data, None)
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            if mode is not None:
                info.external_attr = mode << 16
            z.writestr(info, data)
    return path


def make_tar(path, members, mode="w:gz"):
    """members: list of (name, bytes or None, TarInfo attributes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as t:
        for name, data, attrs in members:
            info = tarfile.TarInfo(name)
            for key, value in attrs.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def lie_about_size(path, name, size):
    """Rewrite the uncompressed size that a zip's local and central headers declare for `name`."""
    raw = bytearray(path.read_bytes())
    encoded = name.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = raw.find(signature)
        while at >= 0:
            if raw[at + name_at:at + name_at + len(encoded)] == encoded:
                raw[at + size_at:at + size_at + 4] = struct.pack("<L", size)
            at = raw.find(signature, at + 4)
    path.write_bytes(bytes(raw))
    return path


def tar_link(kind):
    return [("s009/craft_lab.ipynb", None, {"type": kind, "linkname": "/etc/passwd"})]


def nested(depth):
    """A zip holding a zip holding ... `depth` zips in all, the innermost with a notebook."""
    data = make_zip_bytes({"craft_lab.ipynb": NB})
    for level in range(depth - 1):
        data = make_zip_bytes({f"level{depth - 1 - level}.zip": data})
    return data


def make_zip_bytes(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


HOSTILE = {
    "dotdot": ("s009.zip", lambda p, out: make_zip(p, {"../../escaped.ipynb": NB}), "'..'"),
    "absolute": ("s009.zip", lambda p, out: make_zip(p, {f"{out}/escaped.ipynb": NB}), "absolute path"),
    "windows-dotdot": ("s009.zip", lambda p, out: make_zip(p, {"..\\..\\escaped.ipynb": NB}), "'..'"),
    "zip-symlink": ("s009.zip", lambda p, out: make_zip(p, {"craft_lab.ipynb": (b"/etc/passwd",
                                                                                  stat.S_IFLNK | 0o777)}),
                    "symbolic link"),
    "zip-device": ("s009.zip", lambda p, out: make_zip(p, {"craft_lab.ipynb": (b"", stat.S_IFCHR | 0o666)}),
                   "device"),
    "tar-symlink": ("s009.tar.gz", lambda p, out: make_tar(p, tar_link(tarfile.SYMTYPE)), "symbolic link"),
    "tar-hardlink": ("s009.tar", lambda p, out: make_tar(p, tar_link(tarfile.LNKTYPE), "w"), "hard link"),
    "tar-fifo": ("s009.tgz", lambda p, out: make_tar(p, [("fifo", None, {"type": tarfile.FIFOTYPE})]), "fifo"),
    "control-name": ("s009.zip", lambda p, out: make_zip(p, {"s009/\x1b]0;pwned\x07.ipynb": NB}),
                     "control character"),
    "text-as-zip": ("s009.zip", lambda p, out: p.write_text("not a zip at all\n"), "not a zip archive"),
    "zip-as-tgz": ("s009.tar.gz", lambda p, out: make_zip(p, {"craft_lab.ipynb": NB}), "not gzip"),
    "text-as-tar": ("s009.tar", lambda p, out: p.write_text("not a tar\n" * 100), "not a readable tar"),
    "text-as-gz": ("s009.ipynb.gz", lambda p, out: p.write_text("not gzip\n"), "not a gzip file"),
    # 40 MiB of zeros in 40 KiB, headers honest: over MAX_RATIO, refused before anything is written
    "bomb": ("s009.zip", lambda p, out: make_zip(p, {"craft_lab.ipynb": bytes(40 << 20)}), "times its size"),
    "tar-bomb": ("s009.tar.gz", lambda p, out: make_tar(p, [("craft_lab.ipynb", bytes(40 << 20), {})]),
                 "times its size"),
    "gz-bomb": ("s009.ipynb.gz", lambda p, out: p.write_bytes(gzip.compress(bytes(40 << 20))), "times its size"),
    # a header that declares 3 GiB for 13 bytes: over MAX_ARCHIVE_BYTES as declared
    "declares-too-much": ("s009.zip", lambda p, out: lie_about_size(make_zip(p, {"craft_lab.ipynb": NB}),
                                                                    "craft_lab.ipynb", 3 << 30),
                          "more than 2 GiB"),
    # a header that declares 10 bytes for 1 MiB: never more than 10 bytes are taken from it
    "declares-too-little": ("s009.zip", lambda p, out: lie_about_size(make_zip(p, {"craft_lab.ipynb":
                                                                                   os.urandom(1 << 20)}),
                                                                      "craft_lab.ipynb", 10),
                            "CRC"),
    "too-deep": ("s009.zip", lambda p, out: p.write_bytes(nested(4)), "nested 4 deep"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_archive_is_refused_and_the_rest_collected(course, tmp_path, case):
    name, build, says = HOSTILE[case]
    inbox, out = tmp_path / "in", tmp_path / "out"
    touch(inbox / "s001" / "craft_lab.ipynb")
    make_zip(inbox / "s002.zip", {"Copy of craft_lab.ipynb": NB})
    build(inbox / name, out)
    dest = out / "collected"
    out.mkdir()
    outside = lambda: sorted(p for p in tmp_path.rglob("*") if p != dest and dest not in p.parents)  # noqa: E731
    before = outside()

    unpacked = collect.unpack_all(inbox, dest)
    found = gather(course, unpacked.root, refused=unpacked.refused)

    assert sorted(found.submissions) == ["s001", "s002"]
    refused = [f for f in found.files if f.status == "refused"]
    assert len(refused) == 1 and says in refused[0].reason, [(f.relpath, f.reason) for f in refused]
    assert refused[0].relpath == (name if case != "too-deep" else "s009/level1/level2/level3.zip")
    assert "\n" not in refused[0].reason and "\x1b" not in refused[0].reason
    # nothing outside the destination, and nothing left of the refused archive
    assert outside() == before
    if case != "too-deep":
        assert not (dest / archive.unpacked_name(name)).exists()
        assert sorted(f.relpath.split("/")[0] for f in found.files) == ["s001", "s002", name]


def test_a_refused_archive_never_writes_past_its_declared_sizes(tmp_path, monkeypatch):
    """A header that lies low: the stream stops at the declared size (the write cap refuses more)."""
    writes = []
    real = archive._write

    def spy(path, chunks, name, budget, declared=None):
        chunks = list(chunks)
        writes.append((name, sum(map(len, chunks)), declared))
        return real(path, chunks, name, budget, declared)

    monkeypatch.setattr(archive, "_write", spy)
    bad = lie_about_size(make_zip(tmp_path / "s009.zip", {"craft_lab.ipynb": os.urandom(1 << 20)}),
                         "craft_lab.ipynb", 10)
    (tmp_path / "out").mkdir()
    refused = archive.unpack(bad, tmp_path / "out")
    assert len(refused) == 1 and all(size <= 10 for _, size, _ in writes), writes
    assert list((tmp_path / "out").iterdir()) == []
    # and if a stream gave more than declared, the write stops before the chunk that passes it
    with pytest.raises(archive.Refused, match="more than the 4 bytes"):
        real(tmp_path / "x", [b"abc", b"def"], "x", None, declared=4)
    assert (tmp_path / "x").read_bytes() == b"abc"


def test_a_bomb_is_refused_from_its_headers_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 1 << 20)
    writes = []
    monkeypatch.setattr(archive, "_write", lambda *a, **k: writes.append(a))
    bomb = make_zip(tmp_path / "s009.zip", {"a.ipynb": os.urandom(600_000), "b.ipynb": os.urandom(600_000)})
    (tmp_path / "out").mkdir()
    refused = archive.unpack(bomb, tmp_path / "out")
    assert [r.reason.split(" (")[0] for r in refused] == ["unpacks to more than 1 MiB"] and writes == []


def test_nested_archives_share_one_budget(course, tmp_path, monkeypatch):
    """A zip of zips: each inner one is small, together they pass the bound; those past it are refused."""
    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 8 << 20)
    inner = make_zip_bytes({"data.bin": bytes(3 << 20)})  # 3 MiB of zeros: under RATIO_FLOOR
    inbox = tmp_path / "in"
    touch(inbox / "s001" / "craft_lab.ipynb")
    make_zip(inbox / "s009.zip", {"craft_lab.ipynb": NB, **{f"part{i}.zip": inner for i in range(4)}})
    unpacked = collect.unpack_all(inbox, tmp_path / "collected")
    found = gather(course, unpacked.root, refused=unpacked.refused)
    assert sorted(found.submissions) == ["s001", "s009"]
    assert sorted(f.relpath for f in found.refused) == ["s009/part2.zip", "s009/part3.zip"]
    assert all("more than 8 MiB" in f.reason for f in found.refused)
    written = sum(p.stat().st_size for p in (tmp_path / "collected").rglob("*.bin"))
    assert written == 2 * (3 << 20)
    assert not (unpacked.root / "s009" / "part2").exists()


def test_too_many_members_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_MEMBERS", 5)
    many = make_zip(tmp_path / "s009.zip", {f"f{i}.txt": b"x" for i in range(8)})
    (tmp_path / "out").mkdir()
    refused = archive.unpack(many, tmp_path / "out")
    assert len(refused) == 1 and "more than 5 files" in refused[0].reason
    assert list((tmp_path / "out").iterdir()) == []


def test_oversized_headers_are_refused_before_they_are_read(tmp_path, monkeypatch):
    """A zip's central directory and a tar's pax header are read into memory: bounded first."""
    monkeypatch.setattr(archive, "MAX_MEMBERS", 5)  # a central directory of at most 5 KiB
    monkeypatch.setattr(archive, "MAX_HEADER_BYTES", 1024)
    long_names = tmp_path / "s009.zip"
    with zipfile.ZipFile(long_names, "w") as z:
        for i in range(2):  # 2 members (under 5) whose directory entries carry 4 KB of extra field each
            info = zipfile.ZipInfo(f"f{i}.txt")
            info.extra = struct.pack("<HH", 0xCAFE, 4000) + bytes(4000)
            z.writestr(info, b"x")
    pax = tmp_path / "s010.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("craft_lab.ipynb")
        info.size, info.pax_headers = len(NB), {"comment": "x" * 4000}
        t.addfile(info, io.BytesIO(NB))
    for bad, says in ((long_names, "central directory"), (pax, "extended header")):
        (tmp_path / bad.stem).mkdir()
        refused = archive.unpack(bad, tmp_path / bad.stem)
        assert len(refused) == 1 and says in refused[0].reason, refused
        assert list((tmp_path / bad.stem).iterdir()) == []


def test_modes_owners_and_times_from_the_archive_are_not_applied(tmp_path):
    inbox = tmp_path / "in"
    make_zip(inbox / "s001.zip", {"bin/": (b"", stat.S_IFDIR | 0o777),
                                  "bin/craft_lab.ipynb": (NB, stat.S_IFREG | 0o4755),
                                  "open.txt": (b"x", stat.S_IFREG | 0o777)})
    make_tar(inbox / "s002.tar.gz", [("shared", None, {"type": tarfile.DIRTYPE, "mode": 0o777}),
                                     ("shared/craft_lab.ipynb", NB, {"mode": 0o6777, "uid": 0, "gid": 0,
                                                                     "mtime": 0})])
    root = collect.unpack(inbox, tmp_path / "collected")
    files = [p for p in root.rglob("*") if p.is_file()]
    folders = [p for p in root.rglob("*") if p.is_dir()]
    assert len(files) == 3 and len(folders) == 4
    assert {stat.S_IMODE(p.lstat().st_mode) for p in files} == {0o644}
    assert {stat.S_IMODE(p.lstat().st_mode) for p in folders} == {0o755}
    assert all(p.stat().st_mtime > 1_000_000_000 for p in files)  # not the archive's 1970


def test_a_member_is_never_written_through_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "s001").symlink_to(outside)
    bad = make_zip(tmp_path / "s009.zip", {"s001/craft_lab.ipynb": NB})
    refused = archive.unpack(bad, dest)
    assert len(refused) == 1 and "as a file or link" in refused[0].reason
    assert list(outside.iterdir()) == []
    clash = make_zip(tmp_path / "s010.zip", {"a": b"file", "a/b.ipynb": NB})
    (tmp_path / "out2").mkdir()
    assert "as a file or link" in archive.unpack(clash, tmp_path / "out2")[0].reason


def test_links_in_the_submissions_folder_are_not_followed(course, tmp_path):
    secret = touch(tmp_path / "secret.ipynb", '{"secret": 1}')
    inbox = tmp_path / "in"
    touch(inbox / "s001" / "craft_lab.ipynb")
    (inbox / "s009").mkdir()
    (inbox / "s009" / "craft_lab.ipynb").symlink_to(secret)
    (inbox / "s010").symlink_to(tmp_path)
    unpacked = collect.unpack_all(inbox, tmp_path / "collected")
    found = gather(course, unpacked.root, refused=unpacked.refused)
    assert sorted(found.submissions) == ["s001"]
    assert {f.relpath: f.reason.split(",")[0] for f in found.refused} == {
        "s009/craft_lab.ipynb": "is a link", "s010": "is a link to a folder"}
    assert not (unpacked.root / "s009" / "craft_lab.ipynb").exists()


def test_tar_gz_tgz_tar_and_gz_are_unpacked_like_zips(course, tmp_path):
    inbox = tmp_path / "in"
    make_tar(inbox / "s003.tar.gz", [("lab/craft_lab.ipynb", NB, {})])
    make_tar(inbox / "s004.TGZ", [("craft_lab.ipynb", NB, {})])
    make_tar(inbox / "s005.tar", [("craft_lab.ipynb", NB, {})], "w")
    touch(inbox / "s006" / "x").unlink()
    (inbox / "s006" / "craft_lab.ipynb.gz").write_bytes(gzip.compress(NB))
    make_tar(inbox / "class.tgz", [("s007.zip", make_zip_bytes({"craft_lab.ipynb": NB}), {})])
    unpacked = collect.unpack_all(inbox, tmp_path / "collected")
    found = gather(course, unpacked.root, refused=unpacked.refused)
    assert unpacked.refused == []
    assert {s: f.relpath for s, f in found.submissions.items()} == {
        "s003": "s003/lab/craft_lab.ipynb", "s004": "s004/craft_lab.ipynb", "s005": "s005/craft_lab.ipynb",
        "s006": "s006/craft_lab.ipynb", "class": "class/s007/craft_lab.ipynb"}


def test_a_refused_top_level_archive_is_reported_not_raised(course, tmp_path):
    bad = make_zip(tmp_path / "download.zip", {"lab/s001/craft_lab.ipynb": NB, "../evil.ipynb": NB})
    unpacked = collect.unpack_all(bad, tmp_path / "collected")
    found = gather(course, unpacked.root, refused=unpacked.refused)
    assert found.submissions == {} and list((tmp_path / "collected").iterdir()) == []
    assert [(f.relpath, f.status) for f in found.files] == [("download.zip", "refused")]
    collect.write_report(found, tmp_path / "collect.csv")
    rows = list(csv.DictReader(open(tmp_path / "collect.csv")))
    assert rows[0]["status"] == "refused" and "'..'" in rows[0]["reason"]


def test_collect_phase_reports_a_refused_archive_and_goes_on(course, tmp_path):
    from grader import batch

    inbox, out = tmp_path / "in", tmp_path / "out"
    touch(inbox / "s001" / "craft_lab.ipynb")
    make_zip(inbox / "s002.zip", {"craft_lab.ipynb": NB})
    make_zip(inbox / "s003.zip", {"../../../escaped.ipynb": NB})
    (inbox / "s004.zip").write_text("a zip? no")
    out.mkdir()
    lines = []
    found, _ = batch.collect_phase(course, batch.Options(submissions=inbox, out=out), out, lines.append)
    assert sorted(found.submissions) == ["s001", "s002"]
    refused = [line for line in lines if line.startswith("  REFUSED: ")]
    assert [line.split(":")[1].strip() for line in refused] == ["s003.zip", "s004.zip"]
    assert "'..'" in refused[0] and "not a zip archive" in refused[1]
    rows = {r["file"]: r for r in csv.DictReader(open(out / "collect.csv"))}
    assert rows["s003.zip"]["status"] == rows["s004.zip"]["status"] == "refused"
    assert rows["s002/craft_lab.ipynb"]["student_id"] == "s002"
    assert not (tmp_path / "escaped.ipynb").exists()
