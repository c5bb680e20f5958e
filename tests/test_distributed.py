"""vgg/data/sampling.py's shards, vgg/distributed.py, and a real two-process gloo DDP run
through torchrun."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vgg.checkpoint import load_checkpoint
from vgg.data.sampling import ResumableSampler, ShardSampler, shard_indices
from vgg.distributed import (
    Launch,
    all_reduce_sum,
    collective_device,
    first_host,
    launch_environment,
    restart_store,
)
from vgg.run_log import MetricsLog

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n, world", [(10, 3), (7, 2), (2, 4), (144, 2)])
def test_shards_cover_every_index_exactly_once(n, world):
    seen = [i for r in range(world) for i in shard_indices(n, r, world)]
    assert sorted(seen) == list(range(n))
    assert sum(len(ShardSampler(n, r, world)) for r in range(world)) == n


def test_resumable_sampler_order_depends_only_on_seed_and_epoch():
    full = [list(ResumableSampler(11, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(full[0]) == len(full[1]) == 5  # equal shares: DDP ranks step together
    assert not set(full[0]) & set(full[1])
    later = ResumableSampler(11, seed=3, rank=1, world=2)
    later.set_epoch(0, start=2)
    assert list(later) == full[1][2:]
    later.set_epoch(1)
    assert list(later) != full[1]
    seeded = ResumableSampler(11, seed=3, rank=0, world=2, with_seeds=True)
    seeded.set_epoch(0, start=1)
    assert [i for i, _ in seeded] == full[0][1:]


def test_all_reduce_is_identity_alone():
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert collective_device() == torch.device("cpu")


@pytest.mark.slow
def test_two_process_gloo_run_counts_every_validation_sample_once(tmp_path):
    run_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "train.py", "--dataset", "Digits",
               "--model_version", "A", "--fc_width", "64", "--train_subset", "64",
               "--val_subset", "37", "--batch_size", "16", "--micro_batch_size", "4",
               "--epochs", "2", "--workers", "0", "--device", "cpu", "--wandb", "disabled",
               "--progress", "false", "--log_interval", "1", "--out_dir", str(tmp_path),
               "--run_name", "ddp"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    epochs = [r for r in MetricsLog.read(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["val_n"] for r in epochs] == [37, 37]  # odd: no padding duplicates
    checkpoint = load_checkpoint(run_dir / "last.pt")
    # 64 samples / (4 per micro-batch x 2 accumulation x 2 processes) = 4 steps per epoch.
    assert checkpoint["step"] == 8 and len(checkpoint["rng"]) == 2
    assert "2 process(es)" in run.stdout and "4 x 2 accumulation x 2" in run.stdout


def step_with_a_stop_request_on_rank_1(rank: int, world: int, tmp: str) -> None:
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from vgg import build_vgg
    from vgg.engine import train_step

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous",
                                         rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial weights on both
        model = DDP(build_vgg("A", num_classes=10, in_channels=1, image_size=32, fc_width=16))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        torch.manual_seed(rank)  # different data on each
        batch = (torch.randn(3, 1, 32, 32), torch.randint(0, 10, (3,)))
        result = train_step(model, optimizer, [batch], device=torch.device("cpu"),
                            stop_requested=rank == 1)
        torch.save(vars(result), f"{tmp}/result{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_one_step_reaches_the_same_verdicts_on_every_process(tmp_path):
    torch.multiprocessing.spawn(step_with_a_stop_request_on_rank_1, args=(2, str(tmp_path)),
                                nprocs=2)
    first, second = (torch.load(tmp_path / f"result{r}.pt", weights_only=True)
                     for r in range(2))
    # One all-reduce told rank 0 of rank 1's stop request and summed both shards' totals.
    assert first == second
    assert first["stop"] and first["samples"] == 6 and first["applied"]


@pytest.mark.parametrize("nodelist, host", [
    ("gpu07", "gpu07"), ("gpu[007-010,12],cpu3", "gpu007"), ("n[3,1-2]", "n3"),
    ("rack[1-2]-n[01-04]", "rack1-n01"), ("gpu-a[08]-ib,gpu-b1", "gpu-a08-ib")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


SRUN_TASK_3_OF_8 = {"SLURM_JOB_ID": "123456", "SLURM_NTASKS": "8", "SLURM_PROCID": "3",
                    "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
                    "SLURM_STEP_NODELIST": "gpu[07-10]", "SLURM_JOB_NODELIST": "gpu[07-10]"}


@pytest.mark.parametrize("env, expected", [
    ({}, Launch("none")),
    # srun started 8 tasks: SLURM's variables; the master is the step's first node, on a
    # port derived from the job id (20000 + 123456 % 20000).
    (SRUN_TASK_3_OF_8, Launch("slurm", 3, 8, 1, "gpu07", 23456)),
    ({**SRUN_TASK_3_OF_8, "MASTER_ADDR": "login2", "MASTER_PORT": "29400"},
     Launch("slurm", 3, 8, 1, "login2", 29400)),
    # The batch script's own process sees the job's task count but is not one of srun's.
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, Launch("none")),
    # srun torchrun ...: torchrun's own variables win.
    ({**SRUN_TASK_3_OF_8, "WORLD_SIZE": "16", "RANK": "9", "LOCAL_RANK": "1",
      "MASTER_ADDR": "gpu07", "MASTER_PORT": "29500"},
     Launch("torchrun", 9, 16, 1, "gpu07", 29500)),
], ids=["alone", "srun", "srun-master-set", "batch-script", "srun-torchrun"])
def test_the_launcher_is_recognised_from_the_environment(env, expected):
    assert launch_environment(env) == expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_tasks_started_by_srun_train_as_one_run(tmp_path):
    """What `srun --ntasks 2 python train.py ...` starts: two processes with SLURM's
    variables and no torchrun. They must join one process group (gloo here) and train one
    run, as the torchrun test's two processes do."""
    command = [sys.executable, "train.py", "--dataset", "Digits", "--model_version", "A",
               "--fc_width", "16", "--width", "0.25", "--train_subset", "32",
               "--val_subset", "9", "--batch_size", "16", "--micro_batch_size", "8",
               "--epochs", "1", "--workers", "0", "--device", "cpu", "--wandb", "disabled",
               "--progress", "false", "--out_dir", str(tmp_path), "--run_name", "srun"]
    slurm = {"SLURM_JOB_ID": "99", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2",
             "SLURM_STEP_NODELIST": "localhost", "MASTER_PORT": str(free_port())}
    tasks = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, **slurm, "SLURM_PROCID": str(rank),
                                              "SLURM_LOCALID": str(rank),
                                              "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"})
             for rank in range(2)]
    outputs = [task.communicate(timeout=600) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs
    assert "2 process(es)" in outputs[0][0] and "8 x 1 accumulation x 2" in outputs[0][0]
    checkpoint = load_checkpoint(tmp_path / "srun" / "last.pt")
    assert checkpoint["step"] == 2 and len(checkpoint["rng"]) == 2  # 32 / 16, both ranks'
    epochs = [r for r in MetricsLog.read(tmp_path / "srun" / "metrics.jsonl")
              if r["kind"] == "epoch"]
    assert [r["val_n"] for r in epochs] == [9]


def test_each_torchrun_attempt_meets_under_its_own_keys():
    """torchrun's agent serves one store for all restarts: what attempt 0's workers published
    (their addresses) must not be read by attempt 1's, whose peers listen elsewhere."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = torch.distributed.TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False)
    launch = Launch("torchrun", 0, 2, 0, "127.0.0.1", port)
    agent_env = {"TORCHELASTIC_USE_AGENT_STORE": "True"}
    first = restart_store(launch, {**agent_env, "TORCHELASTIC_RESTART_COUNT": "0"})
    second = restart_store(launch, {**agent_env, "TORCHELASTIC_RESTART_COUNT": "1"})
    first.set("rank_0", "old address")
    assert not second.check(["rank_0"]) and first.check(["rank_0"])
    assert restart_store(launch, {}) is None  # not torchrun's agent: torch's env:// store
    del agent


def torchrun_tiny(run_dir: Path, *extra: str) -> list[str]:
    """Two gloo processes on Digits: 128 samples / (8 per micro-batch x 2 processes) = 8
    steps an epoch, 3 epochs, last.pt every 2 steps."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", "2", *extra, "train.py", "--dataset", "Digits",
            "--model_version", "A", "--width", "0.25", "--fc_width", "16",
            "--train_subset", "128", "--val_subset", "16", "--batch_size", "16",
            "--micro_batch_size", "8", "--epochs", "3", "--workers", "0", "--device", "cpu",
            "--wandb", "disabled", "--progress", "false", "--log_interval", "1",
            "--checkpoint_interval", "2", "--out_dir", str(run_dir.parent),
            "--run_name", run_dir.name, "--resume", "auto"]


