"""ONNX export: onnxruntime agrees with predict and predict_proba and walks the same leaves."""

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_regression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFClassifier, FFFRegressor

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
skl2onnx = pytest.importorskip("skl2onnx")

from fffsklearn import to_onnx  # noqa: E402  (needs the optional extra)


def run(model_proto, X, with_leaves=False):
    if with_leaves:
        leaves = next(
            o for n in model_proto.graph.node for o in n.output if o.startswith("fff_leaves")
        )
        model_proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(leaves))
    session = ort.InferenceSession(
        model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"X": np.asarray(X, dtype=np.float32)})


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X).astype(np.float32), y


@pytest.mark.parametrize(
    "depth, master, activation", [(0, 16, "relu"), (3, 0, "tanh"), (5, 8, "logistic")]
)
def test_classifier_matches_and_walks_the_same_leaves(digits, depth, master, activation):
    X, y = digits
    model = FFFClassifier(depth=depth, master_leaf_width=master, activation=activation,
                          max_iter=5, random_state=0).fit(X, y)
    outputs = run(to_onnx(model), X, with_leaves=depth > 0)
    label, proba = outputs[:2]
    np.testing.assert_array_equal(label, model.predict(X))
    np.testing.assert_allclose(proba, model.predict_proba(X), rtol=1e-5, atol=1e-5)
    if depth:
        np.testing.assert_array_equal(outputs[2], model.apply(X))


def test_string_labels(digits):
    X, y = digits
    labels = np.array(["zero", "one", "two"])[y % 3]
    model = FFFClassifier(depth=2, max_iter=3, random_state=0).fit(X, labels)
    label, _ = run(to_onnx(model), X)
    np.testing.assert_array_equal(label.astype(str), model.predict(X))


