"""Tasksets through the real `datasets` library: file types, folders, splits, errors, seeded resumable order."""

from __future__ import annotations

import csv
import gzip
import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import datasets
import huggingface_hub.constants
import pytest
import yaml

from rft_runtime.config import load_config_dict
from rft_runtime.data.tasksets import DataError, Task, TaskStream, load_rows

ROOT = Path(__file__).resolve().parents[2]
ROWS = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(10)]


def taskset(path, split="train", subset=None, prompt_key="question", response_key="answer"):
    """A taskset section, duck-typed as the runtime reads it."""
    return SimpleNamespace(path=str(path), split=split, subset_name=subset,
                           format=SimpleNamespace(prompt_key=prompt_key, response_key=response_key))


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows, delimiter=",") -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- file types


def test_jsonl_json_parquet_csv_tsv_and_gzip_give_the_same_rows(tmp_path):
    files = [
        write_jsonl(tmp_path / "t.jsonl", ROWS),
        tmp_path / "t.json",
        tmp_path / "t.parquet",
        write_csv(tmp_path / "t.csv", ROWS),
        write_csv(tmp_path / "t.tsv", ROWS, delimiter="\t"),
        tmp_path / "t.jsonl.gz",
    ]
    (tmp_path / "t.json").write_text(json.dumps(ROWS))
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "t.parquet"))
    with gzip.open(tmp_path / "t.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in ROWS)
    for path in files:
        assert load_rows(taskset(path)) == ROWS, path.name


def test_a_single_file_is_the_split_the_config_names(tmp_path):
    path = write_jsonl(tmp_path / "eval.jsonl", ROWS[:3])
    assert load_rows(taskset(path, split="test")) == ROWS[:3]


def test_the_gsm8k_sample_through_the_seed_config(tmp_path):
    raw = yaml.safe_load((ROOT / "examples" / "tinker.yaml").read_text())
    raw["checkpoint_root_dir"] = str(tmp_path)
    raw["buffer"]["explorer_input"]["taskset"].update(path=str(ROOT / "tests/data/gsm8k_sample.jsonl"))
    rows = load_rows(load_config_dict(raw).buffer.explorer_input.taskset)
    assert len(rows) == 8
    assert all(r["answer"].rsplit("####", 1)[1].strip() for r in rows)


# ---------------------------------------------------------------- folders


def test_a_folder_of_several_files_is_read_whole(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "part-a.jsonl", ROWS[:4])
    write_jsonl(folder / "part-b.jsonl", ROWS[4:])
    (folder / "README.txt").write_text("not data")
    assert sorted(load_rows(taskset(folder)), key=lambda r: r["question"]) == sorted(
        ROWS, key=lambda r: r["question"])


def test_a_folder_of_tsv_files(tmp_path):
    folder = tmp_path / "tsv"
    folder.mkdir()
    write_csv(folder / "a.tsv", ROWS[:5], delimiter="\t")
    write_csv(folder / "b.tsv", ROWS[5:], delimiter="\t")
    assert sorted(r["question"] for r in load_rows(taskset(folder))) == sorted(r["question"] for r in ROWS)


def test_a_folder_with_split_files_gives_the_named_split(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    datasets.Dataset.from_list(ROWS[:7]).to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_list(ROWS[7:]).to_parquet(str(folder / "test.parquet"))
    assert load_rows(taskset(folder, split="test")) == ROWS[7:]
    assert load_rows(taskset(folder, split="train")) == ROWS[:7]
    with pytest.raises(DataError, match="split 'validation'.*Unknown split"):
        load_rows(taskset(folder, split="validation"))


def test_a_saved_dataset_folder(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:5]),
                          "test": datasets.Dataset.from_list(ROWS[5:])}).save_to_disk(str(tmp_path / "saved"))
    assert load_rows(taskset(tmp_path / "saved", split="test")) == ROWS[5:]


