"""ADE20K and COCO: the preparation scripts on tiny archives in the official layouts (written here),
UniMatch V2's ADE20K split rule, the raw-label errors, the dataset check, and training on both sets."""
import importlib.util
import json
import os
import random

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SMALL_NET, THREADS
from helpers import cli, load_tool, run_tool as run
from reference_ssl import brute_force_miou


def script(name):
    """datasets/NAME.py as a module (its functions; the CLI runs as a process below)."""
    path = os.path.join(ROOT, "datasets", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"datasets_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jpeg(path, h, w, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


# -- ADE20K ------------------------------------------------------------------------------------------

def make_ade(root, n_train=6, n_val=2):
    """ADEChallengeData2016 in miniature: raw annotations 0..150, 0 = "other"; every image has some."""
    raw = {}
    for sub, prefix, n in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        for i in range(1, n + 1):
            stem = f"{prefix}_{i:08d}"
            h, w = 36 + 4 * i, 40 + 2 * i
            jpeg(root / "images" / sub / f"{stem}.jpg", h, w, i)
            ann = np.random.default_rng(100 + i).integers(1, 150, (h, w)).astype(np.uint8)
            ann[:, :5] = 0                                     # "other objects"
            ann[0, 5], ann[0, 6], ann[0, 7] = 1, 150, 2        # wall, flag, building
            (root / "annotations" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ann, mode="L").save(root / "annotations" / sub / f"{stem}.png")
            raw[f"{sub}/{stem}"] = ann
    return raw


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade") / "ADEChallengeData2016"
    make_ade(root)
    r = run("datasets/prepare_ade20k.py", "--root", str(root), "--workers", "2")
    assert r.returncode == 0, r.stderr
    return root


def test_prepare_ade20k_maps_other_to_ignore_and_shifts_the_classes(ade_root, tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    raw = make_ade(root)
    jpeg(root / "images" / "training" / "ADE_train_00000099.jpg", 8, 8, 0)  # no annotation PNG
    r = run("datasets/prepare_ade20k.py", "--root", str(root), "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert "warning: 1 training image(s) have no annotation PNG and are not listed" in r.stderr
    assert "6 training images, not ADEChallengeData2016's 20,210" in r.stderr
    for key, ann in raw.items():
        out = Image.open(root / "annotations_150" / f"{key}.png")
        assert out.mode == "L" and out.size == (ann.shape[1], ann.shape[0])
        expected = ann.astype(np.int64) - 1
        expected[ann == 0] = 255
        assert (np.asarray(out) == expected).all()
        assert np.asarray(out)[0, 5:8].tolist() == [0, 149, 1] and (np.asarray(out)[:, :5] == 255).all()
    # the same bytes as the parallel run's
    for key in raw:
        assert (root / "annotations_150" / f"{key}.png").read_bytes() == \
            (ade_root / "annotations_150" / f"{key}.png").read_bytes()
    assert (root / "lists" / "val.txt").read_text() == (
        "images/validation/ADE_val_00000001.jpg annotations_150/validation/ADE_val_00000001.png\n"
        "images/validation/ADE_val_00000002.jpg annotations_150/validation/ADE_val_00000002.png\n")
    train = (root / "lists" / "train.txt").read_text().splitlines()
    assert len(train) == 6 and "00000099" not in "".join(train)
    for name, n in (("1_64", 1), ("1_4", 2), ("1_2", 3)):  # ceil(6 x fraction) off the full set
        lab = (root / "splits" / name / "labeled.txt").read_text().splitlines()
        unl = (root / "splits" / name / "unlabeled.txt").read_text().splitlines()
        assert len(lab) == n and sorted(lab + unl) == train
    # a second run writes nothing; a deleted PNG and an interrupted write are made again
    mtimes = {k: os.stat(root / "annotations_150" / f"{k}.png").st_mtime_ns for k in raw}
    r = run("datasets/prepare_ade20k.py", "--root", str(root), "--workers", "0")
    assert "annotations_150/: 0 written, 8 already there" in r.stdout
    (root / "annotations_150" / "training" / "ADE_train_00000003.png").unlink()
    (root / "annotations_150" / "training" / "ADE_train_00000004.partial9.png").write_bytes(b"\x89PNG half")
    r = run("datasets/prepare_ade20k.py", "--root", str(root), "--workers", "0")
    assert "annotations_150/: 1 written, 7 already there" in r.stdout
    assert not list(root.rglob("*partial*"))
    assert (root / "annotations_150" / "training" / "ADE_train_00000003.png").read_bytes() == \
        (ade_root / "annotations_150" / "training" / "ADE_train_00000003.png").read_bytes()
    assert all(os.stat(root / "annotations_150" / f"{k}.png").st_mtime_ns == t
               for k, t in mtimes.items() if k != "training/ADE_train_00000003")


def test_prepare_ade20k_refuses_converted_or_misplaced_annotations(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    make_ade(root, n_train=2, n_val=1)
    Image.fromarray(np.full((40, 42), 255, np.uint8), mode="L").save(
        root / "annotations" / "training" / "ADE_train_00000001.png")
    r = run("datasets/prepare_ade20k.py", "--root", str(root), "--workers", "0")
    assert r.returncode != 0 and "values [255] above 150" in r.stderr and "already converted?" in r.stderr
    assert not (root / "lists").exists()
    r = run("datasets/prepare_ade20k.py", "--root", str(tmp_path / "ADE20K_2021_17_01"))
    assert r.returncode != 0 and "the full ADE20K release has no annotations/" in r.stderr


# UniMatch V2's split files (LiheYoung/UniMatch-V2 66d517c, splits/ade20k/<name>/*.txt), line: image name
V2_LINES = {("1_32", "labeled", 1): "ADE_train_00001609", ("1_32", "labeled", 2): "ADE_train_00006908",
            ("1_32", "labeled", 631): "ADE_train_00009454", ("1_8", "labeled", 2526): "ADE_train_00006447",
            ("1_8", "unlabeled", 1): "ADE_train_00016125", ("1_8", "unlabeled", 2): "ADE_train_00011344"}


def test_ade20k_splits_on_20210_names_are_v2s():
    rows = [f"images/training/ADE_train_{i:08d}.jpg annotations_150/training/ADE_train_{i:08d}.png"
            for i in range(20210, 0, -1)]  # any listing order
    splits = script("prepare_ade20k").v2_splits(rows, ["1/64", "1/32", "1/16", "1/8", "1/4", "1/2"])
    counts = {"1_64": 316, "1_32": 631, "1_16": 1263, "1_8": 2526, "1_4": 5052, "1_2": 10105}  # V2's files
    # the rule as the note records it: sorted names, random.Random(0).shuffle, first N labeled
    order = sorted(rows)
    random.Random(0).shuffle(order)
    for name, n in counts.items():
        lab, unl = splits[name]
        assert (len(lab), len(unl)) == (n, 20210 - n)
        assert lab == order[:n] and unl == order[n:]
    # nested: each a prefix of the next
    for small, large in zip(list(counts), list(counts)[1:], strict=False):
        assert splits[large][0][:counts[small]] == splits[small][0]
    for (name, which, lineno), stem in V2_LINES.items():
        assert splits[name][which == "unlabeled"][lineno - 1] == \
            f"images/training/{stem}.jpg annotations_150/training/{stem}.png"


def test_raw_ade_labels_are_one_line_errors_naming_the_script(tmp_path):
    from seg_ssl.data.dataset import load_label
    from seg_ssl.errors import DataError
    raw = np.zeros((4, 4), np.uint8)
    raw[0, 0] = 150
    Image.fromarray(raw, mode="L").save(tmp_path / "ADE_train_00000001.png")
    with pytest.raises(DataError) as e:
        load_label(str(tmp_path / "ADE_train_00000001.png"), 150)
    assert "\n" not in str(e.value) and str(e.value).endswith(
        "has values [150] outside 0..149 and 255; raw ADE20K annotations (0 = other, 1..150 = the classes)? "
        "datasets/prepare_ade20k.py converts them (0 -> 255, k -> k-1)")
    Image.fromarray(np.full((4, 4), 90, np.uint8), mode="L").save(tmp_path / "coco.png")
    with pytest.raises(DataError, match=r"values \[90\] outside 0..80 and 255; COCO category ids .* "
                                        r"datasets/prepare_coco.py writes the masks"):
        load_label(str(tmp_path / "coco.png"), 81)


def test_check_dataset_names_raw_ade_annotations(ade_root, tmp_path):
    # the archive's own annotations given to a config directly
    root = tmp_path / "ADEChallengeData2016"
    raw = make_ade(root, n_train=2, n_val=1)
    for name, keys in (("train.txt", ["training/ADE_train_00000001", "training/ADE_train_00000002"]),
                       ("val.txt", ["validation/ADE_val_00000001"])):
        (root / name).write_text("".join(f"images/{k}.jpg annotations/{k}.png\n" for k in keys))
    common = ("configs/ade20k_sup.yaml", f"data.root={root}", "data.labeled_list=train.txt",
              "data.unlabeled_list=null", "data.val_list=val.txt")
    r = cli("check_dataset", *common)
    assert r.returncode == 1 and "3 problem(s)" in r.stdout
    assert "ADE_val_00000001.png has values [150] outside 0..149 and 255; raw ADE20K" in r.stdout
    # raw annotations without a 150 pass the value check, but not the check of the whole set
    for key, ann in raw.items():
        no_flag = np.where(ann == 150, 3, ann).astype(np.uint8)
        Image.fromarray(no_flag, mode="L").save(root / "annotations" / f"{key}.png")
    r = cli("check_dataset", *common)
    assert r.returncode == 1 and "1 problem(s)" in r.stdout
    assert ("problem: none of the 3 labels read has an ignored pixel (255): raw ADE20K annotations "
            "(0 = other, 1..150 = the classes)? datasets/prepare_ade20k.py converts them") in r.stdout
    # the prepared set passes
    r = cli("check_dataset", "configs/ade20k_sup.yaml", f"data.root={ade_root}",
            "data.labeled_list=lists/train.txt", "data.unlabeled_list=null")
    assert r.returncode == 0, r.stdout


# -- COCO --------------------------------------------------------------------------------------------

H, W = 16, 20


def rect(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def crowd_rle():
    """Rows 12..15 of columns 0..7, uncompressed (column-major runs, starting with zeros)."""
    return {"counts": [12, 4] * 8 + [H * (W - 8)], "size": [H, W]}


def make_coco(root):
    """train2017 ids 1..3, val2017 ids 4..5; image 1: overlapping instances, a crowd, a multi-part
    polygon with a degenerate part; image 2 and 5: no annotations; image 3: compressed RLE."""
    from pycocotools import mask as mask_utils
    giraffe = np.zeros((H, W), np.uint8, order="F")
    giraffe[3:9, 4:15] = 1
    giraffe_rle = mask_utils.encode(np.asfortranarray(giraffe))
    giraffe_rle["counts"] = giraffe_rle["counts"].decode("ascii")
    anns = {
        "train2017": [(1, 1, [rect(2, 2, 10, 10)], 0),                      # person -> 1
                      (1, 90, [rect(6, 5, 14, 13)], 0),                     # toothbrush -> 80, over person
                      (1, 13, crowd_rle(), 1),                              # stop sign crowd -> 12, over both
                      (1, 44, [rect(15, 0, 19, 3), [0, 0, 19, 15]], 0),     # bottle -> 40; 2-point part
                      (3, 25, giraffe_rle, 0)],                             # giraffe -> 24
        "val2017": [(4, 1, [rect(1, 1, 9, 9)], 0)],
    }
    cats = [{"id": i, "name": n, "supercategory": "x"} for i, n in
            ((1, "person"), (13, "stop sign"), (25, "giraffe"), (44, "bottle"), (90, "toothbrush"))]
    (root / "annotations").mkdir(parents=True)
    for set_name, ids in (("train2017", (1, 2, 3)), ("val2017", (4, 5))):
        for i in ids:
            jpeg(root / set_name / f"{i:012d}.jpg", H, W, i)
        record = {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W} for i in ids],
                  "annotations": [{"id": k, "image_id": img, "category_id": c, "segmentation": s,
                                   "iscrowd": crowd, "area": 1.0, "bbox": [0, 0, 1, 1]}
                                  for k, (img, c, s, crowd) in enumerate(anns[set_name], 1)],
                  "categories": cats}
        (root / "annotations" / f"instances_{set_name}.json").write_text(json.dumps(record))
    return anns


def expected_masks(anns, overlap):
    """The rule, transcribed: each annotation's pycocotools mask painted in JSON order; with
    "ignore", pixels under two or more annotations are 255."""
    from pycocotools import mask as mask_utils
    index = {1: 1, 13: 12, 25: 24, 44: 40, 90: 80}
    out = {i: np.zeros((H, W), np.uint8) for i in range(1, 6)}
    count = {i: np.zeros((H, W), int) for i in range(1, 6)}
    for records in anns.values():
        for img, cat, seg, _ in records:
            if isinstance(seg, list):
                seg = mask_utils.merge(mask_utils.frPyObjects([p for p in seg if len(p) > 4], H, W))
            elif isinstance(seg["counts"], list):
                seg = mask_utils.frPyObjects(seg, H, W)
            m = mask_utils.decode(seg) > 0
            out[img][m] = index[cat]
            count[img] += m
    if overlap == "ignore":
        for i in out:
            out[i][count[i] > 1] = 255
    return out


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    pytest.importorskip("pycocotools")
    root = tmp_path_factory.mktemp("coco") / "coco"
    make_coco(root)
    (root.parent / "unimatch" / "1_512").mkdir(parents=True)  # UniMatch's format, no final newline
    (root.parent / "unimatch" / "1_512" / "labeled.txt").write_text(
        "train2017/000000000003.jpg masks/000000000003.png\n"
        "train2017/000000000001.jpg masks/000000000001.png")
    r = run("datasets/prepare_coco.py", "--root", str(root), "--workers", "2",
            "--splits-from", str(root.parent / "unimatch"))
    assert r.returncode == 0, r.stderr
    return root


@pytest.mark.parametrize("overlap", ["last", "ignore"])
def test_prepare_coco_writes_the_81_class_masks_by_the_rule(coco_root, tmp_path, overlap):
    root = tmp_path / "coco"
    anns = make_coco(root)
    r = run("datasets/prepare_coco.py", "--root", str(root), "--workers", "0", "--overlap", overlap)
    assert r.returncode == 0, r.stderr
    masks = {i: np.asarray(Image.open(root / "masks" / f"{i:012d}.png")) for i in range(1, 6)}
    assert all(Image.open(root / "masks" / f"{i:012d}.png").mode == "L" for i in masks)
    for i, m in expected_masks(anns, overlap).items():
        assert (masks[i] == m).all(), i
    one = masks[1]
    both = 80 if overlap == "last" else 255
    crowd = 12 if overlap == "last" else 255
    assert one[3, 3] == 1 and one[11, 12] == 80  # person alone, toothbrush alone
    assert one[8, 8] == both                      # toothbrush over person
    assert one[13, 1] == 12 and one[12, 7] == crowd  # crowd alone; crowd over toothbrush
    assert one[1, 17] == 40 and one[15, 19] == 0 and one[0, 0] == 0  # bottle's square, not its 2-point "box"
    assert (masks[2] == 0).all() and (masks[5] == 0).all()             # no annotations: all background
    assert masks[3][5, 10] == 24 and masks[4][5, 5] == 1
    assert (overlap == "ignore") == (255 in one)
    if overlap == "last":  # the default is what the module fixture's parallel run wrote
        assert all((root / "masks" / f"{i:012d}.png").read_bytes() ==
                   (coco_root / "masks" / f"{i:012d}.png").read_bytes() for i in masks)
    assert (root / "lists" / "val.txt").read_text() == (
        "val2017/000000000004.jpg masks/000000000004.png\nval2017/000000000005.jpg masks/000000000005.png\n")


def test_prepare_coco_uses_the_published_labeled_list_as_it_is(coco_root):
    assert (coco_root / "splits" / "1_512" / "labeled.txt").read_text() == (
        "train2017/000000000003.jpg masks/000000000003.png\n"
        "train2017/000000000001.jpg masks/000000000001.png\n")
    assert (coco_root / "splits" / "1_512" / "unlabeled.txt").read_text() == \
        "train2017/000000000002.jpg masks/000000000002.png\n"
    assert len((coco_root / "lists" / "train.txt").read_text().splitlines()) == 3


def test_prepare_coco_resumes_where_it_stopped(coco_root, tmp_path):
    root = tmp_path / "coco"
    make_coco(root)
    (root / "masks").mkdir()
    # what an interrupted run leaves: some finished masks, one half-written
    for i in (1, 4):
        (root / "masks" / f"{i:012d}.png").write_bytes((coco_root / "masks" / f"{i:012d}.png").read_bytes())
    (root / "masks" / "000000000002.partial123.png").write_bytes(b"\x89PNG half")
    before = {i: os.stat(root / "masks" / f"{i:012d}.png").st_mtime_ns for i in (1, 4)}
    r = run("datasets/prepare_coco.py", "--root", str(root), "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert "masks/ (train2017): 2 written, 1 already there" in r.stdout
    assert "masks/ (val2017): 1 written, 1 already there" in r.stdout
    assert not list(root.rglob("*partial*"))
    assert {i: os.stat(root / "masks" / f"{i:012d}.png").st_mtime_ns for i in (1, 4)} == before
    for i in range(1, 6):  # the same masks as the uninterrupted run's
        name = f"{i:012d}.png"
        assert (root / "masks" / name).read_bytes() == (coco_root / "masks" / name).read_bytes()


def test_prepare_coco_names_what_does_not_fit(tmp_path):
    pytest.importorskip("pycocotools")
    root = tmp_path / "coco"
    make_coco(root)
    jpeg(root / "val2017" / "000000000005.jpg", H + 2, W, 5)  # not the size its record says
    r = run("datasets/prepare_coco.py", "--root", str(root), "--workers", "0")
    assert r.returncode == 1
    assert f"000000000005.jpg is {W}x{H + 2} but its annotation record says {W}x{H}" in r.stderr
    (root.parent / "s" / "1_512").mkdir(parents=True)
    (root.parent / "s" / "1_512" / "labeled.txt").write_text(  # a val image
        "train2017/000000000004.jpg masks/000000000004.png\n")
    jpeg(root / "val2017" / "000000000005.jpg", H, W, 5)
    r = run("datasets/prepare_coco.py", "--root", str(root), "--workers", "0",
            "--splits-from", str(root.parent / "s"))
    assert r.returncode == 1
    assert "labeled.txt:1: image 000000000004 is not in instances_train2017.json" in r.stderr
    record = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    record["categories"].append({"id": 91, "name": "banner"})  # COCO-Stuff's, not a thing category
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(record))
    r = run("datasets/prepare_coco.py", "--root", str(root), "--workers", "0")
    assert r.returncode == 1 and "category id 91 ('banner') is not one of COCO's 80 thing ids" in r.stderr


def test_check_dataset_names_missing_and_mismatched_coco_masks(coco_root):
    common = ("configs/coco_sup.yaml", f"data.root={coco_root}", "data.labeled_list=lists/train.txt",
              "data.unlabeled_list=null", "data.val_list=lists/val.txt")
    assert cli("check_dataset", *common).returncode == 0
    mask = coco_root / "masks" / "000000000002.png"
    saved = mask.read_bytes()
    mask.unlink()
    Image.fromarray(np.zeros((H, W + 1), np.uint8), mode="L").save(coco_root / "masks" / "000000000005.png")
    try:
        r = cli("check_dataset", *common)
    finally:
        mask.write_bytes(saved)
        Image.fromarray(np.zeros((H, W), np.uint8), mode="L").save(coco_root / "masks" / "000000000005.png")
    assert r.returncode == 1 and "2 problem(s)" in r.stdout
    assert f"problem: label not found: {mask}" in r.stdout
    assert (f"hint: 1 label file(s) missing beside their images (e.g. {mask}): "
            "datasets/prepare_coco.py writes them") in r.stdout
    assert f"000000000005.jpg is {W}x{H} but label {coco_root}/masks/000000000005.png is {W + 1}x{H}" \
        in r.stdout


# -- configs and training ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["supervised", "cps", "unimatch", "fixmatch", "cac"])
def test_every_method_dry_runs_on_both_prepared_sets(ade_root, coco_root, method, capsys):
    for config, root in (("ade20k_sup.yaml", ade_root), ("coco_sup.yaml", coco_root)):
        split = "1_64" if config.startswith("ade") else "1_512"
        argv = [os.path.join(ROOT, "configs", config), f"method={method}", f"data.root={root}",
                f"data.labeled_list=splits/{split}/labeled.txt",
                f"data.unlabeled_list=splits/{split}/unlabeled.txt", "--dry-run", "--json"]
        assert load_tool("train").main(argv) == 0
        out = capsys.readouterr()
        assert json.loads(out.out)["config"]["method"] == method and "note:" not in out.err, out.err


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ade20k_sup.yaml", "coco_sup.yaml"])
def test_a_training_step_and_evaluation_on_each_prepared_set(ade_root, coco_root, config, tmp_path):
    from seg_ssl.config import load_config
    from seg_ssl.engine.trainer import Trainer
    from seg_ssl.evaluation.inference import infer_whole
    root, split, classes = (ade_root, "1_4", 150) if config.startswith("ade") else (coco_root, "1_512", 81)
    cfg = load_config(os.path.join(ROOT, "configs", config), [
        f"data.root={root}", f"work_dir={tmp_path}", f"data.labeled_list=splits/{split}/labeled.txt",
        f"data.unlabeled_list=splits/{split}/unlabeled.txt", "method=unimatch", "data.batch_size=2",
        "data.unlabeled_batch_size=2", "data.num_workers=0", "train.iters=1", "train.eval_interval=0",
        f"train.threads={THREADS}", *SMALL_NET])
    trainer = Trainer(cfg)
    res = trainer.train()
    assert res.iteration == 1
    # every non-ignored val pixel is scored once, and the score is the brute-force count's
    pixels = sum(int((np.asarray(Image.open(s.label)) != 255).sum()) for s in trainer.val.samples)
    assert int(res.metrics["confusion"].sum()) == pixels > 0
    trainer.model.eval()
    predict = lambda x: infer_whole(trainer.model, x, trainer.model.size_divisor)  # noqa: E731 (padded)
    assert res.metrics["mIoU"] == pytest.approx(brute_force_miou(predict, trainer.val, classes), abs=1e-12)
