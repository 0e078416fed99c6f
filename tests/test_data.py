import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT, make_voc, write_list
from seg_ssl.config import ConfigError, from_dict
from seg_ssl.data.dataset import (
    DataError,
    SegDataset,
    build_split,
    check_disjoint,
    load_image,
    load_label,
    read_split,
)
from seg_ssl.data.splits import labeled_count, nested_splits
from seg_ssl.data.streams import StreamBatchSampler, shard_indices
from seg_ssl.data.transforms import train_pipeline


def data_cfg(root, **kw):
    base = {"data": {"root": root, "labeled_list": "lab.txt", "unlabeled_list": "unl.txt",
                     "val_list": "val.txt", "num_classes": 4, "crop_size": 32, **kw},
            "train": {"iters": 1}}
    return from_dict(base, "test")


def test_voc_layout_lists_give_ids_or_image_label_pairs(tmp_path):
    root = make_voc(str(tmp_path), ["a", "b", "c"])
    write_list(root, "lab.txt", ["a", "b"])
    write_list(root, "val.txt", ["JPEGImages/c.jpg SegmentationClassAug/c.png"])
    cfg = data_cfg(root)
    lab = build_split(cfg.data, "labeled")
    val = build_split(cfg.data, "val")
    assert [s.id for s in lab.samples] == ["a", "b"] and val.samples[0].id == "c"
    item = lab[0]
    assert item["image"].shape == (30, 40, 3) and item["label"].shape == (30, 40)
    assert set(np.unique(item["label"])) <= {0, 1, 2, 3, 255}


def test_labeled_unlabeled_overlap_is_an_error(tmp_path):
    root = make_voc(str(tmp_path), ["a", "b"])
    write_list(root, "lab.txt", ["a"])
    write_list(root, "unl.txt", ["a", "b"])
    cfg = data_cfg(root)
    lab, unl = build_split(cfg.data, "labeled"), build_split(cfg.data, "unlabeled")
    with pytest.raises(ConfigError, match="1 ids are in both .* data.allow_overlap"):
        check_disjoint(lab, unl, False, "data")
    check_disjoint(lab, unl, True, "data")


def test_single_image_path_lists_derive_the_label_path(tmp_path):
    """U2PL's Cityscapes lists name one image per line; the label follows the layout's rule."""
    from seg_ssl.config import load_config
    cfg = load_config(os.path.join(ROOT, "configs", "cityscapes_sup.yaml"), [f"data.root={tmp_path}"])
    d = cfg.data
    for split in ("train/aachen/aachen_000000_000019", "train/bonn/bonn_000001_000019"):
        img = tmp_path / "leftImg8bit" / (split + "_leftImg8bit.png")
        lab = tmp_path / "gtFine" / (split + "_gtFine_labelTrainIds.png")
        for path, arr in ((img, np.zeros((8, 16, 3), np.uint8)), (lab, np.full((8, 16), 7, np.uint8))):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    write_list(str(tmp_path), "u2pl.txt", ["leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
                                          "leftImg8bit/train/bonn/bonn_000001_000019_leftImg8bit.png"])
    samples = read_split(str(tmp_path / "u2pl.txt"), d.root, d.img_dir, d.ann_dir, d.img_suffix, d.ann_suffix)
    assert [s.id for s in samples] == ["aachen_000000_000019", "bonn_000001_000019"]
    assert samples[1].label == str(tmp_path / "gtFine/train/bonn/bonn_000001_000019_gtFine_labelTrainIds.png")
    ds = SegDataset(samples, 19)
    assert int(ds.load(0)[1][0, 0]) == 7


