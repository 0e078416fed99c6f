import math

import numpy as np
import torch

from seg_ssl.evaluation.confusion import confusion_matrix
from seg_ssl.evaluation.metrics import format_table, metrics_from_confusion, to_json


def brute_force(pred, label, k, ignore=255):
    """Per-class TP/FP/FN by explicit loops over pixels."""
    tp, fp, fn = [0] * k, [0] * k, [0] * k
    correct = total = 0
    for p, g in zip(pred.ravel().tolist(), label.ravel().tolist(), strict=True):
        if g == ignore:
            continue
        total += 1
        if p == g:
            tp[g] += 1
            correct += 1
        else:
            fp[p] += 1
            fn[g] += 1
    iou = [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else math.nan for c in range(k)]
    acc = [tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else math.nan for c in range(k)]
    return correct / total, iou, acc


def test_metrics_match_brute_force_count():
    rng = np.random.default_rng(0)
    k = 6
    cm = torch.zeros(k, k, dtype=torch.int64)
    preds, labels = [], []
    for _ in range(4):  # accumulated over several "images"
        pred = rng.integers(0, k - 1, (17, 23))  # class 5 never predicted
        label = rng.integers(0, k - 2, (17, 23))  # classes 4, 5 never in gt ...
        label[rng.random((17, 23)) < 0.2] = 255
        label[0, 0] = 4  # ... except one pixel of class 4
        preds.append(pred)
        labels.append(label)
        cm += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(label), k)
    m = metrics_from_confusion(cm.numpy())
    aacc, iou, acc = brute_force(np.stack(preds), np.stack(labels), k)
    assert math.isclose(m["aAcc"], aacc)
    np.testing.assert_allclose(m["IoU"], iou, equal_nan=True)
    np.testing.assert_allclose(m["Acc"], acc, equal_nan=True)
    assert math.isnan(m["IoU"][5]) and math.isnan(m["Acc"][5])  # absent from both: left out
    assert math.isclose(m["mIoU"], np.nanmean(iou))
    assert math.isclose(m["mAcc"], np.nanmean(acc))
    assert int(cm.sum()) == sum(int((lab != 255).sum()) for lab in labels)


def test_class_only_predicted_counts_as_zero_iou():
    pred = torch.tensor([[0, 1], [1, 1]])
    label = torch.tensor([[0, 0], [0, 0]])
    m = metrics_from_confusion(confusion_matrix(pred, label, 3))
    assert m["IoU"][0] == 0.25 and m["IoU"][1] == 0.0 and math.isnan(m["IoU"][2])
    assert math.isclose(m["mIoU"], 0.125)
    assert math.isnan(m["Acc"][1])  # never in gt


def test_the_table_and_json_leave_an_absent_class_out_of_the_means():
    m = metrics_from_confusion(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]))
    table = format_table(m, ["bg", "a", "b"])
    assert "mIoU 70.83" in table and "nan" in table.splitlines()[4]
    js = to_json(m)
    assert js["IoU"][2] is None and abs(js["mIoU"] - (0.75 + 2 / 3) / 2) < 1e-12


def test_comparison_lines_up_runs_and_differences():
    from seg_ssl.evaluation.metrics import format_comparison
    a = {"IoU": [0.9, 0.1, float("nan")], "mIoU": 0.5, "aAcc": 0.8, "mAcc": 0.6, "Acc": [0, 0, 0]}
    b = {"IoU": [0.85, 0.3, 0.2], "mIoU": 0.45, "aAcc": 0.81, "mAcc": 0.7, "Acc": [0, 0, 0]}
    text = format_comparison({"sup": a, "cps": b}, ["bg", "one", "two"])
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line and line[0] not in "-"}
    assert rows["IoU"] == ["sup", "cps", "diff"]
    assert rows["bg"] == ["90.00", "85.00", "-5.00"]
    assert rows["one"] == ["10.00", "30.00", "+20.00"]
    assert rows["two"] == ["nan", "20.00"]  # no difference against an absent class
    assert rows["mIoU"] == ["50.00", "45.00", "-5.00"]
    import pytest
    with pytest.raises(ValueError, match="different numbers of classes"):
        format_comparison({"a": a, "b": {**b, "IoU": [0.1, 0.2]}})
