"""Faults: a worker killed under torchrun --max-restarts, a second run racing the first for the work
dir, an evaluation that fails, a process that waits for a peer that never comes, and split lists
written by other tools (byte-order mark, CRLF, an id with a space)."""
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SMALL_NET, digits_cfg
from helpers import make_voc, run_tool, write_list
from seg_ssl.data.dataset import DataError, read_split
from seg_ssl.engine.checkpoint import load_checkpoint

# Small enough that a torchrun launch is mostly imports: 24 labeled 64x64 canvases cut to 32x32, a
# ResNet-18 stem and two stages, a 16-channel head.
TINY = ["data.labeled_list=splits/1_4/labeled.txt", "data.unlabeled_list=null", "data.batch_size=4",
        *SMALL_NET, "data.num_workers=1", "data.val_batch_size=8", "train.iters=6", "train.ckpt_interval=2",
        "train.log_interval=1", "train.eval_interval=0", "train.threads=1", "dist.timeout_s=60"]


def overrides(digits_root, work):
    return [f"data.root={digits_root}", f"work_dir={work}", *TINY]


def elastic_run(work, digits_root, log_dir, kill):
    """tools/train.py on two gloo workers under ``torchrun --standalone --max-restarts=N``, N the
    number of kills: --standalone binds the launcher's store to a port the OS picks (nothing
    probed). ``kill`` ("RANK:ITERATION,...") makes that rank SIGKILL itself after that iteration,
    the k-th pair on attempt k (the trainer's SEG_SSL_TEST_KILL hook). The timeout turns a hang into
    a failure."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               SEG_SSL_TEST_KILL=kill)
    restarts = len(kill.split(","))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--max-restarts={restarts}", f"--log-dir={log_dir}", os.path.join(ROOT, "tools", "train.py"),
           os.path.join(ROOT, "configs", "digits_sup.yaml"), *overrides(digits_root, work)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def _reference_rank(rank, store, args):
    """One rank of the uninterrupted run: what tools/train.py does, in a process forked from this
    one (a launch would spend most of its time importing torch and smp again). The ranks meet
    through a FileStore in the test's tmp dir: no port."""
    code = 1
    try:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
        from seg_ssl.config import load_config
        from seg_ssl.engine.trainer import train
        train(load_config(os.path.join(ROOT, "configs", "digits_sup.yaml"), args))
        code = 0
    finally:
        os._exit(code)  # nothing of pytest's runs in a forked child


def uninterrupted_weights(digits_root, tmp_path):
    import multiprocessing
    work = tmp_path / "ref"
    ctx = multiprocessing.get_context("fork")
    ranks = [ctx.Process(target=_reference_rank, args=(r, tmp_path / "store", overrides(digits_root, work)))
             for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(300)
        assert p.exitcode == 0
    return load_checkpoint(str(work / "latest.pth"))["model"]


@pytest.mark.slow
def test_a_killed_worker_restarts_and_the_run_ends_with_the_uninterrupted_weights(digits_root, tmp_path):
    # one run, two faults: rank 0 (it holds the work dir and writes the checkpoints) dies after
    # iteration 3, the second attempt resumes from the checkpoint of iteration 2; there rank 1 dies
    # after iteration 5, and the third attempt resumes from that of 4 and finishes
    work = tmp_path / "w"
    r = elastic_run(work, digits_root, tmp_path / "logs", kill="0:3,1:5")
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):  # each was killed, and every worker restarted
        assert f"failed (exitcode: -9) local_rank: {rank}" in r.stderr, r.stderr[-3000:]
    # the survivor of each fault says it in one line (its loader worker, sent torchrun's SIGTERM
    # too, ends quietly instead of adding a traceback from torch's SIGCHLD handler)
    survivors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: rank ")]
    assert [ln.split(":")[1] for ln in survivors] == [" rank 1 of 2", " rank 0 of 2"], survivors
    assert all("(another process died: " in ln for ln in survivors) and "Traceback" not in r.stderr
    for saved in (2, 4):
        assert f"resumed from {work}/latest.pth at iteration {saved}" in r.stdout
    assert " it 6/6 " in r.stdout
    got = load_checkpoint(str(work / "latest.pth"))
    expect = uninterrupted_weights(digits_root, tmp_path)
    assert got["iteration"] == 6 and got["model"].keys() == expect.keys()
    for k in expect:  # every rank continued its own random stream (ASPP dropout) and data shard
        assert torch.equal(got["model"][k], expect[k]), k


@pytest.mark.slow
def test_a_peer_that_never_comes_is_one_line_naming_the_rank(digits_root, tmp_path):
    # rank 1 of 2 meets at a store the test hosts on a port the OS picks; rank 0 never comes
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True",
           "TORCHELASTIC_RESTART_COUNT": "3"}
    r = run_tool("tools/train.py", "configs/digits_sup.yaml", f"data.root={digits_root}",
                 f"work_dir={tmp_path / 'w'}", *TINY[:-1], "dist.timeout_s=2", env=env)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: rank 1 of 2: joining the process group at 127.0.0.1:{store.port} "
                           "(torchrun attempt 3) failed within dist.timeout_s=2: "), line
    assert "Traceback" not in r.stderr


