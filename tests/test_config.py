from pathlib import Path

import pytest

from amvl import config
from amvl.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_validates(path):
    files = [REPO / "config" / "config.yaml", path] if path.name != "config.yaml" else [path]
    loaded = config.load(*files)
    for run in loaded["runs"]:
        resolved = config.resolve_run(loaded, run)
        assert resolved["train"]["steps"] >= 1


def test_shipped_configs_write_to_their_own_folders():
    """No two config files share an experiment (runs/, models/, results/, reports/ folders) or a
    dataset name: running one never overwrites another's outputs."""
    files = sorted((REPO / "config").glob("*.yaml"))
    loaded = [config.load(*([REPO / "config" / "config.yaml", f] if f.name != "config.yaml" else [f])) for f in files]
    assert len({c["experiment"] for c in loaded}) == len(files)
    assert len({c["dataset"] for c in loaded}) == len(files)


def test_a_missing_input_path_is_named_with_its_key(tmp_path):
    records = tmp_path / "train.jsonl"
    base = config.validate({"data": {"train_records": str(records)}, "runs": {"a": {}, "b": {}}})
    with pytest.raises(ConfigError, match=f"^data.train_records: {records} does not exist$"):
        config.check_paths(base)
    records.write_text("")
    config.check_paths(base)  # exists now
    base["runs"]["b"] = {"model": {"backbone": "pretrained", "pretrained_path": str(tmp_path / "Qwen")}}
    with pytest.raises(ConfigError, match="^runs.b.model.pretrained_path: .*Qwen does not exist$"):
        config.check_paths(base)


def test_defaults_are_filled_from_the_schema():
    filled = config.validate({})
    assert filled["train"]["lr"] > 0
    assert filled["objective"]["beta"]["max"] >= 0
    assert filled["runs"] == {"amvl": {}}


def test_defaults_are_not_shared_between_configs():
    first = config.validate({})
    first["data"]["subtasks"].append("Added_Task")
    assert "Added_Task" not in config.validate({})["data"]["subtasks"]


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"train": {"lrr": 0.1}}, "train.lrr: unknown key"),
        ({"train": {"lr": "fast"}}, "train.lr:"),
        ({"train": {"steps": 2.5}}, "train.steps:"),
        ({"colour": 1}, "colour: unknown key"),
        ({"objective": {"beta": {"strat": 3}}}, "objective.beta.strat: unknown key"),
        ({"runs": {"a": {"objective": {"name": "nope"}}}}, "runs.a.objective.name:"),
    ],
)
def test_bad_config_names_the_key_in_one_line(tmp_path, bad, key):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert str(error.value).startswith(key)
    assert "\n" not in str(error.value)


def test_run_overrides_merge_over_the_base_sections():
    loaded = config.validate({"train": {"lr": 0.01}, "runs": {"a": {"train": {"steps": 7}}}})
    resolved = config.resolve_run(loaded, "a")
    assert resolved["train"]["steps"] == 7 and resolved["train"]["lr"] == 0.01
    assert "runs" not in resolved


def test_stage_config_holds_only_what_the_stage_reads():
    loaded = config.validate({})
    assert set(config.stage_config(loaded, "train", "amvl")) == {"model", "objective", "train"}
    assert set(config.stage_config(loaded, "prepare")) == {"dataset", "data"}


def test_a_null_run_removes_a_run_inherited_from_another_file(tmp_path):
    from amvl.config import load

    extra = tmp_path / "extra.yaml"
    extra.write_text("runs:\n  ntp: null\n  mine: {objective: {name: elbo}}\n")
    runs = load(REPO / "config" / "config.yaml", extra)["runs"]
    assert "ntp" not in runs and runs["mine"] == {"objective": {"name": "elbo"}} and "amvl" in runs
    every = load(REPO / "config" / "config.yaml")["runs"]
    extra.write_text("runs:\n" + "".join(f"  {r}: null\n" for r in every))
    with pytest.raises(ConfigError, match="runs: every run is null"):
        load(REPO / "config" / "config.yaml", extra)
