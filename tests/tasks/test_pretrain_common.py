"""Shared pretraining data helpers: the zero-shot class set, and the reason logged when a run has none."""
import logging

import datasets
import pytest

from mm_ptft.tasks.pretrain_common import PretrainData, zero_shot


class Tok:
    """The two calls class_prompts makes of a tokenizer, on whitespace words."""

    def __call__(self, texts, padding=True, return_tensors="pt"):
        import torch
        n = max(len(t.split()) for t in texts)
        ids = [[1 + len(w) for w in t.split()] + [0] * (n - len(t.split())) for t in texts]
        return {"input_ids": torch.tensor(ids), "attention_mask": (torch.tensor(ids) > 0).long()}


class Text:
    tokenizer = Tok()


def test_zero_shot_skip_is_logged_with_the_reason(caplog):
    pairs = datasets.Dataset.from_dict({"caption": ["a red circle"], "image": ["a.png"]})
    with caplog.at_level(logging.INFO, logger="mm_ptft"):
        assert zero_shot(PretrainData(), [pairs], {"text": Text()}) == (None, None)
    assert "zero-shot evaluation skipped" in caplog.text
    assert "data.label_column='label'" in caplog.text and "'caption', 'image'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mm_ptft"):
        zero_shot(PretrainData(), [pairs], {"image": object()})
    assert "no text encoder" in caplog.text
    caplog.clear()
    labeled = pairs.add_column("label", ["circle"])
    with caplog.at_level(logging.INFO, logger="mm_ptft"):
        labels, (ids, mask) = zero_shot(PretrainData(), [labeled], {"text": Text()})
    assert labels.names == ["circle"] and ids.shape == (1, 5) and "skipped" not in caplog.text


@pytest.mark.parametrize("key, value, said", [("label_column", "", "data.label_column is empty"),
                                              ("prompt_templates", [], "data.prompt_templates is empty")])
def test_each_missing_key_is_named(caplog, key, value, said):
    d = PretrainData()
    setattr(d, key, value)
    pairs = datasets.Dataset.from_dict({"caption": ["x"], "label": ["y"]})
    with caplog.at_level(logging.INFO, logger="mm_ptft"):
        zero_shot(d, [pairs], {"text": Text()})
    assert said in caplog.text