def test_a_failed_collective_names_the_rank_and_what_it_waited_for():
    from seg_ssl.engine.dist import DistInfo, DistributedError, waiting_for
    info = DistInfo(rank=1, world_size=2, timeout_s=30)
    gloo = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by "
            "peer [127.0.0.1]:8070. This is typically caused by a remote worker crashing. GLHF!")
    with pytest.raises(DistributedError) as e:
        with waiting_for("training step (gradient all-reduce)", info, 7):
            raise RuntimeError(gloo)
    assert str(e.value) == ("rank 1 of 2: training step (gradient all-reduce) at iteration 7 failed (another "
                            "process died: Connection closed by peer [127.0.0.1]:8070); the same command (or "
                            "torchrun --max-restarts) continues from latest.pth")
    with pytest.raises(DistributedError,
                       match=r"^rank 1 of 2: agreeing on a stop signal failed \(no answer within "
                             r"dist.timeout_s=30: Timed out waiting 30000ms"):
        with waiting_for("agreeing on a stop signal", info):
            raise RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 30000ms for "
                               "recv")
    with pytest.raises(RuntimeError, match="shape mismatch"):  # not a communication failure: left alone
        with waiting_for("training step", info):
            raise RuntimeError("shape mismatch")


# --------------------------------------------------------------------------------------------------
# the work dir's lock

def test_the_lock_is_not_held_by_the_processes_a_killed_run_forked(tmp_path):
    """A run's DataLoader workers are forked children: after rank 0 is SIGKILLed they live on until
    they notice. The lock must die with rank 0, not with its last child."""
    from seg_ssl.engine.workdir import lock_work_dir, unlock_work_dir
    work = tmp_path / "w"
    work.mkdir()
    code = ("import os, signal, sys, time; sys.path.insert(0, '.'); from seg_ssl.engine.workdir import "
            f"lock_work_dir; lock_work_dir({str(work)!r}); child = os.fork()\n"
            # the child lets go of the pipe, not the lock file
            "if child == 0:\n    os.close(1); time.sleep(600); os._exit(0)\n"
            "print(child, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    run = run_tool("-c", code, popen=True)
    child = int(run.stdout.readline())
    try:
        assert run.wait() == -signal.SIGKILL
        os.kill(child, 0)  # the forked child still runs, holding every file its parent had open
        lock_work_dir(str(work))  # raises if the child kept the lock
        unlock_work_dir(str(work))
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_second_run_waits_for_the_lock_then_names_the_holder(tmp_path, capsys):
    import threading

    from seg_ssl.engine.workdir import lock_work_dir, unlock_work_dir
    from seg_ssl.errors import WorkDirBusy
    work = tmp_path / "w"
    work.mkdir()
    holder = run_tool("-c",
                      "import sys; sys.path.insert(0, '.'); from seg_ssl.engine.workdir import "
                      f"lock_work_dir; lock_work_dir({str(work)!r}); print('locked', flush=True); "
                      "sys.stdin.read()", popen=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkDirBusy,
                           match=rf"^work_dir {work} is in use by another run \(pid {holder.pid}\) "
                                 r"\(waited 0.3 s\): wait for it to end"):
            lock_work_dir(str(work), wait_s=0.3)
        # a run that starts while the holder is exiting gets the lock once it has gone
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (lock_work_dir(str(work), wait_s=600), done.set()))
        waiter.start()
        while f"locked by pid {holder.pid}; waiting up to 600 s" not in capsys.readouterr().err:
            assert not done.is_set()
            waiter.join(0.05)
        assert not done.is_set()  # it is waiting, not refused
        holder.stdin.close()  # the holder exits
        waiter.join()
        assert done.is_set()
    finally:
        holder.kill()
        holder.wait()
        unlock_work_dir(str(work))


# --------------------------------------------------------------------------------------------------
# evaluation failures lose nothing

def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 3])
    return data


def test_an_unreadable_val_image_stops_the_run_before_training(digits_root, tmp_path, capsys):
    import shutil

    from seg_ssl.engine.trainer import Trainer
    root = tmp_path / "d"
    shutil.copytree(digits_root, root, symlinks=True)
    _truncate(root / "JPEGImages" / "val_00003.jpg")
    with pytest.raises(DataError) as e:
        Trainer(digits_cfg(str(root), str(tmp_path / "w"), "train.iters=2"))
    msg = str(e.value)
    assert msg.startswith(f"data.val_list {root}/ImageSets/Segmentation/val.txt: 1 val file(s) cannot be "
                          f"used, e.g. cannot read image {root}/JPEGImages/val_00003.jpg: image file is "
                          "truncated"), msg
    assert msg.endswith("; run tools/check_dataset.py CONFIG for every problem"), msg
    assert "\n" not in msg and not (tmp_path / "w" / "latest.pth").exists()
    # tools/check_dataset.py decodes every listed file too, val included
    from helpers import load_tool
    assert load_tool("check_dataset").main([os.path.join(ROOT, "configs", "digits_sup.yaml"),
                                            f"data.root={root}",
                                            "data.labeled_list=splits/1_4/labeled.txt"]) == 1
    assert f"problem: cannot read image {root}/JPEGImages/val_00003.jpg: image file is truncated" in \
        capsys.readouterr().out


