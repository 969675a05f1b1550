"""The SAC agent on a tiny random llama: policy file round trip, Ctrl-C checkpoint and resume, refusal of
policies trained for other observations, and zero-shot allocation within budget."""
from __future__ import annotations

import json
import tempfile

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback
from test_env import EMBEDDING_SIZE, random_embedding, tiny_context, tiny_llama, tokens

from ramp.agent.checkpoints import TrainingInterrupted, default_checkpoint_dir, latest_checkpoint, replay_path
from ramp.agent.contexts import KLDEvaluator
from ramp.agent.policy_file import PolicyRecord, load_policy, read_policy_record, save_policy
from ramp.agent.sac import SACConfig, new_record, train
from ramp.agent.selection import table_regret
from ramp.allocate.budget import Budget
from ramp.envs import BitAllocationEnv
from ramp.envs.action_mapping import ACTION_MAPPING_VERSION
from ramp.envs.observation import CONTEXT_FEATURES, OBSERVATION_VERSION
from ramp.errors import RampError
from ramp.measure.ladder import DEFAULT_LADDER
from ramp.measure.sensitivity_table import SensitivityTable

CONFIG = SACConfig(learning_starts=20, batch_size=16, net_arch=(16, 16))
FEATURE_VERSION = 1


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def env(model) -> BitAllocationEnv:
    context = tiny_context(model, evaluate=KLDEvaluator(model, tokens()))
    return BitAllocationEnv([context], (4.0, 6.0), DEFAULT_LADDER)


def record(env: BitAllocationEnv, model) -> PolicyRecord:
    return PolicyRecord(
        feature_version=FEATURE_VERSION, feature_names=[f"f{i}" for i in range(EMBEDDING_SIZE)],
        embedding_size=env.embedding_size, observation_size=int(env.observation_space.shape[0]),
        formats=list(env.ladder), grouping=env.grouping, models=[{"name": "tiny", "sha256": model.sha256}],
        budget_bpw=list(env.budget_bpw), reward={}, sac={}, seed=0, action_mapping=ACTION_MAPPING_VERSION,
        observation_version=OBSERVATION_VERSION,
    )


