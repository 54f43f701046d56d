"""The local audit spool: order, torn lines, bounds, unusable directories, dead and concurrent writers."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sobot_panel.audit.spool import Spool, SpoolFull, SpoolUnavailable

ROOT = Path(__file__).resolve().parent.parent


def item(n: int, **extra: str) -> dict[str, str]:
    return {"id": f"event-{n:04d}", "at": str(1_700_000_000_000 + n), "payload": f"负载 {n}", **extra}


def spool_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.jsonl")) if directory.exists() else []


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_records_come_back_in_order_and_commit_deletes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for n in range(10):
        spool.append(item(n))
    spool.append_many([item(10), item(11)])
    assert spool.depth().records == 12

    with spool.claim() as claim:
        assert claim.records == [item(n) for n in range(12)]
        claim.commit()
    assert spool_files(tmp_path / "spool") == []
    assert spool.depth().records == 0


def test_release_keeps_the_records_for_the_next_claim(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append(item(1))
    with spool.claim() as claim:
        assert claim.records == [item(1)]
        # leaving without commit: Redis failed mid-replay, say
    spool.append(item(2))  # a new file, after the claimed one
    with spool.claim() as claim:
        assert claim.records == [item(1), item(2)]
        claim.commit()
    assert spool_files(tmp_path / "spool") == []


def test_merge_by_acceptance_time_keeps_each_file_in_order(tmp_path: Path) -> None:
    first, second = Spool(tmp_path / "spool"), Spool(tmp_path / "spool")
    first.append(item(1))
    second.append(item(2))
    first.append(item(3))
    second.append(item(4))
    first.close()
    second.close()
    with first.claim() as claim:
        assert len(claim.files) == 2
        assert [r["id"] for r in claim.merged(key=lambda r: int(r["at"]))] == [f"event-{n:04d}" for n in (1, 2, 3, 4)]


def test_torn_last_line_and_corrupt_lines_are_skipped(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.append(item(1))
    spool.append(item(2))
    spool.close()
    (name,) = spool_files(directory)
    with (directory / name).open("ab") as handle:
        handle.write(b'{"id":"event-0003","at":"17000')  # a crash in the middle of a write
    # A file left by another (dead) process, with a corrupt line in the middle and a torn tail.
    (directory / f"w-{time.time_ns():020d}-99999-deadbeef.jsonl").write_bytes(
        json.dumps(item(4)).encode() + b"\n\xff\xfe not json\n" + json.dumps(item(5)).encode() + b"\n" + b'{"id":'
    )
    with spool.claim() as claim:
        assert claim.records == [item(1), item(2), item(4), item(5)]
        assert claim.skipped == 3
        claim.commit()
    assert spool_files(directory) == []


def test_full_spool_refuses_and_keeps_what_it_has(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=400)
    kept = 0
    with pytest.raises(SpoolFull) as raised:
        for n in range(100):
            spool.append(item(n))
            kept += 1
    assert 0 < kept < 100
    assert raised.value.code == "audit_spool_full"
    assert raised.value.status == 503
    assert spool.depth().bytes <= 400
    with spool.claim() as claim:
        assert claim.records == [item(n) for n in range(kept)]


def test_directory_that_cannot_be_created_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "spool"
    blocker.write_text("a file where the spool directory should be")
    with pytest.raises(SpoolUnavailable) as raised:
        Spool(blocker).append(item(1))
    assert raised.value.code == "audit_unavailable"
    assert raised.value.status == 503


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories anyway")
def test_read_only_directory_is_unavailable(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(SpoolUnavailable):
            Spool(directory).append(item(1))
    finally:
        directory.chmod(0o700)


def test_disk_full_mid_write_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append(item(1))
    real_write = os.write

    def half_then_enospc(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(SpoolFull):
        spool.append(item(2))
    monkeypatch.undo()
    spool.append(item(3))
    with spool.claim() as claim:
        assert claim.records == [item(1), item(3)]
        assert claim.skipped == 0


WRITER = """
import os, sys
from pathlib import Path
from sobot_panel.audit.spool import Spool
spool = Spool(Path(sys.argv[1]))
for n in range(int(sys.argv[2])):
    spool.append({"id": f"dead-{n}", "at": str(n)})
print("written", flush=True)
if sys.argv[3] == "wait":
    sys.stdin.readline()
os._exit(0)  # no close(): the kernel drops the lock, as on a crash
"""


def test_files_of_a_dead_process_are_replayed(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    writer = run_python(WRITER, str(directory), "5", "exit")
    assert writer.wait(30) == 0, writer.stderr.read() if writer.stderr else ""
    with Spool(directory).claim() as claim:
        assert [r["id"] for r in claim.records] == [f"dead-{n}" for n in range(5)]
        claim.commit()
    assert spool_files(directory) == []


def test_a_live_process_keeps_its_file_until_it_dies(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    writer = run_python(WRITER, str(directory), "3", "wait")
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
        with Spool(directory).claim() as claim:
            assert claim.records == [], "a live writer's file must not be taken from under it"
    finally:
        assert writer.stdin is not None
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.wait(30) == 0
    with Spool(directory).claim() as claim:
        assert [r["id"] for r in claim.records] == ["dead-0", "dead-1", "dead-2"]


REPLAYING_WRITER = """
import json, os, sys
from pathlib import Path
from sobot_panel.audit.spool import Spool
directory, name, total, out = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
spool = Spool(directory)
with open(out, "a") as replayed:
    for n in range(total):
        spool.append({"id": f"{name}-{n}", "at": str(n), "writer": name})
        if n % 25 == 24:  # this process's own replayer at work, racing the others
            claim = spool.claim()
            for record in claim.records:
                replayed.write(json.dumps(record) + "\\n")
            replayed.flush()
            os.fsync(replayed.fileno())
            claim.commit()
"""


def test_concurrent_writers_and_replayers_lose_and_double_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    writers = [
        run_python(REPLAYING_WRITER, str(directory), f"w{i}", "120", str(tmp_path / f"out-{i}.jsonl")) for i in range(4)
    ]
    replayed: list[dict[str, str]] = []
    main = Spool(directory)
    while any(w.poll() is None for w in writers):
        with main.claim() as claim:
            replayed.extend(claim.records)
            claim.commit()
    for w in writers:
        assert w.returncode == 0, w.stderr.read() if w.stderr else ""
    with main.claim() as claim:
        replayed.extend(claim.records)
        claim.commit()
    for i in range(4):
        out = tmp_path / f"out-{i}.jsonl"
        if out.exists():
            replayed.extend(json.loads(line) for line in out.read_text().splitlines())

    ids = [r["id"] for r in replayed]
    assert len(ids) == len(set(ids)), "a record was replayed twice"
    assert set(ids) == {f"w{i}-{n}" for i in range(4) for n in range(120)}, "a record was lost"
    assert spool_files(directory) == []


def test_threads_of_one_process_never_interleave_lines(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")

    def write(name: str) -> None:
        for n in range(50):
            spool.append({"id": f"{name}-{n}", "payload": "x" * 2000})

    threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with spool.claim() as claim:
        assert claim.skipped == 0
        ids = [r["id"] for r in claim.records]
    assert sorted(ids) == sorted(f"t{i}-{n}" for i in range(4) for n in range(50))
    for i in range(4):
        mine = [int(x.split("-")[1]) for x in ids if x.startswith(f"t{i}-")]
        assert mine == sorted(mine)
