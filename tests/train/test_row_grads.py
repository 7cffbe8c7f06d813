"""Sparse-row embedding gradients (mm_ptft/train/row_grads.py) give the gradient a dense backward gives."""
import pytest
import torch
from torch import nn

from mm_ptft.train import row_grads as RG


class Bag(nn.Module):
    """An embedding table read by a linear layer: the shape of a text encoder's input side."""

    def __init__(self, vocab: int = 50, dim: int = 8, padding_idx: int = 0) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=padding_idx)
        self.out = nn.Linear(dim, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(ids))).square().mean()  # ids (B, L) -> ()


def batches(seed: int = 0, n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = [torch.randint(0, 50, (4, 6), generator=g) for _ in range(n)]
    out[1][:, :3] = 7  # one id many times over: duplicates are summed
    out[2][:, -2:] = 0  # padding: no gradient for its row
    return out


@pytest.fixture(autouse=True)
def small_tables(monkeypatch):
    monkeypatch.setattr(RG, "MIN_NUMEL", 1)


def test_each_step_gets_the_dense_backwards_gradient_and_untouched_rows_stay_zero():
    torch.manual_seed(0)
    dense, sparse = Bag(), Bag()
    sparse.load_state_dict(dense.state_dict())
    rows = RG.RowGrads(RG.eligible_tables(sparse))
    assert sparse.emb.sparse
    for ids in batches():
        dense(ids).backward()
        sparse(ids).backward()
        assert sparse.emb.weight.grad.is_sparse
        rows.densify()
        got, want = sparse.emb.weight.grad, dense.emb.weight.grad
        assert not got.is_sparse and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        used = torch.zeros(50, dtype=torch.bool)
        used[ids.flatten()] = True
        used[0] = False  # padding_idx
        assert got[~used].abs().sum() == 0 and got[used].abs().sum(1).min() > 0  # by hand: only the ids' rows
        torch.testing.assert_close(sparse.out.weight.grad, dense.out.weight.grad)
        for m in (dense, sparse):
            m.zero_grad(set_to_none=True)
        rows.released(torch.tensor(0.0))
    rows.close()
    assert not sparse.emb.sparse


def test_adamw_with_clipping_trains_to_the_dense_weights_also_when_grads_are_zeroed_in_place():
    """AdamW decays the moments of rows a step did not touch: they must see zeros there, not stale values. With
    zero_grad(set_to_none=False) autograd adds the next rows into the handed-out buffer in place."""
    for set_to_none in (True, False):
        torch.manual_seed(1)
        dense, sparse = Bag(), Bag()
        sparse.load_state_dict(dense.state_dict())
        rows = RG.RowGrads(RG.eligible_tables(sparse))
        opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in (dense, sparse)]
        for ids in batches(1, 6):
            for m, opt in zip((dense, sparse), opts):
                m(ids).backward()
                if m is sparse:
                    rows.densify()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 0.05)  # in place on the buffer
                opt.step()
                opt.zero_grad(set_to_none=set_to_none)
            rows.released(torch.tensor(0.0))
        for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
        rows.close()


def test_a_nan_step_that_spread_nan_over_the_buffer_leaves_no_nan_for_the_next_step():
    model = Bag()
    rows = RG.RowGrads(RG.eligible_tables(model))
    ids = batches()
    model(ids[0]).backward()
    rows.densify()
    model.emb.weight.grad.mul_(float("nan"))  # what clipping by a NaN norm does to every entry
    model.zero_grad(set_to_none=True)
    rows.released(torch.tensor(1.0))  # the step was skipped as non-finite
    model(ids[3]).backward()
    rows.densify()
    grad = model.emb.weight.grad
    assert torch.isfinite(grad).all()
    ref = Bag()
    ref.load_state_dict(model.state_dict())
    ref(ids[3]).backward()
    torch.testing.assert_close(grad, ref.emb.weight.grad)


def test_only_large_trainable_unshared_cpu_tables_in_one_process_without_compile(monkeypatch):
    monkeypatch.setattr(RG, "MIN_NUMEL", 100)
    model = nn.ModuleDict({"big": nn.Embedding(50, 8), "small": nn.Embedding(10, 8), "frozen": nn.Embedding(50, 8),
                           "tied": nn.Embedding(50, 8), "head": nn.Linear(8, 50, bias=False)})
    model["frozen"].weight.requires_grad_(False)
    model["head"].weight = model["tied"].weight  # an output projection tied to the input table
    assert RG.eligible_tables(model) == [model["big"]]
    cpu = torch.device("cpu")
    assert len(RG.RowGrads.for_fit(model, cpu, True, False, False).tables) == 1
    model["big"].sparse = False
    for args in ((torch.device("cuda"), True, False, False), (cpu, False, False, False), (cpu, True, True, False),
                 (cpu, True, False, True)):
        assert RG.RowGrads.for_fit(model, *args).tables == []
        assert not model["big"].sparse


def test_the_trainer_uses_row_gradients_and_leaves_plain_modules(tmp_path, monkeypatch):
    """The tiny text recipe (its learned word table, made eligible here) trained 3 steps with and without:
    the same weights; during training the table is sparse, after fit it is not."""
    table = lambda trainer: next(m for n, m in trainer.task.named_modules()  # noqa: E731
                                 if n.endswith("word_embeddings"))
    from mm_paths import TEXT_TINY

    from mm_ptft.contracts import Callback
    from mm_ptft.run import load_config
    from mm_ptft.tasks.text_classification import TextClassification
    from mm_ptft.train.trainer import Trainer, seed_everything

    seen = []

    class Spy(Callback):
        def on_step_end(self, trainer):
            seen.append((len(trainer.state.row_grads.tables), table(trainer).sparse))

    weights = []
    for on in (True, False):
        cfg = load_config(TEXT_TINY, [f"output_dir={tmp_path / str(on)}", "train.max_steps=3", "train.precision=fp32",
                                      "train.report=false", f"train.sparse_embedding_grads={str(on).lower()}",
                                      "data.generate.n_train=200", "data.generate.n_eval=16", "train.batch_size=16"])
        seed_everything(0)
        trainer = Trainer.from_prepared(TextClassification.prepare(cfg), cfg, callbacks=[Spy()])
        words, positions = table(trainer).weight.numel(), 128 * 64
        assert words > positions
        monkeypatch.setattr(RG, "MIN_NUMEL", words)  # the learned word table only, not the position one
        trainer.fit()
        assert not table(trainer).sparse
        weights.append({k: v.clone() for k, v in trainer.task.state_dict().items()})
    assert seen == [(1, True)] * 3 + [(0, False)] * 3
    for k in weights[1]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=1e-5, atol=1e-6, msg=k)
