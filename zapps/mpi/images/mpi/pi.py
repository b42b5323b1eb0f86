"""Pi by numerical integration across the ranks of an MPI job (mpi4py and numpy).

Each rank integrates 4 / (1 + x^2) over its share of the intervals of [0, 1]; a sum
reduction gives pi on rank 0, which prints it with the world size and the hosts.
Argument: the number of intervals (default 50,000,000).
"""

import math
import socket
import sys
import time

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000_000
start = time.perf_counter()

# This rank's intervals are rank, rank + size, rank + 2 size, ...: in chunks, so memory
# stays small whatever n is.
h = 1.0 / n
local = 0.0
chunk = 1_000_000 * size
for first in range(rank, n, chunk):
    i = np.arange(first, min(first + chunk, n), size, dtype=np.float64)
    x = h * (i + 0.5)
    local += float(np.sum(4.0 / (1.0 + x * x)))
pi = comm.reduce(local * h, op=MPI.SUM, root=0)
hosts = comm.gather(socket.gethostname(), root=0)
ranks = comm.allreduce(1, op=MPI.SUM)  # every rank counted once: the world size again

if rank == 0:
    seconds = time.perf_counter() - start
    print(f"hosts: {', '.join(sorted(set(hosts)))}")
    print(f"world size {size} ({ranks} ranks answered), {n} intervals, {seconds:.2f} s")
    print(f"pi is approximately {pi:.16f}, error {abs(pi - math.pi):.2e}")
