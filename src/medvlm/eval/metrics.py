"""Clean-accuracy metrics for classification and VQA, and the chance baselines they are read against.

All functions take NumPy arrays and return plain Python numbers (JSON-ready). A metric that has no data
to be computed on (closed-question accuracy on a test set without closed questions) is None, never NaN.
"""

from __future__ import annotations

import numpy as np
from sklearn.dummy import DummyClassifier
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from medvlm.io import DataError


def macro_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Macro one-vs-rest AUROC over the classes PRESENT in `labels`.

    A class with no test sample has no positives, so its one-vs-rest AUROC is undefined: it is left out
    of the average (its probability column still takes part in the softmax). At least two classes must be
    present, else no AUROC is defined at all and a DataError says so.
    """
    present = np.unique(labels)
    if len(present) < 2:
        raise DataError(f"AUROC needs at least two classes in the test labels, found {present.tolist()}")
    # One indicator column per present class -> sklearn averages the per-class binary AUROCs.
    indicators = (labels[:, None] == present[None, :]).astype(np.int64)
    return float(roc_auc_score(indicators, probabilities[:, present], average="macro"))


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float | int]:
    """Accuracy, macro-F1 and macro one-vs-rest AUROC of softmax `probabilities` (N×C) against `labels`.

    Macro-F1 averages over the classes that occur in the labels or the predictions (sklearn's default), so
    a class absent from both does not count as an F1 of 0.
    """
    predictions = probabilities.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "macro_auroc": macro_auroc(labels, probabilities),
        "n": int(len(labels)),
    }


def _accuracy_or_none(labels: np.ndarray, predictions: np.ndarray) -> float | None:
    return float(accuracy_score(labels, predictions)) if len(labels) else None


def vqa_metrics(labels: np.ndarray, predictions: np.ndarray, closed: np.ndarray) -> dict[str, float | int | None]:
    """VQA accuracy overall and on closed / open questions.

    `labels` index the train answer vocabulary; -1 marks a test answer outside it, which no prediction
    (always >= 0) can match, so those questions count as wrong.
    """
    closed = closed.astype(bool)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "closed_accuracy": _accuracy_or_none(labels[closed], predictions[closed]),
        "open_accuracy": _accuracy_or_none(labels[~closed], predictions[~closed]),
        "n": int(len(labels)),
    }


def majority_accuracy(train_labels: np.ndarray, test_labels: np.ndarray) -> float | None:
    """Test accuracy of always answering the most frequent train label (ties: the smallest index);
    None when either side is empty."""
    if len(train_labels) == 0 or len(test_labels) == 0:
        return None
    dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(train_labels), 1)), train_labels)
    return float(dummy.score(np.zeros((len(test_labels), 1)), test_labels))


def classification_chance(
    train_labels: np.ndarray, test_labels: np.ndarray, n_classes: int
) -> dict[str, float | None]:
    """Expected accuracy of a uniform guess over `n_classes`, and of the train-majority label."""
    return {"uniform": 1.0 / n_classes, "majority": majority_accuracy(train_labels, test_labels)}


def vqa_chance(train_labels: np.ndarray, train_closed: np.ndarray,
               test_labels: np.ndarray, test_closed: np.ndarray) -> dict[str, float | None]:
    """Majority-answer baselines: overall, and per question type with that type's most frequent answer."""
    train_closed, test_closed = train_closed.astype(bool), test_closed.astype(bool)
    return {
        "majority": majority_accuracy(train_labels, test_labels),
        "majority_closed": majority_accuracy(train_labels[train_closed], test_labels[test_closed]),
        "majority_open": majority_accuracy(train_labels[~train_closed], test_labels[~test_closed]),
    }


def resample_scores(labels: np.ndarray, probabilities: np.ndarray) -> list[float]:
    """[accuracy, macro-F1, macro-AUROC] with the same definitions as `classification_metrics`, for the
    bootstrap's resamples; AUROC is NaN when fewer than two classes are present.

    Written with NumPy/SciPy rather than calling scikit-learn: sklearn's input validation costs ~13 ms per
    call, and the bootstrap makes 1000 calls per method and task; this takes well under 1 ms.
    Tests check it equals `classification_metrics` (ties included).
    """
    predictions = probabilities.argmax(axis=1)
    n_classes = probabilities.shape[1]
    accuracy = float((predictions == labels).mean())
    # Macro-F1 over the classes in labels or predictions, F1 = 2TP / (2TP + FP + FN) (sklearn's default).
    true_positive = np.bincount(labels[predictions == labels], minlength=n_classes)
    label_count = np.bincount(labels, minlength=n_classes)
    predicted_count = np.bincount(predictions, minlength=n_classes)
    seen = (label_count + predicted_count) > 0
    macro_f1 = float((2 * true_positive[seen] / (label_count[seen] + predicted_count[seen])).mean())
    # One-vs-rest AUROC of each present class = Mann-Whitney U / (n_pos · n_neg), ties counted half.
    present = np.flatnonzero(label_count)
    if len(present) < 2:
        return [accuracy, macro_f1, np.nan]
    ranks = rankdata(probabilities[:, present], axis=0)
    positives = labels[:, None] == present[None, :]
    n_positive = label_count[present]
    n_negative = len(labels) - n_positive
    u_statistic = (ranks * positives).sum(axis=0) - n_positive * (n_positive + 1) / 2
    return [accuracy, macro_f1, float((u_statistic / (n_positive * n_negative)).mean())]