def test_bad_lists_and_files_are_named(tmp_path):
    root = make_voc(str(tmp_path), ["a", "b"])
    write_list(root, "dup.txt", ["a", "b", "a"])
    with pytest.raises(DataError, match=r"dup.txt:3: duplicate id 'a' \(first on line 1\)"):
        read_split(os.path.join(root, "dup.txt"), root, "JPEGImages", "SegmentationClassAug", ".jpg", ".png")
    write_list(root, "empty.txt", [""])
    with pytest.raises(DataError, match="split list is empty"):
        read_split(os.path.join(root, "empty.txt"), root, "JPEGImages", "SegmentationClassAug", ".jpg",
                   ".png")
    with pytest.raises(DataError, match="data.root '/no/such' is not a directory"):
        build_split(data_cfg("/no/such").data, "labeled")
    write_list(root, "lab.txt", ["a", "zzz"])
    with pytest.raises(DataError, match="lab.txt: 2 listed file"):  # checked when the split is built
        build_split(data_cfg(root).data, "labeled")
    with pytest.raises(DataError, match="image not found: .*zzz.jpg"):  # and when a file vanishes later
        load_image(os.path.join(root, "JPEGImages", "zzz.jpg"))
    write_list(root, "lab.txt", ["a", "b"])
    lab = build_split(data_cfg(root).data, "labeled")
    # label with values outside the classes
    Image.fromarray(np.full((30, 40), 9, np.uint8), mode="L").save(os.path.join(root, "SegmentationClassAug",
                                                                                "b.png"))
    with pytest.raises(DataError, match=r"b.png has values \[9\] outside 0..3 and 255"):
        load_label(os.path.join(root, "SegmentationClassAug", "b.png"), 4)
    # label of another size
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(os.path.join(root, "SegmentationClassAug",
                                                                              "a.png"))
    with pytest.raises(DataError, match="is 40x30 but label .* is 10x10"):
        lab[0]
    # truncated image
    path = os.path.join(root, "JPEGImages", "b.jpg")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])
    with pytest.raises(DataError, match="cannot read image .*b.jpg"):
        load_image(path)


def test_images_of_every_mode_load_as_rgb_and_an_rgb_label_is_refused(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    assert (load_image(str(tmp_path / "g.png")) == gray[..., None]).all()
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert (load_image(str(tmp_path / "a.png")) == [200, 0, 0]).all()
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = load_image(str(tmp_path / "d.png"))
    assert out.dtype == np.uint8 and out.shape == (3, 4, 3) and out[..., 0].max() == 55000 // 257
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "rgb_label.png")
    with pytest.raises(DataError, match="RGB colour image; expected an index PNG"):
        load_label(str(tmp_path / "rgb_label.png"), 21)
    pal = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    pal.save(tmp_path / "p.png")
    assert load_label(str(tmp_path / "p.png"), 21).tolist() == [[0, 1], [2, 255]]


def test_augmentation_is_a_function_of_the_seed(tmp_path):
    root = make_voc(str(tmp_path), ["a"], size=(20, 16))
    cfg = data_cfg(root, shift=0.1, color_jitter=0.5)
    pipe = train_pipeline(cfg.data)
    img = load_image(os.path.join(root, "JPEGImages", "a.jpg"))
    lab = load_label(os.path.join(root, "SegmentationClassAug", "a.png"), 4)
    a, b, c = pipe(img, lab, 5), pipe(img, lab, 5), pipe(img, lab, 6)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (3, 32, 32) and a["label"].shape == (32, 32)
    assert (a["label"] == 255).sum() > 32 * 32 - 2 * 20 * 16  # the padding is ignored
    unl = train_pipeline(cfg.data, labeled=False)(img, None, 5)
    assert "label" not in unl and unl["valid"].dtype == torch.bool and 0 < unl["valid"].sum() < 32 * 32


def test_streams_shard_reshuffle_and_resume():
    n, g = 20, 8
    one = StreamBatchSampler(n, g, 0, 1, seed=3)
    two = [StreamBatchSampler(n, g, r, 2, seed=3) for r in range(2)]
    for k in range(6):
        full = one.batch(k)
        halves = two[0].batch(k) + two[1].batch(k)
        assert full == halves  # same global batch for any world size, same augmentation seeds
        assert not set(i for i, _ in two[0].batch(k)) & set(i for i, _ in two[1].batch(k))
    # a pass is 2 batches of 8 distinct samples; the next pass is another permutation
    pass0 = [i for k in range(2) for i, _ in one.batch(k)]
    pass1 = [i for k in range(2, 4) for i, _ in one.batch(k)]
    assert len(set(pass0)) == 16 and pass0 != pass1
    resumed = StreamBatchSampler(n, g, 0, 1, seed=3, start_batch=4)
    assert next(iter(resumed)) == one.batch(4)
    tiny = StreamBatchSampler(3, 8, 0, 1)  # fewer samples than the batch: repeated within a pass
    assert sorted(np.bincount([i for i, _ in tiny.batch(0)]).tolist()) == [2, 3, 3]
    with pytest.raises(ValueError, match="not divisible"):
        StreamBatchSampler(n, 7, 0, 2)


def test_eval_shards_cover_every_index_once():
    shards = [shard_indices(11, r, 4) for r in range(4)]
    assert sorted(sum(shards, [])) == list(range(11))


