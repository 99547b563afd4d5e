import json
import os


def stage_json(stage, run=None):
    """The config sections `stage` reads, as JSON: the rule's params, hence its rerun trigger."""
    return json.dumps(amvl_config.stage_config(config, stage, run), sort_keys=True)

