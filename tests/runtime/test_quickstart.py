"""`rft quickstart`: the wiring end to end at a small size (the full run is measured, not tested: minutes).

The task's data is checked too: the held-out pairs really are pairs the model never trains on.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from rft_runtime.quickstart import quickstart_main
from rft_runtime.quickstart_task import write_task_files


@pytest.mark.parametrize("task", ["larger-digit", "digit-sum"])
def test_held_out_pairs_never_appear_in_training_data(tmp_path, task):
    files = write_task_files(tmp_path, task=task)
    read = {k: [json.loads(line) for line in p.read_text().splitlines()] for k, p in files.items()}
    test_questions = {r["question"] for r in read["test"]}
    assert test_questions and len(test_questions) == len(read["test"])
    assert not test_questions & {r["question"] for r in read["train"]}
    assert not test_questions & {r["question"] for r in read["sft"]}


@pytest.mark.slow
def test_quickstart_runs_both_stages_and_reports_before_and_after(tmp_path, capsys, caplog):
    args = argparse.Namespace(workdir=str(tmp_path / "qs"), metrics_port=0, no_metrics=False, preset="smoke")
    assert quickstart_main(args) == 0
    out = capsys.readouterr().out
    # off a terminal (here, CI logs, a pod) there is no bar: one line per step says the job is moving
    steps = [r.getMessage() for r in caplog.records if r.name == "rft_runtime.progress"]
    assert [m.split(" [")[0] for m in steps] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    assert "[sft_warmup 1/2]" in steps[0] and "[grpo 2/2]" in steps[3] and "reward=" in steps[3]
    line = next(x for x in out.splitlines() if x.startswith("held-out accuracy   before"))
    values = [float(v) for v in re.findall(r"(\d+\.\d)%", line)]
    assert len(values) == 3 and all(0 <= v <= 100 for v in values)
    metrics_file = tmp_path / "qs" / "checkpoints" / "quickstart" / "tiny" / "larger-digit" / "metrics.jsonl"
    assert f"metrics: {metrics_file}" in out
    steps = [json.loads(x)["step"] for x in metrics_file.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # two SFT warm-up steps, then two GRPO steps, numbered across stages
    assert (metrics_file.parent / "curves.png").exists()
    assert re.search(r"curl http://127\.0\.0\.1:\d+/metrics", out)
    # the three held-out accuracies are where the plot draws them from, at the step each model was taken
    evals = [json.loads(x) for x in (metrics_file.parent / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e["taskset"]) for e in evals] == [(0, "held-out"), (2, "held-out"), (4, "held-out")]
    assert [f"{100 * e['accuracy']:.1f}" for e in evals] == [f"{v:.1f}" for v in values]
    # the generated config is for people to read and edit: no &id001 anchors; it is named for its model, so
    # a quickstart of the other model leaves this one's "run it again" line true
    config_path = tmp_path / "qs" / "quickstart-tiny.yaml"
    assert f"config:  {config_path}  (run it again with `rft run --config {config_path}`)" in out
    config = config_path.read_text()
    assert "&id" not in config and "*id" not in config
    assert "group: tiny" in config
    # the change is in points, as the accuracies are printed in percent
    change = next(x for x in out.splitlines() if x.startswith("change:"))
    assert re.fullmatch(r"change: [+-]\d+\.\d points in all, [+-]\d+\.\d points in the GRPO stage, in \d+s", change)


def test_quickstart_default_workdir_is_outside_the_current_directory(monkeypatch, tmp_path):
    from rft_runtime.quickstart import default_workdir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_workdir() == (tmp_path / "cache" / "rft" / "quickstart").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_workdir() == (Path.home() / ".cache" / "rft" / "quickstart").resolve()


@pytest.mark.slow
def test_quickstart_on_smollm2_runs_both_stages_on_the_real_model(tmp_path, capsys, smollm2_model_dir):
    workdir = tmp_path / "qs"
    workdir.mkdir()
    (workdir / "model-smollm2-135m").symlink_to(smollm2_model_dir)  # converted once per cache, not per test
    args = argparse.Namespace(workdir=str(workdir), metrics_port=0, no_metrics=True, preset="smoke",
                              model="smollm2-135m")
    assert quickstart_main(args) == 0
    out = capsys.readouterr().out
    assert "converting" not in out
    line = next(x for x in out.splitlines() if x.startswith("held-out accuracy   before"))
    assert len(re.findall(r"(\d+\.\d)%", line)) == 3
    assert (workdir / "quickstart-smollm2-135m.yaml").exists() and not (workdir / "quickstart-tiny.yaml").exists()
    metrics_file = workdir / "checkpoints" / "quickstart" / "smollm2-135m" / "digit-sum" / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics_file.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # two SFT warm-up steps, then one GRPO step
    assert "rollout/accuracy/mean" in rows[-1]
    assert "What is" in next(x for x in out.splitlines() if "->" in x)  # the digit-sum task's questions
