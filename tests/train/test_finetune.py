"""Fine-tuning strategies: parameter groups, LLRD, freezing and LoRA, checked against hand computations."""
import pytest
import torch

from mm_ptft.config import FinetuneConfig, OptimConfig
from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
from mm_ptft.heads.classification import ClassificationTask
from mm_ptft.train.finetune import apply_finetune, finetune_groups, has_lora, merged_copy, save_encoders

CORPUS = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"] * 4


def bert_task(layers: int = 2) -> ClassificationTask:
    torch.manual_seed(0)
    spec = {"name": "hf", "vocab_size": 100, "config": {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": layers,
                                                         "num_attention_heads": 2, "intermediate_size": 32,
                                                         "max_position_embeddings": 32}}
    return ClassificationTask(build_encoder(TEXT_ENCODERS, spec, "model.text", corpus=CORPUS), 3, dropout=0.0)


def lr_of(groups, param):
    return next(g["lr"] for g in groups if any(p is param for p in g["params"]))


def wd_of(groups, param):
    return next(g["weight_decay"] for g in groups if any(p is param for p in g["params"]))


def test_no_decay_for_biases_and_norms():
    task = bert_task()
    groups = finetune_groups(task, OptimConfig(lr=1.0, weight_decay=0.1), FinetuneConfig())
    enc = task.encoder.model
    assert wd_of(groups, enc.encoder.layer[0].attention.self.query.weight) == 0.1
    assert wd_of(groups, enc.encoder.layer[0].attention.self.query.bias) == 0.0
    assert wd_of(groups, enc.encoder.layer[0].output.LayerNorm.weight) == 0.0
    assert wd_of(groups, task.head.proj.weight) == 0.1
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(task.parameters()))


def test_llrd_scales_by_depth():
    """2 layers, decay 0.5: embeddings 0.5^3, layer 0 0.5^2, layer 1 0.5^1, head 1."""
    task = bert_task()
    groups = finetune_groups(task, OptimConfig(lr=1.0), FinetuneConfig(strategy="llrd", llrd_decay=0.5))
    enc = task.encoder.model
    assert lr_of(groups, enc.embeddings.word_embeddings.weight) == pytest.approx(0.125)
    assert lr_of(groups, enc.encoder.layer[0].attention.self.query.weight) == pytest.approx(0.25)
    assert lr_of(groups, enc.encoder.layer[1].output.dense.weight) == pytest.approx(0.5)
    assert lr_of(groups, task.head.proj.weight) == pytest.approx(1.0)


def test_linear_probe_and_freeze_layers():
    task = bert_task()
    apply_finetune(task, FinetuneConfig(strategy="linear_probe"))
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert trainable == {"head.proj.weight", "head.proj.bias"}

    task = bert_task()
    apply_finetune(task, FinetuneConfig(strategy="freeze_layers", freeze_layers=1))
    frozen = {n for n, p in task.named_parameters() if not p.requires_grad}
    assert any("embeddings" in n for n in frozen) and any(".layer.0." in n for n in frozen)
    assert not any(".layer.1." in n for n in frozen)


def test_lora_trains_adapters_only_and_merges_exactly():
    task = bert_task()
    apply_finetune(task, FinetuneConfig(strategy="lora", lora_r=4, lora_alpha=8))
    trainable = [n for n, p in task.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert any("query" in n for n in trainable) and any("value" in n for n in trainable)
    # make the adapters non-zero, then check the merged copy computes the same function
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.5)
    batch = {"text": torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]), "text_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
             "labels": torch.tensor([0, 2])}
    base_before = task.encoder.model.encoder.layer[0].attention.self.query.base_layer.weight.clone()
    task(batch)["loss"].backward()
    opt.step()
    assert torch.equal(base_before, task.encoder.model.encoder.layer[0].attention.self.query.base_layer.weight)
    task.eval()
    merged = merged_copy(task.encoder)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(batch).pooled, task.encoder(batch).pooled, atol=1e-5, rtol=1e-5)
    assert has_lora(task.encoder) and not has_lora(merged)


def test_save_encoders_without_adapters_saves_the_live_weights(tmp_path):
    """No LoRA: the encoder is written as it is (no copy); it reloads to the same function."""
    from mm_ptft.run.components import load_encoder

    task = bert_task()
    assert not has_lora(task.encoder)
    save_encoders(task, tmp_path)
    batch = {"text": torch.tensor([[2, 5, 6, 3]]), "text_mask": torch.tensor([[1, 1, 1, 1]])}
    task.eval()
    again = load_encoder(str(tmp_path / "text")).eval()
    torch.testing.assert_close(again(batch).pooled, task.encoder(batch).pooled)


def test_unknown_strategy_names_key():
    with pytest.raises(ValueError, match="finetune.strategy"):
        apply_finetune(bert_task(), FinetuneConfig(strategy="partial"))


def resnet_task() -> ClassificationTask:
    from mm_ptft.encoders.image import IMAGE_ENCODERS

    torch.manual_seed(0)
    spec = {"name": "timm", "name_or_path": "resnet10t", "pretrained": False}
    return ClassificationTask(build_encoder(IMAGE_ENCODERS, spec, "model.image"), 3, dropout=0.0)


def test_resnet_stages_are_layers_for_freezing_and_llrd():
    """timm/torchvision ResNets name their stages layer1..layer4 and their blocks' convs conv1/bn1 like the stem:
    freeze_layers=2 freezes the stem, layer1 and layer2 (every parameter of them) and nothing else; LLRD gives
    layer1 < layer4 < head."""
    task = resnet_task()
    apply_finetune(task, FinetuneConfig(strategy="freeze_layers", freeze_layers=2))
    frozen = {n for n, p in task.named_parameters() if not p.requires_grad}
    stage = lambda n: n.split("model.", 1)[1].split(".")[0]  # noqa: E731  ("conv1", "layer3", "fc", ...)
    expected = {n for n, _ in task.named_parameters() if n.startswith("encoder.")
                and stage(n) in {"conv1", "bn1", "layer1", "layer2"}}
    assert frozen == expected and any(".layer1.0.conv1." in n for n in frozen)
    task = resnet_task()
    groups = finetune_groups(task, OptimConfig(lr=1.0, weight_decay=0.0), FinetuneConfig(strategy="llrd", llrd_decay=0.5))
    enc = task.encoder.model
    lrs = [lr_of(groups, getattr(enc, f"layer{i}")[0].conv1.weight) for i in range(1, 5)]
    assert lrs == [0.5 ** 4, 0.5 ** 3, 0.5 ** 2, 0.5 ** 1] and lr_of(groups, task.head.proj.weight) == 1.0
