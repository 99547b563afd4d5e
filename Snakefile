# amvl: prepare -> train -> convert -> evaluate -> report.
#   snakemake --cores all                              # the embedded default (config/config.yaml)
#   snakemake --cores all --configfile config/smoke.yaml
# Each rule calls one `amvl` command and passes it, as JSON, only the config sections that
# stage reads: editing a training value reruns train and what follows, never prepare.
import sys

from snakemake.utils import min_version

min_version("9.0")

configfile: "config/config.yaml"

sys.path.insert(0, workflow.basedir)  # the amvl package of this checkout, installed or not
from amvl import config as amvl_config
from amvl.errors import ConfigError

try:
    # Validates against workflow/schemas/config.schema.yaml and fills its defaults.
    config = amvl_config.check_runs(amvl_config.validate(config))
    amvl_config.check_paths(config)  # a mistyped input path stops the plan, naming key and path
except ConfigError as error:
    sys.exit(f"config error: {error}")

# Outputs live under the config's own experiment name, so configs never overwrite each other;
# prepared data is shared by configs that name the same dataset.
DATA = f"data/{config['dataset']}"
EXP = config["experiment"]
RUNS = list(config["runs"])


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        f"reports/{EXP}/report.md",
