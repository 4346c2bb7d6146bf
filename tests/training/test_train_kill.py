"""A training run killed with SIGKILL resumes from its checkpoint and ends where an
uninterrupted run with the same seed ends (same parameters, threshold and metrics)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from changedet.cli import main
from changedet.detectors.learned import load_model


def _train_args(sample_data, out, workdir):
    city = sample_data / "oscd_paris"
    return [
        "train", "--dataset", "pair", str(city / "imgs_1"), str(city / "imgs_2"),
        str(city / "paris-cm.tif"), "--change-values", "2", "--preset", "tiny",
        "--set", "train.num_epochs=3", "--set", "train.steps_per_epoch=12",
        "--set", "train.patience=0", "-o", str(out), "--workdir", str(workdir), "-q",
    ]


@pytest.mark.slow  # a real CLI training killed and resumed (~35 s idle); the in-process resume
# equality is in tests/training/test_training.py::test_resume_equals_uninterrupted, which always
# runs
def test_killed_training_resumes_to_the_uninterrupted_result(sample_data, tmp_path):
    full_out, full_dir = tmp_path / "full.msgpack", tmp_path / "full"
    assert main(_train_args(sample_data, full_out, full_dir)) == 0

    out, workdir = tmp_path / "killed.msgpack", tmp_path / "killed"
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "changedet", *_train_args(sample_data, out, workdir)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    checkpoint = workdir / "checkpoint.msgpack"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert checkpoint.exists(), "no checkpoint was written after the first epoch"
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the worst case
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    epochs_done = len((workdir / "metrics.jsonl").read_text().splitlines())
    assert epochs_done < 3, "the run finished before it could be killed; lengthen it"

    assert main(_train_args(sample_data, out, workdir)) == 0  # resumes from the checkpoint
    full, resumed = load_model(full_out), load_model(out)
    assert resumed.threshold == full.threshold
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def epochs(path):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in rows]

    assert epochs(workdir / "metrics.jsonl") == epochs(full_dir / "metrics.jsonl")
