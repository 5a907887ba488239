"""Train a small model with FSDP2 (torch.distributed.fsdp.fully_shard) on CPU ranks.

    python -m torch.distributed.run --nproc-per-node 2 examples/train_fsdp.py --backend plexus
    python -m torch.distributed.run --nproc-per-node 2 examples/train_fsdp.py --backend gloo

Each rank keeps a shard of every parameter; forward and backward all-gather the weights and
reduce-scatter the gradients (averaged over the ranks) through the chosen backend. There is
no `import plexus`: installing plexus registers the "plexus" backend with torch.
"""

import argparse

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def batch(step: int, rank: int):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="plexus")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", help="rank 0 saves the trained (full, unsharded) parameters here")
    args = p.parse_args()

    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        print(f"[{args.backend}] {world} ranks, backend {dist.get_backend()}", flush=True)
    mesh = init_device_mesh("cpu", (world,))

    model = make_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    for step in range(args.steps):
        x, y = batch(step, rank)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss, op=dist.ReduceOp.AVG)
        if rank == 0:
            print(f"[{args.backend}] step {step} loss {mean_loss.item():.6f}", flush=True)

    # Unshard for saving: every rank takes part in the all-gathers.
    full = {k: v.full_tensor().detach().clone() for k, v in model.state_dict().items()}
    if args.out and rank == 0:
        torch.save(full, args.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
