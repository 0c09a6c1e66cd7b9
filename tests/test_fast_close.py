"""A local cluster started by ``connect`` ends its workers at once when the block succeeds
(the output is committed), and closes them gracefully when it fails."""

from __future__ import annotations

import pytest

from dask_clip.runtime.cluster import connect, connect_early

REASON = "dask-clip: output committed"  # what stop_workers_now tells each nanny

pytestmark = pytest.mark.slow  # each test starts a cluster of its own

OPTIONS = {"kind": "cpu", "n_workers": 1, "threads_per_worker": 1, "dashboard_address": None}


def _worker_processes(client):
    return [nanny.process.process for nanny in client.cluster.workers.values()]


def _fail_after_connecting(context):
    with context as opened:
        if callable(opened):  # connect_early yields a function that waits for the client
            opened()
        raise KeyError("the job failed")


def test_a_clean_exit_kills_the_workers(caplog):
    caplog.set_level("INFO", logger="distributed.nanny")
    with connect(**OPTIONS) as client:
        assert client.submit(sum, [1, 2]).result() == 3
        processes = _worker_processes(client)
        nannies = list(client.cluster.workers.values())
    assert [p.exitcode for p in processes] == [-9]  # SIGKILL: no graceful wait
    assert all(str(n.status) == "Status.closed" for n in nannies)  # closed, not restarted
    assert REASON in caplog.text
    assert "Restarting worker" not in caplog.text


def test_a_failure_closes_the_workers_gracefully(caplog):
    # (the nanny itself kills a worker that takes over 4 s to exit: the exit code cannot tell)
    caplog.set_level("INFO", logger="distributed.nanny")
    with pytest.raises(KeyError):
        _fail_after_connecting(connect(**OPTIONS))
    assert "Nanny asking worker to close" in caplog.text
    assert REASON not in caplog.text


def test_connect_early_passes_the_outcome_on(caplog):
    caplog.set_level("INFO", logger="distributed.nanny")
    with pytest.raises(KeyError):
        _fail_after_connecting(connect_early(**OPTIONS))
    assert REASON not in caplog.text
    with connect_early(**OPTIONS) as wait:
        processes = _worker_processes(wait())
    assert [p.exitcode for p in processes] == [-9]
    assert REASON in caplog.text
