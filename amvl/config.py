"""Load, validate and resolve configs against workflow/schemas/config.schema.yaml.

The schema is the single definition of every key (type, default, description). This module
only applies it: it fills defaults, turns the first violation into one line naming the key,
and resolves a run (its overrides deep-merged over the base sections).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from amvl.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"

# The sections each stage reads: Snakemake passes exactly these to a rule, so editing a key
# reruns the stages that read it and nothing upstream.
STAGE_SECTIONS = {
    "prepare": ["dataset", "data"],
    "train": ["model", "objective", "train"],
    "convert": [],
    "evaluate": ["evaluate"],
    "report": [],
}


@functools.cache
def _schema_validator() -> jsonschema.protocols.Validator:
    """The config schema's validator, read once: the Snakefile resolves runs hundreds of times."""
    return _DefaultingValidator(load_schema())


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _with_defaults(validator_class):
    """A validator that fills `default` values before checking properties (jsonschema FAQ)."""
    check_properties = validator_class.VALIDATORS["properties"]

    def fill_then_check(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema and key not in instance:
                    instance[key] = copy.deepcopy(subschema["default"])  # never share the default
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": fill_then_check})


_DefaultingValidator = _with_defaults(jsonschema.Draft202012Validator)


def _one_line(error: jsonschema.ValidationError, prefix: str) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in allowed)
        key = ".".join(filter(None, [prefix, path, unknown[0] if unknown else ""]))
        return f"{key}: unknown key (allowed: {', '.join(sorted(allowed))})"
    key = ".".join(filter(None, [prefix, path])) or "<top level>"
    return f"{key}: {error.message}"


def validate(config: dict, *, prefix: str = "", schema: dict | None = None) -> dict:
    """Validate `config` in place, fill defaults and return it; raise ConfigError naming the key."""
    if not isinstance(config, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(config).__name__}")
    validator = _DefaultingValidator(schema) if schema else _schema_validator()
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(_one_line(error, prefix))
    return config


def deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load(*paths: str | Path) -> dict:
    """Read YAML files (later ones override earlier ones), validate every run, fill defaults."""
    config: dict = {}
    for path in paths:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        config = deep_merge(config, loaded)
    return check_runs(validate(config))


def check_runs(config: dict) -> dict:
    """Drop runs set to null (how an override file removes a run of the config it is merged over),
    then validate each run's merged config so a bad override names `runs.<run>.<key>`."""
    config["runs"] = {run: overrides for run, overrides in config["runs"].items() if overrides is not None}
    if not config["runs"]:
        raise ConfigError("runs: every run is null; keep at least one")
    for run in config["runs"]:
        resolved = resolve_run(config, run)
        start, seen = resolved["model"]["init_from"], [run]
        while start:  # a chain of warm starts must end at a run that starts from scratch or pretrained
            if start not in config["runs"] or start in seen:
                problem = "no such run" if start not in config["runs"] else "a cycle"
                known = ", ".join(config["runs"])
                raise ConfigError(f"runs.{seen[-1]}.model.init_from: {start} ({problem}; runs: {known})")
            if zero_shot(config, start):
                raise ConfigError(f"runs.{seen[-1]}.model.init_from: {start} trains nothing; use its pretrained_path")
            seen.append(start)
            start = resolve_run(config, start)["model"]["init_from"]
        if resolved["model"]["posterior_layout"] == "rollout" and not resolved["model"]["sequential_slots"]:
            raise ConfigError(f"runs.{run}.model.posterior_layout: rollout reads a roll-out; set model.sequential_slots: true")
        if resolved["objective"]["name"] == "none" and not resolved["model"]["pretrained_path"]:
            raise ConfigError(
                f"runs.{run}.objective.name: none evaluates model.pretrained_path as it is; "
                "set model.backbone: pretrained and model.pretrained_path"
            )
    return config


def zero_shot(config: dict, run: str) -> bool:
    """Whether `run` trains nothing and evaluates model.pretrained_path as it is."""
    return resolve_run(config, run)["objective"]["name"] == "none"


def model_folder(config: dict, run: str) -> str:
    """The folder `run` is evaluated from: its converted model, or the pretrained one (zero-shot)."""
    if zero_shot(config, run):
        return resolve_run(config, run)["model"]["pretrained_path"]
    return f"models/{config['experiment']}/{run}"


def resolve_run(config: dict, run: str) -> dict:
    """The base sections with the run's overrides merged in, validated, without `runs`."""
    if run not in config["runs"]:
        raise ConfigError(f"runs.{run}: no such run (defined: {', '.join(config['runs'])})")
    base = {k: v for k, v in config.items() if k != "runs"}
    merged = validate(deep_merge(base, config["runs"][run]), prefix=f"runs.{run}")
    merged.pop("runs")  # the schema's default; a run has no runs of its own
    if merged["model"]["init_from"]:  # a warm start: the other run's converted model, made in the same DAG
        folder = f"models/{config['experiment']}/{merged['model']['init_from']}"
        merged["model"] |= {"backbone": "pretrained", "pretrained_path": folder}
    return merged


