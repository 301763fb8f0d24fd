"""Collecting submissions: file and folder names to student ids (no notebook is executed)."""
from __future__ import annotations

import csv
import os
import zipfile

import pytest

from grader import collect

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


def test_a_folder_with_per_student_zips_uses_nbgrader_extractor(course, tmp_path):
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
