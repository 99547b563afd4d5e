# amvl: prepare -> train -> convert -> evaluate -> report.
#   snakemake --cores all                              # the embedded default (config/config.yaml)
#   snakemake --cores all --configfile config/smoke.yaml
#   snakemake --cores all --resources gpu=8 --configfile config/real_scale.yaml   # one training at a time
# Each rule calls one `amvl` command and passes it, as JSON, only the config sections that
# stage reads: editing a training value reruns train and what follows, never prepare.
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# Each config file stands alone: `--configfile a.yaml b.yaml` is a.yaml, with b.yaml and then any
# --config values deep-merged over it (Snakemake's own merge), over the schema's defaults only.
# config/config.yaml, the embedded default, is read only when no config file is given.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


sys.path.insert(0, workflow.basedir)  # the amvl package of this checkout, installed or not
from amvl import cluster as amvl_cluster
from amvl import config as amvl_config
from amvl.errors import ConfigError

try:
    # Validates against workflow/schemas/config.schema.yaml and fills its defaults.
    config = amvl_config.check_runs(amvl_config.validate(config))
    amvl_config.check_paths(config)  # a mistyped input path stops the plan, naming key and path
    amvl_config.check_dataset(config)  # another experiment's data, prepared from other settings
    # GPUs per training, and per evaluation where it runs on several (evaluate.launcher)
    GPUS = {run: amvl_config.train_gpus(config, run) for run in config["runs"]}
    EVAL_GPUS = {run: amvl_config.evaluate_gpus(config, run) for run in config["runs"]}
except ConfigError as error:
    sys.exit(f"config error: {error}")

# Outputs live under the config's own experiment name, so configs never overwrite each other;
# prepared data is shared by configs that name the same dataset.
DATA = f"data/{config['dataset']}"
EXP = config["experiment"]
RUNS = list(config["runs"])
TRAINED = [run for run in RUNS if not amvl_config.zero_shot(config, run)]  # objective none: evaluated as it is
BENCHMARKS = list(config["benchmarks"])


wildcard_constraints:
    run="[^/]+",
    benchmark="[^/]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/benchmarks.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


onstart:
    # A job no node of its partition can run pends for ever; name it and stop instead.
    if amvl_cluster.submits_to_slurm(workflow):
        amvl_cluster.watch_pending(os.getcwd())
    # Snakemake counts GPUs only when told how many there are: without --resources gpu=N it would
    # start every GPU training at once, on the same GPUs. (A cluster executor places jobs itself.)
    if workflow.local_exec and not workflow.touch and any([*GPUS.values(), *EVAL_GPUS.values()]):
        if "gpu" not in workflow.resource_settings.resources:
            sys.exit(f"config error: runs train or evaluate on up to {max([*GPUS.values(), *EVAL_GPUS.values()])} GPUs each; "
                     "say how many this machine has, e.g. snakemake --resources gpu=8 ...")


rule all:
    default_target: True
    input:
        f"reports/{EXP}/report.md",
