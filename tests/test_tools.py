import json
import os

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, cli, load_tool, run_tool


def test_eval_scores_folders_of_pngs(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 2]], np.uint8)
    Image.fromarray(gt, mode="L").save(tmp_path / "gt" / "a.png")
    Image.fromarray(pred, mode="L").save(tmp_path / "pred" / "a.png")
    out = tmp_path / "m.json"
    r = cli("eval", "--pred-dir", tmp_path / "pred", "--gt-dir", tmp_path / "gt", "--num-classes", "4",
            "--out", out)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    # class 0: tp 1, fp 1 (gt 2 -> 0), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 1/2
    np.testing.assert_allclose(m["IoU"][:3], [1 / 3, 2 / 3, 1 / 2])
    assert m["IoU"][3] is None and abs(m["mIoU"] - 0.5) < 1e-12 and abs(m["aAcc"] - 4 / 6) < 1e-12
    assert "mIoU 50.00" in r.stdout
    # a predicted 255 is no class: a miss for the true class, a false positive for none
    pred[0, 0] = 255  # true class 0
    Image.fromarray(pred, mode="L").save(tmp_path / "pred" / "a.png")
    r = cli("eval", "--pred-dir", tmp_path / "pred", "--gt-dir", tmp_path / "gt", "--num-classes", "4",
            "--out", out)
    m = json.loads(out.read_text())
    # class 0: tp 0, fp 1 (gt 2 -> 0), fn 2 -> 0; classes 1 and 2 as before
    np.testing.assert_allclose(m["IoU"][:3], [0.0, 2 / 3, 1 / 2])
    assert abs(m["aAcc"] - 3 / 6) < 1e-12 and abs(m["Acc"][0] - 0.0) < 1e-12


@pytest.mark.slow
def test_user_mistakes_are_one_line_errors(tmp_path):
    # one real process: the script's own entry point turns the error into one line and exit 2
    r = run_tool("tools/train.py", "configs/digits_sup.yaml", "train.itres=5")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: configs/digits_sup.yaml: unknown key 'train.itres' (did you mean 'train.iters'?)"]
    r = cli("train", "configs/digits_sup.yaml", f"data.root={tmp_path}/missing", f"work_dir={tmp_path}/w")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "is not a directory; expected a VOC-style layout" in r.stderr
    r = cli("eval", "--pred-dir", tmp_path, "--gt-dir", tmp_path / "no", "--num-classes", "3")
    assert r.returncode == 2 and "not a directory" in r.stderr


def test_dry_run_prints_derived_sizes():
    r = cli("train", "configs/voc_sup.yaml", "--dry-run", env={"WORLD_SIZE": "2"})
    assert r.returncode == 0, r.stderr
    # the world size torchrun would set divides the global batch of 8
    assert json.loads(r.stdout[r.stdout.index("{\n"):])["labeled_per_process"] == 4
    assert "crop_size: 512" in r.stdout
    assert "note: data.root 'data/VOCdevkit/VOC2012' does not exist here" in r.stderr


def test_dry_run_names_missing_lists_and_files(digits_root, tmp_path):
    (tmp_path / "lab.txt").write_text("train_00000\nno_such_image\n")
    r = cli("train", "configs/digits_cps.yaml", "--dry-run", f"data.root={digits_root}",
            f"data.labeled_list={tmp_path}/lab.txt", f"data.unlabeled_list={tmp_path}/none.txt")
    assert r.returncode == 0, r.stderr
    assert "lab.txt: 2 listed file(s) missing, e.g. " in r.stderr and "no_such_image.jpg" in r.stderr
    assert f"note: split list not found: {tmp_path}/none.txt" in r.stderr


