import json
from pathlib import Path

import pytest
import yaml

from amvl import config
from amvl.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "config").glob("*.yaml"))
PINNED = Path(__file__).with_name("pinned_configs.json")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_config_file_stands_alone(path):
    """Each shipped config is complete on its own (Snakemake reads it over the schema's defaults
    only): it names its own experiment and dataset and removes no inherited run."""
    raw = yaml.safe_load(path.read_text())
    assert {"experiment", "dataset"} <= set(raw) and None not in raw["runs"].values()
    loaded = config.load(path)
    for run in loaded["runs"]:
        resolved = config.resolve_run(loaded, run)
        assert resolved["train"]["steps"] >= 1


def test_shipped_configs_write_to_their_own_folders():
    """No two config files share an experiment (runs/, models/, results/, reports/ folders), and a
    dataset name only with the same data settings (the two paper configs share one prepared BLINK):
    running one never overwrites another's outputs."""
    loaded = [config.load(f) for f in SHIPPED]
    assert len({c["experiment"] for c in loaded}) == len(SHIPPED)
    data = {}
    for c in loaded:
        assert data.setdefault(c["dataset"], c["data"]) == c["data"], c["dataset"]
    assert len(data) == len(SHIPPED) - 1


def leaves(tree: dict, prefix: str = "") -> dict:
    """{"train.lr": 0.002, ...}: every value of a nested mapping by its dotted key."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_configs_behind_the_readme_numbers_resolve_as_pinned():
    """config/config.yaml, smoke.yaml and leak_demo.yaml resolve, key by key and run by run, to what
    made the README's numbers and timings (smoke and leak_demo were written out from config.yaml
    when configs became stand-alone; the values did not change). Keys added since are not pinned.
    Changed a value or a schema default on purpose? Rerun what the README reports, then
    `python tests/test_config.py` rewrites tests/pinned_configs.json."""
    for name, pinned in json.loads(PINNED.read_text()).items():
        resolved = config.load(REPO / "config" / f"{name}.yaml")
        now = leaves(resolved)
        changed = {key: (was, now.get(key, "<gone>")) for key, was in leaves(pinned).items() if now.get(key) != was}
        assert not changed, f"config/{name}.yaml: pinned -> now {changed}"
        assert list(resolved["runs"]) == list(pinned["runs"]), name  # the report's order


# Keys where the paper setting may keep the embedded default's value, and why.
SAME_AS_THE_TOY_FOR_A_REASON = {
    **dict.fromkeys(
        ["data.seed", "data.train_size", "data.val_size", "data.image_size", "data.subtasks"],
        "read by the synthetic generator only; the paper reads BLINK and Monet-SFT",
    ),
    **dict.fromkeys(
        ["model.hidden_size", "model.layers", "model.heads", "model.kv_heads", "model.intermediate_size",
         "model.vision_depth"],
        "the small model's size: ignored with backbone: pretrained (the checkpoint's config.json sets it)",
    ),
    "objective.name": "amvl is the method the paper trains",
    "objective.beta.start": "the forward term trains the prior from the first step, the paper's order",
    "evaluate.tau": "BLINK is scored with the prior mean (tau 0), what exists at test time",
    "evaluate.mode": "generate is BLINK's official protocol (answer, then extract the choice)",
}  # fmt: skip


@pytest.mark.parametrize("name", ["real_scale.yaml", "real_scale_qwen3vl.yaml"])
def test_the_paper_config_holds_none_of_the_toy_values(name):
    """Every value config/config.yaml sets (the embedded default, tuned for a 64-dim latent on CPU)
    differs in the resolved paper config (Qwen2.5-VL-7B's, Qwen3-VL-8B's), or is listed above with
    its reason; and the paper's diagnostics are sized for a 7B model."""
    toy = leaves(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    paper = config.load(REPO / "config" / name)
    resolved = leaves(paper)
    kept = {key for key, value in toy.items() if not key.startswith("runs.") and resolved.get(key) == value}
    assert kept == set(SAME_AS_THE_TOY_FOR_A_REASON), kept ^ set(SAME_AS_THE_TOY_FOR_A_REASON)
    assert list(paper["runs"]) == ["base", "amvl", "ntp"]  # the base model zero-shot; the toy's elbo, fwd and rev are not inherited
    assert not paper["evaluate"]["diagnostics"] or 0 < paper["evaluate"]["diagnostics_limit"] <= 50
    assert config.train_gpus(paper, "amvl") == 8 and config.evaluate_gpus(paper, "amvl") == 8
    assert config.train_gpus(paper, "base") == 0 and config.evaluate_gpus(paper, "base") == 8


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


@pytest.mark.parametrize(
    "launcher, gpus, command",
    [
        ("", 0, "amvl"),
        ("torchrun --nproc_per_node 8", 8, "torchrun --nproc_per_node 8 --master-port {port} --module amvl"),
        ("torchrun --nproc-per-node=4", 4, "torchrun --nproc-per-node=4 --master-port {port} --module amvl"),
        ("torchrun", 1, "torchrun --master-port {port} --module amvl"),  # torchrun's own default: 1 process
        ("deepspeed --num_gpus 8", 8, "deepspeed --num_gpus 8 --master_port {port} --module amvl"),
        ("deepspeed --hostfile hostfile --num_gpus=8", 8,
         "deepspeed --hostfile hostfile --num_gpus=8 --master_port {port} --module amvl"),
        # a port the user gives is kept, and none is added
        ("torchrun --nproc_per_node 8 --master_port 29600", 8,
         "torchrun --nproc_per_node 8 --master_port 29600 --module amvl"),
        ("torchrun --standalone --nproc_per_node 2", 2, "torchrun --standalone --nproc_per_node 2 --module amvl"),
        ("torchrun --nproc_per_node 8 --rdzv-endpoint node1:29400", 8,
         "torchrun --nproc_per_node 8 --rdzv-endpoint node1:29400 --module amvl"),
        ("deepspeed --num_gpus 8 --master_port 29700", 8, "deepspeed --num_gpus 8 --master_port 29700 --module amvl"),
    ],
)  # fmt: skip
def test_the_launcher_gives_the_gpus_and_a_port_of_its_own(launcher, gpus, command):
    cfg = config.validate({"train": {"launcher": launcher}, "runs": {"a": {}}})
    port = config.rendezvous_port(cfg, "a")
    assert config.train_gpus(cfg, "a") == gpus
    assert config.evaluate_gpus(cfg, "a") == min(gpus, 1)
    assert config.launch_command(cfg, "a") == command.format(port=port)


def test_runs_and_experiments_get_distinct_fixed_ports():
    """Launchers started side by side on one machine must not share torch's default 29500."""
    runs = {"amvl": {}, "ntp": {}, "elbo": {}, "fwd": {}, "rev": {}}
    cfg = config.validate({"train": {"launcher": "torchrun --nproc_per_node 8"}, "runs": runs})
    ports = {config.rendezvous_port(cfg, run) for run in runs}
    other = config.validate({**cfg, "experiment": "other"})
    assert len(ports) == len(runs) and all(20000 <= p < 30000 for p in ports)
    assert config.rendezvous_port(other, "amvl") != config.rendezvous_port(cfg, "amvl")
    assert config.rendezvous_port(cfg, "amvl") == config.rendezvous_port(config.validate(dict(cfg)), "amvl")


@pytest.mark.parametrize("launcher", ["deepspeed", "deepspeed --hostfile h", "torchrun --nproc_per_node gpu", "srun"])
def test_a_launcher_that_does_not_count_its_gpus_stops_the_plan(launcher):
    cfg = config.validate({"train": {"launcher": launcher}, "runs": {"a": {}}})
    with pytest.raises(ConfigError, match=r"^train.launcher: .* \(run a\) does not say how many GPUs"):
        config.train_gpus(cfg, "a")


if __name__ == "__main__":  # rewrite tests/pinned_configs.json from the configs as they resolve now
    pinned = {name: config.load(REPO / "config" / f"{name}.yaml") for name in json.loads(PINNED.read_text())}
    PINNED.write_text(json.dumps(pinned, indent=1) + "\n")
    print(f"wrote {PINNED}")


def test_a_warm_start_names_a_run_of_the_same_dag(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("runs:\n  cot: {objective: {name: ntp}}\n  latent: {model: {init_from: cot}}\n")
    loaded = config.load(REPO / "config" / "config.yaml", extra)
    model = config.resolve_run(loaded, "latent")["model"]
    assert model["backbone"] == "pretrained" and model["pretrained_path"] == "models/default/cot"
    config.check_paths(loaded)  # made by the DAG: not required to exist when planning
    for runs, message in [
        ("  latent: {model: {init_from: cotx}}\n", r"runs.latent.model.init_from: cotx \(no such run"),
        ("  a: {model: {init_from: b}}\n  b: {model: {init_from: a}}\n", r"init_from: .* \(a cycle"),
    ]:
        extra.write_text("runs:\n" + runs)
        with pytest.raises(ConfigError, match=message):
            config.load(REPO / "config" / "config.yaml", extra)
