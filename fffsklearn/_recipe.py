"""The training recipe: every number one fit trains with, as one immutable object.

Each public estimator builds its :class:`Recipe` from its parameters and the number of
training rows (``_recipe``); the trainer reads nothing else, and holds no switch between
classification and regression: what differs between them is in the recipe's numbers and its
loss object. Why each default is what it is: the documentation's "Why these defaults".

NumPy-free and torch-free: the loss objects themselves live in :mod:`fffsklearn._losses`.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """How one call of :meth:`Trainer.fit` runs its epochs.

    Parameters
    ----------
    max_epochs : int
        Epochs at most, the hardening phase included.
    batch_size : int
        Rows per mini-batch.
    hardening_epochs : int
        Length of the hardening phase; 0 skips it.
    n_iter_no_change : int
        Epochs without an improvement of at least ``tol`` that end the balancing phase.
    tol : float
        Smallest improvement that counts.
    """

    max_epochs: int
    batch_size: int
    hardening_epochs: int
    n_iter_no_change: int
    tol: float


@dataclass(frozen=True)
class Recipe:
    """Every number a fit trains with.

    Parameters
    ----------
    depth, leaf_width, master_leaf_width, activation, projection_rank
        The network's shape, as the estimator parameters of the same names.
    loss : CrossEntropy or SquaredError
        The data loss, its gradient and the weight of the regularisers
        (:mod:`fffsklearn._losses`).
    learning_rate : float
        Adam's learning rate while balancing.
    alpha : float
        L2 penalty ``0.5 * alpha * ||W||^2 / n_samples`` on the weights.
    load_balancing : float
        Weight of the load-balancing loss.
    input_noise : float
        Training noise, in standard deviations of each feature.
    routing_decay_factor : float
        Factor on ``alpha`` for the routing neurons' weights.
    leaf_decay_factor : float
        Factor on ``alpha`` for the leaves' weights.
    routing_group_lasso : float
        Strength, in units of ``alpha / n_samples``, of the group lasso on each input's
        routing weights (times the input's share, from the data preparation).
    leaf_tying : float
        Strength, in units of ``alpha / n_samples``, of the penalty that ties the leaves of
        every subtree to their mean (:class:`fffsklearn._training.Penalties`).
    schedule : Schedule
        The epochs of the call.
    hardening_learning_rate_factor : float
        Factor on the learning rate while hardening.
    sharpen_every : int
        Epochs between two doublings of the routing logits while hardening.
    """

    depth: int
    leaf_width: int
    master_leaf_width: int
    activation: str
    projection_rank: int | None
    loss: object
    learning_rate: float
    alpha: float
    load_balancing: float
    input_noise: float
    routing_decay_factor: float
    leaf_decay_factor: float
    routing_group_lasso: float
    leaf_tying: float
    schedule: Schedule
    # The leaves fine-tune the balanced fit while the routing sharpens; at the full rate
    # they undid part of it.
    hardening_learning_rate_factor: float = 0.1
    # Sharpening every epoch brings the soft mixture to the hard model as well as sparser
    # sharpening, in fewer epochs.
    sharpen_every: int = 1
