from pathlib import Path

import pytest

import causalprune
from causalprune import resolve
from causalprune.config import Config, ConfigError, dump_config, load_config


def test_builtin_demo_config_loads_and_roundtrips(tmp_path):
    cfg = load_config(None)
    assert cfg.name == "demo" and cfg.data.name == "mnist1d" and cfg.model.name == "mlp"
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path).to_dict() == cfg.to_dict()


def test_overrides_are_typed():
    cfg = load_config(None, ["prune.sparsity=0.98", "model.widths=[64, 32]", "seed=3", "prune.rewind=false"])
    assert cfg.prune.sparsity == 0.98 and cfg.model.widths == (64, 32) and cfg.seed == 3
    assert cfg.prune.rewind is False
    assert isinstance(load_config(None, ["train.lr=1"]).train.lr, float)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("prune.sparsity=1.2", r"prune.sparsity must be in \[0, 1\), got 1.2"),
        ("prune.n_iter=0", "prune.n_iter must be >= 1"),
        ("prune.bogus=1", "unknown config key 'prune.bogus'; valid keys under prune: method, sparsity"),
        ("bogus=1", "unknown config key 'bogus'; valid keys: name, seed, data"),
        ("train.batch_size=abc", "train.batch_size must be an integer, got str"),
        ("train.lr=true", "train.lr must be a number"),
        ("data.name=cifar99",
         "data.name must be one of cifar10, digits, fashionmnist, friedman, imagenet, mnist, mnist1d, pysrc, "
         "tinyimagenet"),
        ("data.image_size=32", "data.image_size applies to tinyimagenet, imagenet only, not mnist1d"),
        ("model.pretrained=torchvision", "torchvision weights exist for resnet50 only, not mlp"),
        ("train.post_optimizer=lbfgs", "train.post_optimizer must be one of sgd, adamw"),
        ("causal.record_steps=0", "causal.record_steps must be > 0"),
        ("causal.storage=gpu", "causal.storage must be one of device, cpu"),
        ("train.initial_lr=0.001", "train.initial_lr applies to the onecycle schedule only, not cosine"),
        ("data.workers=-1", "data.workers must be >= 0"),
        ("data.val_fraction=-0.1", r"data.val_fraction must be in \[0, 0.9\), got -0.1"),
        ("data.test_fraction=0.95", r"data.test_fraction must be in \[0, 0.9\)"),
        ("prune.method=snap", "prune.method must be one of"),
        ("causal.solver=lars", "causal.solver must be one of auto, cd, fista, sgd, minnorm"),
        ("causal.delta_loss=full", "causal.delta_loss must be one of same_batch, probe"),
        ("model.widths=12", "model.widths must be a list"),
        ("prune=3", "prune. must be a mapping|prune must be a mapping"),
        ("novalue", "must look like key.sub=value"),
    ],
)
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve.load(None, [override])


