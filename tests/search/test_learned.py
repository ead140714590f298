"""The learned and random strategies (relulab.search.strategies, relulab.search.gates): placements at ReLU
budgets per seed, stored as found, trained by the recipe, the learned one set against chance; scaled down to
digits on the CPU."""
import pytest

from relulab.core.errors import UserError
from relulab.experiments import Overrides, load_experiment
from relulab.search import SearchOptions, run_search
from relulab.store import Store
from specs import quiet, relulab, write_spec

MLP = """\
name: mlp
device: cpu
threads: 1
seeds: [0, 1]
data: {name: digits}
model: {name: deep-mlp, widths: [16, 16, 16, 16], init: he_normal}
train: {epochs: 2, batch_size: 32, optimizer: {name: adam}}
configs:
  all-relu: {}
baseline: all-relu
"""
FULL = 64  # 4 slots of 16 units


def mlp(tmp_path, store="s.sqlite"):
    return load_experiment(str(write_spec(tmp_path, MLP)), Overrides(store=str(tmp_path / store)))


def test_learned_search_finds_a_placement_per_seed_and_budget_and_sets_it_against_chance(tmp_path):
    exp = mlp(tmp_path)
    options = SearchOptions("learned", granularity="unit", budgets="0.5,0.25", gate_epochs=1)
    outcome = run_search(exp, options, log=quiet)
    # the base (2 seeds), then learned and random at 2 budgets, 2 seeds each
    assert outcome.trained == 2 + 2 * 2 * 2
    with Store(tmp_path / "s.sqlite") as store:
        search = next(s for s in store.searches("mlp") if s.strategy == "learned")
        placements = store.search_placements(outcome.id)
        runs = store.runs([k for c in search.candidates for k in c.run_keys])
    assert [s.kind for s in search.steps] == ["learned", "random"]
    learned = [c for c in search.candidates if c.step == 1 and c.position > 0]
    chance = [c for c in search.candidates if c.step == 2 and c.position > 0]
    assert [c.relu_count for c in learned] == [c.relu_count for c in chance] == [32, 16]  # units: exact
    assert all(c.reference == r.placement for c, r in zip(learned, chance))  # each learned point vs chance
    assert set(placements) == {(f"learned-unit-{b}", seed) for b in (32, 16) for seed in (0, 1)}
    for c in learned + chance:
        assert len(set(c.run_keys)) == 2  # one placement per seed, each trained at its seed
        for key in c.run_keys:
            spec = runs[key]["spec"]["model"]
            assert len(spec["masks"]) == 4  # every slot masked at unit granularity
            assert runs[key]["data"]["relu_count"] == c.relu_count
    # the stored placement is the run's: the model built from it keeps the budget
    one = placements[("learned-unit-16", 1)]
    assert one["relu_count"] == 16
    # run again: nothing trained, no gates trained again, the same result
    lines = []
    again = run_search(exp, options, log=lines.append)
    assert (again.id, again.trained) == (outcome.id, 0) and again.result == outcome.result
    assert not any("gates trained" in line for line in lines)


def test_random_search_at_layer_granularity_keeps_whole_slots_within_the_budget(tmp_path):
    exp = mlp(tmp_path)
    outcome = run_search(exp, SearchOptions("random", granularity="layer", budgets=[40, 0.25]), log=quiet)
    with Store(tmp_path / "s.sqlite") as store:
        search = next(s for s in store.searches("mlp") if s.strategy == "random")
        runs = store.runs([k for c in search.candidates for k in c.run_keys])
    points = [c for c in search.candidates if c.position > 0]
    # 40 ReLUs: two whole slots of 16 fit; 25% = 16: one slot
    assert [c.relu_count for c in points] == [32, 16]
    for c in points:
        for key in c.run_keys:
            slots = runs[key]["spec"]["model"]["slots"]
            assert sum(v == "identity" for v in slots.values()) == FULL // 16 - c.relu_count // 16
            assert not runs[key]["spec"]["model"].get("masks")
    assert set(outcome.result["by_budget"]) == {"40", "16"}
    # chance is reproducible: the same search in another store draws the same placements
    other = run_search(mlp(tmp_path, "t.sqlite"), SearchOptions("random", granularity="layer", budgets=[40, 0.25]),
                       log=quiet)
    with Store(tmp_path / "t.sqlite") as store:
        keys = [c.run_keys for c in next(s for s in store.searches("mlp")).candidates]
    assert keys == [c.run_keys for c in search.candidates] and other.id == outcome.id


