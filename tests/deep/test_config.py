"""TrainConfig: docs/theory.md section 7 defaults, checks naming the option, TOML files, resume rules, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import deep.config as config_module
from cli import main as cli_main
from deep.config import MAX_FEATURE_DIM, MAX_WIDTH, TrainConfig, config_nproc, load_toml, resolve_config


def test_defaults_follow_theory_section_7():
    config = TrainConfig()
    assert (config.arch, config.lr, config.momentum, config.weight_decay) == ("resnet18", 0.1, 0.9, 5e-4)
    assert (config.tau, config.batch_size, config.schedule, config.loss) == (0.1, 128, "multistep", "scl")
    assert config.effective_milestones == (15, 22)
    assert TrainConfig(epochs=10, milestones="3, 8").effective_milestones == (3, 8)
    # default milestones inside the warm-up are dropped (they were refused, naming --milestones not given)
    assert TrainConfig(epochs=2, warmup_epochs=1).effective_milestones == ()
    assert TrainConfig(epochs=8, warmup_epochs=4.5).effective_milestones == (6,)
    with pytest.raises(ValueError, match=r"--milestones must lie after the warm-up \(--warmup-epochs 3\), got \[3, 5\]"):
        TrainConfig(epochs=8, warmup_epochs=3, milestones="3,5")


@pytest.mark.parametrize("changes, option", [
    ({"batch_size": 0}, "--batch-size"),
    ({"dataset": "imagenet"}, "--dataset"),
    ({"ratio": 0.5}, "--ratio"),
    ({"protos": -1.0}, "--protos"),
    ({"tau": 0.0}, "--tau"),
    ({"momentum": 1.0}, "--momentum"),
    ({"milestones": "20,10"}, "--milestones"),
    ({"milestones": "5,40"}, "--milestones"),
    ({"milestones": "a,b"}, "--milestones"),
    ({"warmup_epochs": 30.0}, "--warmup-epochs"),
    ({"geometry": "/no/such/prototypes.npy"}, "--geometry"),
    ({"width": "wide"}, "--width"),
    ({"resume": "yes"}, "--resume"),
    ({"lr": float("nan")}, "--lr"),
    ({"out": ""}, "--out"),
    ({"seed": 2**64}, "--seed"),
    ({"sync_batchnorm": "yes"}, "--sync-batchnorm"),
    ({"proto_anchors": True, "loss": "ce-fixed"}, "--proto-anchors applies to --loss scl"),
    ({"proto_anchors": 1}, "--proto-anchors"),
])
def test_bad_values_name_the_option(changes, option):
    with pytest.raises((ValueError, TypeError), match=option):
        TrainConfig(**changes)


def test_dict_round_trip():
    config = TrainConfig(dataset="fmnist", milestones=(2, 3), epochs=4, protos=100)
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config
    assert TrainConfig.from_dict({"batch-size": 7}).batch_size == 7


def test_toml_keys_are_option_names_and_explicit_options_win(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('dataset = "fmnist"\nbatch-size = 64\nmilestones = [2, 3]\nepochs = 4\nweight_decay = 0.0\n')
    values = load_toml(path)
    assert values == {"dataset": "fmnist", "batch_size": 64, "milestones": [2, 3], "epochs": 4, "weight_decay": 0.0}
    config = resolve_config({"batch_size": 32, "lr": None}, path)
    assert (config.dataset, config.batch_size, config.milestones, config.lr) == ("fmnist", 32, (2, 3), 0.1)
    table = tmp_path / "table.toml"
    table.write_text('[train]\nprotos = 100\nsync-batchnorm = "off"\n')
    assert (resolve_config({}, table).protos, resolve_config({}, table).sync_batchnorm) == (100.0, "off")
    assert resolve_config({"sync_batchnorm": "on"}, table).sync_batchnorm == "on"


def test_nproc_in_the_config_file_is_for_the_launcher(tmp_path):
    path = tmp_path / "ddp.toml"
    path.write_text('[train]\nnproc = 4\nbatch-size = 64\n')
    assert load_toml(path) == {"batch_size": 64}  # the run itself (and its workers) never see nproc
    assert config_nproc(None, path) == 4 and config_nproc(2, path) == 2  # --nproc wins
    assert config_nproc(None, None) == 1
    plain = tmp_path / "plain.toml"
    plain.write_text("epochs = 2\n")
    assert config_nproc(None, plain) == 1
    for bad in ("0", "2.5", "true", '"2"'):
        path.write_text(f"nproc = {bad}\n")
        with pytest.raises(ValueError, match="nproc must be an integer >= 1"):
            config_nproc(None, path)


@pytest.mark.parametrize("text, match", [
    ("batch-sise = 3\n", "unknown option 'batch-sise'"),
    ("batch-size = 3\nbatch_size = 4\n", "given twice"),
    ("batch-size = \n", "not valid TOML"),
    (b"\xff\xfe", "'.*bad.toml' is not valid TOML"),  # not UTF-8
])
def test_bad_toml(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_toml(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")


def test_resume_uses_the_stored_configuration(tmp_path):
    stored = TrainConfig(dataset="fmnist", epochs=5, protos=100, out=str(tmp_path))
    (tmp_path / "config.json").write_text(stored.to_json())
    resumed = resolve_config({"out": str(tmp_path), "resume": True, "device": "cpu"})
    assert resumed == stored.replace(resume=True, device="cpu")
    with pytest.raises(ValueError, match="--lr"):
        resolve_config({"out": str(tmp_path), "resume": True, "lr": 0.5})
    # the same folder spelt differently (or a moved run) is the same run
    spelt = str(tmp_path) + "/."
    assert resolve_config({"out": spelt, "resume": True}) == stored.replace(resume=True, out=spelt)
    for text, match in (("[1]", "does not hold a run configuration"), ("{", "is not valid JSON")):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(ValueError, match=match):
            resolve_config({"out": str(tmp_path), "resume": True})


def test_resume_may_extend_epochs_of_an_explicit_multistep_schedule(tmp_path):
    stored = TrainConfig(epochs=5, milestones=(2, 4), out=str(tmp_path))
    (tmp_path / "config.json").write_text(stored.to_json())
    assert resolve_config({"out": str(tmp_path), "resume": True, "epochs": 8}).epochs == 8
    with pytest.raises(ValueError, match="--epochs differ"):
        resolve_config({"out": str(tmp_path), "resume": True, "epochs": 4})
    with pytest.raises(ValueError, match="--epochs, --milestones differ"):
        resolve_config({"out": str(tmp_path), "resume": True, "epochs": 8, "milestones": "2,6"})
    (tmp_path / "config.json").write_text(stored.replace(milestones=()).to_json())  # default: 50%/75%
    with pytest.raises(ValueError, match="--epochs differ"):
        resolve_config({"out": str(tmp_path), "resume": True, "epochs": 8})


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--milestones", "9,3"], "--milestones must be strictly increasing"),
    (["--ratio", "abc"], "--ratio"),
    (["--geometry", "nowhere.npy"], "--geometry"),
])
def test_cli_bad_input_is_one_line_exit_2(args, message):
    result = CliRunner().invoke(cli_main, ["deep", "train", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]


def test_cli_missing_config_file(tmp_path):
    result = CliRunner().invoke(cli_main, ["deep", "train", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.parametrize("changes, message", [
    ({"width": 1025}, "--width must be an integer <= 1024, got 1025"),
    ({"width": 100_000_000}, "--width must be an integer <= 1024"),
    ({"width": 10**23}, "--width must be an integer <= 1024"),
    ({"feature": "linear", "feature_dim": 65537}, "--feature-dim must be an integer <= 65536"),
    ({"feature": "mlp", "feature_dim": 100_000_000_000}, "--feature-dim must be an integer <= 65536"),
])
def test_sizes_are_capped_before_the_allocator_sees_them(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_the_caps_themselves_are_accepted():
    config = TrainConfig(width=MAX_WIDTH, feature="linear", feature_dim=MAX_FEATURE_DIM)
    assert (config.width, config.feature_dim) == (1024, 65536)


def test_cli_width_too_large_is_one_line_exit_2():
    result = CliRunner().invoke(cli_main, ["deep", "train", "--width", "100000000"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "--width must be an integer <= 1024" in lines[0]


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    config = TrainConfig(width=np.int64(2), epochs=np.int32(4), lr=np.float64(0.2), protos=np.float32(1.5),
                         tau=np.int64(1), milestones=[np.int64(2)], feature="linear", feature_dim=np.uint16(8))
    assert (config.width, config.epochs, config.lr, config.protos, config.tau) == (2, 4, 0.2, 1.5, 1.0)
    assert config.milestones == (2,) and config.feature_dim == 8
    assert type(config.width) is int and type(config.lr) is float and type(config.feature_dim) is int
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config
    with pytest.raises(TypeError, match="--width must be an integer"):
        TrainConfig(width=np.float64(2.0))
    with pytest.raises(TypeError, match="--lr must be a real number"):
        TrainConfig(lr=np.bool_(True))


def test_options_that_are_not_a_mapping_are_a_type_error():
    with pytest.raises(TypeError, match="options must be a mapping"):
        resolve_config(None)
    with pytest.raises(TypeError, match="configuration must be a mapping"):
        TrainConfig.from_dict(None)
    with pytest.raises(TypeError, match="configuration must be a mapping"):
        TrainConfig.from_dict([("epochs", 3)])


def test_an_unreadable_config_file_is_one_value_error_naming_config(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"--config file '.*' cannot be read: Is a directory"):
        load_toml(tmp_path)
    with pytest.raises(ValueError, match="--config file .* cannot be read"):
        resolve_config({}, tmp_path)
    with pytest.raises(ValueError, match="--config file .* cannot be read"):
        config_nproc(None, tmp_path)
    path = tmp_path / "locked.toml"
    path.write_text("epochs = 3\n")

    def refuse(*args, **kwargs):  # the test may run as root, where chmod 000 does not stop a read
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(config_module, "open", refuse, raising=False)
    with pytest.raises(ValueError, match="--config file .*locked.toml' cannot be read: Permission denied"):
        load_toml(path)


def test_an_unreadable_stored_configuration_on_resume_is_one_value_error(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(TrainConfig(out=str(tmp_path)).to_json())

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(config_module, "open", refuse, raising=False)
    with pytest.raises(ValueError, match="--resume: .*config.json' cannot be read: Permission denied"):
        resolve_config({"out": str(tmp_path), "resume": True})


def test_config_nproc_checks_an_explicit_value():
    from deep.config import config_nproc

    assert config_nproc(3, None) == 3 and config_nproc(None, None) == 1
    for bad in ("2", 0, -3, True):
        with pytest.raises(ValueError, match="--nproc must be an integer >= 1"):
            config_nproc(bad, None)


def test_tau_has_ncgeo_floor():
    """A run with tau = 1e-8 trained, then failed only in `deep predict` (the loss refuses it)."""
    from ncgeo._validation import MIN_TAU

    assert TrainConfig(tau=MIN_TAU).tau == MIN_TAU
    with pytest.raises(ValueError, match="--tau must be a finite number >= 1e-06"):
        TrainConfig(tau=1e-8)
