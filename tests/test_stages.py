"""The stages as Python functions, on a tiny config: real DeepSpeed, real files."""

import json
import shutil

import pytest
import torch

from amvl.errors import UserError
from amvl.model.latent import LatentReasoner
from amvl.stages import convert, evaluate, report, train


@pytest.fixture(scope="module")
def trained(prepared_data, tmp_path_factory):
    from amvl.config import validate

    cfg = validate(
        {
            "model": {"vocab_size": 320, "freeze_vision": False},
            "train": {"steps": 4, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1},
        }
    )
    run_dir = tmp_path_factory.mktemp("runs") / "amvl"
    summary = train.run(cfg, prepared_data, run_dir)
    return cfg, run_dir, summary


def test_train_logs_every_term_and_keeps_checkpoints(trained):
    _, run_dir, summary = trained
    records = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for term in ("loss", "ntp", "kl_forward", "kl_reverse", "beta", "gamma", "lr", "sigma_prior", "sigma_posterior"):
        assert all(term in r for r in records), term
    assert summary["tag"] == "step_0000004" and summary["zero_stage"] == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_0000002", "step_0000004"]


def test_resume_after_a_kill_ends_where_an_uninterrupted_run_ends(trained, tmp_path, prepared_data):
    cfg, run_dir, summary = trained
    killed = tmp_path / "amvl"
    shutil.copytree(run_dir, killed)
    # As if killed after step 3: the step-4 checkpoint and summary never got written.
    shutil.rmtree(killed / "checkpoints" / "step_0000004")
    (killed / "checkpoints" / "latest").write_text("step_0000002")
    (killed / "train_summary.json").unlink()
    resumed = train.run(cfg, prepared_data, killed)
    records = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # steps 3-4 replaced, not duplicated
    assert resumed["final"]["loss"] == pytest.approx(summary["final"]["loss"], rel=1e-5)


def test_convert_then_evaluate_then_report(trained, prepared_data, tmp_path):
    cfg, run_dir, _ = trained
    model_dir = tmp_path / "models" / "amvl"
    convert.run({}, run_dir, model_dir)
    assert (model_dir / "model.safetensors").exists() and (model_dir / "latent_modules.safetensors").exists()

    # The converted weights are the trained ones, not the initialisation.
    from amvl.distributed import load_fp32_state_dict

    state = load_fp32_state_dict(run_dir / "checkpoints", "step_0000004", 2)
    loaded = LatentReasoner.load(model_dir)
    assert torch.equal(loaded.prior_head.proj.weight, state["prior_head.proj.weight"])

    metrics = evaluate.run(cfg, model_dir, prepared_data, tmp_path / "results" / "amvl")
    assert (metrics["device"], metrics["dtype"]) == ("cpu", "float32")  # auto: no accelerator, fp32 training
    subtasks = cfg["data"]["subtasks"]
    assert set(metrics["per_task"]) == set(subtasks)
    assert all(0.0 <= v <= 1.0 for v in metrics["per_task"].values())
    assert metrics["macro_accuracy"] == pytest.approx(sum(metrics["per_task"].values()) / len(subtasks))
    for task in subtasks:  # the official per-subtask layout
        official = json.loads((tmp_path / "results" / "amvl" / f"{task}.json").read_text())["val"]
        assert len(official) == 4 and set(official[0]) == {"idx", "answer", "full_prediction", "prediction"}
        assert all(p["prediction"] in ("(A)", "(B)", "(C)", "(D)", "(Z)") for p in official)
    diagnostics = metrics["diagnostics"]
    assert diagnostics["leakage_gap"] == pytest.approx(diagnostics["oracle_accuracy"] - diagnostics["prior_accuracy"])
    k = loaded.cfg.k
    assert len(diagnostics["slot_similarity"]) == k and diagnostics["slot_similarity"][0][0] == pytest.approx(1.0)
    assert len(diagnostics["modality_sensitivity"]["image"]) == k and set(diagnostics["tau_sweep"]) == {
        "0.0",
        "0.2",
        "1.0",
    }
    assert set(diagnostics["ablations"]) == {"zero", "noise", "shuffled"} and set(metrics["fallback_rate"]) == set(
        subtasks
    )

    report.run(
        {}, [tmp_path / "results" / "amvl" / "metrics.json"], [run_dir / "train_summary.json"], tmp_path / "reports"
    )
    text = (tmp_path / "reports" / "report.md").read_text()
    assert "| amvl |" in text and "*chance*" in text
    assert (tmp_path / "reports" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_places_the_model_on_the_configured_device_and_dtype(trained, prepared_data, tmp_path, monkeypatch):
    """evaluate.device and evaluate.precision reach the model (CPU here; benchmarks/gpu_check.py covers CUDA)."""
    cfg, run_dir, _ = trained
    convert.run({}, run_dir, tmp_path / "model")
    loaded = []
    load = LatentReasoner.load
    monkeypatch.setattr(LatentReasoner, "load", lambda *a, **kw: loaded.append(load(*a, **kw)) or loaded[-1])
    cfg = json.loads(json.dumps(cfg))
    cfg["evaluate"].update(device="cpu", precision="bf16", limit=1, diagnostics=False, mode="likelihood")
    metrics = evaluate.run(cfg, tmp_path / "model", prepared_data, tmp_path / "results")
    (model,) = loaded
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cpu", torch.bfloat16)}
    assert model.backbone.model.language_model.rotary_emb.inv_freq.dtype == torch.float32  # positions stay exact
    assert (metrics["device"], metrics["dtype"]) == ("cpu", "bfloat16") and 0 <= metrics["macro_accuracy"] <= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here")
def test_evaluate_on_cuda_without_cuda_says_so():
    from amvl.distributed import device

    with pytest.raises(UserError, match="evaluate.device: cuda, but torch sees no CUDA GPU"):
        device("cuda")


def test_convert_refuses_a_checkpoint_that_pickles_code(trained, tmp_path):
    _, run_dir, _ = trained
    bad = tmp_path / "amvl"
    shutil.copytree(run_dir, bad)
    payload = bad / "checkpoints" / "step_0000004" / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "hook": print}, payload)  # a pickled callable: must never be loaded
    with pytest.raises(UserError, match="refusing to load"):
        convert.run({}, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_without_training_names_the_missing_file(tmp_path):
    with pytest.raises(UserError, match="train_summary.json: not found"):
        convert.run({}, tmp_path / "nothing", tmp_path / "out")


def test_checkpoints_of_another_config_are_not_resumed(trained, tmp_path, prepared_data):
    cfg, run_dir, _ = trained
    changed = tmp_path / "amvl"
    shutil.copytree(run_dir, changed)
    other = json.loads(json.dumps(cfg))
    other["train"].update(steps=2, lr=0.01)
    train.run(other, prepared_data, changed)
    records = [json.loads(line) for line in (changed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # from scratch, not from the step-4 checkpoint
    assert sorted(p.name for p in (changed / "checkpoints").glob("step_*")) == ["step_0000002"]