@pytest.mark.parametrize("options,says", [
    (SearchOptions("random", budgets="half"), "search.budgets: expected numbers"),
    (SearchOptions("random", budgets=[1.5]), "search.budgets: expected fractions"),
    (SearchOptions("random", budgets=[1000]), "search.budgets: 1,000 ReLUs; the base all-relu has 64"),
    (SearchOptions("random", granularity="row"), "search.granularity: unknown value 'row'"),
])
def test_bad_budgets_and_granularities_are_refused_naming_the_option(tmp_path, options, says):
    with pytest.raises(UserError, match=says):
        run_search(mlp(tmp_path), options, log=quiet)


def test_the_command_runs_a_learned_search_and_refuses_a_bad_granularity(tmp_path, capsys):
    spec = write_spec(tmp_path, MLP)
    code, out, err = relulab(capsys, "search", str(spec), "--strategy", "learned", "--granularity", "channel",
                             "--budgets", "0.5", "--gate-epochs", "1", "--store", str(tmp_path / "c.sqlite"),
                             "--no-report")
    assert code == 0, err
    assert "learned step 1" in out and "learned step 2" in out and "learned-channel-32" in out
    assert "random-channel-32" in out  # chance at the same budget, beside it
    code, out, err = relulab(capsys, "search", str(spec), "--strategy", "random", "--granularity", "rows",
                             "--store", str(tmp_path / "c.sqlite"), "--no-report")
    assert code == 2 and err.strip().count("\n") == 0 and "search.granularity" in err


def test_learned_with_fine_tuning_records_each_seeds_tuned_model_as_a_run_of_its_own(tmp_path):
    """SNL's protocol beside relulab's: each seed's gate-trained model, its placement fixed, trained on for
    search.finetune_epochs and recorded under a key of its own, marked with the run it started from; a third step
    sets each fine-tuned point against chance; run again, nothing trains."""
    exp = mlp(tmp_path)
    options = SearchOptions("learned", granularity="channel", budgets="0.5", gate_epochs=1, finetune_epochs=1)
    outcome = run_search(exp, options, log=quiet)
    assert outcome.id != run_search(exp, SearchOptions("learned", granularity="channel", budgets="0.5",
                                                       gate_epochs=1), log=quiet).id
    with Store(tmp_path / "s.sqlite") as store:
        search = next(s for s in store.searches("mlp") if s.id == outcome.id)
        assert [s.kind for s in search.steps] == ["learned", "random", "finetuned"]
        tuned = [c for c in search.candidates if c.step == 3 and c.position > 0]
        learned = [c for c in search.candidates if c.step == 1 and c.position > 0]
        assert len(tuned) == 1 and tuned[0].relu_count == learned[0].relu_count == 32
        assert tuned[0].reference == "random-channel-32" and len(tuned[0].accs) == 2
        runs = store.runs(tuned[0].run_keys)
        for key, run in runs.items():
            assert key.endswith(f"-finetuned-{outcome.id}") and run["epochs"] == 1
            assert run["data"]["finetuned_from"] and run["data"]["relu_count"] == 32
            assert len(run["spec"]["model"]["masks"]) == 4
    again = run_search(exp, options, log=quiet)
    assert again.trained == 0 and again.result == outcome.result
    with pytest.raises(UserError, match="search.finetune_epochs"):
        run_search(exp, SearchOptions("learned", finetune_epochs=-1), log=quiet)


def test_a_store_copied_without_its_weights_still_gives_gates_a_base_to_start_from(tmp_path):
    """A store carried to another machine without its weights folder: the learned strategy trains a copy of each
    base run to start from, stored as its own record. Carried once more, without weights again, that copy's
    record is there but its weights are not: the copy trained again is used as it trained (the store drops the
    duplicate record), rather than the search failing for want of weights."""
    import shutil

    exp = mlp(tmp_path)
    weights = tmp_path / "s.weights"

    def search(budgets):
        shutil.rmtree(weights, ignore_errors=True)
        lines = []
        run_search(exp, SearchOptions("learned", granularity="unit", budgets=budgets, gate_epochs=1), log=lines.append)
        return lines

    search("0.5")
    assert any("training a copy of each" in line for line in search("0.5,0.25"))
    lines = search("0.5,0.25,0.125")
    assert any("training a copy of each" in line for line in lines)
    assert sum("gates trained" in line for line in lines) == 3 * 2  # another search: every budget, each seed
