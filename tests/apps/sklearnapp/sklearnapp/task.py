"""The model (a multinomial logistic regression) and the data (iris, bundled with scikit-learn: no download)."""

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

CLASSES = np.array([0, 1, 2])
FEATURES = 4


def load_data(partition_id: int, num_partitions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Partition ``partition_id`` of iris: every class dealt round-robin over the partitions (each holds every
    class), shuffled, then 80 % to train and 20 % to test."""
    x, y = load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]  # shuffled within each class, classes in turn
    mine = np.random.default_rng(partition_id).permutation(order[partition_id::num_partitions])
    cut = int(0.8 * len(mine))
    return x[mine[:cut]], y[mine[:cut]], x[mine[cut:]], y[mine[cut:]]


def create_model(penalty: str, iterations: int) -> LogisticRegression:
    """A logistic regression that continues from the parameters it is given (``warm_start``)."""
    model = LogisticRegression(penalty=penalty, max_iter=iterations, warm_start=True)
    model.classes_ = CLASSES
    model.coef_, model.intercept_ = np.zeros((len(CLASSES), FEATURES)), np.zeros(len(CLASSES))
    return model


def get_params(model: LogisticRegression) -> list[np.ndarray]:
    return [model.coef_, model.intercept_]


def set_params(model: LogisticRegression, params: list[np.ndarray]) -> None:
    model.coef_, model.intercept_ = params[0], params[1]
