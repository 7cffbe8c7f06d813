"""``mm_ptft.train.rng``: a saved state (also after a checkpoint's list-for-tuple round trip) gives the same
draws from every stream; ``preserved`` leaves every stream as it was; a rank the checkpoint lacks is seeded."""
import random

import numpy as np
import torch

from mm_ptft.train import rng as R


def draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_a_saved_state_gives_the_same_draws_after_a_checkpoint_round_trip(tmp_path):
    R.seed_everything(3)
    torch.save(R.gather_rng_states(), tmp_path / "state.pt")  # as a checkpoint stores it
    expected = draws()
    draws()
    (state,) = torch.load(tmp_path / "state.pt", weights_only=True)
    R.set_rng_state(state)
    assert draws() == expected
    py = state["python"]  # an older checkpoint's lists for tuples
    R.set_rng_state({**state, "python": [py[0], list(py[1]), py[2]]})
    assert draws() == expected


def test_preserved_leaves_every_stream_as_it_was():
    R.seed_everything(5)
    expected = draws()
    R.seed_everything(5)
    with R.preserved(torch.device("cpu")):
        draws()
        R.seed_everything(99)
    assert draws() == expected


def test_a_rank_the_checkpoint_lacks_is_seeded_with_the_fallback():
    saved = R.rng_state()
    R.restore_rank([saved], rank=1, fallback_seed=11)
    got = draws()
    R.seed_everything(11)
    assert got == draws()
    R.set_rng_state(saved)
    expected = draws()
    R.restore_rank([saved], rank=0, fallback_seed=11)  # a rank the checkpoint has: its own state
    assert draws() == expected
