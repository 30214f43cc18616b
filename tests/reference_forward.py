"""An independent re-statement of the MVLPT reference forward pass, for equivalence tests.

It follows the reference algorithm step by step on the raw open_clip
modules: full context length, sequence-first tensors, a Python loop over
classes, and the per-token UPT block that the reference's tensor layout
produces. It shares no code path with the library's prompt learners.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, ResidualAttentionBlock


def reference_text_features(clip, tokenizer, classnames, ctx, n_ctx, position):
    """Class features as the reference builds them: "X X .. X name." with the context spliced in."""
    prompts_text = [" ".join(["X"] * n_ctx) + " " + name + "." for name in classnames]
    token_ids = tokenizer(prompts_text)
    embedding = clip.token_embedding(token_ids)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + n_ctx :]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(len(classnames), -1, -1)

    rows = []
    for i, name in enumerate(classnames):
        name_len = len(tokenizer.encode(name))
        class_tokens, rest = suffix[i : i + 1, :name_len], suffix[i : i + 1, name_len:]
        if position == "end":
            rows.append(torch.cat([prefix[i : i + 1], ctx[i : i + 1], suffix[i : i + 1]], dim=1))
        elif position == "middle":
            half = n_ctx // 2
            rows.append(
                torch.cat(
                    [prefix[i : i + 1], ctx[i : i + 1, :half], class_tokens, ctx[i : i + 1, half:], rest], dim=1
                )
            )
        else:
            rows.append(torch.cat([prefix[i : i + 1], class_tokens, ctx[i : i + 1], rest], dim=1))
    x = torch.cat(rows, dim=0) + clip.positional_embedding

    # The reference runs its transformer sequence-first; open_clip's blocks are batch-first here.
    x = x.permute(1, 0, 2)
    for block in clip.transformer.resblocks:
        x = block(x.permute(1, 0, 2), attn_mask=clip.attn_mask).permute(1, 0, 2)
    x = x.permute(1, 0, 2)
    x = clip.ln_final(x)
    return x[torch.arange(x.shape[0]), token_ids.argmax(dim=-1)] @ clip.text_projection


def reference_image_features(clip, images, shallow=None, deep=None):
    """Image features with VPT tokens: inserted after the class token, replaced before each later layer."""
    visual = clip.visual
    x = visual.conv1(images).flatten(2).permute(0, 2, 1)
    class_token = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([class_token, x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    batch = x.shape[0]
    if shallow is not None:
        x = torch.cat([x[:, :1], shallow.expand(batch, -1, -1), x[:, 1:]], dim=1)
    n_ctx = 0 if shallow is None else shallow.shape[1]

    for index, block in enumerate(visual.transformer.resblocks):
        if index > 0 and deep is not None and index <= deep.shape[0]:
            x = torch.cat([x[:, :1], deep[index - 1].expand(batch, -1, -1), x[:, 1 + n_ctx :]], dim=1)
        x = block(x)
    return visual.ln_post(x[:, 0]) @ visual.proj


def reference_upt_prompts(learner):
    """UPT prompts computed with a sequence-first block fed (1, T, W), as the reference does."""
    block = ResidualAttentionBlock(learner.block.ln_1.normalized_shape[0], 1, act_layer=QuickGELU, batch_first=False)
    block.load_state_dict(learner.block.state_dict())
    block.eval()

    visual = torch.cat([learner.visual_tokens, learner.deep_visual_tokens], dim=0)
    n_layers, n_tokens, width = visual.shape
    text = learner.text_in(learner.text_ctx.reshape(1, -1, learner.text_ctx.shape[-1]))
    vision = learner.visual_in(visual.reshape(1, -1, width))
    joint = block(torch.cat([text, vision], dim=1))
    text_ctx = learner.text_out(joint[:, : learner.n_ctx]).reshape(-1, learner.n_ctx, learner.text_ctx.shape[-1])
    vision = learner.visual_out(joint[:, learner.n_ctx :]).reshape(-1, n_tokens, width)
    return text_ctx.squeeze(0), vision[:1], vision[1:]


def reference_logits(clip, image_features, text_features):
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    return clip.logit_scale.exp() * image_features @ text_features.t()
