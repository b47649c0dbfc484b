"""Research: path-sparse training, whose per-row cost grows with ``depth``, against full training.

Full training (what ``fit`` does) evaluates every leaf on every row: the straight-through
gradient of a routing neuron needs the outputs of all the leaves below it. The path-sparse
mode measured here evaluates, for each row, only its hard leaf and, at each level of its
path, the hard leaf of the sibling subtree (``depth + 1`` leaves). A row's probability mass is
taken to sit on those leaves: its hard leaf has the probability of its path, and the sibling
leaf of level ``k`` the probability of leaving the path at ``k``. The straight-through
gradient through these probabilities reaches the ``depth`` routing neurons of the row's
path, each from the difference between its two children's outputs. The load-balancing loss
reads the same probabilities. Leaves run as one batched product over per-leaf blocks of
rows (rows grouped by leaf and padded to the largest group), so no weight is copied per row.
While hardening (routing frozen) each row trains only its hard leaf.

For MNIST-1D and make_classification (40 features, the first 10,000 training rows of the
accuracy benchmark's split, so that full training at depth 10 fits in the time) at depth 6,
8 and 10 with the estimator's defaults otherwise and the same epoch budget for both modes,
it prints held-out accuracy (mean over seeds, and each seed) and median seconds per epoch of
both modes, single-threaded. Usage::

    python benchmarks/bench_sparse_training.py [--quick] [--seeds 0,1,2] [--max-iter 50]

The decision rule (issue #13): ship the mode if at depth 8 it is at least 5x faster per epoch
and within 1 point of full training's accuracy. The outcome is recorded in the
experiment log (docs/research/experiment_log.rst, "Sparse training").
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from joblib import Parallel, delayed
from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from fffsklearn import FFFClassifier
from fffsklearn._network import FFFNetwork, SoftForward


class PathSparseNetwork(FFFNetwork):
    """An :class:`FFFNetwork` whose training forward evaluates ``depth + 1`` leaves per row."""

    def soft_forward(self, X, *, straight_through, region_leak=0.0, generator=None):
        if not self.training or self.depth == 0:
            return super().soft_forward(
                X,
                straight_through=straight_through,
                region_leak=region_leak,
                generator=generator,
            )
        n, depth, n_leaves = X.shape[0], self.depth, self.n_leaves
        n_nodes = n_leaves - 1
        logits = torch.addmm(self.node_biases, X, self.node_weights.T)
        went_right = (logits.detach() > 0).long()
        rows = torch.arange(n, device=X.device)

        node = torch.zeros(n, dtype=torch.long, device=X.device)
        path, siblings = [], []
        for _ in range(depth):
            path.append(node)
            step = went_right[rows, node]
            siblings.append(2 * node + 2 - step)
            node = 2 * node + 1 + step
        hard_leaf = node - n_nodes

        if straight_through:
            # Walker k starts at the sibling child of level k and descends by hard decisions.
            walkers = torch.stack(siblings, dim=1)
            start_level = torch.arange(1, depth + 1, device=X.device)
            for level in range(1, depth):
                active = start_level <= level
                inner = walkers.clamp(max=n_nodes - 1)
                descended = 2 * walkers + 1 + went_right.gather(1, inner)
                walkers = torch.where(active, descended, walkers)
            leaves = torch.cat((hard_leaf[:, None], walkers - n_nodes), dim=1)
            # Probabilities of the hard path and of leaving it at each level, in log space.
            margin = logits.gather(1, torch.stack(path, dim=1)).abs()
            stay, leave = F.logsigmoid(margin), F.logsigmoid(-margin)
            before = torch.cumsum(stay, dim=1) - stay
            probabilities = torch.cat((stay.sum(dim=1, keepdim=True), before + leave), 1).exp()
            mixture = probabilities - probabilities.detach()
            mixture = mixture + F.one_hot(torch.zeros_like(hard_leaf), depth + 1)
        else:
            leaves = hard_leaf[:, None]
            mixture = X.new_ones(n, 1)

        leaf_outputs = self._leaf_outputs(X, leaves)
        outputs = (mixture.unsqueeze(2) * leaf_outputs).sum(dim=1)
        if self.master_hidden_weights.shape[1]:
            master = self._activation(
                torch.addmm(self.master_hidden_biases, X, self.master_hidden_weights)
            )
            outputs = outputs + master @ self.master_output_weights
        outputs = outputs + self.master_output_biases

        hard_one_hot = X.new_zeros(n, n_leaves).scatter_(1, hard_leaf[:, None], 1.0)
        leaf_probabilities = None
        if straight_through:
            leaf_probabilities = X.new_zeros(n, n_leaves).scatter(1, leaves, probabilities)
        return SoftForward(outputs, None, leaf_probabilities, hard_one_hot)

    def training_pass(self, X, *, straight_through):
        """The trainer's forward and backward, by autograd of :meth:`soft_forward`."""
        routing = self.soft_forward(X, straight_through=straight_through)

        def backward(grad_outputs, grad_leaf_probabilities):
            for parameter in self.parameters():
                parameter.grad = None
            tensors, grads = [routing.outputs], [grad_outputs]
            if grad_leaf_probabilities is not None:
                tensors.append(routing.leaf_probabilities)
                grads.append(grad_leaf_probabilities.expand_as(routing.leaf_probabilities))
            torch.autograd.backward(tensors, grads)

        probabilities = routing.leaf_probabilities
        detached = SoftForward(
            routing.outputs.detach(),
            None,
            None if probabilities is None else probabilities.detach(),
            routing.hard_one_hot,
        )
        return detached, backward

    def _leaf_outputs(self, X, leaves):
        """Outputs (rows, k, outputs) of the ``k`` leaves ``leaves[i]`` on each row ``i``."""
        n, k = leaves.shape
        n_leaves, d = self.n_leaves, X.shape[1]
        flat = leaves.reshape(-1)
        order = torch.argsort(flat, stable=True)
        sorted_leaves = flat[order]
        counts = torch.bincount(flat, minlength=n_leaves)
        block = int(counts.max())
        group_start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(n * k, device=X.device) - group_start[sorted_leaves]
        slots = sorted_leaves * block + rank
        blocks = X.new_zeros(n_leaves * block, d).index_copy(0, slots, X[order // k])
        width = self.leaf_hidden_biases.shape[0] // n_leaves
        hidden_weights = self.leaf_hidden_weights.view(d, n_leaves, width).transpose(0, 1)
        hidden = torch.baddbmm(
            self.leaf_hidden_biases.view(n_leaves, 1, width),
            blocks.view(n_leaves, block, d),
            hidden_weights,
        )
        hidden = self._activation(hidden)
        output_weights = self.leaf_output_weights.view(-1, n_leaves, width).permute(1, 2, 0)
        outputs = torch.baddbmm(self.leaf_output_biases.unsqueeze(1), hidden, output_weights)
        picked = outputs.view(n_leaves * block, -1).index_select(0, slots)
        return picked.new_empty(picked.shape).index_copy(0, order, picked).view(n, k, -1)

    def _activation(self, hidden):
        from fffsklearn._activations import torch_activation

        return torch_activation(self.activation)[0](hidden)


def datasets(train_rows):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 10_000
    data = make_dataset(args)
    X, y = make_classification(
        n_samples=50_000, n_features=40, n_informative=20, n_classes=10, random_state=0
    )
    out = {
        "MNIST-1D": (data["x"], data["x_test"], data["y"], data["y_test"]),
        "make_classification": train_test_split(X, y, test_size=0.2, random_state=0, stratify=y),
    }
    for name, (X_train, X_test, y_train, y_test) in out.items():
        X_train, y_train = X_train[:train_rows], y_train[:train_rows]
        scaler = StandardScaler().fit(X_train)
        out[name] = (
            scaler.transform(X_train).astype(np.float32),
            scaler.transform(X_test).astype(np.float32),
            y_train,
            y_test,
        )
    return out


class PathSparseClassifier(FFFClassifier):
    """FFFClassifier training a :class:`PathSparseNetwork`, through the estimators' research
    seam."""

    _network_class = PathSparseNetwork


def run(name, data, depth, mode, seed, max_iter):
    X_train, X_test, y_train, y_test = data
    Estimator = PathSparseClassifier if mode == "path-sparse" else FFFClassifier
    model = Estimator(depth=depth, max_iter=max_iter, random_state=seed, device="cpu")
    with threadpool_limits(1):
        torch.set_num_threads(1)
        start = time.perf_counter()
        model.fit(X_train, y_train)
        seconds = time.perf_counter() - start
    return dict(
        data=name,
        depth=depth,
        mode=mode,
        seed=seed,
        accuracy=model.score(X_test, y_test),
        epoch_s=seconds / model.n_iter_,
        epochs=model.n_iter_,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2,000 rows, depth 6 and 8, one seed, 5 epochs"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--depths", default="6,8,10")
    parser.add_argument("--max-iter", type=int, default=50, help="epoch budget of every fit")
    parser.add_argument(
        "--train-rows",
        type=int,
        default=10_000,
        help="training rows per data set at most (MNIST-1D has 8,000)",
    )
    parser.add_argument("--n-jobs", type=int, default=2, help="fits in parallel, one thread each")
    args = parser.parse_args()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    depths = [6, 8] if args.quick else [int(d) for d in args.depths.split(",")]
    data = datasets(2000 if args.quick else args.train_rows)
    max_iter = min(args.max_iter, 5) if args.quick else args.max_iter
    jobs = [
        (name, depth, mode, seed)
        for name in data
        for depth in depths
        for mode in ("full", "path-sparse")
        for seed in seeds
    ]
    results = Parallel(n_jobs=args.n_jobs)(
        delayed(run)(name, data[name], depth, mode, seed, max_iter)
        for name, depth, mode, seed in jobs
    )
    rows = ", ".join(
        f"{name} {len(d[0])} training / {len(d[1])} held-out rows" for name, d in data.items()
    )
    print(f"max_iter={max_iter}, seeds {seeds}, one thread per fit; {rows}")
    print(
        f"{'data':<22}{'depth':>6}{'full acc':>10}{'sparse acc':>12}{'diff (pt)':>11}"
        f"{'full s/ep':>11}{'sparse s/ep':>13}{'speed-up':>10}"
    )
    for name in data:
        for depth in depths:
            pick = {
                mode: [
                    r
                    for r in results
                    if r["data"] == name and r["depth"] == depth and r["mode"] == mode
                ]
                for mode in ("full", "path-sparse")
            }
            acc = {m: np.array([r["accuracy"] for r in rs]) for m, rs in pick.items()}
            sec = {m: np.median([r["epoch_s"] for r in rs]) for m, rs in pick.items()}
            print(
                f"{name:<22}{depth:>6}{acc['full'].mean():>10.4f}{acc['path-sparse'].mean():>12.4f}"
                f"{100 * (acc['path-sparse'].mean() - acc['full'].mean()):>+11.2f}"
                f"{sec['full']:>11.3f}{sec['path-sparse']:>13.3f}"
                f"{sec['full'] / sec['path-sparse']:>10.1f}",
                flush=True,
            )
            for mode, rs in pick.items():
                print(
                    f"    {mode:<12} accuracy by seed "
                    + " ".join(f"{r['accuracy']:.4f}" for r in rs)
                    + "  epochs "
                    + " ".join(str(r["epochs"]) for r in rs)
                )


if __name__ == "__main__":
    main()
