import numpy as np

from gateway.bench.preparation import photo_sets, prepared
from gateway.bench.renderers import HELD_OUT_RENDERERS, RENDERERS
from gateway.models.repository import load_repository
from tests.conftest import REPO_ROOT


def test_every_source_photographs_every_digit_the_same_way_for_a_seed(heldout_sample) -> None:
    digits = heldout_sample[0][:1]
    sets = photo_sets(digits, seed=3)
    assert len(sets) == 1 + len(RENDERERS)
    assert sum("(held out)" in name for name in sets) == len(HELD_OUT_RENDERERS)
    assert all(len(photos) == 1 for photos in sets.values())
    assert photo_sets(digits, seed=3, renderers=HELD_OUT_RENDERERS[:1]) == dict(list(sets.items())[:1]) | {
        f"{HELD_OUT_RENDERERS[0]} (held out)": sets[f"{HELD_OUT_RENDERERS[0]} (held out)"]
    }
    assert photo_sets(digits, seed=4, renderers=()) != dict(list(sets.items())[:1])


def test_prepared_gives_the_model_inputs_and_marks_refusals(heldout_sample) -> None:
    spec = load_repository(REPO_ROOT / "model_repo")["mnist"]
    blank = photo_sets(np.zeros((1, 28, 28), np.uint8), seed=0, renderers=())["project generator"]
    photos = photo_sets(heldout_sample[0][:2], seed=0, renderers=())["project generator"] + blank
    tensors, taken, cpu_ms = prepared(photos, spec)
    assert tensors.shape == (3, 1, 28, 28)
    assert taken.tolist() == [True, True, False]
    assert not tensors[2].any() and tensors[0].max() == 1.0
    assert cpu_ms > 0
