"""Bad inputs are reported clearly and interrupted runs resume exactly, for every method."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, digits_cfg
from helpers import load_tool, make_voc, run_tool, write_list
from seg_ssl.engine.checkpoint import load_checkpoint
from seg_ssl.engine.trainer import Trainer


def write_cfg(tmp_path, root, **data):
    lines = [f"  {k}: {v}" for k, v in {"root": root, "num_classes": 4, "labeled_list": "lab.txt",
                                          "unlabeled_list": "unl.txt", "val_list": "val.txt",
                                          "num_workers": 0, "crop_size": 32, "batch_size": 2,
                                          "unlabeled_batch_size": 2, **data}.items()]
    path = tmp_path / "cfg.yaml"
    path.write_text("_base_: " + os.path.join(ROOT, "configs", "_base_", "models",
                                              "deeplabv3plus_r18_digits.yaml")
                    + "\ndata:\n" + "\n".join(lines) + f"\nwork_dir: {tmp_path}/w\ntrain:\n  iters: 2\n"
                    "  optimizer: adamw\n  lr: 0.001\n  eval_interval: 0\n")
    return str(path)


def test_check_dataset_reports_every_problem_at_once(tmp_path, capsys):
    check_dataset = load_tool("check_dataset").main
    root = make_voc(str(tmp_path / "d"), ["a", "b", "c", "d", "e", "f", "g"])
    write_list(root, "lab.txt", ["a", "b", "c", "d", "e", "nope", "a"])
    write_list(root, "unl.txt", ["f", "b"])
    write_list(root, "val.txt", ["g"])
    img = os.path.join(root, "JPEGImages")
    lab = os.path.join(root, "SegmentationClassAug")
    data = open(os.path.join(img, "b.jpg"), "rb").read()
    open(os.path.join(img, "b.jpg"), "wb").write(data[:len(data) // 3])  # truncated
    Image.fromarray(np.full((30, 40), 7, np.uint8), mode="L").save(os.path.join(lab, "c.png"))  # values
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(os.path.join(lab, "d.png"))  # size
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(os.path.join(lab, "e.png"))  # RGB label
    assert check_dataset([write_cfg(tmp_path, root)]) == 1
    out = capsys.readouterr().out
    # a duplicate id is one more problem; the rest of the list is still scanned
    assert "lab.txt:7: duplicate id 'a' (first on line 1)" in out
    for needle in ("cannot read image", "b.jpg", "c.png has values [7] outside 0..3 and 255",
                   "is 40x30 but label", "e.png is an RGB colour image", "image not found", "nope.jpg",
                   "1 ids are in both the labeled and the unlabeled list", "labeled: 6 samples",
                   "unlabeled: 2 samples", "val: 1 samples", "labeled class frequencies", "label not found",
                   "9 problem(s)"):  # b.jpg counts twice (it is in both lists), and the duplicate
        assert needle in out, (needle, out)
    write_list(root, "val.txt", [""])
    assert check_dataset([write_cfg(tmp_path, str(tmp_path / "missing"))]) == 1
    assert "is not a directory; expected root/JPEGImages/*.jpg" in capsys.readouterr().out


@pytest.mark.slow
def test_a_bad_file_met_by_a_worker_is_a_one_line_error(tmp_path):
    root = make_voc(str(tmp_path / "d"), ["a", "b", "v"], size=(32, 32))
    write_list(root, "lab.txt", ["a", "b"])
    write_list(root, "unl.txt", ["v"])
    write_list(root, "val.txt", ["v"])
    Image.fromarray(np.full((32, 32), 9, np.uint8), mode="L").save(os.path.join(root, "SegmentationClassAug",
                                                                                "b.png"))
    r = run_tool("tools/train.py", write_cfg(tmp_path, root, num_workers=1))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: label ")
    assert "b.png has values [9] outside 0..3 and 255" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_files_fail_before_training_and_a_bad_file_mid_run_keeps_the_work(tmp_path):
    from seg_ssl.config import load_config
    from seg_ssl.data.dataset import DataError
    from seg_ssl.data.streams import StreamBatchSampler
    ids = [f"i{k}" for k in range(8)]
    root = make_voc(str(tmp_path / "d"), ids + ["v"], size=(32, 32))
    write_list(root, "lab.txt", ids + ["nope"])
    write_list(root, "unl.txt", ["v"])
    write_list(root, "val.txt", ["v"])
    cfg_path = write_cfg(tmp_path, root)
    with pytest.raises(DataError, match=r"data.labeled_list .*lab.txt: 2 listed file\(s\) missing, e.g. "
                                        r".*nope.jpg and .*nope.png"):
        Trainer(load_config(cfg_path, ["train.iters=20"]))
    # a file that exists but cannot be read is met when a batch draws it; the steps before are kept
    write_list(root, "lab.txt", ids)
    open(os.path.join(root, "JPEGImages", "i5.jpg"), "wb").write(b"not a jpeg")
    trainer = Trainer(load_config(cfg_path, ["train.iters=20", "train.ckpt_interval=1000"]))
    with pytest.raises(DataError, match="cannot read image .*i5.jpg"):
        trainer.train()
    sampler = StreamBatchSampler(8, 2, seed=0, stream_id=0)
    first_bad = next(k for k in range(20) if 5 in [i for i, _ in sampler.batch(k)])
    assert load_checkpoint(str(tmp_path / "w" / "latest.pth"))["iteration"] == first_bad


def test_resuming_from_a_damaged_or_foreign_checkpoint_is_a_clear_error(digits_root, tmp_path):
    from seg_ssl.config import ConfigError
    work = tmp_path / "w"
    work.mkdir()
    (work / "latest.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="resume: cannot continue from .*latest.pth .*set resume=null"):
        Trainer(digits_cfg(digits_root, str(work), "train.iters=2"))
    Trainer(digits_cfg(digits_root, str(work), "train.iters=1", "resume=null")).train()
    with pytest.raises(ConfigError, match="resume: .*latest.pth was trained with other settings: "
                                          "model.decoder_channels 128 -> 64"):  # another architecture
        Trainer(digits_cfg(digits_root, str(work), "train.iters=2", "model.decoder_channels=64"))
    ckpt = torch.load(work / "latest.pth", weights_only=True)
    del ckpt["config"]  # a foreign checkpoint: no config to compare, its weights do not fit
    torch.save(ckpt, work / "latest.pth")
    with pytest.raises(ConfigError,
                       match="resume: cannot continue from .*latest.pth \\(weights do not match"):
        Trainer(digits_cfg(digits_root, str(work), "train.iters=2", "model.decoder_channels=64"))


def test_resume_refuses_changed_settings_and_keeps_the_record(digits_root, tmp_path):
    from seg_ssl.config import ConfigError
    work = tmp_path / "w"
    Trainer(digits_cfg(digits_root, str(work), "train.iters=3")).train()
    record = (work / "config.yaml").read_text()
    with pytest.raises(ConfigError) as e:
        Trainer(digits_cfg(digits_root, str(work), "train.iters=5", "train.lr=0.5", "model.dropout=0.3"))
    assert "was trained with other settings: model.dropout 0.0 -> 0.3; train.lr 0.001 -> 0.5." in str(e.value)
    assert "\n" not in str(e.value) and (work / "config.yaml").read_text() == record
    # extending the schedule and changing how often it logs or evaluates are fine
    t = Trainer(digits_cfg(digits_root, str(work), "train.iters=5", "train.log_interval=1", "eval.flip=true"))
    assert t.progress.iteration == 3
    t.train()
    assert "iters: 5" in (work / "config.yaml").read_text()
    log = (work / "train.log").read_text()
    assert log.count("config (resolved") == 2 and "resumed from" in log  # every start records its config


@pytest.mark.slow
def test_a_second_run_in_the_same_work_dir_is_refused(digits_root, tmp_path):
    work = tmp_path / "w"
    holder = run_tool("-c", "import sys, time; sys.path.insert(0, '.'); "
                      "from seg_ssl.engine.workdir import lock_work_dir; import os; "
                      f"os.makedirs({str(work)!r}, exist_ok=True); lock_work_dir({str(work)!r}); "
                      "print('locked', flush=True); sys.stdin.read()", popen=True)
    assert holder.stdout.readline().strip() == "locked"
    r = run_tool("tools/train.py", "configs/digits_sup.yaml", f"data.root={digits_root}", f"work_dir={work}",
                 "data.labeled_list=splits/1_4/labeled.txt", "train.iters=1", "work_dir_wait_s=0")
    holder.stdin.close()
    holder.wait()
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"error: work_dir {work} is in use by another run (pid {holder.pid}): wait for it to end, stop it, "
        f"or set work_dir to another folder")
    assert not (work / "config.yaml").exists() and not (work / "train.log").exists()  # nothing written
    # once the holder has gone (a crash drops the lock too), the run goes ahead and clears what a
    # killed save left behind
    (work / ".latest.pth.abc123.tmp").write_bytes(b"half a checkpoint")
    trainer = Trainer(digits_cfg(digits_root, str(work), "train.iters=1"))
    assert not (work / ".latest.pth.abc123.tmp").exists()
    trainer.train()
    # this process holds the lock until the trainer is closed; then another process may take it
    taker = ("import sys; sys.path.insert(0, '.'); from seg_ssl.engine.workdir import lock_work_dir; "
             f"lock_work_dir({str(work)!r})")
    assert run_tool("-c", taker).returncode != 0
    trainer.close()
    r = run_tool("-c", taker)
    assert r.returncode == 0, r.stderr