def test_folder_mistakes_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no data files"):
        load_rows(taskset(tmp_path / "empty"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_jsonl(mixed / "a.jsonl", ROWS)
    write_csv(mixed / "b.csv", ROWS)
    with pytest.raises(DataError, match=r"mixes file types \(csv, json\)"):
        load_rows(taskset(mixed))


# ---------------------------------------------------------------- errors


def test_a_row_missing_its_prompt_key_is_named(tmp_path):
    rows = [dict(r) for r in ROWS]
    del rows[3]["question"]
    rows[3]["q"] = "typo"
    path = write_jsonl(tmp_path / "holes.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_rows(taskset(path))
    assert err.value.row_index == 3 and err.value.key == "question"
    assert "row 3 (0-based) has no 'question' value (format.prompt_key)" in str(err.value)
    assert "answer, q" in str(err.value)  # the columns it does have


def test_a_wrong_prompt_key_names_row_zero_and_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ROWS)
    with pytest.raises(DataError, match=r"row 0 \(0-based\) has no 'prompt' value.*columns: answer, question"):
        load_rows(taskset(path, prompt_key="prompt"))


def test_response_key_checked_when_required(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[5]["answer"] = None
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    assert len(load_rows(taskset(path))) == 10
    with pytest.raises(DataError, match=r"row 5 .*'answer'.*format.response_key"):
        load_rows(taskset(path), require_response=True)


def test_missing_file_malformed_file_unknown_type_and_no_path(tmp_path):
    with pytest.raises(DataError, match="taskset file not found: .*nope.jsonl"):
        load_rows(taskset(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"question": \n')
    with pytest.raises(DataError, match="cannot read the taskset at .*bad.jsonl"):
        load_rows(taskset(bad))
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        load_rows(taskset(tmp_path / "t.xlsx"))
    with pytest.raises(DataError, match="has no path"):
        load_rows(taskset(""))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl is empty"):
        load_rows(taskset(empty))


def test_an_unreachable_hub_name_says_to_use_a_local_copy(monkeypatch):
    # this machine has no route to the hub; offline mode makes the failure immediate instead of retried
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="'openai/gsm8k' is not a local file.*subset 'main'.*local copy"):
        load_rows(taskset("openai/gsm8k", subset="main"))


# ---------------------------------------------------------------- cache and network


def test_local_files_use_the_given_cache_or_none_that_outlives_the_load(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "t.jsonl", ROWS)
    cache = tmp_path / "job" / "datasets-cache"
    assert load_rows(taskset(path), cache_dir=cache) == ROWS
    assert any(cache.rglob("*.arrow"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert load_rows(taskset(path)) == ROWS
    assert list(scratch.iterdir()) == []  # the throw-away cache is gone


def test_local_loads_never_touch_the_network(tmp_path):
    # the hub endpoint points at a socket of ours: any request datasets made would arrive there
    import socket
    import subprocess
    import sys

    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "one.jsonl", ROWS)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(0.2)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{server.getsockname()[1]}"
        code = ("import sys; from types import SimpleNamespace as N; from rft_runtime.data.tasksets import load_rows; "
                "f = N(prompt_key='question'); "
                "print(sum(len(load_rows(N(path=p, split='train', subset_name=None, format=f))) for p in sys.argv[1:]))")
        out = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "one.jsonl")],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "20"
        with pytest.raises(TimeoutError):
            server.accept()


def test_offline_switch_is_restored_after_a_local_load(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    before = datasets.config.HF_HUB_OFFLINE
    load_rows(taskset(write_jsonl(tmp_path / "t.jsonl", ROWS)))
    assert datasets.config.HF_HUB_OFFLINE == before
    assert "HF_DATASETS_OFFLINE" not in os.environ


# ---------------------------------------------------------------- the stream


def rows_of(n):
    return [{"question": f"q{i}"} for i in range(n)]


def indices(batches):
    return [[t.index for t in b] for b in batches]


def test_drop_last_epochs_and_steps():
    stream = TaskStream(rows_of(10), batch_size=3, total_epochs=2, seed=7)
    assert (stream.steps_per_epoch, stream.total_steps, len(stream)) == (3, 6, 6)
    batches = list(stream)
    assert len(batches) == 6 and all(len(b) == 3 for b in batches)
    epoch0 = [i for b in batches[:3] for i in (t.index for t in b)]
    epoch1 = [i for b in batches[3:] for i in (t.index for t in b)]
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9  # each epoch: distinct rows, one left out
    assert epoch0 != epoch1  # reshuffled every epoch
    assert [t.epoch for b in batches for t in b] == [0] * 9 + [1] * 9
    assert batches[0][0] == Task(batches[0][0].index, rows_of(10)[batches[0][0].index], 0)


def test_without_drop_last_the_short_batch_is_kept():
    batches = list(TaskStream(rows_of(10), batch_size=3, total_epochs=1, seed=0, drop_last=False))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(i for b in indices(batches) for i in b) == list(range(10))


def test_total_steps_wins_over_epochs_as_in_trinity():
    assert len(list(TaskStream(rows_of(10), batch_size=3, total_epochs=1, total_steps=2, seed=0))) == 2
    batches = list(TaskStream(rows_of(10), batch_size=3, total_epochs=1, total_steps=7, seed=0))
    assert len(batches) == 7 and [t.epoch for t in batches[-1]] == [2, 2, 2]


def test_fewer_rows_than_a_batch_gives_no_steps():
    assert TaskStream(rows_of(2), batch_size=3, total_epochs=5, seed=0).total_steps == 0
    assert list(TaskStream(rows_of(2), batch_size=3, total_epochs=5, seed=0)) == []


def test_order_is_seeded_and_reproducible():
    first = indices(TaskStream(rows_of(50), batch_size=4, total_epochs=2, seed=42))
    again = indices(TaskStream(rows_of(50), batch_size=4, total_epochs=2, seed=42))
    other = indices(TaskStream(rows_of(50), batch_size=4, total_epochs=2, seed=43))
    assert first == again
    assert first != other
    assert first[0] != [0, 1, 2, 3]  # shuffled, not file order


def test_order_is_the_same_in_another_process():
    import subprocess
    import sys

    code = ("from rft_runtime.data.tasksets import TaskStream; "
            "print([[t.index for t in b] for b in TaskStream([{}] * 30, batch_size=5, seed=3)])")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2")}
    assert len(outs) == 1
    assert outs.pop().strip() == str(indices(TaskStream([{}] * 30, batch_size=5, seed=3)))


def test_resume_from_state_dict_continues_with_the_next_batch():
    rows = rows_of(23)
    full = indices(TaskStream(rows, batch_size=4, total_epochs=3, seed=11))
    first = TaskStream(rows, batch_size=4, total_epochs=3, seed=11)
    it = iter(first)
    seen = [[t.index for t in next(it)] for _ in range(7)]  # into the second epoch (5 steps per epoch)
    saved = json.loads(json.dumps(first.state_dict()))  # what a checkpoint file holds
    resumed = TaskStream(rows, batch_size=4, total_epochs=3, seed=11)
    resumed.load_state_dict(saved)
    assert resumed.step == 7 and resumed.epoch == 1
    rest = indices(resumed)
    assert seen + rest == full
    assert len(rest) == resumed.total_steps - 7


def test_resume_after_the_end_yields_nothing():
    stream = TaskStream(rows_of(8), batch_size=4, total_epochs=1, seed=0)
    list(stream)
    again = TaskStream(rows_of(8), batch_size=4, total_epochs=1, seed=0)
    again.load_state_dict(stream.state_dict())
    assert list(again) == []


def test_bad_stream_arguments():
    with pytest.raises(DataError, match="batch_size"):
        TaskStream(rows_of(4), batch_size=0)
    with pytest.raises(DataError, match="total_epochs"):
        TaskStream(rows_of(4), batch_size=1, total_epochs=0)


def test_resume_onto_a_changed_taskset_warns(caplog):
    old = TaskStream(rows_of(12), batch_size=4, total_epochs=1, seed=5)
    next(iter(old))
    grown = TaskStream(rows_of(16), batch_size=4, total_epochs=1, seed=5)
    with caplog.at_level("WARNING", logger="rft_runtime.data.tasksets"):
        grown.load_state_dict(old.state_dict())
    assert "num_rows 12 -> 16" in caplog.text
    assert grown.step == 1 and len(list(grown)) == 3