def test_splits_are_nested_reproducible_and_complementary():
    ids = [f"x{i:04d}" for i in range(10582)]
    s = nested_splits(ids, ["1/16", "1/8", "1/4", "1/2", "92"], seed=1)
    assert [len(s[k][0]) for k in ("1_16", "1_8", "1_4", "1_2")] == [662, 1323, 2646, 5291]
    assert set(s["1_16"][0]) <= set(s["1_8"][0]) <= set(s["1_4"][0]) <= set(s["1_2"][0])
    assert set(s["92"][0]) <= set(s["1_16"][0])
    for lab, unl in s.values():
        assert not set(lab) & set(unl) and len(lab) + len(unl) == len(ids)
    assert nested_splits(ids, ["1/8"], seed=1)["1_8"] == s["1_8"]
    assert nested_splits(ids, ["1/8"], seed=2)["1_8"] != s["1_8"]
    with pytest.raises(ValueError):
        labeled_count("0", 10)


def test_digits_builder_is_deterministic_and_disjoint(tmp_path):
    from seg_ssl.data.digits import TRAIN_SOURCES, VAL_SOURCES, build_digits
    assert TRAIN_SOURCES[1] <= VAL_SOURCES[0]  # val handwriting never seen in training
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    counts = build_digits(a, num_train=32, num_val=8, seed=0, splits=("1/16", "1/8"))
    build_digits(b, num_train=32, num_val=8, seed=0, splits=("1/16", "1/8"))
    assert counts == {"train": 32, "val": 8, "1_16": 2, "1_8": 4}
    for sub in ("JPEGImages/train_00007.jpg", "SegmentationClass/val_00003.png", "splits/1_8/labeled.txt"):
        assert open(os.path.join(a, sub), "rb").read() == open(os.path.join(b, sub), "rb").read()
    labels = np.stack([np.asarray(Image.open(os.path.join(a, "SegmentationClass", f"train_{i:05d}.png")))
                       for i in range(32)])
    assert set(np.unique(labels)) <= set(range(11)) | {255}
    assert 0.4 < (labels == 0).mean() < 0.8 and (labels == 255).any()


def test_labeled_pipeline_marks_padding_apart_from_ignored_pixels():
    cfg = from_dict({"data": {"root": "x", "labeled_list": "l", "val_list": "v", "num_classes": 4,
                              "crop_size": 32, "scale_range": [1.0, 1.0], "hflip": False},
                     "train": {"iters": 1}}, "test")
    image = np.full((20, 24, 3), 100, np.uint8)  # smaller than the crop: padded below and right
    label = np.zeros((20, 24), np.uint8)
    label[5, 5] = 255  # an ignored pixel of the image (e.g. an object border)
    out = train_pipeline(cfg.data, labeled=True)(image, label, seed=0)
    assert out["label"].shape == out["valid"].shape == (32, 32)
    assert out["valid"][:20, :24].all() and not out["valid"][20:].any() and not out["valid"][:, 24:].any()
    assert out["label"][5, 5] == 255 and out["valid"][5, 5]  # ignored, but not padding
    assert (out["label"][~out["valid"]] == 255).all()


def test_build_digits_cli_writes_the_benchmark_splits(tmp_path, monkeypatch, capsys):
    """The clean rendering (the pretrained benchmark's) writes its label counts, 1/32 to 1/8 with the
    fixed counts 125 and 250 between, all nested; a folder missing a split is built again."""
    import runpy
    import sys
    out = tmp_path / "dc"
    monkeypatch.setattr(sys, "argv", ["build_digits.py", "--rendering", "clean", "--train", "320", "--val",
                                      "4", "--out", str(out)])
    script = os.path.join(ROOT, "datasets", "build_digits.py")
    runpy.run_path(script, run_name="__main__")
    names = ("1_32", "1_16", "1_8", "125", "250")
    lists = {k: (out / "splits" / k / "labeled.txt").read_text().split() for k in names}
    assert [len(v) for v in lists.values()] == [10, 20, 40, 125, 250]
    assert (set(lists["1_32"]) <= set(lists["1_16"]) <= set(lists["1_8"]) <= set(lists["125"])
            <= set(lists["250"]))
    assert (out / ".complete").read_text().strip() == "320 4 0 clean"
    shutil.rmtree(out / "splits" / "250")  # a folder built before the 250 list existed
    runpy.run_path(script, run_name="__main__")
    assert (out / "splits" / "250" / "labeled.txt").read_text().split() == lists["250"]
    runpy.run_path(script, run_name="__main__")
    assert "already built" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["build_digits.py", "--train", "64", "--out", str(tmp_path / "d"),
                                      "--splits", "1/16,250"])
    with pytest.raises(SystemExit):
        runpy.run_path(script, run_name="__main__")
    assert "--splits: split count '250' must be in 1..64" in capsys.readouterr().err
