"""Data-parallel training of a small network on synthetic data, one rank per instance.

torch.distributed with the gloo backend (CPU). Each instance of the `trainer` service is
one rank: its number is the index in its instance name (`trainer0` is rank 0) unless
RANK is set. Rank 0 hosts the rendezvous at MASTER_ADDR:MASTER_PORT and prints the loss.

  MASTER_ADDR, MASTER_PORT  where rank 0 listens (the ZApp sets {dns_name#trainer0})
  WORLD_SIZE                how many ranks (instances) train together
  STEPS, BATCH, LR          training steps, samples per rank and step, learning rate
"""

import os
import re
import socket
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def rank_of_instance() -> int:
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    match = re.search(r"(\d+)$", os.environ.get("SERVICE_NAME", ""))
    if match is None:
        raise SystemExit("train: set RANK, or run as an instance named <service><index>")
    return int(match.group(1))


def wait_for_name(host: str, seconds: float = 60) -> None:
    """The instances of a job start together; rank 0's name may take a moment to resolve."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.getaddrinfo(host, None)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main() -> None:
    rank = rank_of_instance()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps = int(os.environ.get("STEPS", "200"))
    batch = int(os.environ.get("BATCH", "64"))
    lr = float(os.environ.get("LR", "0.05"))
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = os.environ.get("MASTER_PORT", "29500")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    wait_for_name(addr)
    print(f"train: rank {rank} of {world}, rendezvous at {addr}:{port}", flush=True)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{addr}:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )

    # The same model everywhere (seed 0): DDP also broadcasts rank 0's weights at start.
    torch.manual_seed(0)
    true_w = torch.randn(16, 1)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss()

    # Each rank draws its own samples of y = x . w + noise.
    data = torch.Generator().manual_seed(1000 + rank)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x = torch.randn(batch, 16, generator=data)
        y = x @ true_w + 0.01 * torch.randn(batch, 1, generator=data)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()  # DDP averages the gradients of all ranks here
        optimizer.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        mean /= world
        if rank == 0 and (step == 1 or step % 50 == 0):
            print(f"train: step {step}, loss {mean.item():.5f}", flush=True)

    if rank == 0:
        seconds = time.perf_counter() - start
        print(
            f"train: final loss {mean.item():.5f} after {steps} steps, world size {world}, "
            f"{seconds:.1f} s",
            flush=True,
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