def used_paths(config: dict) -> dict[str, str]:
    """Input paths this config reads -> the config key that names each."""
    data, named = config["data"], {}
    wanted = [("data.train_records", data["train_records"])]
    if data["source"] == "blink":
        wanted.append(("data.blink_root", data["blink_root"]))
    # The base sections before the runs, so a value a run inherits is named by its own key.
    for prefix, resolved in [("", config), *((f"runs.{run}.", resolve_run(config, run)) for run in config["runs"])]:
        reads_weights = resolved["model"]["backbone"] == "pretrained" or resolved["objective"]["name"] == "none"
        if reads_weights and not resolved["model"]["init_from"]:  # a warm start reads a folder this DAG makes
            wanted.append((f"{prefix}model.pretrained_path", resolved["model"]["pretrained_path"]))
        wanted.append((f"{prefix}train.deepspeed_config", resolved["train"]["deepspeed_config"]))
    wanted += [(f"benchmarks.{name}", root) for name, root in config["benchmarks"].items()]
    for key, path in wanted:
        if path:
            named.setdefault(path, key)
    return named


def check_paths(config: dict) -> None:
    """Stop at planning time, naming the key, if an input path does not exist: otherwise Snakemake
    could find nothing to do and keep outputs made from something else."""
    for path, key in used_paths(config).items():
        if not Path(path).exists():
            raise ConfigError(f"{key}: {path} does not exist")


def prepared_dataset(config: dict, root: Path = Path(".")) -> tuple[dict, dict]:
    """(what data/<dataset>/dataset.json records, empty before prepare has run; this config's data
    settings as it would record them, tuples as JSON lists)."""
    meta_path = root / "data" / config["dataset"] / "dataset.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return meta, json.loads(json.dumps(config["data"]))


def dataset_owner(config: dict, root: Path = Path(".")) -> str:
    """The experiment the prepare rule records as the dataset's owner: the one that prepared it,
    as long as the settings are the same (configs sharing a dataset then never re-prepare it on a
    switch), else this config's."""
    meta, ours = prepared_dataset(config, root)
    return meta.get("experiment") if meta.get("data") == ours and meta.get("experiment") else config["experiment"]


def check_dataset(config: dict, root: Path = Path(".")) -> None:
    """Stop at planning time if data/<dataset>/ holds another experiment's data prepared from other
    data settings: preparing again would silently change that experiment's inputs. (The same
    experiment with edited settings prepares again, as any rerun does.)"""
    (meta, ours), name = prepared_dataset(config, root), config["dataset"]
    owner, theirs = meta.get("experiment"), meta.get("data")
    if not owner or theirs is None or owner == config["experiment"] or theirs == ours:
        return
    key = next(k for k in sorted({*theirs, *ours}) if theirs.get(k) != ours.get(k))
    raise ConfigError(
        f"dataset: data/{name} holds experiment {owner}'s data (data.{key}: {theirs.get(key)!r}), "
        f"experiment {config['experiment']} has data.{key}: {ours.get(key)!r}; "
        f"give it its own dataset name, or delete data/{name} to prepare it again"
    )


def stage_config(config: dict, stage: str, run: str | None = None) -> dict:
    """The sections `stage` reads (for one run if given): what Snakemake passes to the rule."""
    resolved = resolve_run(config, run) if run else config
    return {section: resolved[section] for section in STAGE_SECTIONS[stage]}


def from_json(text: str) -> dict:
    """Parse the JSON a Snakemake rule passes and fill defaults of sections it did not pass."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config-json: not valid JSON ({e})") from None
    config = validate(config)
    config.pop("runs")
    return config


class Section(dict):
    """Read-only attribute access to a validated config section: `cfg.train.lr`."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return Section(value) if isinstance(value, dict) else value


# How each known launcher names its processes per node and its rendezvous port.
LAUNCHERS = {
    "torchrun": {"processes": ("--nproc_per_node", "--nproc-per-node"), "default": "1", "port": "--master-port",
                 "own_port": ("--master-port", "--master_port", "--rdzv-endpoint", "--rdzv_endpoint", "--standalone")},
    "deepspeed": {"processes": ("--num_gpus", "--num_accelerators"), "default": None, "port": "--master_port",
                  "own_port": ("--master_port",)},
}  # fmt: skip


def _launcher(launcher: str) -> tuple[list[str], dict | None]:
    """The launcher's words, and which of LAUNCHERS it is (None: another program). Under `srun
    [options] torchrun ...`, the words from torchrun on: srun starts one of it per node."""
    words = shlex.split(launcher)
    words = words[len(_srun_words(words)) :]
    name = "torchrun" if "torch.distributed.run" in words else Path(words[0]).name if words else ""
    return words, LAUNCHERS.get(name)


def _srun_words(words: list[str]) -> list[str]:
    """`srun` and its options, where the launcher starts with srun; else []."""
    if not words or Path(words[0]).name != "srun":
        return []
    return words[: next((i for i, w in enumerate(words) if Path(w).name == "torchrun"), len(words))]


