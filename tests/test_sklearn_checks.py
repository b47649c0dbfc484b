"""scikit-learn's estimator checks on both estimators."""

import pytest
from sklearn.utils.estimator_checks import (
    check_dataframe_column_names_consistency,
    check_param_validation,
    parametrize_with_checks,
)

from fffsklearn import FFFClassifier, FFFRegressor

# Mini-batch SGD with shuffled batches cannot give the same model for a weight of 2 as for a
# repeated row; scikit-learn marks this check expected-to-fail for its own SGD estimators.
EXPECTED_FAILED = {
    "check_sample_weight_equivalence_on_dense_data": (
        "mini-batch training: weighting a row is not the same as repeating it"
    ),
    "check_sample_weight_equivalence_on_sparse_data": (
        "mini-batch training: weighting a row is not the same as repeating it"
    ),
}

ESTIMATORS = [FFFClassifier(), FFFRegressor()]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_readme_names_the_checks_expected_to_fail():
    # scikit-learn >= 1.6 reads expected failures only from check_estimator's
    # expected_failed_checks argument, so users learn them from the README.
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for check, reason in EXPECTED_FAILED.items():
        assert check in readme and reason in readme


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda est: type(est).__name__)
def test_param_validation(estimator):
    check_param_validation(type(estimator).__name__, estimator)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda est: type(est).__name__)
def test_dataframe_column_names_consistency(estimator):
    pytest.importorskip("pandas")
    check_dataframe_column_names_consistency(type(estimator).__name__, estimator)