def test_make_splits_writes_nested_splits_of_the_asked_sizes(tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text("\n".join(f"id{i}" for i in range(100)) + "\n")
    r = cli("make_splits", "--list", lst, "--out", tmp_path / "s", "--splits", "1/8,1/4,10")
    assert r.returncode == 0, r.stderr
    lab8 = (tmp_path / "s" / "1_8" / "labeled.txt").read_text().split()
    lab4 = (tmp_path / "s" / "1_4" / "labeled.txt").read_text().split()
    unl4 = (tmp_path / "s" / "1_4" / "unlabeled.txt").read_text().split()
    assert len(lab8) == 13 and len(lab4) == 25 and set(lab8) <= set(lab4) and len(unl4) == 75


def test_dry_run_derives_cac_sizes_for_any_world_size():
    from seg_ssl.config import ConfigError, load_config
    from seg_ssl.engine.dry_run import derived_sizes
    cfg = load_config(os.path.join(ROOT, "configs", "voc_cac.yaml"))
    for world in (1, 2, 4):
        sizes = derived_sizes(cfg, world)
        # the published VOC setting: every pixel of every crop, N = 51,200, whatever the GPU count
        assert sizes["cac_negatives_per_loss"] == 51200
        assert sizes["cac_feature_map"] == [40, 40] and sizes["unlabeled_per_process"] == 8 // world
        assert 0 < sizes["cac_expected_overlap_pixels_per_process"] < sizes["cac_pixels_per_crop_per_process"]
    city = load_config(os.path.join(ROOT, "configs", "cityscapes_cac.yaml"))
    assert derived_sizes(city, 4)["cac_negatives_per_loss"] == 129600
    with pytest.raises(ConfigError, match="data.batch_size = 8 is the global batch and must be divisible "
                                          "by the world size 3"):
        derived_sizes(cfg, 3)


@pytest.mark.slow
def test_eval_and_infer_on_a_checkpoint(digits_root, tmp_path, capsys):
    from conftest import digits_cfg
    from seg_ssl.config import ConfigError
    from seg_ssl.engine.trainer import Trainer
    work = tmp_path / "w"
    trainer = Trainer(digits_cfg(digits_root, str(work), "train.iters=3"))
    res = trainer.train()
    common = [f"data.root={digits_root}", "data.val_batch_size=8", "data.num_workers=0"]
    out = tmp_path / "m.json"
    evaluate, infer = load_tool("eval").main, load_tool("infer").main  # in this process: no ~5 s start-up
    assert evaluate([os.path.join(ROOT, "configs", "digits_sup.yaml"), str(work / "latest.pth"), *common,
                     "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    # same numbers as the trainer's eval
    assert m["mIoU"] == res.metrics["mIoU"] and m["aAcc"] == res.metrics["aAcc"]
    assert m["protocol"] == {"mode": "whole", "scales": [1.0], "flip": False}  # the protocol that scored it
    # the same checkpoint re-scored under another protocol says so, in the file and under the table
    assert evaluate([os.path.join(ROOT, "configs", "digits_sup.yaml"), str(work / "latest.pth"), *common,
                     "eval.mode=slide_unimatch", "eval.window=48", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["protocol"] == {"mode": "slide_unimatch", "window": 48, "stride": 32,
                                                       "scales": [1.0], "flip": False}
    printed = capsys.readouterr().out
    assert "protocol: slide_unimatch (UniMatch V1: windows of 48 from the origin at stride 32" in printed
    preds = tmp_path / "preds"
    assert infer([os.path.join(ROOT, "configs", "digits_sup.yaml"), str(work / "latest.pth"), *common,
                  "--input", os.path.join(digits_root, "ImageSets", "Segmentation", "val.txt"), "--limit",
                  "2", "--out", str(preds)]) == 0
    assert sorted(os.listdir(preds)) == ["val_00000.png", "val_00000_color.png", "val_00000_overlay.png",
                                         "val_00001.png", "val_00001_color.png", "val_00001_overlay.png"]
    mask = np.asarray(Image.open(preds / "val_00000.png"))
    assert mask.shape == (64, 64) and mask.max() < 11
    with pytest.raises(ConfigError, match="does not match the config's model"):
        evaluate([os.path.join(ROOT, "configs", "digits_cps.yaml"), str(work / "latest.pth"), *common])


def test_compare_prints_runs_side_by_side(tmp_path, capsys):
    compare = load_tool("compare")
    a = {"IoU": [0.9, 0.2], "Acc": [1, 1], "mIoU": 0.55, "aAcc": 0.9, "mAcc": 0.7}
    b = {"IoU": [0.8, 0.4], "Acc": [1, 1], "mIoU": 0.6, "aAcc": 0.85, "mAcc": 0.75}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--names", "sup", "cps"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line and line[0] != "-"}
    assert rows["1"] == ["20.00", "40.00", "+20.00"] and rows["mIoU"] == ["55.00", "60.00", "+5.00"]
    # two files of one folder get two columns; files of different runs are titled by run
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0].split()
    assert header[1:3] == [f"{tmp_path.name}/a", f"{tmp_path.name}/b"] and "note:" not in printed
    # files scored under different protocols are named below the table
    (tmp_path / "b.json").write_text(json.dumps({**b, "protocol": {"mode": "pad_cac", "multiple": 8,
                                                                   "scales": [1.0], "flip": False}}))
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--names", "sup", "cac"]) == 0
    note = capsys.readouterr().out.split("note: ")[1].splitlines()
    assert note[1:] == ["  sup: not recorded", "  cac: pad_cac (CAC: reflect-padded to a multiple of 8)"]
    assert compare.column_names(["runs/sup/eval.json", "runs/cps/eval.json"]) == ["sup", "cps"]
    assert compare.column_names(["x/run/eval.json", "y/run/eval.json"]) == ["x/run/eval", "y/run/eval"]
    from seg_ssl.config import ConfigError
    with pytest.raises(ConfigError, match="give each file its own title"):
        compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--names", "x", "x"])
    r = cli("compare", tmp_path / "a.json", tmp_path / "missing.json")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing.json" in r.stderr


@pytest.mark.slow
def test_demo_says_its_steps_and_reports_the_gain_of_its_two_runs(digits_root, tmp_path):
    open(os.path.join(digits_root, ".complete"), "a").close()  # built: the demo must not build a full set
    out, result = tmp_path / "demo", tmp_path / "demo.json"
    r = run_tool("tools/demo.py", "--data", digits_root, "--out", str(out), "--split", "1_4", "--iters", "4",
                 "--warmup", "2", "--json", str(result))
    assert r.returncode == 0, r.stdout + r.stderr
    steps = [line[:5] for line in r.stdout.splitlines() if line.startswith("[")]
    assert steps == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"] and "already built" in r.stdout
    method_name = load_tool("demo").METHOD  # the demo's own setting, whichever method it names
    method = method_name.lower()
    scores = {run: json.loads((out / run / "metrics.json").read_text()) for run in ("sup", method)}
    assert all(m["iteration"] == 4 for m in scores.values())
    stored = json.loads(result.read_text())
    assert stored["gain"] == pytest.approx(100 * (scores[method]["mIoU"] - scores["sup"]["mIoU"]))
    assert f"{method_name} {stored['gain']:+.1f} mIoU over labeled-only" in r.stdout.splitlines()[-1]
    # the method ran its own step after the warm-up: its log has the unlabeled terms labeled-only lacks
    logged = [json.loads(line) for line in (out / method / "train.jsonl").read_text().splitlines()]
    assert set(logged[-1]) - set(json.loads((out / "sup" / "train.jsonl").read_text().splitlines()[-1]))
    assert len(os.listdir(out / method / "predictions")) == 3 * 8
