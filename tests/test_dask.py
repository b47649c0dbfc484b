"""Scale-out on a real dask.distributed cluster: two worker processes on loopback."""

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFClassifier

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
joblib = pytest.importorskip("joblib")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=2000, n_features=10, random_state=0)
    return X.astype(np.float32), y


def test_grid_search_under_the_dask_joblib_backend(client, data):
    X, y = data
    search = GridSearchCV(
        make_pipeline(StandardScaler(), FFFClassifier(max_iter=10, random_state=0)),
        {"fffclassifier__depth": [1, 2], "fffclassifier__leaf_width": [4, 8]},
        cv=3,
    )
    with distributed.get_task_stream(client) as tasks, joblib.parallel_backend("dask"):
        search.fit(X, y)
    # Both workers of the cluster ran fits. (Counted from the task stream: the scheduler's
    # worker list was seen empty right after a search on a loaded machine.)
    assert len({task["worker"] for task in tasks.data}) == 2
    local = GridSearchCV(search.estimator, search.param_grid, cv=3).fit(X, y)
    np.testing.assert_allclose(
        search.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]
    )
    assert search.best_score_ > 0.9


def test_dask_ml_incremental_trains_through_partial_fit(client, data):
    wrappers = pytest.importorskip("dask_ml.wrappers")
    X, y = data
    X_dask = da.from_array(X, chunks=100)
    y_dask = da.from_array(y, chunks=100)
    assert X_dask.numblocks[0] == 20
    model = wrappers.Incremental(
        FFFClassifier(depth=2, learning_rate_init=1e-2, random_state=0), scoring="accuracy"
    )
    for _ in range(3):
        model.partial_fit(X_dask, y_dask, classes=[0, 1])
    assert model.estimator_.n_iter_ == 60  # one epoch per block and pass
    assert model.score(X_dask, y_dask) > 0.9