def launcher_nodes(cfg: dict, run: str) -> int:
    """Nodes one training of `run` spans: srun's --nodes where the launcher is `srun --nodes N
    torchrun ...` (a multi-node SLURM job), else 1."""
    srun = _srun_words(shlex.split(resolve_run(cfg, run)["train"]["launcher"]))
    nodes = _option(srun, ("--nodes", "-N")) if srun else None
    if nodes is not None and not nodes.isdigit():
        raise ConfigError(f"train.launcher (run {run}): srun --nodes must be a whole number of nodes, got {nodes!r}")
    return int(nodes or 1)


def _option(words: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the first of `names` in `words` (`--name value` or `--name=value`), "" for a bare flag."""
    for i, word in enumerate(words):
        name, eq, value = word.partition("=")
        if name in names:
            return value if eq else next((w for w in words[i + 1 : i + 2] if not w.startswith("-")), "")
    return None


def launcher_gpus(cfg: dict, run: str, stage: str) -> int:
    """GPUs a launcher of `stage` (train or evaluate) starts for `run` on its node: every launcher
    process is one GPU; no launcher is one plain process, counted as 0."""
    launcher = resolve_run(cfg, run)[stage]["launcher"]
    if not launcher:
        return 0
    words, known = _launcher(launcher)
    count = _option(words, known["processes"]) if known else None
    count = known["default"] if known and count is None else count
    if not (count or "").isdigit():
        raise ConfigError(
            f"{stage}.launcher: {launcher!r} (run {run}) does not say how many GPUs it takes per node; write "
            "`torchrun --nproc_per_node N` or `deepspeed --num_gpus N`, so Snakemake can keep two jobs apart"
        )
    return int(count)


def train_gpus(cfg: dict, run: str) -> int:
    """GPUs one training of `run` takes on its node: the train rule's Snakemake resource `gpu`, so
    `--resources gpu=N` never starts two trainings on the same GPUs (0: a CPU run, or zero-shot)."""
    return 0 if zero_shot(cfg, run) else launcher_gpus(cfg, run, "train")


def evaluate_gpus(cfg: dict, run: str) -> int:
    """GPUs an evaluation of `run` takes (the evaluate rules' resource `gpu`): its launcher's
    processes, else one where it runs on a GPU, which `evaluate.device: auto` does where the run
    trained on GPUs (a zero-shot run: where its launcher or device says)."""
    device = resolve_run(cfg, run)["evaluate"]["device"]
    return launcher_gpus(cfg, run, "evaluate") or int(device == "cuda" or (device == "auto" and train_gpus(cfg, run) > 0))


def rendezvous_port(cfg: dict, run: str) -> int:
    """A port in 20000-29999 (below Linux's ephemeral range) fixed by experiment and run, so
    launchers started side by side on one machine do not all bind torch's default 29500."""
    digest = hashlib.sha256(f"{cfg['experiment']}/{run}".encode()).hexdigest()
    return 20000 + int(digest, 16) % 10000


def launch_command(cfg: dict, run: str, stage: str = "train", benchmark: str = "") -> str:
    """How the train or evaluate rules start `amvl`: directly, or through the run's multi-process
    launcher (`deepspeed ...`, `torchrun ...`), which then starts `python -m amvl` once per
    process, on the job's own rendezvous port unless the launcher names one. `srun --nodes N
    torchrun ...` starts one torchrun on each node of the SLURM job, meeting on its first node."""
    launcher = resolve_run(cfg, run)[stage]["launcher"]
    if not launcher:
        return "amvl"
    words, known = _launcher(launcher)
    job = run if stage == "train" else f"{run}/{stage}/{benchmark}"  # the training's port as it always was
    srun = _srun_words(shlex.split(launcher))
    if srun:
        if known is not LAUNCHERS["torchrun"] or stage != "train":
            raise ConfigError(f"{stage}.launcher (run {run}): srun must start torchrun, as `srun --nodes N torchrun --nproc_per_node G`")
        return srun_torchrun(srun, words, launcher_nodes(cfg, run), rendezvous_port(cfg, job))
    if known and _option(words, known["own_port"]) is None:
        launcher += f" {known['port']} {rendezvous_port(cfg, job)}"
    return f"{launcher} --module amvl"


def srun_torchrun(srun: list[str], torchrun: list[str], nodes: int, port: int) -> str:
    """`srun ... torchrun ...` as the train rule runs it inside its SLURM job: one torchrun per node
    (srun's own options kept, e.g. --gpus-per-node where job steps must name their GPUs), sharing
    the CPUs of the step Snakemake runs the rule in (--overlap), all meeting at the job's first
    node (c10d rendezvous, which numbers the nodes)."""
    head = '"$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"'
    return (
        f'{shlex.join(srun)} --overlap --ntasks-per-node 1 --cpus-per-task "$SLURM_CPUS_ON_NODE" '
        f'{shlex.join(torchrun)} --nnodes {nodes} --rdzv-backend c10d --rdzv-id "$SLURM_JOB_ID" --rdzv-endpoint {head}:{port}'
        " --module amvl"
    )