def test_an_evaluation_that_fails_keeps_latest_and_the_resumed_run_matches(digits_root, tmp_path):
    import shutil

    from seg_ssl.engine.trainer import Trainer
    root = tmp_path / "d"
    shutil.copytree(digits_root, root, symlinks=True)
    common = ("train.iters=4", "train.eval_interval=2", "train.ckpt_interval=100", "data.val_batch_size=8",
              "data.batch_size=2", *SMALL_NET)
    full = Trainer(digits_cfg(str(root), str(tmp_path / "full"), *common))
    full.train()
    full.close()
    # the image breaks after the start-up check (a disk fault, a file rewritten by another job)
    trainer = Trainer(digits_cfg(str(root), str(tmp_path / "w"), *common))
    good = _truncate(root / "JPEGImages" / "val_00003.jpg")
    with pytest.raises(DataError) as e:
        trainer.train()
    trainer.close()
    assert re.fullmatch(r"cannot read image .*val_00003.jpg: image file is truncated.*; evaluation at "
                        r"iteration 2 failed; latest.pth \(iteration 2\) is saved: fix the cause and run the "
                        r"same command to continue \(it evaluates again first\)", str(e.value)), str(e.value)
    saved = load_checkpoint(str(tmp_path / "w" / "latest.pth"))
    assert saved["iteration"] == 2 and saved["eval_pending"]
    open(root / "JPEGImages" / "val_00003.jpg", "wb").write(good)
    resumed = Trainer(digits_cfg(str(root), str(tmp_path / "w"), *common))
    resumed.train()
    resumed.close()
    log = (tmp_path / "w" / "train.log").read_text()
    assert "evaluating at iteration 2 first" in log and log.count("eval at iteration 2:") == 1
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.progress.best["iteration"] in (2, 4)


# --------------------------------------------------------------------------------------------------
# split lists written by other tools

def _split(root, name, **kw):
    return read_split(os.path.join(root, name), root, "JPEGImages", "SegmentationClassAug", ".jpg", ".png",
                      **kw)


def test_a_byte_order_mark_crlf_and_trailing_blanks_are_read_as_plain_ids(tmp_path):
    root = make_voc(str(tmp_path), ["a", "b", "c"])
    with open(os.path.join(root, "bom.txt"), "wb") as f:  # as Notepad writes it: BOM, CRLF, blanks
        f.write("\ufeffa\r\nb  \t\r\n\r\n  c\r\n\r\n".encode("utf-8"))
    samples = _split(root, "bom.txt")
    assert [s.id for s in samples] == ["a", "b", "c"]
    assert samples[0].image == os.path.join(root, "JPEGImages", "a.jpg") and os.path.isfile(samples[0].image)
    with open(os.path.join(root, "pairs.txt"), "wb") as f:
        f.write("\ufeffJPEGImages/a.jpg SegmentationClassAug/a.png\r\n".encode("utf-8"))
    assert _split(root, "pairs.txt")[0].image == os.path.join(root, "JPEGImages", "a.jpg")
    with open(os.path.join(root, "latin1.txt"), "wb") as f:
        f.write("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError,
                       match=r"latin1.txt is not UTF-8 text \(invalid continuation byte at byte 3\)"):
        _split(root, "latin1.txt")


def test_an_id_with_a_space_is_one_line_showing_how_to_write_a_pair(tmp_path):
    root = make_voc(str(tmp_path), ["a"])
    write_list(root, "lab.txt", ["a", "train 00008"])
    with pytest.raises(DataError) as e:
        _split(root, "lab.txt")
    assert str(e.value) == (f"{root}/lab.txt:2: 'train 00008': ids cannot contain spaces; a line is one id "
                            "(2007_000032) or an image and its label relative to the root, separated by a "
                            "space (JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png)")
    problems = []  # tools/check_dataset.py: reported with the rest, the list still read
    assert [s.id for s in _split(root, "lab.txt", problems=problems)] == ["a"]
    assert problems == [str(e.value)]
    write_list(root, "three.txt", ["a b c"])
    with pytest.raises(DataError,
                       match="expected 'id' or 'image label', got 'a b c' \\(ids cannot contain spaces;"):
        _split(root, "three.txt")
    write_list(root, "pair.txt", ["JPEGImages/a.jpg SegmentationClassAug/a.png", "x.jpg x.png"])
    assert [s.id for s in _split(root, "pair.txt")] == ["a", "x"]  # paths, not an id with a space
