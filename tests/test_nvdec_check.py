"""The device check's harness on the CPU: the script parses, each part says in one JSON line why it could not
run, the trace counter counts. (``bash benchmarks/device_check.sh --dry-run`` runs the CPU variants whole.)"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import nvdec_check  # noqa: E402


def test_the_device_check_script_parses():
    r = subprocess.run(
        ["bash", "-n", str(REPO / "benchmarks" / "device_check.sh")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_count_calls_counts_named_rows_in_every_table(tmp_path):
    db = tmp_path / "t.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE StringIds (id INTEGER, value TEXT)")
    con.executemany(
        "INSERT INTO StringIds VALUES (?, ?)", [(1, "cuvidCreateDecoder"), (2, "cuvidDecodePicture")]
    )
    con.execute("CREATE TABLE NVVIDEO_DECODER_API (start INTEGER, nameId INTEGER)")
    con.executemany("INSERT INTO NVVIDEO_DECODER_API VALUES (?, ?)", [(0, 1), (1, 2), (2, 1), (3, 2)])
    con.execute("CREATE TABLE OTHER (nameId INTEGER)")
    con.execute("INSERT INTO OTHER VALUES (1)")
    con.execute("CREATE TABLE UNRELATED (x INTEGER)")
    con.commit()
    con.close()
    assert nvdec_check.count_calls(str(db)) == 3
    assert nvdec_check.count_calls(str(db), "cuvidDestroyDecoder") == 0
    empty = tmp_path / "e.sqlite"
    sqlite3.connect(empty).close()
    assert nvdec_check.count_calls(str(empty)) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU says")
@pytest.mark.parametrize("part", ["frames", "speed", "creations"])
def test_each_part_says_why_it_did_not_run_without_a_gpu(tmp_path, capsys, part):
    out = tmp_path / "r.json"
    assert nvdec_check.main([part, "--work", str(tmp_path / "w"), "--json", str(out)]) == 1
    line = capsys.readouterr().out.strip()
    res = json.loads(line)
    assert json.loads(out.read_text()) == res
    assert res["ran"] is False and res["check"].startswith("nvdec_") and res["device"] == "CPU"
    assert "GPU" in res["why_not"] or "nsys" in res["why_not"] or "dali" in res["why_not"].lower()