def test_config_is_a_leaf_and_names_are_checked_where_a_run_is_resolved(tmp_path):
    # Values and types are the config's business; registry names are the resolver's.
    cfg = load_config(None, ["prune.method=snap", "data.name=cifar99"])
    with pytest.raises(ConfigError, match="data.name must be one of"):
        resolve.check(cfg)
    from causalprune.experiment import run_experiment

    with pytest.raises(ConfigError, match="prune.method must be one of"):
        run_experiment(load_config(None, ["prune.method=snap"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written for a bad name


def test_method_sections_are_owned_by_their_criteria():
    from causalprune import criteria
    from causalprune.config import SECTIONS
    from causalprune.criteria.causal import CausalSettings

    assert SECTIONS["causal"] is CausalSettings
    cfg = load_config(None, ["causal.solver=cd"])
    assert isinstance(cfg.causal, CausalSettings) and cfg.causal.solver == "cd"
    assert cfg.to_dict()["causal"]["solver"] == "cd"
    causal, energy, magnitude = criteria.get("causal"), criteria.get("energy"), criteria.get("magnitude")
    assert causal.reads_key("causal.solver") and not energy.reads_key("causal.solver")
    assert energy.reads_key("causal.recorder") and not magnitude.reads_key("causal.recorder")
    assert magnitude.reads_key("causal.probe_size")  # the probe set is carved out of every run's data
    assert not criteria.get("dense").reads_key("prune.sparsity") and magnitude.reads_key("train.lr")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_configs_are_frozen():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]


CONFIG_DIR = Path(causalprune.__file__).parent / "configs"
SHIPPED = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not p.name.startswith("sweep-"))


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("sweep-*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_plans(path, tmp_path):
    from causalprune.sweep import plan_sweep

    assert len(plan_sweep(path, tmp_path)) > 1


def test_configs_folder_is_shipped():
    assert {p.name for p in SHIPPED} >= {"demo.yaml", "mlp-digits.yaml", "cnn1d-mnist1d.yaml", "mlp-friedman.yaml"}
    assert (Path(__file__).parents[1] / "configs" / "demo.yaml").is_file()  # the repo's configs/ link


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.name == path.stem


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_dry_runs(path, capsys):
    from causalprune.cli import main

    code = main(["run", str(path), "--dry-run", "--set", "train.device=cpu"])
    captured = capsys.readouterr()
    assert "prunable" in captured.out and "training: batch" in captured.out  # the whole plan, data or not
    if "NOT PRESENT" in captured.out:  # data not downloaded here: one line naming it, exit 2
        err = captured.err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "not found: expected" in err[0], err
    else:
        assert code == 0 and f"data {load_config(path).data.name}: present" in captured.out


def test_streamed_data_sets_cannot_live_on_the_device():
    with pytest.raises(ConfigError, match="data.on_device needs an in-memory data set; imagenet is streamed"):
        resolve.load(None, ["data.name=imagenet", "data.on_device=true"])


def test_momentum_model_cannot_use_spread_recorded_steps():
    with pytest.raises(ConfigError, match="momentum_model needs consecutive recorded steps"):
        load_config(None, ["causal.momentum_model=true", "causal.record_steps=2"])


def test_digest_ignores_keys_at_their_default():
    base = load_config(None)
    assert load_config(None, ["causal.storage=device", "data.workers=4"]).digest() == base.digest()
    assert load_config(None, ["causal.storage=cpu"]).digest() != base.digest()
    assert load_config(None, ["seed=1"]).digest() != base.digest()


def test_yaml_errors_give_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata:\n  name: digits\n model: mlp\n")  # line 4, column 2: the stray indent
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_config(bad)
    assert "line 4, column 2" in str(e.value) and "\n" not in str(e.value)
    bad.write_text("prune: {sparsity: 0.9\nseed: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "line 2, column 5" in str(e.value) and "\n" not in str(e.value)


def test_sweep_yaml_errors_give_line_and_column(tmp_path, capsys):
    from causalprune.cli import main

    bad = tmp_path / "sweep.yaml"
    bad.write_text("name: s\ngrid:\n  seed: [0, 1\n  prune.n_pre: [1]\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not valid YAML" in err[0] and "line 4, column 14" in err[0], err
    assert not (tmp_path / "out").exists()


def test_shipped_configs_resolve_by_name_from_anywhere(tmp_path, monkeypatch):
    from causalprune.config import find_config

    monkeypatch.chdir(tmp_path)  # not the repository: its configs/ link is not here
    for spelling in ("mlp-digits", "mlp-digits.yaml", "configs/mlp-digits.yaml"):
        assert find_config(spelling) == CONFIG_DIR / "mlp-digits.yaml", spelling
        assert load_config(spelling).name == "mlp-digits"
    for spelling in ("paper/resnet20-cifar10-oneshot", "configs/paper/resnet20-cifar10-oneshot.yaml"):
        assert load_config(spelling).name == "resnet20-cifar10-oneshot"
    # A real local file always wins.
    (tmp_path / "mlp-digits.yaml").write_text("name: mine\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mlp-digits.yaml").write_text("name: mine-too\n")
    assert load_config("mlp-digits.yaml").name == "mine"
    assert load_config("mlp-digits").name == "mine"
    assert load_config("configs/mlp-digits.yaml").name == "mine-too"
    assert load_config("configs/cnn1d-mnist1d.yaml").name == "cnn1d-mnist1d"  # not here: the shipped one
    with pytest.raises(ConfigError) as e:
        load_config("mlp-digit")
    msg = str(e.value)
    assert msg.startswith("config file not found: mlp-digit") and "causalprune list" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_sweeps_resolve_by_name(tmp_path, monkeypatch):
    from causalprune.sweep import load_sweep, plan_sweep

    monkeypatch.chdir(tmp_path)
    base, name, _, _ = load_sweep("sweep-ablation")
    assert name == "ablation" and base == CONFIG_DIR / "demo.yaml"
    assert len(plan_sweep("configs/paper/sweep-fig3-smoke.yaml", tmp_path / "out")) > 1
    assert len(plan_sweep("paper/sweep-fig3-smoke", tmp_path / "out")) > 1
    with pytest.raises(ConfigError, match="sweep file not found: sweep-nope"):
        load_sweep("sweep-nope")


DEMO = CONFIG_DIR / "demo.yaml"


def test_a_budget_given_by_set_replaces_the_other_budget_of_the_file(tmp_path):
    notes: list[str] = []
    cfg = load_config(None, ["prune.granularity=channel", "prune.speedup=2"], notes)
    assert (cfg.prune.sparsity, cfg.prune.speedup) == (None, 2.0)
    assert notes == [f"prune.speedup=2 from --set replaces prune.sparsity=0.9 from {DEMO}"]
    channel = tmp_path / "channel.yaml"
    channel.write_text("prune:\n  granularity: channel\n  speedup: 3\n")
    notes.clear()
    cfg = load_config(channel, ["prune.sparsity=0.25"], notes)
    assert (cfg.prune.sparsity, cfg.prune.speedup) == (0.25, None)
    assert notes == [f"prune.sparsity=0.25 from --set replaces prune.speedup=3 from {channel}"]
    notes.clear()
    cfg = load_config(None, ["prune.granularity=channel", "prune.speedup=2", "prune.sparsity=null"], notes)
    assert (cfg.prune.sparsity, cfg.prune.speedup, notes) == (None, 2.0, [])  # cleared by hand: nothing replaced


def test_two_budgets_at_one_level_are_refused_saying_how_to_clear_one(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text("prune:\n  granularity: channel\n  sparsity: 0.5\n  speedup: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(both)
    assert f"are both set in {both}" in str(e.value) and "--set prune.sparsity=null" in str(e.value)
    assert load_config(both, ["prune.sparsity=null"]).prune.speedup == 2.0  # the way the message shows
    with pytest.raises(ConfigError, match=r"prune.sparsity \(0.5\) and prune.speedup \(2\) are both set by --set"):
        load_config(None, ["prune.granularity=channel", "prune.speedup=2", "prune.sparsity=0.5"])


def test_a_sweep_grid_over_speedup_replaces_the_base_configs_sparsity(tmp_path):
    from causalprune.sweep import plan_sweep

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nset: {prune.granularity: channel}\ngrid:\n  prune.speedup: [2, 3]\n")
    cells = plan_sweep(sweep, tmp_path / "out")
    assert [(c.config.prune.sparsity, c.config.prune.speedup) for c in cells] == [(None, 2.0), (None, 3.0)]


def test_a_duplicated_yaml_key_is_refused_naming_it_the_file_and_both_lines(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: x\nprune:\n  method: magnitude\n  sparsity: 0.5\n  method: causal\n")
    with pytest.raises(ConfigError) as e:
        load_config(dup)
    message = str(e.value)
    assert str(dup) in message and "'method'" in message and "lines 3 and 5" in message and "\n" not in message
    dup.write_text("seed: 1\nname: x\nseed: 2\n")  # at the top level too
    with pytest.raises(ConfigError, match="'seed' is given twice in one mapping \\(lines 1 and 3\\)"):
        load_config(dup)
    from causalprune.config import read_yaml

    merged = tmp_path / "merged.yaml"  # a merge key's keys may be overridden: that is YAML, not a duplicate
    merged.write_text("a: &base {k: 1, j: 2}\nb:\n  <<: *base\n  k: 3\n")
    assert read_yaml(merged) == {"a": {"k": 1, "j": 2}, "b": {"k": 3, "j": 2}}


def test_a_duplicated_key_in_a_sweep_file_is_refused(tmp_path, capsys):
    from causalprune.cli import main

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\ngrid:\n  seed: [0, 1]\n  seed: [2]\n")
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"sweep file {sweep}: key 'seed' is given twice" in err[0] and "lines 3 and 4" in err[0]