@pytest.mark.parametrize("n_targets", [1, 3])
def test_regressor_matches(n_targets):
    X, y = make_regression(n_samples=300, n_features=6, n_targets=n_targets, random_state=0)
    model = FFFRegressor(depth=3, max_iter=10, random_state=0).fit(X, y)
    (prediction,) = run(to_onnx(model), X)
    expected = model.predict(X).reshape(len(X), -1)
    np.testing.assert_allclose(prediction, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_pipeline_through_skl2onnx(digits):
    X, y = digits
    raw = X * 3 + 1
    pipeline = make_pipeline(StandardScaler(), FFFClassifier(depth=4, max_iter=5, random_state=0))
    pipeline.fit(raw, y)
    # fffsklearn.to_onnx converts the Pipeline and registers the converters with skl2onnx,
    # whose own to_onnx converts it afterwards too (in this process).
    for exported in (
        to_onnx(pipeline),
        skl2onnx.to_onnx(pipeline, raw[:1], options={"zipmap": False}),
    ):
        label, proba = run(exported, raw)
        np.testing.assert_array_equal(label, pipeline.predict(raw))
        np.testing.assert_allclose(proba, pipeline.predict_proba(raw), rtol=1e-5, atol=1e-5)


_PIPELINE_THROUGH_SKL2ONNX = """
import sys
import numpy as np
import skl2onnx
from sklearn.datasets import load_digits
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
import fffsklearn
X, y = load_digits(return_X_y=True)
pipeline = make_pipeline(StandardScaler(), fffsklearn.FFFClassifier(depth=2, max_iter=2))
pipeline.fit(X, y)
fffsklearn.register_onnx_converters()
skl2onnx.to_onnx(pipeline, X[:1].astype(np.float32), options={"zipmap": False})
print("converted")
"""


def test_skl2onnx_converts_a_pipeline_after_registering_as_the_guide_says():
    """In a fresh process, where nothing registered the converters before."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _PIPELINE_THROUGH_SKL2ONNX],
                            capture_output=True, text=True)
    assert result.stdout.strip() == "converted", result.stderr[-2000:]


def test_importing_fffsklearn_loads_no_onnx_library():
    import subprocess
    import sys

    script = ("import sys, fffsklearn; "
              "print(sorted(m for m in ('skl2onnx', 'onnx', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_missing_onnx_extra_is_named(monkeypatch):
    import sys

    import fffsklearn

    monkeypatch.setitem(sys.modules, "skl2onnx", None)
    monkeypatch.delitem(sys.modules, "fffsklearn._onnx", raising=False)
    with pytest.raises(ImportError, match=r"fffsklearn\[onnx\]"):
        fffsklearn.to_onnx(None)


def test_star_import_needs_no_onnx_extra():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules.update(onnx=None, skl2onnx=None, onnxruntime=None); "
        "from fffsklearn import *; print(to_onnx.__name__, FFFClassifier.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["to_onnx", "FFFClassifier"]


@pytest.mark.parametrize(
    "labels",
    [
        lambda y: y.astype(bool),
        lambda y: y.astype(np.float64) * 2 + 1,
        lambda y: y.astype(np.float32) - 3,
        lambda y: y.astype(np.uint8),
        lambda y: np.array(["benign", "malignant"])[y],
        lambda y: np.array(["benign", "malignant"], dtype=object)[y],
    ],
    ids=["bool", "float64", "float32", "uint8", "str", "object-str"],
)
def test_exporting_a_classifier_of_every_label_type_fit_accepts(labels):
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    model = FFFClassifier(max_iter=3, random_state=0).fit(X, labels(y))
    label, proba = run(to_onnx(model), X)
    np.testing.assert_array_equal(label, model.predict(X))
    np.testing.assert_allclose(proba, model.predict_proba(X), rtol=1e-5, atol=1e-5)


def _convert(model, X, **options):
    """``skl2onnx.to_onnx(model, X[:1])``, after registering as the guide says."""
    from fffsklearn import register_onnx_converters

    register_onnx_converters()
    return skl2onnx.to_onnx(model, X[:1], **options)


def _session(model_proto):
    return ort.InferenceSession(model_proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])


def test_converting_with_a_float64_sample_as_for_scikit_learn_models(digits):
    """``skl2onnx.to_onnx(model, X[:1])`` with float64 rows gives a double input; the graph
    must load in onnxruntime with skl2onnx's default ZipMap and without it."""
    X, y = digits
    X = X.astype(np.float64)
    classifier = FFFClassifier(depth=2, max_iter=3, random_state=0).fit(X, y)
    label, probabilities = _session(_convert(classifier, X)).run(None, {"X": X})
    np.testing.assert_array_equal(label, classifier.predict(X))
    assert probabilities[0].keys() == set(classifier.classes_)
    plain = _convert(classifier, X, options={"zipmap": False})
    label, probabilities = _session(plain).run(None, {"X": X})
    np.testing.assert_allclose(probabilities, classifier.predict_proba(X), atol=1e-5)
    regressor = FFFRegressor(depth=2, max_iter=3, random_state=0).fit(X, X[:, 10] * 3.0)
    (prediction,) = _session(_convert(regressor, X)).run(None, {"X": X})
    assert prediction.dtype == np.float64
    np.testing.assert_allclose(prediction[:, 0], regressor.predict(X), rtol=1e-5, atol=1e-4)


def test_exporting_with_the_wrong_width_or_unfitted_says_so(digits):
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import NotFittedError

    X, y = digits
    model = FFFClassifier(depth=2, max_iter=2, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="n_features=5, but FFFClassifier was fitted on 64"):
        to_onnx(model, n_features=5)
    with pytest.raises(ValueError, match="input has 5 features, but FFFClassifier was fitted"):
        skl2onnx.to_onnx(model, initial_types=[("X", FloatTensorType([None, 5]))])
    for unfitted in (FFFClassifier(), FFFRegressor()):
        with pytest.raises(NotFittedError):
            to_onnx(unfitted)


def test_a_regressor_of_targets_beyond_float32_exports_only_with_float64_outputs():
    X, y = make_regression(n_samples=200, n_features=4, random_state=0)
    model = FFFRegressor(depth=2, max_iter=3, random_state=0).fit(X, y * 1e37)
    with pytest.raises(ValueError, match="beyond the range of float32"):
        to_onnx(model)
    (prediction,) = _session(_convert(model, X)).run(None, {"X": X})
    assert np.isfinite(prediction).all()
    np.testing.assert_allclose(prediction[:, 0], model.predict(X), rtol=1e-4)


def test_a_model_with_a_feature_far_from_zero_exports_its_centring():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 3))
    y = (X[:, 0] > 0).astype(int)
    X[:, 0] += 1e8
    model = FFFClassifier(depth=2, max_iter=20, random_state=0).fit(X, y)
    label, probabilities = _session(_convert(model, X, options={"zipmap": False})).run(
        None, {"X": X}
    )
    np.testing.assert_array_equal(label, model.predict(X))
    np.testing.assert_allclose(probabilities, model.predict_proba(X), atol=1e-5)


def test_a_multi_label_classifier_exports_its_indicator_matrix():
    from sklearn.datasets import make_multilabel_classification

    X, Y = make_multilabel_classification(n_samples=400, n_features=10, n_classes=5,
                                          random_state=0)
    model = FFFClassifier(depth=2, max_iter=10, random_state=0).fit(X, Y)
    label, probabilities = run(to_onnx(model), X)
    np.testing.assert_array_equal(label, model.predict(X))
    np.testing.assert_allclose(probabilities, model.predict_proba(X), atol=1e-5)
