import json
import os


def stage_json(stage, run=None):
    """The config sections `stage` reads, as JSON: the rule's params, hence its rerun trigger."""
    return json.dumps(amvl_config.stage_config(config, stage, run), sort_keys=True)


def warm_start(run):
    """The converted model a run starts from (model.init_from), or nothing."""
    start = amvl_config.resolve_run(config, run)["model"]["init_from"]
    return [amvl_config.model_folder(config, start)] if start else []
