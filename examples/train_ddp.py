"""Train a small model with DistributedDataParallel on CPU ranks, on any torch backend.

    python -m torch.distributed.run --nproc-per-node 2 examples/train_ddp.py --backend plexus
    python -m torch.distributed.run --nproc-per-node 2 examples/train_ddp.py --backend gloo

There is no `import plexus` here: installing plexus registers the "plexus" backend with torch
(a `torch.backends` entry point), so switching backends is this one word.
"""

import argparse

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


def make_model() -> nn.Module:
    # BatchNorm has buffers: DDP broadcasts them from rank 0 at every forward.
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))


def batch(step: int, rank: int):
    g = torch.Generator().manual_seed(1000 * step + rank)  # each rank sees its own data
    return torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="plexus")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", help="rank 0 saves the trained parameters here (torch.save)")
    args = p.parse_args()

    dist.init_process_group(args.backend)  # env:// from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        print(f"[{args.backend}] {world} ranks, backend {dist.get_backend()}", flush=True)

    torch.manual_seed(rank)  # different initial weights per rank: DDP starts from rank 0's
    model = DDP(make_model(), bucket_cap_mb=0.001)  # tiny buckets: several all_reduces per step
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    for step in range(args.steps):
        x, y = batch(step, rank)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients over the ranks here
        opt.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss, op=dist.ReduceOp.AVG)
        if rank == 0:
            print(f"[{args.backend}] step {step} loss {mean_loss.item():.6f}", flush=True)

    if args.out and rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.module.state_dict().items()}, args.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
