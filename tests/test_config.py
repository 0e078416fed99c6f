import os

import pytest

from seg_ssl.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "_base_").mkdir()
    write(tmp_path / "_base_" / "a.yaml",
          "data: {root: /a, num_classes: 3, labeled_list: l.txt, val_list: v.txt,"
          " crop_size: 100}\ntrain: {iters: 10, lr: 0.5}\n")
    write(tmp_path / "_base_" / "b.yaml",
          "data: {crop_size: 200}\ntrain: {lr: 0.25}\nmodel: {encoder: resnet18}\n")
    return tmp_path


def test_bases_merge_in_order_then_file(tree):
    cfg = load_config(write(tree / "x.yaml", "_base_: [_base_/a.yaml, _base_/b.yaml]\ntrain: {iters: 7}\n"))
    assert cfg.data.crop_size == 200  # b after a
    assert cfg.data.root == "/a" and cfg.data.num_classes == 3  # kept from a (deep merge)
    assert cfg.train.iters == 7 and cfg.train.lr == 0.25
    assert cfg.model.encoder == "resnet18" and cfg.model.arch == "deeplabv3plus"  # schema default
    assert cfg.work_dir == os.path.join("runs", "x")


def test_an_empty_section_does_not_erase_the_inherited_one(tree):
    # `train:` with nothing under it is YAML null: merged, it would replace the base's whole section
    path = write(tree / "x.yaml", "_base_: _base_/a.yaml\ntrain:\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: section 'train' is empty .* inherits"):
        load_config(path)
    other = write(tree / "z.yaml", "_base_: [_base_/a.yaml]\nmodel: {encoder: resnet18}\n")
    assert load_config(other).train.iters == 10  # a file that names other sections still loads


def test_overrides_are_yaml_scalars(tree):
    cfg = load_config(write(tree / "x.yaml", "_base_: _base_/a.yaml\n"),
                      ["train.iters=1000", "train.lr=1e-3", "data.hflip=false", "model.encoder_weights=null",
                       "data.scale_range=[0.75, 1.5]", "work_dir=runs/y", "data.root=/data/VOC2012",
                       "cps.eval_branch=2"])
    assert cfg.cps.eval_branch == "2"
    assert cfg.train.iters == 1000 and cfg.train.lr == 1e-3 and cfg.data.hflip is False
    assert cfg.model.encoder_weights is None and cfg.data.scale_range == [0.75, 1.5]
    assert cfg.work_dir == "runs/y" and cfg.data.root == "/data/VOC2012"


@pytest.mark.parametrize("override, message", [
    (["train.itres=5"], "unknown key 'train.itres' (did you mean 'train.iters'?)"),
    (["trian.iters=5"], "unknown key 'trian'"),
    (["train.iters=ten"], "train.iters = 'ten' has type str, expected int"),
    (["data.hflip=3"], "data.hflip = 3 has type int, expected bool"),
    (["model.arch=deeplabv3"], "is not one of ['deeplabv3plus', 'pspnet', 'deeplabv3plus_unimatch'"),
    (["train.iters"], "expected key=value"),
    (["train.iters.x=1"], "'iters' is not a section"),
    (["train=3"], "train must be a section"),
    (["train.iters=0"], "train.iters = 0 must be at least 1"),
    (["train.iters=-3"], "train.iters = -3 must be at least 1"),
    (["data.batch_size=0"], "data.batch_size = 0 must be at least 1"),
    (["data.num_classes=0"], "data.num_classes = 0 must be at least 1"),
    (["data.class_names=[a,b]"],
     "data.class_names has 2 entries for data.num_classes = 3: give one per class"),
    (["model.encoder=resnet999"],
     "model.encoder = 'resnet999' is not an smp encoder (or tu- and a timm model); "
     "did you mean 'resnet50'?"),
    (["model.encoder=tu-tf_efficientnet_lite9"], "did you mean 'tu-tf_efficientnet_lite4'?"),
])
def test_bad_keys_and_types_name_the_key(tree, override, message):
    with pytest.raises(ConfigError) as e:
        load_config(write(tree / "x.yaml", "_base_: _base_/a.yaml\n"), override)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_missing_required_key_is_named(tree):
    with pytest.raises(ConfigError, match="missing required key 'train.iters'"):
        load_config(write(tree / "x.yaml",
                          "data: {root: /a, num_classes: 3, labeled_list: l, val_list: v}\n"))


def test_missing_file_cycle_and_bad_yaml(tree):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tree / "nope.yaml"))
    write(tree / "c1.yaml", "_base_: c2.yaml\n")
    write(tree / "c2.yaml", "_base_: c1.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(str(tree / "c1.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tree / "bad.yaml", "data: [unclosed\n"))


@pytest.mark.parametrize("name",
                         sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".yaml")))
def test_every_shipped_config_validates(name):
    cfg = load_config(os.path.join(ROOT, "configs", name))
    assert cfg.train.iters > 0 and cfg.data.num_classes in (11, 19, 21, 81, 150)
    if cfg.data.class_names:
        assert len(cfg.data.class_names) == cfg.data.num_classes
    if cfg.data.palette:
        assert len(cfg.data.palette) == cfg.data.num_classes


def test_resolved_config_round_trips(tree, tmp_path):
    cfg = load_config(write(tree / "x.yaml", "_base_: _base_/a.yaml\n"), ["train.lr=0.125"])
    cfg.dump(str(tmp_path / "saved.yaml"))
    again = load_config(str(tmp_path / "saved.yaml"))
    assert again.to_dict() == cfg.to_dict()


def test_a_renamed_key_names_its_new_place_and_a_stored_config_is_moved(tree):
    from seg_ssl.config import from_dict, resume_conflicts
    base = "_base_: _base_/a.yaml\n"
    for old, new in (("eval: {branch: '2'}", "'eval.branch' is now 'cps.eval_branch'"),
                     ("cps: {ohem: true}", "'cps.ohem' is now 'train.ohem'"),
                     ("unimatch: {ohem_min_kept: 5}",
                      "'unimatch.ohem_min_kept' is now 'train.ohem_min_kept'")):
        with pytest.raises(ConfigError, match=new + ": rename it"):
            load_config(write(tree / "x.yaml", base + old + "\n"))
    cfg = load_config(write(tree / "x.yaml", base))
    stored = cfg.to_dict()  # as a checkpoint of an older seg_ssl holds it
    stored["unimatch"]["ohem"], stored["unimatch"]["ohem_min_kept"] = True, 7
    del stored["train"]["ohem"], stored["train"]["ohem_min_kept"]
    moved = from_dict(stored, "checkpoint (its stored config)", stored=True)
    assert moved.train.ohem is True and moved.train.ohem_min_kept == 7 and "ohem" not in moved.unimatch
    # resuming such a run under the new keys with the same values is no change of settings
    same = from_dict(stored, "x", ["train.ohem=true", "train.ohem_min_kept=7"], stored=True).to_dict()
    assert resume_conflicts(stored, same) == []
