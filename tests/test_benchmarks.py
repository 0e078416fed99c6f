"""The benchmark scripts on the small digits set: they run, measure and report what they claim.
(The measurements themselves live in benchmarks/README.md, not here.)"""
import json
import math
import os
import sys

import pytest

from conftest import ROOT, SMALL_NET

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_check  # noqa: E402
import ssl_digits  # noqa: E402
import throughput  # noqa: E402
import vit_attention  # noqa: E402

SMALL = ["data.labeled_list=splits/1_4/labeled.txt", "data.unlabeled_list=splits/1_4/unlabeled.txt",
         "data.num_workers=0", "data.val_batch_size=8"]


def test_gpu_check_dry_runs_every_published_network_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh --dry, in this process (gpu_check.main: the script only picks the
    interpreter), in float32: R50 in bf16 or fp16 takes ~10 s a step on a CPU without bf16 units;
    tests/test_speed_options.py runs every method under bf16, the resume test under fp16. (First in
    the first file: at ~40 s it is the longest of the quick tests.)"""
    import subprocess
    table = tmp_path / "table.md"
    assert gpu_check.main(["--dry", "--precisions", "fp32", "--out", str(table)]) == 0
    rows = [ln.split(" | ") for ln in table.read_text().splitlines()
            if ln.startswith("| ") and "---" not in ln]
    timed = [r for r in rows if r[0] != "| method" and len(r) == 7]
    assert [r[0][2:] for r in timed] == list(gpu_check.PUBLISHED)
    crops = {r[0][2:]: (int(r[1]), r[2]) for r in timed}
    # the published per-GPU batches: CAC 4 + 4 (2 GPUs), the UniMatch family 2 + 2 (4 GPUs)
    assert (crops["CAC"] == (32, "4+4") and crops["UniMatch"] == (32, "2+2")
            and crops["labeled-only"][1] == "2+0")
    assert all(r[3] == "fp32" and float(r[4]) > 0 and float(r[5]) > 0 for r in timed)
    curves = [r for r in rows if r[0] != "| method" and len(r) == 4]  # the loss continued from the timed run
    assert [r[0][2:] for r in curves] == list(gpu_check.PUBLISHED) and all(float(r[1]) > 0 for r in curves)
    # the shell wrapper: without a GPU and without --dry it says so and exits 2
    r = subprocess.run(["bash", f"{ROOT}/benchmarks/gpu_check.sh"], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 2 and "no CUDA device here" in r.stderr


@pytest.mark.slow
def test_ssl_digits_runs_resumes_and_adds_the_equal_wall_baseline(digits_root, tmp_path, capsys):
    # one seed, 3 runs (each a process: most of its time is imports); the table's mean and spread
    # over seeds are tested on stored results below
    args = ["--suite", "scratch", "--ratios", "1_4", "--methods", "labeled-only", "CAC", "--seeds", "3",
            "--iters", "4", "--jobs", "2", "--threads", "1", "--work-root", str(tmp_path / "runs"),
            "--data-root", digits_root, "--store", str(tmp_path / "store.json"),
            "--extra", "cac.unsup_start_iter=2", "data.num_workers=0", "data.val_batch_size=8",
            "train.log_interval=1", *SMALL_NET]
    assert ssl_digits.main(args) == 0
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    sup, cac, wall = (results[f"{name} 1_4 3"] for name in ("labeled-only", "CAC",
                                                            "labeled-only, equal wall time"))
    assert sup["iteration"] == cac["iteration"] == 4
    # the equal-wall baseline trains labeled-only for as long as the slower CAC ran, in iterations
    assert wall["iteration"] == math.ceil(4 * max(sup["wall_s"], cac["wall_s"]) / sup["wall_s"])
    assert "seed=3" in sup["command"] and "seed=3" in cac["command"] and "seed=3" in wall["command"]
    # the semi-supervised runs log their pseudo labels' accuracy against the hidden truth; labeled-only
    # has none
    assert "data.unlabeled_truth=true" in cac["command"] and "unlabeled_truth" not in sup["command"]
    assert [p[0] for p in cac["pseudo_labels"]] == [3, 4] and sup["pseudo_labels"] == []
    assert all(0 <= v <= 100 for p in cac["pseudo_labels"] for v in p[1:] if v is not None)
    table = capsys.readouterr().out
    assert "| labeled-only |" in table and "| CAC |" in table and "| labeled-only, equal wall time |" in table
    # a second call reuses every finished run instead of training again
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("bench_result.json")}
    assert len(stamps) == 3
    assert ssl_digits.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("bench_result.json")} == stamps
    # the store alone (the runs' folders gone, as on another machine) also holds every finished run
    stored = json.loads((tmp_path / "store.json").read_text())
    assert sorted((r["name"], r["seed"]) for r in stored) == sorted(
        (n, 3) for n in ("labeled-only", "CAC", ssl_digits.EQUAL_WALL))
    at = args.index("--work-root")
    other = args[:at + 1] + [str(tmp_path / "other")] + args[at + 2:]
    assert ssl_digits.main(other) == 0
    assert not list((tmp_path / "other").rglob("bench_result.json"))


def test_ssl_digits_table_and_readme_block(tmp_path, monkeypatch):
    results = {("labeled-only", "1_16", 0): {"mIoU": 10.0, "wall_s": 60, "iteration": 100},
               ("labeled-only", "1_16", 1): {"mIoU": 12.0, "wall_s": 180, "iteration": 100},
               ("B", "1_16", 0): {"mIoU": 20.0, "wall_s": 120, "iteration": 300,
                                  "pseudo_labels": [[50, 90.0, 40.0], [60, 91.0, None], [300, 95.0, 61.0]]}}
    text = ssl_digits.table(results, ["1_16"], [0, 1], base_iters=100)
    rows = [line for line in text.splitlines() if line.startswith("| labeled-only") or line.startswith("| B")]
    # mean and sample std of 10 and 12; mean wall
    assert rows[0] == "| labeled-only | 11.0 ± 1.4 |  |  | 2.0 min |"
    # one of the two seeds; gain over the baseline's mean; object pixels named right, first -> last
    assert rows[1] == "| B | 20.0 (n=1) (300 it) | +9.0 | 40 -> 61 | 2.0 min |"
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n")
    monkeypatch.setattr(ssl_digits, "README", str(readme))
    ssl_digits.write_readme("first")
    ssl_digits.write_readme("lite0 table", "lite0")  # each suite has its own block
    ssl_digits.write_readme("second")  # replaces the block, keeps the rest
    doc = readme.read_text()
    assert doc.count(ssl_digits.BEGIN) == 1 and "second" in doc and "first" not in doc and "intro" in doc
    assert "<!-- ssl_digits:lite0:begin -->\nlite0 table\n<!-- ssl_digits:lite0:end -->" in doc


@pytest.mark.slow
def test_throughput_measures_every_part(digits_root, tmp_path):
    out = tmp_path / "t.json"
    # one method (each is a process of its own, as is the evaluation); labeled-only runs at VOC scale below
    assert throughput.main(["--methods", "CPS+CutMix", "--steps", "2", "--warmup", "1", "--threads", "1",
                            "--workers", "0", "--data-root", digits_root, "--json", str(out), "--extra",
                            *SMALL, "data.crop_size=32", "data.batch_size=2",
                            "data.unlabeled_batch_size=2"]) == 0
    res = json.loads(out.read_text())
    (cps,) = res["rows"]
    assert cps["setting"] == "fp32" and cps["train_s"] > 0 and cps["step_s"] > 0 and cps["loader_s"] > 0
    assert 0 < cps["training_mib"] < cps["peak_mib"] and cps["batch"] == "2+2" and cps["crop"] == 32
    ev = res["eval"]
    assert ev["val_images"] == 24 and ev["whole_img_s"] > 0 and ev["slide_img_s"] > 0


@pytest.mark.slow
def test_throughput_voc_scale_runs_on_a_synthetic_voc_set(tmp_path):
    out = tmp_path / "t.json"
    assert throughput.main(["--scale", "voc", "--crop", "64", "--methods", "labeled-only", "--steps", "1",
                            "--warmup", "0", "--threads", "1", "--workers", "0", "--no-eval",
                            "--settings", "channels_last", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["crop"] == 64 and row["batch"] == "2+0" and row["train_s"] > 0
            and row["setting"] == "channels_last")


def test_ssl_digits_report_only_tabulates_finished_runs(tmp_path, capsys, monkeypatch):
    def put(ratio, folder, seed, name, miou, iters=100):
        d = tmp_path / ratio / folder / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "bench_result.json").write_text(json.dumps(
            {"name": name, "mIoU": miou, "wall_s": 60.0, "iteration": iters, "IoU": [90.0, 0.5, None]}))
    put("1_16", "labeled-only", 0, "labeled-only", 10.0)
    put("1_16", "labeled-only", 1, "labeled-only", 14.0)
    put("1_16", "CAC", 0, "CAC", 13.0)
    put("1_16", "sup_wall_300", 0, ssl_digits.EQUAL_WALL, 15.0, iters=300)
    (tmp_path / "results.json").write_text("{}")  # what an earlier call leaves beside the runs
    store = tmp_path / "store.json"  # holds a run of another count, trained elsewhere
    store.write_text(json.dumps([{"name": "CAC", "mIoU": 20.0, "wall_s": 60.0, "iteration": 100,
                                  "IoU": [90.0, 20.0, None], "ratio": "1_8", "seed": 0}]))
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n")
    monkeypatch.setattr(ssl_digits, "README", str(readme))
    assert ssl_digits.main(["--report-only", "--ratios", "1_16", "--seeds", "0", "1", "--write-readme",
                            "--work-root", str(tmp_path), "--store", str(store),
                            "--extra", "train.channels_last=false"]) == 0
    # the block's command reproduces these runs: the overrides they trained with included
    assert ("Reproduce: `python benchmarks/ssl_digits.py --suite lite0 --ratios 1_16 --store "
            f"{os.path.relpath(store, ROOT)} --extra train.channels_last=false --equal-wall-iters 300 "
            "--write-readme`") in readme.read_text()
    out = capsys.readouterr().out
    assert "| labeled-only | 12.0 ± 2.8 |  |  | 1.0 min |" in out
    assert "| CAC | 13.0 (n=1) | +1.0 |  | 1.0 min |" in out  # results written before pseudo-label logging
    assert "| labeled-only, equal wall time | 15.0 (n=1) (300 it) | +3.0 |  | 1.0 min |" in out
    assert "collapsed to background" in out  # every foreground IoU below 1%
    # the runs found under the work root joined the store, beside what it held
    assert sorted((r["name"], r["ratio"], r["seed"], r["mIoU"]) for r in json.loads(store.read_text())) == [
        ("CAC", "1_16", 0, 13.0), ("CAC", "1_8", 0, 20.0), ("labeled-only", "1_16", 0, 10.0),
        ("labeled-only", "1_16", 1, 14.0), (ssl_digits.EQUAL_WALL, "1_16", 0, 15.0)]


def test_pseudo_label_quality_against_hand_counts():
    import torch

    import pseudo_labels
    # 3 classes (0 background), 4 pixels with true labels [0, 1, 2, 255]
    probs = torch.tensor([[0.6, 0.3, 0.1],    # bg right under both rules
                          [0.4, 0.35, 0.25],  # argmax: bg (wrong); fg_marginal: 1 (right), p(1|fg) 0.583
                          [0.1, 0.8, 0.1],    # class 1 under both (wrong: truth 2), p(1|fg) 0.889
                          [0.2, 0.7, 0.1]])   # ignored
    q = pseudo_labels.quality(probs.T.reshape(1, 3, 1, 4), torch.tensor([[[0, 1, 2, 255]]]),
                              thresholds=(0.0, 0.6, 0.95))
    assert q["argmax"] == pytest.approx({"pixel_acc": 1 / 3, "fg_as_bg": 1 / 2, "class_acc": 0.0})
    assert q["fg_marginal"] == pytest.approx({"pixel_acc": 2 / 3, "fg_as_bg": 0.0, "class_acc": 1 / 2})
    t0, t6, t95 = q["by_threshold"]
    assert (t0["kept"], t0["class_acc"]) == (1.0, 0.5)
    assert (t6["kept"], t6["class_acc"]) == (0.5, 0.0)  # only the confident, wrong pixel is left
    assert t95["kept"] == 0.0 and math.isnan(t95["class_acc"])


def test_pseudo_label_script_runs_on_a_checkpoint(digits_root, tmp_path, capsys):
    import pseudo_labels
    from conftest import digits_cfg
    from seg_ssl.engine.trainer import Trainer
    cfg = digits_cfg(digits_root, str(tmp_path), "train.iters=2")
    Trainer(cfg).train()
    cfg_path = tmp_path / "config.yaml"  # the resolved config the run saved
    assert pseudo_labels.main([str(cfg_path), str(tmp_path / "latest.pth"),
                               "--limit", "10", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "10 images of splits/1_4/unlabeled.txt" in out and "| fg_marginal |" in out


def test_label_curves_reads_the_evaluations_of_each_run(tmp_path, capsys):
    import label_curves
    # "few" evaluated iteration 400 twice (a resume): the later record wins
    evals = {"few": [(200, 0.305), (400, 0.2), (400, 0.31)], "all": [(200, 0.4), (400, 0.5525)]}
    for name, records in evals.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            "".join(json.dumps({"iteration": i, "mIoU": m, "aAcc": 0.9}) + "\n" for i, m in records))
    png = tmp_path / "curves.png"
    assert label_curves.main(["configs/digits_sup.yaml", "--report-only", "--work-root", str(tmp_path),
                              "--lists", "few=a.txt", "all=b.txt", "--png", str(png)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["| labeled | 200 | 400 |", "|---|---|---|", "| few | 30.5 | 31.0 |",
                   "| all | 40.0 | 55.2 |"]
    assert png.stat().st_size > 5000


def test_vit_attention_benchmark_compares_equal_steps():
    """benchmarks/vit_attention.py's two settings compute the same step (fused attention against the
    release's explicit softmax, on a 2-block DINOv2-S at crop 56): the same loss, times and memory
    reported."""
    fused, explicit = (vit_attention.run_one(s, "dinov2_small", 56, steps=1, vit_blocks=2)
                       for s in ("fused", "explicit"))
    assert math.isclose(fused["loss"], explicit["loss"], rel_tol=1e-5) and fused["tokens"] == 17
    assert all(r["seconds"] > 0 and r["peak_mib"] >= r["built_mib"] > 0 and len(r["all_seconds"]) == 2
               for r in (fused, explicit))
