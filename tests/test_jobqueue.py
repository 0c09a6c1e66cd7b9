"""dask-jobqueue job scripts for dask_clip workers, rendered without a scheduler or a batch
system (dask-jobqueue's job classes take the scheduler address as a string). The CPU worker
command is parsed by ``dask worker``'s own command-line parser."""

from __future__ import annotations

import shlex

import pytest
from dask_jobqueue import PBSCluster, SLURMCluster  # the test extra has it
from distributed.cli.dask_worker import main as dask_worker

from dask_clip.jobqueue import jobqueue_options

SCHEDULER = "tcp://10.0.0.5:8786"


def _worker_line(script: str, module: str) -> list[str]:
    line = next(line for line in script.splitlines() if f"-m {module}" in line)
    return shlex.split(line)


def test_slurm_gpu_job_runs_dask_cuda_worker_with_the_preload():
    options = jobqueue_options(gpus=8, threads_per_gpu=4, torch_threads=2, gpu_resource=True)
    job = SLURMCluster.job_cls(
        scheduler=SCHEDULER,
        name="dask-clip",
        cores=64,
        memory="480GB",
        walltime="04:00:00",
        job_extra_directives=["--gpus-per-node=8"],
        python="python",
        **options,
    )
    script = job.job_script()
    assert "#SBATCH --gpus-per-node=8" in script
    assert "export DASK_CLIP_TORCH_THREADS=2" in script
    argv = _worker_line(script, "dask_cuda.cli")
    assert argv[:5] == ["python", "-m", "dask_cuda.cli", "worker", SCHEDULER]
    assert argv[argv.index("--preload") + 1] == "dask_clip.worker_setup"
    assert argv[argv.index("--resources") + 1] == "GPU=1"
    assert "--nanny" not in argv  # a dask worker option that dask cuda worker does not take
    # click keeps the last value: 4 threads per GPU worker, memory split between the GPUs
    last = {flag: argv[len(argv) - 1 - argv[::-1].index(flag) + 1] for flag in ("--nthreads", "--memory-limit")}
    assert last == {"--nthreads": "4", "--memory-limit": "auto"}
    assert argv.index("--rmm-async") > argv.index(SCHEDULER)


def test_pbs_cpu_job_command_parses_as_dask_worker():
    options = jobqueue_options(torch_threads=16)
    job = PBSCluster.job_cls(
        scheduler=SCHEDULER, name="dask-clip", cores=32, processes=2, memory="128GB", python="python", **options
    )
    script = job.job_script()
    assert "#PBS -l select=1:ncpus=32" in script
    assert "export DASK_CLIP_TORCH_THREADS=16" in script
    argv = _worker_line(script, "distributed.cli.dask_worker")
    context = dask_worker.make_context("dask-worker", argv[3:])  # parses, runs nothing
    assert context.params["preload"] == ("dask_clip.worker_setup",)
    assert context.params["n_workers"] == "2"  # dask worker takes "auto" or a count
    assert context.params["nthreads"] == 16
    assert context.params["scheduler"] == SCHEDULER


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="threads_per_gpu"):
        jobqueue_options(gpus=2, threads_per_gpu=0)
    with pytest.raises(ValueError, match="gpus"):
        jobqueue_options(gpus=-1)
