"""The fast feedforward network as a torch module, for training loops of your own.

fffsklearn's estimators train with their own loop. To train an FFF with plain torch,
skorch (see :mod:`fffsklearn.skorch`) or Lightning instead, use the pieces that loop is
made of:

- :class:`FFFNetwork`, an ``nn.Module`` whose ``forward`` returns the raw outputs and keeps
  the routing of the same pass in ``routing``;
- :func:`load_balancing_loss`, the term that keeps every leaf in use, added to the loss;
- :class:`Hardening`, the phase that ends training by sharpening the soft routing into the
  hard routing that prediction uses.

``FFFClassifier.from_network`` and ``FFFRegressor.from_network`` turn the trained module into
a fitted estimator that predicts through the compiled kernel; ``to_module`` goes the other way.

Examples
--------
>>> import torch
>>> import torch.nn.functional as F
>>> from fffsklearn.nn import FFFNetwork, load_balancing_loss
>>> network = FFFNetwork(n_features=8, n_outputs=3, depth=3, random_state=0)
>>> optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
>>> X, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
>>> loss = F.cross_entropy(network(X), y) + load_balancing_loss(network.routing)
>>> loss.backward()
>>> optimizer.step()
"""

from ._network import FFFNetwork, SoftForward, load_balancing_loss
from ._phases import Hardening, sharpen_routing

__all__ = ["FFFNetwork", "Hardening", "SoftForward", "load_balancing_loss", "sharpen_routing"]
