"""The dataset preparation scripts, on tiny fake releases made here."""
import json

import numpy as np
import pytest
from PIL import Image

from helpers import run_tool as run


def test_prepare_voc_aug_merges_sbd_and_voc(tmp_path):
    from scipy.io import savemat
    voc, sbd = tmp_path / "VOC2012", tmp_path / "benchmark_RELEASE"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    (sbd / "dataset" / "cls").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("v1\nv2\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("v3\n")
    (sbd / "dataset" / "train.txt").write_text("s1\nv2\nv3\n")  # v2 also in VOC train, v3 is VOC val
    (sbd / "dataset" / "val.txt").write_text("s2\n")
    for i, name in enumerate(["v1", "v2", "v3"]):
        pal = Image.fromarray(np.full((4, 5), i + 1, np.uint8), mode="P")
        pal.putpalette([v % 256 for v in range(768)])
        pal.save(voc / "SegmentationClass" / f"{name}.png")
    for i, name in enumerate(["s1", "v2", "v3", "s2"]):
        seg = np.full((4, 5), 10 + i, np.uint8)
        seg[0, 0] = 0
        gtcls = np.array([(seg, np.zeros(1), np.zeros(1))],
                         dtype=[("Segmentation", "O"), ("Boundaries", "O"), ("CategoriesPresent", "O")])
        savemat(sbd / "dataset" / "cls" / f"{name}.mat", {"GTcls": gtcls})
    r = run("datasets/prepare_voc_aug.py", "--voc", str(voc), "--sbd", str(sbd), "--workers", "1")
    assert r.returncode == 0, r.stderr
    listed = (voc / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    assert listed == ["s1", "s2", "v1", "v2"]
    aug = voc / "SegmentationClassAug"
    read = lambda n: np.asarray(Image.open(aug / f"{n}.png"))  # noqa: E731
    assert read("s1")[1, 1] == 10 and read("s1")[0, 0] == 0 and read("s2")[1, 1] == 13
    assert (read("v2") == 2).all()  # VOC's own mask wins over SBD's
    assert (read("v3") == 3).all() and Image.open(aug / "v1.png").mode == "L"
    r = run("datasets/prepare_voc_aug.py", "--voc", str(tmp_path / "none"), "--sbd", str(sbd))
    assert r.returncode != 0 and "not found" in r.stderr


def test_prepare_cityscapes_writes_train_ids_lists_and_splits(tmp_path):
    pytest.importorskip("cityscapesscripts")
    root = tmp_path / "cityscapes"
    for split, names in (("train", ["a_000000_000001", "a_000000_000002", "a_000000_000003",
                                    "a_000000_000004"]),
                         ("val", ["b_000000_000001"])):
        city = names[0].split("_")[0]
        (root / "leftImg8bit" / split / city).mkdir(parents=True)
        (root / "gtFine" / split / city).mkdir(parents=True)
        for n in names:
            image = root / "leftImg8bit" / split / city / f"{n}_leftImg8bit.png"
            Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(image)
            poly = {"imgHeight": 8, "imgWidth": 16, "objects": [
                {"label": "road", "polygon": [[0, 0], [15, 0], [15, 7], [0, 7]]},
                {"label": "car", "polygon": [[0, 0], [7, 0], [7, 7], [0, 7]]},
                {"label": "ego vehicle", "polygon": [[12, 2], [15, 2], [15, 5], [12, 5]]}]}
            (root / "gtFine" / split / city / f"{n}_gtFine_polygons.json").write_text(json.dumps(poly))
    # an interrupted run's half-written label is not kept; an image without its polygons JSON is
    # named and left out of the lists
    partial = root / "gtFine" / "train" / "a" / "a_000000_000002_gtFine_labelTrainIds.partial77.png"
    partial.write_bytes(b"\x89PNG half")
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(root / "leftImg8bit" / "train" / "a"
                                                         / "a_000000_000009_leftImg8bit.png")
    r = run("datasets/prepare_cityscapes.py", "--root", str(root), "--splits", "1/4,1/2", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert ("warning: 1 train image(s) have no gtFine polygons JSON and are not listed: "
            "leftImg8bit/train/a/a_000000_000009_leftImg8bit.png") in r.stderr
    assert "000009" not in (root / "lists" / "train.txt").read_text()
    assert not list(root.rglob("*partial*"))  # every output renamed into place
    lab = np.asarray(Image.open(root / "gtFine" / "train" / "a" / "a_000000_000001_gtFine_labelTrainIds.png"))
    assert lab[4, 2] == 13 and lab[4, 10] == 0 and lab[3, 13] == 255  # car, road, ego vehicle ignored
    lines = (root / "lists" / "train.txt").read_text().split("\n")
    assert lines[0] == ("leftImg8bit/train/a/a_000000_000001_leftImg8bit.png "
                        "gtFine/train/a/a_000000_000001_gtFine_labelTrainIds.png")
    assert len((root / "splits" / "1_4" / "labeled.txt").read_text().split("\n")) == 2  # 1 line + newline
    assert len((root / "lists" / "val.txt").read_text().strip().split("\n")) == 1