class InterruptAt(BaseCallback):
    """Ctrl-C as the user would press it: a KeyboardInterrupt in the middle of learning."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def _on_step(self) -> bool:
        if self.num_timesteps == self.step:
            raise KeyboardInterrupt
        return True


def test_save_load_round_trip(env, model, tmp_path) -> None:
    path = tmp_path / "policy.zip"
    sac = train(env, record(env, model), path, 60, CONFIG, checkpoint_every=0, progress_bar=False)
    loaded, stored = load_policy(path, env, FEATURE_VERSION)
    assert stored.timesteps == 60 and stored.formats == list(env.ladder)
    observations = np.stack([env.observation_space.sample() for _ in range(8)])
    np.testing.assert_array_equal(sac.predict(observations, deterministic=True)[0],
                                  loaded.predict(observations, deterministic=True)[0])


def test_training_without_tensorboard_leaves_no_log_folder(env, model, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where SB3's default logger would make SB3-<time>/
    train(env, record(env, model), tmp_path / "policy.zip", 30, CONFIG, checkpoint_every=0, progress_bar=False)
    assert (tmp_path / "policy.zip").is_file() and not list(tmp_path.glob("SB3-*"))


def test_interrupt_checkpoints_and_resume_continues_step_count(env, model, tmp_path) -> None:
    path = tmp_path / "policy.zip"
    with pytest.raises(TrainingInterrupted) as stop:
        train(env, record(env, model), path, 80, CONFIG, checkpoint_every=0, progress_bar=False,
                    extra_callbacks=[InterruptAt(50)])
    checkpoint = stop.value.checkpoint
    assert not path.exists() and checkpoint.is_file() and replay_path(checkpoint).is_file()
    assert read_policy_record(checkpoint).timesteps == 50
    assert latest_checkpoint(default_checkpoint_dir(path)) == checkpoint

    sac = train(env, record(env, model), path, 80, CONFIG, resume=checkpoint, progress_bar=False)
    assert sac.num_timesteps == 80
    # The past transitions came back with the checkpoint (a cold restart would hold only the 30 new ones;
    # the transition of the interrupted step itself is lost).
    assert sac.replay_buffer.size() >= 79
    assert read_policy_record(path).timesteps == 80


def test_policy_for_other_embedding_size_or_formats_is_refused(env, model, tmp_path) -> None:
    path = tmp_path / "policy.zip"
    train(env, record(env, model), path, 30, CONFIG, checkpoint_every=0, progress_bar=False)
    narrow = BitAllocationEnv([tiny_context(model, random_embedding(model)[:, :7])], (4.0, 6.0), DEFAULT_LADDER)
    with pytest.raises(RampError, match="trained on 11-number embeddings"):
        load_policy(path, narrow, FEATURE_VERSION)
    other_formats = BitAllocationEnv([tiny_context(model, ladder=("Q4_K", "Q8_0"))], (4.5, 6.0), ("Q4_K", "Q8_0"))
    with pytest.raises(RampError, match="trained for formats"):
        load_policy(path, other_formats, FEATURE_VERSION)
    sac, stored = load_policy(path, env, FEATURE_VERSION)
    stored.action_mapping = ACTION_MAPPING_VERSION - 1  # as written before action_index last changed
    save_policy(sac, tmp_path / "old.zip", stored)
    with pytest.raises(RampError, match="action mapping"):
        load_policy(tmp_path / "old.zip", env, FEATURE_VERSION)
    stored.action_mapping, stored.observation_version = ACTION_MAPPING_VERSION, 1  # before issue 12's features
    save_policy(sac, tmp_path / "old.zip", stored)
    with pytest.raises(RampError, match="reads observation layout 1, this ramp builds layout 2"):
        load_policy(tmp_path / "old.zip", env, FEATURE_VERSION)
    (tmp_path / "notes.txt").write_text("not a zip")
    with pytest.raises(RampError, match="not a ramp policy file"):
        read_policy_record(tmp_path / "notes.txt")


def test_zero_shot_allocation_is_within_budget_and_deterministic(env, model, tmp_path) -> None:
    from ramp.agent.policy import allocate_with_policy
    from ramp.measure import profile

    path = tmp_path / "policy.zip"
    trained = record(env, model)
    trained.feature_version = profile.FEATURE_VERSION
    train(env, trained, path, 60, CONFIG, checkpoint_every=0, progress_bar=False)
    other = tiny_llama(seed=1, n_blocks=3)  # a model the policy never saw
    embedding = random_embedding(other, seed=1)
    first = allocate_with_policy(other, path, "4.5bpw", embedding=embedding)
    again = allocate_with_policy(other, path, Budget.parse("4.5bpw"), embedding=embedding)
    assert first.formats == again.formats
    first.check_matches(other)
    assert first.data_bytes(other) <= Budget.parse("4.5bpw").bytes_for(other)
    assert first.method == "policy" and first.extra["policy_timesteps"] == 60


def test_a_policy_that_reads_an_estimate_gets_the_new_models_own(model, tmp_path) -> None:
    from test_env import damage_table

    from ramp.agent.policy import allocate_with_policy

    env = BitAllocationEnv([tiny_context(model, damage=damage_table(model), estimate=damage_table(model, seed=1))],
                           (4.0, 6.0), DEFAULT_LADDER)
    path = tmp_path / "policy.zip"
    train(env, new_record(env, [model], CONFIG, 0, "fisher"), path, 40, CONFIG, checkpoint_every=0, progress_bar=False)
    stored = read_policy_record(path)
    assert stored.estimate == "fisher" and stored.feature_names[-len(CONTEXT_FEATURES) - 1] == "estimate_action"
    other = tiny_llama(seed=1, n_blocks=3)
    embedding = random_embedding(other, seed=1)
    # the policy's observations differ with the estimate it is given, so the estimate is really read
    allocations = [allocate_with_policy(other, path, "4.6bpw", embedding=embedding, estimate=damage_table(other, seed=seed))
                   for seed in range(4)]
    for allocation in allocations:
        assert allocation.data_bytes(other) <= Budget.parse("4.6bpw").bytes_for(other)
    assert len({tuple(sorted(allocation.formats.items())) for allocation in allocations}) > 1
    with pytest.raises(RampError, match="name the damage estimate"):
        new_record(env, [model], CONFIG, 0)


@pytest.mark.slow
def test_train_command_learns_on_the_formats_its_table_measured(tiny_reference, tmp_path, capsys) -> None:
    from test_env import damage_table

    from ramp.cli import main
    from ramp.models import load_model

    model = load_model(tiny_reference)
    full = damage_table(model)
    measured = [fmt for fmt in full.formats if fmt != "Q5_0"]  # as `ramp profile`'s default sweep
    table = SensitivityTable(full.tensors, measured, full.damage[:, [full.formats.index(f) for f in measured]],
                             model_sha256=model.sha256)
    table.save(tmp_path / "table.json")
    out = tmp_path / "policy.zip"
    common = ["train", "--model", str(tiny_reference), "--budget", "5bpw..6bpw", "--timesteps", "40", "--out", str(out),
              "--calibration-tokens", "64", "--window", "32", "--tensorboard", str(tmp_path / "runs"), "--no-progress",
              "--checkpoint-every", "0", "--sac", "learning_starts=20", "--sac", "batch_size=16"]
    assert main(common + ["--sensitivity", str(tmp_path / "table.json")]) == 0
    record = read_policy_record(out)
    assert record.formats == measured and record.timesteps == 40 and record.models[0]["sha256"] == model.sha256
    assert record.estimate == "fisher" and record.models[0]["budget_bpw"] == [5.0, 6.0]

    out.unlink()
    capsys.readouterr()
    code = main(common + ["--sensitivity", str(tmp_path / "table.json")] * 2)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "one --sensitivity per --model" in err and not out.exists()

    # two models, a budget range each; rewards shaped by the estimate where no table is given
    two = [arg for arg in common if arg not in ("--budget", "5bpw..6bpw")] + ["--model", str(tiny_reference)]
    assert main(two + ["--budget", "5bpw..6bpw", "--budget", "5.5bpw..7bpw"]) == 0
    record = read_policy_record(out)
    assert [entry["budget_bpw"] for entry in record.models] == [[5.0, 6.0], [5.5, 7.0]] and record.budget_bpw == [5.0, 7.0]
    capsys.readouterr()
    code = main(two + ["--budget", "5bpw..6bpw"] * 3)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "give one --budget for every model or one per --model (2), not 3" in err


def test_train_resume_auto_keeps_continues_or_retrains(tiny_reference, tmp_path, capsys) -> None:
    from ramp.cli import main

    out = tmp_path / "policy.zip"
    common = ["train", "--model", str(tiny_reference), "--budget", "5bpw..6bpw", "--out", str(out), "--no-progress",
              "--calibration-tokens", "64", "--window", "32", "--tensorboard", str(tmp_path / "runs"), "--resume", "auto",
              "--checkpoint-every", "20", "--select-every", "0", "--sac", "learning_starts=10", "--sac", "batch_size=16"]
    assert main(common + ["--timesteps", "40"]) == 0
    assert "no checkpoint in" in capsys.readouterr().out and read_policy_record(out).timesteps == 40
    written = out.read_bytes()

    assert main(common + ["--timesteps", "40"]) == 0  # finished: kept as it is
    assert ": kept" in capsys.readouterr().out and out.read_bytes() == written

    assert main(common + ["--timesteps", "60"]) == 0  # more steps asked: continued from the last checkpoint
    assert "continuing from" in capsys.readouterr().out and read_policy_record(out).timesteps == 60

    assert main(common + ["--timesteps", "60", "--reward", "over_weight=31"]) == 0  # another reward: trained afresh
    printed = capsys.readouterr().out
    assert "another reward: removed, training afresh" in printed
    record = read_policy_record(out)
    assert record.timesteps == 60 and record.reward["over_weight"] == 31


def test_selection_keeps_the_best_scoring_policy(model, tmp_path) -> None:
    from test_env import damage_table

    table_env = BitAllocationEnv([tiny_context(model, damage=damage_table(model))], (4.0, 6.0), DEFAULT_LADDER)
    path = tmp_path / "policy.zip"
    scores = []
    score = table_regret(table_env)

    class Watch(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % 20 == 0:
                scores.append(score(self.model))
            return True

    train(table_env, record(table_env, model), path, 100, CONFIG, checkpoint_every=0, progress_bar=False,
                select_every=20, extra_callbacks=[Watch()])
    stored = read_policy_record(path)
    loaded, _ = load_policy(path, table_env, FEATURE_VERSION)
    # the file holds the policy with the lowest score seen (the final one included), and says when it was
    assert stored.extra["selection_regret"] == pytest.approx(min(scores + [stored.extra["selection_regret"]]))
    assert score(loaded) == pytest.approx(stored.extra["selection_regret"])
    assert stored.timesteps == stored.extra["selected_at_step"]


def test_resumed_selection_competes_with_the_earlier_best(model, tmp_path) -> None:
    from test_env import damage_table

    table_env = BitAllocationEnv([tiny_context(model, damage=damage_table(model))], (4.0, 6.0), DEFAULT_LADDER)
    path = tmp_path / "policy.zip"
    train(table_env, record(table_env, model), path, 60, CONFIG, checkpoint_every=60, progress_bar=False, select_every=20)
    # Pretend the first part found an unbeatable policy: the resumed part must leave it in place.
    sac, stored = load_policy(path, table_env, FEATURE_VERSION)
    stored.extra["selection_regret"] = -1.0
    save_policy(sac, path, stored)
    checkpoint = latest_checkpoint(default_checkpoint_dir(path))
    train(table_env, record(table_env, model), path, 100, CONFIG, checkpoint_every=0, progress_bar=False,
                select_every=20, resume=checkpoint)
    kept = read_policy_record(path)
    assert kept.extra["selection_regret"] == -1.0 and kept.timesteps == stored.timesteps


def test_tune_command_scores_trials_by_measured_kld_and_continues_its_study(tiny_reference, tmp_path, capsys) -> None:
    import json
    import sqlite3

    from ramp.cli import main

    storage = tmp_path / "tune.db"
    out = tmp_path / "tuned.json"
    command = ["tune", "--model", str(tiny_reference), "--budget", "5bpw..6bpw", "--trials", "1", "--timesteps", "20",
               "--eval-points", "2", "--calibration-tokens", "64", "--window", "32", "--storage", f"sqlite:///{storage}",
               "--study", "tiny", "--out", str(out)]
    assert main(command) == 0
    best = json.loads(out.read_text())
    assert best["study"] == "tiny" and best["trial"] == 0
    assert 0 < best["mean_kld"] < 10  # a measured KLD of the tiny model's allocations, not a reward
    assert set(best["sac"]) >= {"learning_rate", "gamma", "net_arch"} and set(best["reward"]) >= {"kld_scale", "over_weight"}
    assert "train with: ramp train" in capsys.readouterr().out

    assert main(command) == 0  # the same study name continues it
    with sqlite3.connect(storage) as db:
        assert db.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0] == 2


@pytest.mark.slow
def test_a_policy_allocates_from_the_embeddings_ramp_profile_wrote(tiny_reference, tmp_path, capsys) -> None:
    from ramp.allocate.allocation import Allocation
    from ramp.cli import main

    policy = tmp_path / "policy.zip"
    assert main(["train", "--model", str(tiny_reference), "--budget", "5bpw..6bpw", "--timesteps", "30", "--out", str(policy),
                 "--calibration-tokens", "64", "--window", "32", "--tensorboard", str(tmp_path / "runs"), "--no-progress",
                 "--checkpoint-every", "0", "--sac", "learning_starts=10", "--sac", "batch_size=8"]) == 0
    assert main(["profile", str(tiny_reference), "--out", str(tmp_path / "profile"), "--no-sensitivity"]) == 0
    allocate = ["allocate", "--model", str(tiny_reference), "--method", "policy", "--policy", str(policy), "--budget", "5.5bpw"]
    assert main(allocate + ["--out", str(tmp_path / "profiled.json")]) == 0
    assert main(allocate + ["--embeddings", str(tmp_path / "profile" / "embeddings.json"), "--out", str(tmp_path / "read.json")]) == 0
    # the same embeddings, read instead of profiled again: the same allocation
    assert Allocation.load(tmp_path / "read.json").formats == Allocation.load(tmp_path / "profiled.json").formats

    other = json.loads((tmp_path / "profile" / "embeddings.json").read_text())
    other["model_sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    capsys.readouterr()
    assert main(allocate + ["--embeddings", str(tmp_path / "other.json"), "--out", str(tmp_path / "no.json")]) == 2
    assert "profiled on another model" in capsys.readouterr().err and not (tmp_path / "no.json").exists()
