"""The SQLite write process: serve's processes send their write transactions to it, and fall back
to writing themselves when it is gone; an acknowledged write is committed, a failed one is not."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import writefns

from agentpost.store import write_process
from agentpost.store.db import Database
from agentpost.store.write_process import WriteChannel, WriterLost

HERE = Path(__file__).parent


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Database, Database, Any]]:
    """Two processes' databases (here: two Database objects) attached to one write process."""
    # The write process imports the functions it is sent: writefns lives beside this file.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    url = f"sqlite:///{tmp_path / 'agentpost.db'}"
    first, second = Database(url), Database(url)
    await first.migrate()
    proc, ends = write_process.spawn(url, 2)
    await first.attach_writer(WriteChannel(ends[0]))
    await second.attach_writer(WriteChannel(ends[1]))
    try:
        yield first, second, proc
    finally:
        await first.close()
        await second.close()
        await asyncio.get_running_loop().run_in_executor(None, write_process.wait_for, proc, 10.0)


async def test_writes_run_in_the_write_process_and_are_committed_durably_before_the_answer(served: Any) -> None:
    first, second, proc = served
    pid, synchronous = await first.run_write(writefns.insert, "a@x.test")
    assert pid == proc.pid != os.getpid()
    assert synchronous == 2  # FULL: the commit was fsynced
    # Another connection (another process would do the same) sees it at once.
    assert await second.run_read(writefns.count) == 1


async def test_a_write_nobody_was_promised_skips_the_fsync_and_the_next_durable_one_does_not(served: Any) -> None:
    first, _, _ = served
    assert (await first.run_write(writefns.insert, "a@x.test", durable=False))[1] == 1
    assert (await first.run_write(writefns.insert, "b@x.test"))[1] == 2
    assert await first.run_read(writefns.count) == 2


async def test_concurrent_writes_from_two_processes_share_transactions_and_one_failure_spares_the_rest(
    served: Any,
) -> None:
    first, second, _ = served
    # A slow write holds the write process, so the others arrive together and form one group.
    slow = asyncio.create_task(first.run_write(writefns.insert_slowly, "slow@x.test", 0.3))
    await asyncio.sleep(0.1)
    calls = [
        first.run_write(writefns.insert, "a@x.test"),
        second.run_write(writefns.insert_then_fail, "bad@x.test"),
        second.run_write(writefns.insert, "b@x.test"),
        first.run_write(writefns.insert, "c@x.test"),
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    await slow
    assert isinstance(results[1], ValueError) and str(results[1]) == "refused bad@x.test"
    assert not any(isinstance(r, BaseException) for i, r in enumerate(results) if i != 1)
    # The failed request's own insert was rolled back with its savepoint; its neighbours committed.
    assert await first.run_read(writefns.addresses) == ["a@x.test", "b@x.test", "c@x.test", "slow@x.test"]


async def test_a_database_error_reaches_the_caller_with_its_type(served: Any) -> None:
    first, _, _ = served
    await first.run_write(writefns.insert, "dup@x.test")
    with pytest.raises(sa.exc.IntegrityError):
        await first.run_write(writefns.insert, "dup@x.test")
    assert await first.run_read(writefns.count) == 1


async def test_a_function_that_cannot_travel_runs_in_the_calling_process(served: Any) -> None:
    first, _, proc = served

    def local(conn: sa.Connection) -> int:  # a closure: not importable by the write process
        return writefns.insert(conn, "local@x.test")[0]

    assert await first.run_write(local) == os.getpid()
    assert (await first.run_write(writefns.insert, "remote@x.test"))[0] == proc.pid


async def test_when_the_write_process_dies_in_flight_writes_fail_and_later_ones_are_written_locally(
    served: Any,
) -> None:
    first, second, proc = served
    in_flight = asyncio.create_task(first.run_write(writefns.insert_slowly, "lost@x.test", 5.0))
    await asyncio.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    # Not known to be committed, so not acknowledged: the caller must not report success.
    with pytest.raises(WriterLost):
        await asyncio.wait_for(in_flight, 10)
    # The next writes go through this process's own writer thread (and the cross-process lock).
    assert (await first.run_write(writefns.insert, "after@x.test"))[0] == os.getpid()
    assert (await second.run_write(writefns.insert, "after2@x.test"))[0] == os.getpid()
    assert await first.run_read(writefns.addresses) == ["after2@x.test", "after@x.test"]


async def test_the_write_process_ends_once_every_client_has_closed_its_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'agentpost.db'}"
    db = Database(url)
    await db.migrate()
    proc, ends = write_process.spawn(url, 2)
    await db.attach_writer(WriteChannel(ends[0]))
    ends[1].close()
    await db.close()
    assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10) == 0


def test_a_stuck_write_process_is_killed_at_shutdown(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'agentpost.db'}"
    proc, ends = write_process.spawn(url, 1)  # its client never closes: it would wait forever
    try:
        write_process.wait_for(proc, timeout=0.5)
        assert proc.returncode == -signal.SIGKILL
    finally:
        for end in ends:
            end.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_write_process_that_never_answers_is_not_used(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'agentpost.db'}"
    db = Database(url)
    await db.migrate()
    proc, ends = write_process.spawn(url, 1)
    proc.kill()
    proc.wait()
    try:
        assert await db.attach_writer(WriteChannel(ends[0]), answer_within=5) is False
        assert (await db.run_write(writefns.insert, "here@x.test"))[0] == os.getpid()
    finally:
        await db.close()


async def test_a_terminating_signal_to_the_whole_group_leaves_the_write_process_serving_until_its_clients_close(
    served: Any,
) -> None:
    first, second, proc = served
    # systemd (KillMode=control-group) and Ctrl-C signal every process at once; the serve
    # processes still flush their last group commits through the write process.
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.2)
    assert proc.poll() is None
    assert (await second.run_write(writefns.insert, "last@x.test"))[0] == proc.pid


def test_a_request_that_cannot_be_read_is_answered_with_an_error_and_the_write_process_carries_on(
    tmp_path: Path,
) -> None:
    import pickle

    url = f"sqlite:///{tmp_path / 'agentpost.db'}"
    proc, (end,) = write_process.spawn(url, 1)
    header = write_process._HEADER
    try:
        garbage = b"not a pickle"
        end.sendall(header.pack(7, len(garbage)) + garbage)
        answer = b""
        end.settimeout(10)
        while len(answer) < header.size or len(answer) < header.size + header.unpack_from(answer)[1]:
            answer += end.recv(65536)
        request_id, size = header.unpack_from(answer)
        ok, error = pickle.loads(answer[header.size : header.size + size])
        assert request_id == 7 and ok is False and isinstance(error, pickle.UnpicklingError)
        # A client that sends garbage and leaves at once is dropped too, so the process still ends.
        end.sendall(header.pack(8, len(garbage)) + garbage)
    finally:
        end.close()
    assert proc.wait(10) == 0
