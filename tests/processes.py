"""Run a function on 2 processes joined as torchrun joins them (gloo on CPU): for the tests that prove an update on R
processes is the one-process update on the union of their data."""

import importlib
import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def on_two_processes(fn, *args) -> list:
    """fn(rank, *args) on 2 processes in one gloo process group, with torchrun's environment variables set; returns
    [what it returned on rank 0, on rank 1]. fn must be a module-level function (the processes import it by name)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_process, args=(fn, args, port, out), nprocs=2)
        return [torch.load(os.path.join(out, f"{rank}.pt"), weights_only=False) for rank in range(2)]


def _process(rank: int, fn, args: tuple, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")  # fmt: skip
    torch.set_num_threads(1)
    importlib.import_module("torch._dynamo")  # before the group, as each script's setup() does (it says why)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.save(fn(rank, *args), os.path.join(out, f"{rank}.pt"))
        dist.barrier()  # neither process leaves the group while the other may still be exchanging data with it
    finally:
        dist.destroy_process_group()