def worker_of_rank(agent: int, rank: int) -> int | None:
    """The pid of torchrun's worker process of that rank (from its environment)."""
    for child in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_the_run_ends_as_an_uninterrupted_one(tmp_path):
    """`torchrun --max-restarts 1 ... --resume auto`: rank 1 is killed (SIGKILL) in the middle
    of epoch 2; torchrun stops rank 0 and starts both again, they resume from last.pt, and
    the run ends with the weights, optimizer state and metrics of a run never interrupted."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(torchrun_tiny(tmp_path / "whole"), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    cut_dir = tmp_path / "cut"
    agent = subprocess.Popen(torchrun_tiny(cut_dir, "--max-restarts", "1"), cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, killed = time.monotonic() + 600, False
    while not killed and time.monotonic() < deadline and agent.poll() is None:
        steps = [r["step"] for r in MetricsLog.read(cut_dir / "metrics.jsonl")
                 if r["kind"] == "train"] if (cut_dir / "metrics.jsonl").exists() else []
        if steps and steps[-1] >= 11:  # epoch 2 of 3, past last.pt at step 10
            pid = worker_of_rank(agent.pid, 1)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = True
        time.sleep(0.02)
    stdout, stderr = agent.communicate(timeout=900)
    assert killed, "the run ended before rank 1 could be killed: " + stdout + stderr
    assert agent.returncode == 0, stdout + stderr
    assert stdout.count("done: best val") == 1 and stdout.count(f"run {cut_dir}") == 2, stdout
    a, b = (load_checkpoint(d / "last.pt") for d in (tmp_path / "whole", cut_dir))
    assert a["step"] == b["step"] == 24
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][key]
                           ["momentum_buffer"]), key
    rows = [MetricsLog.read(d / "metrics.jsonl") for d in (tmp_path / "whole", cut_dir)]
    assert [r["step"] for r in rows[1] if r["kind"] == "train"] == list(range(1, 25))
    assert [r["loss"] for r in rows[0] if r["kind"] == "train"] == \
        [r["loss"] for r in rows[1] if r["kind"] == "train"]


@pytest.mark.slow
def test_two_processes_average_the_weights_of_each_optimizer_step(tmp_path):
    """--ema under torchrun with gradient accumulation (32 = 8 x 2 accumulation x 2
    processes: one optimizer step per epoch): the average in the last checkpoint is the one
    worked out from the raw weights and BatchNorm statistics the epoch checkpoints hold,
    with the warmed-up decay min(0.5, (1 + n) / (10 + n)), the first update a copy.
    (Mutation: updating the average after every micro-batch fails it.)"""
    run_dir = tmp_path / "ema"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "train.py", "--dataset", "Digits",
               "--model_version", "A", "--width", "0.25", "--fc_width", "16",
               "--batch_norm", "true", "--train_subset", "32", "--val_subset", "16",
               "--batch_size", "32", "--micro_batch_size", "8", "--epochs", "3",
               "--ema", "0.5", "--keep_last_k", "3", "--workers", "0", "--device", "cpu",
               "--wandb", "disabled", "--progress", "false", "--out_dir", str(tmp_path),
               "--run_name", "ema"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    steps = [load_checkpoint(run_dir / f"epoch_{epoch:03d}.pt") for epoch in (1, 2, 3)]
    assert [c["step"] for c in steps] == [1, 2, 3] and steps[-1]["ema_updates"] == 3
    for key, final in steps[-1]["model_ema"].items():
        raw = [c["model"][key].double() for c in steps]
        if not final.is_floating_point():  # BatchNorm's batch counter: the network's
            assert torch.equal(final, steps[-1]["model"][key]), key
            continue
        expected = raw[0]
        for updates, weights in enumerate(raw[1:], start=1):
            decay = min(0.5, (1 + updates) / (10 + updates))
            expected = decay * expected + (1 - decay) * weights
        torch.testing.assert_close(final.double(), expected, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(steps[-1]["model_ema"]["features.0.weight"],
                           steps[-1]["model"]["features.0.weight"])
