"""Collectives on CPU with gloo, two or three processes spawned by the test itself.

Race-free by construction: the processes meet through a FileStore in the test's tmp dir (no port
is probed or bound by the test), they pass a barrier before closing gloo (so no rank tears down a
connection another is still using), they are started with spawn, and each writes its result to a
file that the test reads after joining them.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_ranks(worker, world, tmp_path, *args):
    """Run ``worker(rank, world, *args)`` in ``world`` spawned processes; returns the objects each
    rank saved with :func:`save_result`, by rank."""
    store = tmp_path / "store"
    mp.spawn(_entry, args=(world, str(store), str(tmp_path), worker, args), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _entry(rank, world, store, out_dir, worker, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = worker(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # nobody closes gloo while another rank may still be sending
    finally:
        dist.destroy_process_group()


def gather_worker(rank, world):
    from seg_ssl.collectives import all_gather_rows
    rows = 3 + 2 * rank  # different counts per rank
    t = torch.full((rows, 4), float(rank), requires_grad=True)
    g = all_gather_rows(t * 2)
    return g.detach().clone(), g.requires_grad


def test_cac_gather_returns_all_ranks_negatives(tmp_path):
    expect = torch.cat([torch.full((3, 4), 0.0), torch.full((5, 4), 2.0)])
    for gathered, needs_grad in run_ranks(gather_worker, 2, tmp_path):
        assert torch.equal(gathered, expect) and not needs_grad


def small_net():
    from seg_ssl.models.segmentor import Segmentor
    torch.manual_seed(0)
    return Segmentor("deeplabv3plus", "resnet18", num_classes=5, encoder_depth=4, decoder_channels=16,
                     aspp_dropout=0.0, dropout=0.0)  # no dropout: its masks differ between processes


def fixed_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4, 32, 32), generator=g)


def syncbn_worker(rank, world):
    from torch.nn.parallel import DistributedDataParallel

    from seg_ssl.models.sync_bn import convert_sync_batchnorm
    net = convert_sync_batchnorm(small_net(), torch.device("cpu"))
    ddp = DistributedDataParallel(net)
    x, y = fixed_batch()
    b = x.shape[0] // world
    loss = torch.nn.functional.cross_entropy(ddp(x[rank * b:(rank + 1) * b]), y[rank * b:(rank + 1) * b])
    loss.backward()
    return {"grads": {k: p.grad.clone() for k, p in net.named_parameters()},
            "running_mean": net.encoder.bn1.running_mean.clone()}


@pytest.mark.slow
def test_two_processes_with_syncbn_give_the_gradients_of_one_process_with_the_whole_batch(tmp_path):
    results = run_ranks(syncbn_worker, 2, tmp_path)
    net = small_net()
    x, y = fixed_batch()  # no ignored pixels: the mean of the two halves' losses is the whole loss
    torch.nn.functional.cross_entropy(net(x), y).backward()
    for res in results:  # DDP leaves every rank with the same, whole-batch gradients
        for k, p in net.named_parameters():
            torch.testing.assert_close(res["grads"][k], p.grad, rtol=1e-3, atol=2e-5, msg=k)
        torch.testing.assert_close(res["running_mean"], net.encoder.bn1.running_mean, rtol=1e-4, atol=1e-6)


def eval_worker(rank, world, root):
    from seg_ssl.evaluation.evaluator import evaluate
    net = small_net().eval()
    return evaluate(net, _val_set(root), 5, 255, net.size_divisor, rank=rank, world_size=world)["confusion"]


def _val_set(root):
    from seg_ssl.data.dataset import SegDataset, read_split
    from seg_ssl.data.transforms import Pipeline
    samples = read_split(os.path.join(root, "ImageSets", "Segmentation", "val.txt"), root, "JPEGImages",
                         "SegmentationClass", ".jpg", ".png")
    return SegDataset(samples, 11, 255, Pipeline([], [0.5] * 3, [0.25] * 3))


@pytest.mark.slow
def test_distributed_eval_equals_single_process(digits_root, tmp_path):
    from seg_ssl.evaluation.evaluator import evaluate
    # a 5-class model scored on 11-class labels would be an error: remap by building a 5-class net
    # whose predictions are compared on 5 of the classes only (labels >= 5 become ignore)
    root = _remapped(digits_root)
    confusions = run_ranks(eval_worker, 3, tmp_path, root)
    net = small_net().eval()
    single = evaluate(net, _val_set(root), 5, 255, net.size_divisor)["confusion"]
    for confusion in confusions:
        assert torch.equal(confusion, single)
    assert int(single.sum()) > 0


def _remapped(root):
    """A copy of the digits val labels with classes >= 5 set to ignore (cached next to the set)."""
    import numpy as np
    from PIL import Image
    dst = root + "_5cls"
    if os.path.isdir(dst):
        return dst
    os.makedirs(os.path.join(dst, "SegmentationClass"))
    os.makedirs(os.path.join(dst, "ImageSets", "Segmentation"))
    os.symlink(os.path.join(root, "JPEGImages"), os.path.join(dst, "JPEGImages"))
    ids = open(os.path.join(root, "ImageSets", "Segmentation", "val.txt")).read().split()
    for i in ids:
        lab = np.asarray(Image.open(os.path.join(root, "SegmentationClass", i + ".png"))).copy()
        lab[(lab >= 5) & (lab != 255)] = 255
        Image.fromarray(lab, mode="L").save(os.path.join(dst, "SegmentationClass", i + ".png"))
    with open(os.path.join(dst, "ImageSets", "Segmentation", "val.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return dst


def torchrun(nproc, config, *overrides, log_dir):
    """tools/train.py under torchrun. --standalone lets the launcher's own store bind a port the OS
    picks (no probing); --log-dir keeps its files in the test's tmp dir instead of /tmp."""
    import subprocess
    import sys

    from conftest import ROOT
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                f"--log-dir={log_dir}"] if nproc > 1 else [sys.executable]
    return subprocess.run(launcher + [os.path.join(ROOT, "tools", "train.py"),
                                      os.path.join(ROOT, "configs", config), *overrides], capture_output=True,
                          text=True, env=env, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("config, extra, ddp_options", [
    ("digits_cps.yaml", ("cps.unsup_start_iter=1", "cps.rampup_iters=0", "cps.conf_thresh=0.0"), ()),
    ("digits_cac.yaml", ("cac.unsup_start_iter=1", "cac.pos_thresh=0.0", "cac.selected_num=64",
                         "train.joint_forward=false"), ()),  # groups apart under DDP and SyncBN
    # two forwards with gradient and one in eval mode per step, under DDP and SyncBN; the two
    # processes also run channels_last and torch.compile (traced through DDP; the eager backend
    # skips code generation) from the single process's eager checkpoint
    ("digits_unimatch.yaml", ("unimatch.unsup_start_iter=1", "unimatch.conf_thresh=0.0"),
     ("train.channels_last=true", "train.compile=default", "train.compile_backend=eager")),
])
def test_two_process_runs_complete_and_resume_with_any_world_size(digits_root, tmp_path, config, extra,
                                                                  ddp_options):
    from conftest import SMALL_NET, digits_cfg
    from seg_ssl.engine.checkpoint import load_checkpoint
    from seg_ssl.engine.trainer import Trainer
    work = tmp_path / "w"
    common = [f"data.root={digits_root}", f"work_dir={work}", "data.labeled_list=splits/1_4/labeled.txt",
              "data.unlabeled_list=splits/1_4/unlabeled.txt", "data.num_workers=0", "data.val_batch_size=8",
              "data.batch_size=4", "data.unlabeled_batch_size=4", "train.threads=1", "train.log_interval=1",
              "train.eval_interval=0", *SMALL_NET, *extra]
    # one process first (in this process: a launch costs ~10 s of imports), then two resume its run
    first = Trainer(digits_cfg(digits_root, str(work), *common, "train.iters=2", config=config))
    first.train()
    first.close()  # gives the work dir's lock back
    assert load_checkpoint(str(work / "latest.pth"))["iteration"] == 2
    r = torchrun(2, config, *common, "train.iters=4", *ddp_options, log_dir=tmp_path / "elastic")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world 2 | per-process batch 2+2" in r.stdout
    assert "training eager from here" not in r.stdout + r.stderr  # torch.compile did not fall back
    assert "resumed from" in r.stdout and "at iteration 2" in r.stdout and "it 4/4" in r.stdout
    assert r.stdout.count("   mIoU ") == 1  # the final table, printed by rank 0 only
    assert load_checkpoint(str(work / "latest.pth"))["iteration"] == 4
    logs = [f for f in os.listdir(work) if f.endswith(".log")]
    assert logs == ["train.log"]  # only rank 0 writes
