"""The data losses of training, each with its gradient and the weight of the regularisers.

The trainer differentiates the losses by hand and hands their gradients to the network's
backward (:meth:`FFFNetwork.training_pass`): autograd's bookkeeping of their dozen small
operations cost more than computing them. A loss object is all the trainer knows of the task:
:class:`CrossEntropy` for FFFClassifier, :class:`BinaryCrossEntropy` for its multi-label
targets, :class:`SquaredError` for FFFRegressor.
"""

import torch

from ._network import _compiled, _training_kernel


class _SmoothedLabels:
    """What the two classification losses share: targets smoothed by ``label_smoothing``
    while balancing (plain in the hardening phase, so that ``predict_proba`` ends as
    confident as the data allow), and regularisers of a weight fixed for the fit, so that a
    step needs no loss on the host."""

    regulariser_weight_is_constant = True

    def __init__(self, label_smoothing=0.0):
        self.label_smoothing = label_smoothing

    def smoothing(self, hardening):
        """The label smoothing of a step in the given phase."""
        return 0.0 if hardening else self.label_smoothing

    def regulariser_weight(self, data_loss, y):
        """The factor on the L2 and load-balancing terms of a step: always 1."""
        return 1.0


class CrossEntropy(_SmoothedLabels):
    """Cross-entropy of the logits against class indices.

    While balancing, each row's target puts ``1 - label_smoothing`` on its class plus
    ``label_smoothing / n_classes`` on every class; the hardening phase fits the plain
    log-loss, so that ``predict_proba`` ends as confident as the data allow. For float32 on the
    CPU one call of the C extension computes both the loss and its gradient.

    Parameters
    ----------
    label_smoothing : float
    """

    def __call__(self, outputs, y, row_weight, hardening):
        """The weighted loss ``sum_i row_weight_i * loss_i`` (a 0-d tensor) and its gradient
        with respect to ``outputs``."""
        smoothing = self.smoothing(hardening)
        if _compiled(outputs):
            grad = torch.empty_like(outputs)
            loss = _training_kernel.cross_entropy(
                outputs.numpy(), y.numpy(), row_weight.numpy(), grad.numpy(), smoothing
            )
            return torch.tensor(loss, dtype=outputs.dtype), grad
        log_probabilities = torch.log_softmax(outputs, dim=1)
        targets = y.unsqueeze(1)
        spread = smoothing / outputs.shape[1]
        loss = -(1.0 - smoothing) * torch.dot(
            log_probabilities.gather(1, targets).squeeze(1), row_weight
        )
        if smoothing:
            loss = loss - spread * torch.dot(log_probabilities.sum(dim=1), row_weight)
        # d/d logits of that cross-entropy = softmax - target, for each row.
        grad = log_probabilities.exp_().sub_(spread).mul_(row_weight.unsqueeze(1))
        grad.scatter_add_(1, targets, row_weight.mul(smoothing - 1.0).unsqueeze(1))
        return loss, grad


class BinaryCrossEntropy(_SmoothedLabels):
    """Binary cross-entropy of each output's sigmoid against a 0/1 label, summed over the
    labels (one sigmoid output per label: multi-label classification).

    While balancing, each label's target is moved ``label_smoothing / 2`` towards 1/2; the
    hardening phase fits the plain log-loss, as :class:`CrossEntropy` does.

    Parameters
    ----------
    label_smoothing : float
    """

    def __call__(self, outputs, y, row_weight, hardening):
        """The weighted loss ``sum_i row_weight_i * loss_i`` (a 0-d tensor) and its gradient
        with respect to ``outputs``."""
        smoothing = self.smoothing(hardening)
        targets = y * (1.0 - smoothing) + 0.5 * smoothing
        losses = torch.nn.functional.binary_cross_entropy_with_logits(
            outputs, targets, reduction="none"
        )
        # d/d logit of that cross-entropy = sigmoid - target, for each label.
        grad = torch.sigmoid(outputs).sub_(targets).mul_(row_weight.unsqueeze(1))
        return torch.dot(losses.sum(dim=1), row_weight), grad

    def regulariser_weight(self, data_loss, y):
        """The factor on the L2 and load-balancing terms of a step: the number of labels.
        The loss sums one binary loss per label, so the regularisers weigh against each
        label's loss as they weigh against the one loss of a single-label fit; at weight 1
        a fit of many labels was regularised as many times less, and overfitted."""
        return float(y.shape[1])


class SquaredError:
    """Half the squared error, summed over the (standardised) targets.

    Its regularisers fade on a close fit: their weight is ``min(1, r / fade_below)``, ``r`` the
    mini-batch's mean squared residual per target. ``alpha`` and ``load_balancing`` are set for
    noisy targets; on targets that are nearly a function of the inputs, fixed-weight
    regularisers outweigh a squared error that keeps shrinking and hold the fit back.
    Weighting them by the residual is what a Gaussian likelihood does when its noise variance
    is estimated from the current fit.

    Parameters
    ----------
    fade_below : float
        The mean squared residual below which the regularisers fade.
    """

    # The weight is read from each step's loss on the host: a step cannot be replayed as a
    # captured CUDA graph.
    regulariser_weight_is_constant = False

    def __init__(self, fade_below):
        self.fade_below = fade_below

    def __call__(self, outputs, y, row_weight, hardening):
        """The weighted loss ``sum_i row_weight_i * loss_i`` (a 0-d tensor) and its gradient
        with respect to ``outputs`` (computed in place of ``outputs``)."""
        residual = outputs.sub_(y)
        loss = 0.5 * torch.dot(residual.square().sum(dim=1), row_weight)
        return loss, residual.mul_(row_weight.unsqueeze(1))

    def regulariser_weight(self, data_loss, y):
        """The factor on the L2 and load-balancing terms of a step whose data loss (for
        unit row weights) is ``data_loss``."""
        mean_squared_residual = 2.0 * float(data_loss.detach()) / y.shape[1]
        return min(1.0, mean_squared_residual / self.fade_below)
