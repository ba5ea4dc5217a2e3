"""`fmnist sweep`: config checks before any trial, the one-line error without the ray extra, a
4-trial ASHA sweep through the CLI on a real local Ray (run directories, sweep.json, best.toml
that trains, TensorBoard scalars, nothing left running), and Ctrl-C then --resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from conftest import default_sigint
from fmnist.errors import UsageError
from fmnist.experiments.sweep_config import parse_sweep
from fmnist.inference.rundir import BEST_FILE, SWEEP_FILE, TRIALS_DIR

BASE = 'model = "mlp_seed002"\nval_size = 100\nbatch_size = 50\n'
SEARCH = "[search]\nlr = { loguniform = [1e-3, 1e-1] }\nweight_decay = { choice = [0.0, 0.05] }\n"
INSTALL = "pip install 'fmnist[ray]'"
REPO = Path(__file__).resolve().parents[1]


def sweep_toml(path: Path, epochs: int = 4, sweep: str = "", search: str = SEARCH) -> Path:
    path.write_text(f"{BASE}epochs = {epochs}\n[sweep]\ncpus_per_trial = 1\n{sweep}\n{search}")
    return path


@pytest.mark.parametrize(
    ("search", "sweep", "named"),
    [
        ("lrr = { uniform = [0.1, 0.2] }", "", "'lrr'"),
        ("data_dir = { choice = ['a'] }", "", "'data_dir'"),
        ("lr = { uniform = [0.1, 0.1] }", "", "lr: uniform range [0.1, 0.1] is empty"),
        ("lr = { loguniform = [1e-2, 1e-4] }", "", "lr: loguniform range [0.01, 0.0001] is empty"),
        ("lr = { loguniform = [0.0, 0.1] }", "", "lr: loguniform needs 0 < low"),
        ("crop_pad = { randint = [3, 1] }", "", "crop_pad: randint range [3, 1] is empty"),
        ("weight_decay = { choice = [] }", "", "weight_decay: choice needs a non-empty list"),
        ("batch_size = { grid = [] }", "", "batch_size: grid needs a non-empty list"),
        ("epochs = { uniform = [1.0, 4.0] }", "", "epochs: uniform draws fractions"),
        ("weight_decay = { uniform = [0.0, 2.0] }", "", "weight_decay = 2.0: weight_decay must be in [0, 1)"),
        ("lr = { between = [1, 2] }", "", "lr: write lr = { KIND = [...] }"),
        ("lr = { choice = [0.1] }", 'metric = "test_accuracy"', "metric 'test_accuracy' is refused"),
        ("lr = { choice = [0.1] }", "grace_perod = 2", "[sweep] has no key 'grace_perod'"),
        ("lr = { choice = [0.1] }", 'scheduler = "hyperband"', "scheduler must be one of asha, none"),
        ("lr = { choice = [0.1] }", "grace_period = 9", "grace_period (9) must be at most the epochs (4)"),
        ("val_size = { choice = [0, 100] }", "", "needs a validation split"),
    ],
)
def test_bad_search_space_is_refused_in_one_line_naming_the_key(search, sweep, named):
    import tomllib

    data = tomllib.loads(f"{BASE}epochs = 4\n[sweep]\n{sweep}\n[search]\n{search}\n")
    with pytest.raises(UsageError) as caught:
        parse_sweep(data, "bad.toml")
    message = str(caught.value)
    assert named in message and message.startswith("bad.toml: ") and "\n" not in message


def test_search_values_become_trial_configs():
    import tomllib

    text = ('model = "mlp"\nepochs = 3\n[sweep]\nnum_samples = 2\n[search]\nbatch_size = { grid = [32, 64, 128] }\n'
            'crop_pad = { randint = [0, 2] }\n"model_args.dropout" = { uniform = [0.0, 0.5] }\n')  # fmt: skip
    spec = parse_sweep(tomllib.loads(text), "ok.toml")
    assert spec.total_trials == 6 and spec.max_epochs == 3 and spec.mode == "max"
    config = spec.trial_config({"batch_size": 64, "crop_pad": 2, "model_args.dropout": 0.25})
    assert (config.batch_size, config.crop_pad, config.model_args["dropout"], config.model) == (64, 2, 0.25, "mlp")


ISSUE_EXAMPLE = """
model = "fastcnn"            # any `fmnist train` key: the base of every trial
epochs = 8
[sweep]
num_samples = 16
metric = "val_accuracy"      # never a test metric
scheduler = "asha"           # or "none"
grace_period = 2
cpus_per_trial = 1
gpus_per_trial = 0
[search]
lr = { loguniform = [1e-4, 1e-2] }
weight_decay = { choice = [0.0, 0.05] }
"""


def test_the_documented_example_is_the_contract(tmp_path):
    from fmnist.experiments.sweep_config import read_sweep

    path = tmp_path / "issue.toml"
    path.write_text(ISSUE_EXAMPLE)
    spec = read_sweep(path)
    s = spec.settings
    assert (s.num_samples, s.metric, s.scheduler, s.grace_period, s.cpus_per_trial, s.gpus_per_trial) == (
        16, "val_accuracy", "asha", 2, 1.0, 0.0)  # fmt: skip
    assert spec.max_epochs == 8 and spec.base_config.model == "fastcnn" and spec.mode == "max"
    assert [(d.key, d.kind, d.values) for d in spec.search] == [("lr", "loguniform", (1e-4, 1e-2)),
                                                                ("weight_decay", "choice", (0.0, 0.05))]  # fmt: skip
    example = read_sweep(REPO / "configs" / "sweep-example.toml")  # the README's example parses too
    assert example.total_trials == 16 and example.settings.scheduler == "asha"


BLOCKED_RAY = r"""
import io, json, sys
sys.modules["ray"] = None  # what a Python without the ray extra sees on `import ray`
from fmnist.cli import main
answers = []
for argv in json.loads(sys.argv[1]):
    sys.stderr = io.StringIO()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    answers.append([code, sys.stderr.getvalue()])
    sys.stderr = sys.__stderr__
loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and (m == "ray" or m.startswith("ray.")))
print(json.dumps({"answers": answers, "ray_modules": loaded}))
"""


def test_without_the_ray_extra_every_ray_command_says_how_to_install_in_one_line(tmp_path, tiny_data_dir, isolated_env):
    compare_toml = tmp_path / "compare.toml"
    compare_toml.write_text(
        '[defaults]\nval_size = 100\nepochs = 1\nmax_steps = 2\n[[runs]]\nname = "mlp"\nmodel = "mlp_seed002"\n'
    )
    good, bad = (
        sweep_toml(tmp_path / "good.toml"),
        sweep_toml(tmp_path / "bad.toml", search="[search]\nlrr = { choice = [0.1] }\n"),
    )
    data = ["--data-dir", str(tiny_data_dir)]
    commands = [
        ["sweep", str(good), *data],
        [
            "compare",
            "--config",
            str(compare_toml),
            "--ray",
            "local",
            "--no-report",
            "--out",
            str(tmp_path / "c1"),
            *data,
        ],
        [
            "ablate",
            "--base",
            "mlp_seed002",
            "--val-size",
            "100",
            "--max-steps",
            "2",
            "--ray",
            "local",
            "--no-report",
            *data,
        ],
        ["train", "--model", "mlp_seed002", "--seeds", "2", "--val-size", "100", "--ray", "local", *data],
        ["sweep", str(bad), *data],  # the config is checked before Ray is needed
        ["compare", "--config", str(compare_toml), "--no-report", "--out", str(tmp_path / "c2"), *data],  # no --ray
    ]
    env = {k: v for k, v in isolated_env.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", BLOCKED_RAY, json.dumps(commands)], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for (code, err), argv in zip(report["answers"][:4], commands):
        assert code == 1 and err.count("\n") == 1 and INSTALL in err and err.startswith("error: "), (argv[0], err)
    code, err = report["answers"][4]
    assert code == 2 and err.count("\n") == 1 and "'lrr'" in err and INSTALL not in err
    code, err = report["answers"][5]
    assert code == 0, err
    assert report["ray_modules"] == []  # compare without --ray never loads Ray


# -- the CLI on a real local Ray ----------------------------------------------------------


@pytest.fixture
def short_tmp():
    """A short TMPDIR for the CLI (Ray's socket paths must stay under 107 bytes), removed afterwards."""
    pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")
    folder = Path(tempfile.mkdtemp(prefix="fmt", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def cli_env(isolated_env: dict[str, str], tmpdir: Path) -> dict[str, str]:
    env = {k: v for k, v in isolated_env.items() if k != "RAY_ADDRESS"}
    return {**env, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}


def processes_with(marker: bytes) -> list[int]:
    """Other processes whose environment holds `marker` (a NAME=VALUE entry), by pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def processes_using(tmpdir: Path) -> list[int]:
    """Processes started with this TMPDIR (Ray's daemons and workers inherit it), by pid."""
    return processes_with(f"TMPDIR={tmpdir}".encode())


def assert_nothing_left(tmpdir: Path) -> None:
    deadline = time.monotonic() + 15  # Ray's daemons take a moment to exit after the driver
    while processes_using(tmpdir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_using(tmpdir) == []
    assert list(tmpdir.glob("fmnist-ray-*")) == []  # the local Ray's temp and log folder is gone


def test_sweep_with_asha_on_local_ray_through_the_cli(tmp_path, tiny_data_dir, tiny_dataset, isolated_env, short_tmp):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fmnist import api
    from fmnist.report.builder import write_report
    from fmnist.training.progress import PLAIN_WIDTH
    from fmnist.training.tensorboard import SCALARS

    # Two samples of a 2-value grid: 4 trials, two of which learn far too slowly for ASHA to keep.
    # One trial at a time, so each slow one meets the rung after a fast one has set its bar.
    config = sweep_toml(tmp_path / "sweep.toml", search="[search]\nlr = { grid = [0.1, 1e-4] }\n",
                        sweep="num_samples = 2\ngrace_period = 1\nreduction_factor = 2\nmax_concurrent_trials = 1\n")  # fmt: skip
    out = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "fmnist", "sweep", str(config), "--out", str(out), "--tensorboard",
                           "--data-dir", str(tiny_data_dir)], capture_output=True, text=True,
                          env=cli_env(isolated_env, short_tmp), timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert_nothing_left(short_tmp)
    summary = json.loads((out / SWEEP_FILE).read_text())
    assert summary["complete"] and len(summary["trials"]) == 4 and summary["scheduler"]["name"] == "asha"
    assert [(t["config"]["lr"], t["status"]) for t in summary["trials"]] == [
        (0.1, "finished"), (1e-4, "stopped"), (0.1, "finished"), (1e-4, "stopped")]  # fmt: skip
    events = [line for line in done.stdout.splitlines() if line.startswith("trial-")]
    kinds = [line.split()[1] for line in events]  # "trial-003 stopped ep 1 52.00% | run 1 done 1 stop 1/4 ..."
    assert kinds.count("started") == 4 and kinds.count("done") + kinds.count("stopped") == 4  # a line per event
    assert all(len(line) <= PLAIN_WIDTH for line in events) and "\x1b" not in done.stdout
    assert all("best" in line and "ETA" in line for line in events if line.split()[1] in ("done", "stopped"))
    for trial in summary["trials"]:
        run_dir = out / trial["run_dir"]
        layout = {p.name for p in run_dir.iterdir()}
        assert {"config.toml", "environment.json", "metrics.jsonl", "tensorboard"} <= layout
        if trial["status"] == "finished":
            assert {"results.json", "model.safetensors", "model.json"} <= layout and "state.json" not in layout
            assert len(trial["epochs"]) == 4 and "trained all 4" in trial["why"]
        else:  # stopped by ASHA: resumable like any interrupted run
            assert trial["status"] == "stopped" and "ASHA" in trial["why"] and "state.json" in layout
        scalars = EventAccumulator(str(run_dir / "tensorboard"))
        scalars.Reload()
        assert set(SCALARS) <= set(scalars.Tags()["scalars"])
        val = [e.value for e in scalars.Scalars("accuracy/validation")]
        assert val == pytest.approx([row["val_accuracy"] for row in trial["epochs"]], abs=1e-6)
    best = summary["best"]
    values = [t["best"]["value"] for t in summary["trials"] if t["best"]]
    assert best["value"] == max(values) and (out / "report.html").is_file()
    assert write_report(out) == out / "report.html"  # `fmnist report SWEEP_DIR`
    assert "Hyperparameter sweep" in (out / "report.md").read_text()
    stopped = next(t for t in summary["trials"] if t["status"] == "stopped")
    resumed = api.resume(out / stopped["run_dir"], data=tiny_dataset, progress=False)  # an ordinary, resumable run
    assert resumed.results["epochs_run"] == 4
    run = api.train(config_file=out / BEST_FILE, data=tiny_dataset, out=tmp_path / "best-run", progress=False)
    assert run.results["model"] == "mlp_seed002" and run.results["epochs_run"] == 4
    trained, chosen = (tomllib.loads((p / "config.toml").read_text()) for p in (run.path, out / best["run_dir"]))
    assert set(trained.pop("sources").values()) == {f"file {out / BEST_FILE}"}  # every setting from best.toml
    assert chosen.pop("sources")["epochs"] == f"file {config}"
    assert trained == chosen  # exactly the best trial's config


def test_ctrl_c_stops_everything_and_resume_finishes_the_sweep(tmp_path, tiny_data_dir, isolated_env, short_tmp):
    from fmnist import api

    config = sweep_toml(tmp_path / "sweep.toml", epochs=12, sweep='num_samples = 2\nscheduler = "none"\n')
    out = tmp_path / "sweep"
    env = cli_env(isolated_env, short_tmp)
    command = [sys.executable, "-m", "fmnist", "sweep", "--data-dir", str(tiny_data_dir)]
    sweep = subprocess.Popen([*command, str(config), "--out", str(out), "--no-report"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_sigint)  # fmt: skip
    try:
        deadline = time.monotonic() + 200
        metrics = [out / TRIALS_DIR / f"trial-00{i}" / "metrics.jsonl" for i in range(2)]
        while time.monotonic() < deadline and sweep.poll() is None:
            if any(m.is_file() and len(m.read_text().splitlines()) >= 2 for m in metrics):  # a checkpoint exists
                break
            time.sleep(0.05)
        sweep.send_signal(signal.SIGINT)
        stdout, stderr = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 130, stderr[-3000:]
    assert f"fmnist sweep --resume {out}" in stderr.strip().splitlines()[-1]
    assert_nothing_left(short_tmp)
    assert not json.loads((out / SWEEP_FILE).read_text())["complete"]

    done = subprocess.run([*command, "--resume", str(out), "--no-report"], capture_output=True, text=True, env=env,
                          timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert_nothing_left(short_tmp)
    summary = json.loads((out / SWEEP_FILE).read_text())
    assert summary["complete"] and summary["counts"]["finished"] == 2
    assert any(t["resumed_from_epoch"] >= 1 for t in summary["trials"])  # continued, not restarted
    assert all(len(t["epochs"]) == 12 for t in summary["trials"]) and (out / BEST_FILE).is_file()
    with pytest.raises(UsageError, match="this sweep finished; nothing to resume"):
        api.sweep(resume=out)
