"""Nothing a user feeds dask-clip may kill a worker, hang a job, lose data or run code.

Each test is one of the failures a hostile-but-realistic user found, replayed on a real cluster
(the session's, with the CLI in this process) or, where the process is what is tested (``slow``),
on real subprocesses and clusters of their own: OUTPUT = INPUT with --overwrite, every worker killed, a worker
killed mid-task, a full disk, weights that do not load, a TLS cluster, stale temporaries, and
that part files land as soon as their partition is done.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_support import (
    assert_same_rows,
    dask_scheduler_command,
    dask_worker_command,
    reference,
    run_cli,
    run_main,
    subprocess_env,
    write_image_parquet,
)

from dask_clip.io.writer import MANIFEST, part_name
from dask_clip.testing import png_bomb, write_model_dir

N_SHARDS, ROWS = 6, 3


def one_error_line(stderr: str, command: str = "embed") -> str:
    """The CLI's last stderr line, checked to be its one-line error."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    assert lines[-1].startswith(f"dask-clip {command}: error: "), stderr
    assert "Traceback" not in stderr, stderr
    return lines[-1]


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(folder)): (os.stat(p).st_ino, os.stat(p).st_size, os.stat(p).st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def start(args: list[str], log: Path, **popen: object) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=subprocess_env(), **popen)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def start_scheduler(folder: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    sched = folder / "scheduler.json"
    proc = start(
        dask_scheduler_command(sched, "--dashboard-address", "127.0.0.1:0", *extra),
        folder / "scheduler.log",
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not sched.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sched.exists(), (folder / "scheduler.log").read_text()
    return proc, sched


def start_worker(sched: Path, log: Path, *extra: str) -> subprocess.Popen:
    """``dask worker``: a nanny process and its worker process, in a process group of their own."""
    return start(
        dask_worker_command(sched, "--dashboard-address", "127.0.0.1:0", *extra),
        log,
        start_new_session=True,
    )


def wait_for_workers(sched: Path, n: int, **client: object) -> None:
    from distributed import Client

    with Client(scheduler_file=str(sched), timeout="60s", **client) as c:
        c.wait_for_workers(n, timeout=90)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_image_parquet(tmp_path_factory.mktemp("in") / "shards", N_SHARDS, ROWS, bad_every=5)


@pytest.fixture(scope="module")
def embedded(shards, model_dir, client, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embedded") / "embeddings"
    run_main("embed", str(shards), str(out), "--model-dir", model_dir, client=client)
    return out


# -- no data loss: OUTPUT is, contains or lies inside an input ---------------------------------


def test_dedup_into_its_own_input_with_overwrite_is_refused_and_deletes_nothing(embedded, client):
    before = snapshot(embedded)
    proc = run_main("dedup", str(embedded), str(embedded), "--overwrite", client=client, check=False)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr, "dedup")
    assert f"output {str(embedded)!r} is the input" in line and "folder of its own" in line
    assert snapshot(embedded) == before


def test_embed_into_a_folder_of_part_named_inputs_is_refused(tmp_path, model_dir, client):
    folder = write_image_parquet(tmp_path / "d", 2, 2)
    for i, shard in enumerate(sorted(folder.glob("*.parquet"))):  # inputs named like outputs
        shard.rename(folder / part_name(i, 2))
    before = snapshot(folder)
    for output, how in [
        (folder, "is the input"),
        (folder / "out", "lies inside the input"),
        (tmp_path, "contains the input"),
    ]:
        proc = run_main(
            "embed", str(folder), str(output), "--model-dir", model_dir, "--overwrite", client=client, check=False
        )
        assert proc.returncode == 1 and how in proc.stderr
    link = tmp_path / "link"
    link.symlink_to(folder)
    proc = run_main(
        "embed", str(folder), str(link), "--model-dir", model_dir, "--overwrite", client=client, check=False
    )
    assert proc.returncode == 1 and "is the input" in proc.stderr
    assert snapshot(folder) == before


def test_overwrite_removes_only_the_files_the_manifest_describes(embedded, tmp_path, model_dir, shards, client):
    out = tmp_path / "copy"
    shutil.copytree(embedded, out)
    (out / "notes.txt").write_text("mine")
    (out / "part-99999.parquet").write_bytes(b"someone else's")
    proc = run_main(
        "embed",
        str(shards),
        str(out),
        "--model-dir",
        model_dir,
        "--overwrite",
        client=client,
        check=False,
    )
    assert proc.returncode == 1 and "part-99999.parquet" in one_error_line(proc.stderr)
    (out / "part-99999.parquet").unlink()
    run_main("embed", str(shards), str(out), "--model-dir", model_dir, "--overwrite", client=client)
    assert sorted(os.listdir(out)) == sorted(
        [MANIFEST, "notes.txt", *(part_name(i, N_SHARDS) for i in range(N_SHARDS))]
    )


# -- small items: stale temporaries, dedup reruns, pixel limits ---------------------------------


def test_a_stale_temporary_is_removed_when_every_partition_exists(embedded, shards, model_dir, client):
    stale = embedded / f".{part_name(1, N_SHARDS)}.0123abcd.tmp"
    stale.write_bytes(b"half a file")
    proc = run_main("embed", str(shards), str(embedded), "--model-dir", model_dir, client=client)
    assert "already written; nothing to do" in proc.stdout
    assert not stale.exists()


def test_dedup_into_an_existing_output_resumes(embedded, tmp_path, client):
    args = ["dedup", str(embedded), str(tmp_path / "dedup"), "--n-clusters", "2"]
    first = run_main(*args, client=client)
    before = snapshot(tmp_path / "dedup")
    again = run_main(*args, client=client)
    assert again.stdout == first.stdout  # the saved summary
    assert snapshot(tmp_path / "dedup") == before


def test_max_image_pixels_above_pillows_hard_limit_reaches_the_decoder(tmp_path, model_dir, client):
    shard = tmp_path / "bomb" / "00000.parquet"
    shard.parent.mkdir()
    pq.write_table(pa.table({"key": ["a"], "jpg": pa.array([png_bomb(15000, 15000)], pa.binary())}), shard)
    out = tmp_path / "out"
    common = ["--model-dir", model_dir]
    run_main("embed", str(shard.parent), str(out), *common, client=client)
    assert "decompression bomb" in pd.read_parquet(out)["embedding_error"].iloc[0]
    run_main(
        "embed", str(shard.parent), str(out), *common, "--max-image-pixels", "300000000", "--overwrite", client=client
    )
    # Pillow's own limit (179 MP) no longer answers first: ours, then the decode budget, do.
    assert pd.read_parquet(out)["embedding_error"].iloc[0].startswith("image too large to decode: 15000x15000")


# -- weights that do not load: one line, and no manifest left behind -----------------------------


def test_a_failed_model_load_leaves_no_manifest_and_says_why(shards, model_dir, tmp_path, client):
    bad = write_model_dir(tmp_path / "bad")
    weights = bad / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    out = tmp_path / "out"
    proc = run_main("embed", str(shards), str(out), "--model-dir", str(bad), client=client, check=False)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert "could not load the weights of model_dir" in line and "SafetensorError" in line and "fetch it again" in line
    assert not (out / MANIFEST).exists() and not list(out.glob("part-*"))
    verbose = run_main("-v", "embed", str(shards), str(out), "--model-dir", str(bad), client=client, check=False)
    assert "Traceback" in verbose.stderr and line in verbose.stderr
    # The corrected command (other weights: another job) runs without --overwrite.
    fixed = run_main("embed", str(shards), str(out), "--model-dir", model_dir, client=client)
    assert f"wrote {N_SHARDS} partitions" in fixed.stdout
    assert_same_rows(pd.read_parquet(out, dtype_backend="pyarrow"), reference(shards, model_dir))


def test_weights_of_another_shape_and_a_bad_checkpoint_file_are_one_line(shards, model_dir, tmp_path, client):
    config = json.loads((Path(model_dir) / "open_clip_config.json").read_text())
    other = write_model_dir(tmp_path / "wide", model_cfg={**config["model_cfg"], "embed_dim": 48})
    shutil.copy(Path(model_dir) / "open_clip_config.json", other / "open_clip_config.json")  # says 32-d
    proc = run_main("embed", str(shards), str(tmp_path / "o1"), "--model-dir", str(other), client=client, check=False)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1 and "size mismatch" in line and "do not fit the architecture" in line
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    args = ["--model", "ViT-B-32", "--pretrained", str(checkpoint)]
    proc = run_main("embed", str(shards), str(tmp_path / "o2"), *args, client=client, check=False)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1 and f"checkpoint {str(checkpoint)!r}" in line
    assert "huggingface-cli" not in line  # no hub hint for a local file


# -- workers that die -------------------------------------------------------------------------------


def _wait_for_parts(out: Path, n: int, proc: subprocess.Popen, deadline: float = 150) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end and proc.poll() is None:
        if out.exists() and len(list(out.glob("part-*.parquet"))) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {n} part files before the deadline (exit {proc.poll()})")


@pytest.mark.slow
def test_every_worker_killed_ends_the_cli_with_one_line_and_a_rerun_resumes(tmp_path, model_dir, client):
    shards = write_image_parquet(tmp_path / "in", 24, 3, bad_every=5)
    scheduler, sched = start_scheduler(tmp_path)
    worker = start_worker(sched, tmp_path / "worker.log")
    out = tmp_path / "out"
    args = [
        "embed",
        str(shards),
        str(out),
        "--model-dir",
        model_dir,
        "--batch-size",
        "1",
        "--scheduler-file",
        str(sched),
    ]
    try:
        wait_for_workers(sched, 1)
        cli = start([sys.executable, "-m", "dask_clip.cli", *args, "--worker-timeout", "5"], tmp_path / "cli.log")
        try:
            _wait_for_parts(out, 2, cli)
            kill_group(worker)  # the nanny and its worker: nothing restarts them
            killed = time.monotonic()
            cli.wait(timeout=60)  # before: waited silently forever
            waited = time.monotonic() - killed
        finally:
            if cli.poll() is None:
                cli.kill()
        log = (tmp_path / "cli.log").read_text()
        assert cli.returncode == 1, log
        line = one_error_line(log)
        assert "no worker alive for 5 s" in line and "run the same command again to resume" in line
        assert 4 <= waited < 40, waited  # from when the kill returned: the clock may start a little earlier
        done = len(list(out.glob("part-*.parquet")))
        assert 2 <= done < 24
        again = run_main(*args[:-2], client=client)  # the rerun on the session cluster: resuming is not process-bound
        assert f"wrote {24 - done} partitions ({done} already there)" in again.stdout
        assert_same_rows(pd.read_parquet(out, dtype_backend="pyarrow"), reference(shards, model_dir))
    finally:
        kill_group(worker)
        kill_group(scheduler)


@pytest.mark.slow
def test_a_worker_killed_mid_task_is_one_line_and_a_rerun_resumes(tmp_path, model_dir, client):
    """KilledWorker (here after one death: allowed-failures=0) on the CLI's own local cluster."""
    import psutil

    shards = write_image_parquet(tmp_path / "in", 24, 3, bad_every=5)
    out = tmp_path / "out"
    args = ["embed", str(shards), str(out), "--model-dir", model_dir, "--batch-size", "1", "--n-workers", "1"]
    env = {**subprocess_env(), "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    with open(tmp_path / "cli.log", "w") as log:
        cli = subprocess.Popen(
            [sys.executable, "-m", "dask_clip.cli", *args, "--dashboard-address", "none"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        _wait_for_parts(out, 2, cli)
        # spawned by a nanny, or forked by the fork server of dask_clip.runtime.forkserver
        workers = [
            p
            for p in psutil.Process(cli.pid).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline()) or "forkserver" in " ".join(p.parent().cmdline())
        ]
        assert workers
        for p in workers:
            p.kill()  # the worker process, mid-task; the nanny (in the CLI process) restarts it
        cli.wait(timeout=120)
    finally:
        kill_group(cli)
    text = (tmp_path / "cli.log").read_text()
    assert cli.returncode == 1, text
    line = one_error_line(text)
    assert "a worker process died while running" in line and "run the same command again to resume" in line
    assert "dashboard off" in text
    again = run_main(*args[:-2], client=client)  # the rerun on the session cluster
    assert "(resuming)" in again.stderr
    assert_same_rows(pd.read_parquet(out, dtype_backend="pyarrow"), reference(shards, model_dir))


# -- a full disk ---------------------------------------------------------------------------------------

DISK_FULL = """
import json, os, subprocess, sys
args = json.loads(sys.argv[1])
out, mount = args["out"], args["mount"]
cli = [sys.executable, "-m", "dask_clip.cli", "embed", args["shards"], out, "--model-dir", args["model_dir"],
       "--n-workers", "1", "--dashboard-address", "none"]  # workers in this mount namespace
full = subprocess.run(cli, capture_output=True, text=True, timeout=300)
parts = sorted(n for n in os.listdir(out) if n.startswith("part-"))
readable = []
for name in parts:
    import pyarrow.parquet as pq
    readable.append(pq.read_table(os.path.join(out, name)).num_rows)
listing = sorted(os.listdir(out))
subprocess.run(["mount", "-o", "remount,size=16m", mount], check=True)  # space freed
again = subprocess.run(cli, capture_output=True, text=True, timeout=300)
import shutil
shutil.copytree(out, args["copy"])  # the tmpfs goes with this namespace
print(json.dumps({"code": full.returncode, "stderr": full.stderr, "parts": parts, "rows": readable,
                  "listing": listing, "again_code": again.returncode, "again_out": again.stdout,
                  "again_err": again.stderr}))
"""


@pytest.mark.slow
def test_a_full_disk_is_one_line_keeps_complete_files_and_a_rerun_resumes(tmp_path, shards, model_dir):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "disk_full.py"
    script.write_text(textwrap.dedent(DISK_FULL))
    payload = {
        "shards": str(shards),
        "out": str(mount / "out"),
        "mount": str(mount),
        "model_dir": model_dir,
        "copy": str(tmp_path / "result"),
    }
    # A private mount namespace holding a tmpfs of 40 KiB: room for the manifest and a few parts.
    userns = [] if os.geteuid() == 0 else ["--map-root-user"]
    command = [
        "unshare",
        "--mount",
        *userns,
        "sh",
        "-c",
        'mount -t tmpfs -o size=40k tmpfs "$0" && exec "$@"',
        str(mount),
        sys.executable,
        str(script),
        json.dumps(payload),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=subprocess_env())
    if proc.returncode != 0 and "mount" in proc.stderr and "ermission" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["code"] == 1, got
    line = one_error_line(got["stderr"])
    assert "no space left on device" in line and "run the same command again to resume" in line
    assert 1 <= len(got["parts"]) < N_SHARDS, got["parts"]
    assert got["rows"] == [ROWS] * len(got["parts"])  # every part file there is complete
    assert not [n for n in got["listing"] if n.endswith(".tmp")]  # no half-written leftovers
    assert got["again_code"] == 0 and "(resuming)" in got["again_err"], got
    assert_same_rows(pd.read_parquet(tmp_path / "result", dtype_backend="pyarrow"), reference(shards, model_dir))


# -- TLS --------------------------------------------------------------------------------------------


def write_tls_files(folder: Path) -> dict[str, str]:
    """A self-signed CA and a certificate it signs for 127.0.0.1/localhost (scheduler, workers, client)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-clip test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {name: str(path) for name, path in files.items()}


@pytest.mark.slow
def test_tls_cluster_refuses_plain_tcp_and_the_cli_works_with_the_tls_options(tmp_path, shards, model_dir):
    from distributed import Client

    from dask_clip.runtime.cluster import tls_security

    tls = write_tls_files(tmp_path)
    options = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
    scheduler, sched = start_scheduler(tmp_path, "--protocol", "tls", *options)
    worker = start_worker(sched, tmp_path / "worker.log", *options)
    try:
        address = json.loads(sched.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        wait_for_workers(sched, 1, security=tls_security(tls["ca"], tls["cert"], tls["key"]))
        with pytest.raises(OSError):  # plain TCP to the TLS port: the handshake fails, the scheduler hangs up
            Client(address.replace("tls://", "tcp://"), timeout="3s")
        # The CLI in this process: the TLS processes are the scheduler and worker above.
        without = run_main(
            "embed",
            str(shards),
            str(tmp_path / "o"),
            "--model-dir",
            model_dir,
            "--scheduler-file",
            str(sched),
            check=False,
        )
        line = one_error_line(without.stderr)
        assert without.returncode == 1 and "uses TLS: pass --tls-ca-file, --tls-cert and --tls-key" in line
        out = tmp_path / "out"
        proc = run_main(
            "embed", str(shards), str(out), "--model-dir", model_dir, "--scheduler-file", str(sched), *options
        )
        assert f"scheduler {address}" in proc.stderr
        assert_same_rows(pd.read_parquet(out, dtype_backend="pyarrow"), reference(shards, model_dir))
    finally:
        kill_group(worker)
        kill_group(scheduler)


@pytest.mark.slow
def test_require_encryption_on_a_local_cluster_uses_temporary_tls(tmp_path, shards, model_dir):
    env = {**subprocess_env(), "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
    out = tmp_path / "out"
    proc = run_cli(
        "embed",
        str(shards),
        str(out),
        "--model-dir",
        model_dir,
        "--n-workers",
        "1",
        "--dashboard-address",
        "none",
        env=env,
    )
    assert "scheduler tls://127.0.0.1:" in proc.stderr and "dashboard off" in proc.stderr
    assert_same_rows(pd.read_parquet(out, dtype_backend="pyarrow"), reference(shards, model_dir))


@pytest.mark.slow
def test_local_cluster_on_tls_and_with_the_dashboard_off(tmp_path):
    import urllib.error
    import urllib.request

    from distributed import Client

    from dask_clip.runtime.cluster import local_cluster

    with local_cluster(n_workers=1, security=True, dashboard_address=None) as cluster, Client(cluster) as client:
        assert cluster.scheduler_address.startswith("tls://")
        assert client.submit(sum, [1, 2], pure=False).result() == 3
        port = cluster.scheduler.http_server.port
        assert port != 8787
        for route in ("/status", "/health", "/metrics"):  # the HTTP server distributed always starts serves nothing
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=10)
        with pytest.raises(OSError):
            Client(cluster.scheduler_address.replace("tls://", "tcp://"), timeout="3s")


# -- part files land as partitions finish ----------------------------------------------------------------


def test_each_partition_is_written_by_the_task_that_embeds_it(tmp_path, model_dir, client):
    from distributed import get_task_stream

    from dask_clip import ImageEmbedder, read_images, write_parquet

    shards = write_image_parquet(tmp_path / "in", 8, 40)
    ddf, column = read_images(shards)
    embedder = ImageEmbedder(model_dir=model_dir, image_column=column, model_inference_batch_size=1)
    with get_task_stream(client) as stream:
        summary = write_parquet(embedder(ddf), tmp_path / "out", client=client)
    assert summary.written == 8
    heavy = [t for t in stream.data if "clip_embed" in str(t["key"])]  # the dashboard's task names
    # one task per partition embeds AND writes it: no embedded partition ever waits in a worker's memory
    assert len(heavy) == 8 and all("parquet_write" in str(t["key"]) for t in heavy), [t["key"] for t in stream.data]
    # Task spans come in the scheduler's clock: the worker adds its estimate of the offset
    # (scheduler_delay, from heartbeats: off by up to a second on a loaded machine). Taken off
    # again, they are in this machine's clock, the files' mtimes' clock.
    delay = client.run(lambda dask_worker: dask_worker.scheduler_delay)

    def compute_span(task: dict) -> tuple[float, float]:
        span = next(s for s in task["startstops"] if s["action"] == "compute")
        return span["start"] - delay[task["worker"]], span["stop"] - delay[task["worker"]]

    for task in heavy:
        index = task["key"][1]
        start, stop = compute_span(task)
        written = os.stat(tmp_path / "out" / part_name(index, 8)).st_mtime
        assert start - 0.05 <= written <= stop + 0.05, (index, start, stop, written)
    # the first file is on disk before the last partition starts
    first = min(os.stat(p).st_mtime for p in (tmp_path / "out").glob("part-*.parquet"))
    assert first < max(compute_span(t)[0] for t in heavy)
