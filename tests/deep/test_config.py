"""TrainConfig: THEORY.md section 7 defaults, checks naming the option, TOML files, resume rules, CLI errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main as cli_main
from deep.config import TrainConfig, config_nproc, load_toml, resolve_config


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
