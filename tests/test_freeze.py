"""--freeze_embeddings: the word-embedding matrix is frozen and left out of the optimizer; the rest trains."""

import pytest
import torch
from transformers import BertConfig, BertModel

from multitask.arguments import MultitaskTrainingArguments
from multitask.modeling import MultitaskModel, build_config, freeze_word_embeddings, parameter_counts
from multitask.trainer import MultitaskTrainer
from tests.conftest import CATEGORIES

WORD = "encoder.embeddings.word_embeddings.weight"


@pytest.fixture
def bert_model():
    """A tiny BERT (the architecture of multilingual-e5): it has position and token-type embeddings."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    encoder = BertModel(config, add_pooling_layer=False)
    return MultitaskModel(build_config(encoder.config, CATEGORIES), encoder=encoder)


def test_only_word_embeddings_are_frozen(bert_model):
    trainable_before, total = parameter_counts(bert_model)
    frozen = freeze_word_embeddings(bert_model)
    assert frozen == 500 * 32
    assert parameter_counts(bert_model) == (trainable_before - frozen, total)
    grads = {name: p.requires_grad for name, p in bert_model.named_parameters()}
    assert grads[WORD] is False
    for name in ("encoder.embeddings.position_embeddings.weight", "encoder.embeddings.token_type_embeddings.weight",
                 "encoder.embeddings.LayerNorm.weight", "category_head.weight", "gate_head.weight"):
        assert grads[name] is True, name
    assert freeze_word_embeddings(bert_model) == 0  # idempotent


@pytest.mark.parametrize("layerwise_lr_decay", [0.5, 1.0])  # our LLRD groups, and the Trainer's own optimizer
def test_frozen_matrix_is_not_in_the_optimizer_and_does_not_move(model, tmp_path, layerwise_lr_decay):
    freeze_word_embeddings(model)
    args = MultitaskTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-2, layerwise_lr_decay=layerwise_lr_decay,
                                      weight_decay=0.1, use_cpu=True, eval_strategy="no", load_best_model_at_end=False)
    optimizer = MultitaskTrainer(model=model, args=args).create_optimizer()
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert id(named[WORD]) not in in_groups
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}

    before = {name: p.detach().clone() for name, p in named.items()}
    model.train()
    output = model(input_ids=torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]]),
                   attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
                   gate_labels=torch.tensor([1, 0]), category_labels=torch.tensor([2, -100]))
    output.loss.backward()
    optimizer.step()
    assert torch.equal(named[WORD], before[WORD])
    assert not torch.equal(named["encoder.embeddings.LayerNorm.weight"], before["encoder.embeddings.LayerNorm.weight"])
    assert not torch.equal(named["category_head.weight"], before["category_head.weight"])
