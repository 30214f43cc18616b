from __future__ import annotations

import pytest
import torch

from mvlpt.model import PromptedCLIP
from mvlpt.prompts import ClassPromptLayout, CoOpPromptLearner, UPTPromptLearner, VPTPromptLearner
from reference_forward import (
    reference_image_features,
    reference_logits,
    reference_text_features,
    reference_upt_prompts,
)

CLASSNAMES = ["cat", "sea lion", "golden retriever dog"]


def test_layout_token_order_end(backbone):
    layout = ClassPromptLayout(backbone, CLASSNAMES, n_ctx=4, class_token_position="end")
    length = layout.token_ids.shape[1]
    name_tokens = backbone.count_tokens("sea lion")
    row = layout.source_index[1].tolist()
    assert row[0] == 0
    assert row[1:5] == [length + j for j in range(4)]
    assert row[5 : 5 + name_tokens] == list(range(5, 5 + name_tokens))


def test_layout_token_order_middle(backbone):
    layout = ClassPromptLayout(backbone, CLASSNAMES, n_ctx=4, class_token_position="middle")
    length = layout.token_ids.shape[1]
    name_tokens = backbone.count_tokens("sea lion")
    row = layout.source_index[1].tolist()
    assert row[0] == 0
    assert row[1:3] == [length, length + 1]
    assert row[3 : 3 + name_tokens] == list(range(5, 5 + name_tokens))
    assert row[3 + name_tokens : 5 + name_tokens] == [length + 2, length + 3]
    assert row[5 + name_tokens :] == list(range(5 + name_tokens, length))


def test_layout_token_order_front(backbone):
    layout = ClassPromptLayout(backbone, CLASSNAMES, n_ctx=4, class_token_position="front")
    length = layout.token_ids.shape[1]
    name_tokens = backbone.count_tokens("sea lion")
    row = layout.source_index[1].tolist()
    assert row[0] == 0
    assert row[1 : 1 + name_tokens] == list(range(5, 5 + name_tokens))
    assert row[1 + name_tokens : 5 + name_tokens] == [length + j for j in range(4)]
    assert row[5 + name_tokens :] == list(range(5 + name_tokens, length))


def test_layout_builds_prompt_embeddings(backbone):
    layout = ClassPromptLayout(backbone, ["sea lion"], n_ctx=2, class_token_position="front")
    context = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 64)
    prompts = layout.build(context)
    name_embeddings = layout.token_embeddings[0, 3:5]
    assert torch.equal(prompts[0, 1:3], name_embeddings)
    assert torch.equal(prompts[0, 3:5], context)


