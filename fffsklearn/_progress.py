"""Per-epoch reports of a verbose fit, with a progress bar when tqdm is installed."""

import numpy as np

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is the optional extra fffsklearn[progress]
    tqdm = None


class EpochReporter:
    """Prints one line per epoch when ``verbose > 0``: loss, validation score, leaves in use.

    Parameters
    ----------
    verbose : int
        Nothing is reported when 0.
    epochs : int
        Length of the progress bar.
    name : str
        Prefix of the lines, the estimator's class name.
    """

    def __init__(self, verbose, epochs, name):
        self.verbose = verbose
        self.name = name
        self.bar = None
        if verbose and tqdm is not None and epochs > 1:
            self.bar = tqdm(total=epochs, desc=name, unit="epoch", leave=False)

    def epoch(self, n_iter, loss, validation_score, leaf_counts):
        if not self.verbose:
            return
        used = int(np.count_nonzero(leaf_counts))
        line = f"{self.name} iteration {n_iter}, loss = {loss:.6f}"
        if validation_score is not None:
            line += f", validation score = {validation_score:.6f}"
        line += f", leaves used = {used}/{len(leaf_counts)}"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.write(line)
        else:
            print(line)

    def close(self):
        if self.bar is not None:
            self.bar.close()