def test_layout_rejects_unknown_position(backbone):
    with pytest.raises(ValueError, match="class_token_position"):
        ClassPromptLayout(backbone, CLASSNAMES, n_ctx=4, class_token_position="left")


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("class_specific", [False, True])
def test_coop_logits_match_reference(backbone, images, position, class_specific):
    learner = CoOpPromptLearner(
        backbone, CLASSNAMES, n_ctx=4, class_specific=class_specific, class_token_position=position
    )
    model = PromptedCLIP(backbone, learner, CLASSNAMES)
    with torch.no_grad():
        ours = model(images)
        text = reference_text_features(backbone.model, backbone.tokenizer, CLASSNAMES, learner.ctx, 4, position)
        expected = reference_logits(backbone.model, reference_image_features(backbone.model, images), text)
    assert (ours - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("deep", [False, True])
def test_vpt_logits_match_reference(backbone, images, deep):
    learner = VPTPromptLearner(backbone, n_tokens=5, deep=deep)
    model = PromptedCLIP(backbone, learner, CLASSNAMES, templates=["a photo of a {}."])
    with torch.no_grad():
        ours = model(images)
        image = reference_image_features(backbone.model, images, learner.tokens, learner.deep_tokens)
        text = backbone.model.encode_text(backbone.tokenize([f"a photo of a {name}." for name in CLASSNAMES]))
        expected = reference_logits(backbone.model, image, text)
    assert (ours - expected).abs().max() <= 1e-4


def test_upt_logits_match_reference(backbone, images):
    torch.manual_seed(5)
    learner = UPTPromptLearner(backbone, CLASSNAMES, n_ctx=4, n_tokens=4, width=32)
    model = PromptedCLIP(backbone, learner, CLASSNAMES)
    with torch.no_grad():
        ours = model(images)
        text_ctx, shallow, deep = reference_upt_prompts(learner)
        text = reference_text_features(backbone.model, backbone.tokenizer, CLASSNAMES, text_ctx, 4, "middle")
        image = reference_image_features(backbone.model, images, shallow, deep)
        expected = reference_logits(backbone.model, image, text)
    assert (ours - expected).abs().max() <= 1e-4


def test_upt_per_token_is_value_and_output_projection(backbone):
    torch.manual_seed(6)
    learner = UPTPromptLearner(backbone, CLASSNAMES, width=32)
    block = learner.block
    tokens = torch.randn(7, 32)
    with torch.no_grad():
        ours = block(tokens.unsqueeze(1)).squeeze(1)
        width = 32
        value_weight = block.attn.in_proj_weight[2 * width :]
        value_bias = block.attn.in_proj_bias[2 * width :]
        attended = block.attn.out_proj(block.ln_1(tokens) @ value_weight.t() + value_bias)
        expected = tokens + attended
        expected = expected + block.mlp(block.ln_2(expected))
    assert (ours - expected).abs().max() <= 1e-5


def test_upt_joint_attention_mixes_tokens(backbone):
    torch.manual_seed(7)
    per_token = UPTPromptLearner(backbone, CLASSNAMES, width=32, attention="per_token")
    joint = UPTPromptLearner(backbone, CLASSNAMES, width=32, attention="joint")
    joint.load_state_dict(per_token.state_dict())
    with torch.no_grad():
        first = per_token().text_context
        second = joint().text_context
    assert not torch.allclose(first, second)


def test_upt_rejects_unknown_attention(backbone):
    with pytest.raises(ValueError, match="attention"):
        UPTPromptLearner(backbone, CLASSNAMES, attention="cross")


def test_ctx_init_from_words(backbone):
    learner = CoOpPromptLearner(backbone, CLASSNAMES, ctx_init="a photo of a")
    token_ids = backbone.tokenize(["a photo of a"])[0, 1:5]
    expected = backbone.token_embeddings(token_ids.unsqueeze(0))[0]
    assert learner.ctx.shape == (4, backbone.text_width)
    assert torch.equal(learner.ctx.data, expected)


def test_ctx_init_with_class_specific_rejected(backbone):
    with pytest.raises(ValueError, match="class-specific"):
        CoOpPromptLearner(backbone, CLASSNAMES, ctx_init="a photo of a", class_specific=True)


def test_parameter_counts(backbone):
    coop = CoOpPromptLearner(backbone, CLASSNAMES, n_ctx=16)
    vpt = VPTPromptLearner(backbone, n_tokens=16, deep=True)
    shallow = VPTPromptLearner(backbone, n_tokens=16, deep=False)
    assert coop.num_trainable_parameters() == 16 * 64
    assert vpt.num_trainable_parameters() == 3 * 16 * 64
    assert shallow.num_trainable_parameters() == 16 * 64


def test_vpt_init_bound(backbone):
    learner = VPTPromptLearner(backbone, n_tokens=16)
    bound = (6.0 / (3 * 8 * 8 + 64)) ** 0.5
    assert learner.tokens.abs().max() <= bound
    assert learner.deep_tokens.abs().max() <= bound


@pytest.mark.parametrize("method", ["coop", "vpt", "upt"])
def test_training_changes_only_prompts(backbone, images, method):
    learners = {
        "coop": lambda: CoOpPromptLearner(backbone, CLASSNAMES, n_ctx=4),
        "vpt": lambda: VPTPromptLearner(backbone, n_tokens=4),
        "upt": lambda: UPTPromptLearner(backbone, CLASSNAMES, width=32),
    }
    learner = learners[method]()
    model = PromptedCLIP(backbone, learner, CLASSNAMES)
    backbone_before = {name: tensor.clone() for name, tensor in backbone.state_dict().items()}
    buffers_before = {name: tensor.clone() for name, tensor in backbone.model.named_buffers()}
    prompts_before = {name: tensor.clone() for name, tensor in learner.named_parameters()}

    optimizer = torch.optim.SGD(learner.parameters(), lr=0.5)
    labels = torch.tensor([0, 1, 2])
    model.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for name, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, backbone_before[name]), name
    for name, tensor in backbone.model.named_buffers():
        assert torch.equal(tensor, buffers_before[name]), name
    for parameter in backbone.parameters():
        assert parameter.grad is None
    changed = [name for name, tensor in learner.named_parameters() if not torch.equal(tensor, prompts_before[name])]
    assert changed
