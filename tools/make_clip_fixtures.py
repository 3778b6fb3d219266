"""Writes CLIP parity fixtures: small random-initialised open_clip models (every parameter
perturbed, so each one matters), their inputs and reference outputs.

    bench/.venv/bin/python tools/make_clip_fixtures.py

For each model NAME: tests/fixtures/NAME.weights.safetensors (open_clip's state_dict; for the QuickGELU model, an
`_openai` file adds the scalar keys an OpenAI JIT state dict carries) and NAME.io.safetensors
(pixel_values, input_ids, image_features, text_features before normalisation, logits_per_image,
and open_clip's ClipLoss of the two images with the first two texts as pairs).
The vocabulary is cut to 500 ids to keep the files small; the largest id (499) plays CLIP's end
token, where the text tower pools (open_clip pools at argmax of the ids).
"""
import pathlib

import torch
from open_clip.loss import ClipLoss
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
VOCAB = 500
CONTEXT = 16


def build(quick_gelu, seed):
    torch.manual_seed(seed)
    vision = CLIPVisionCfg(layers=2, width=64, head_width=32, mlp_ratio=4.0, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=CONTEXT, vocab_size=VOCAB, width=64, heads=2, layers=2)
    model = CLIP(embed_dim=48, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(2.3)
            elif p.ndim <= 1 or "embedding" in name:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.add_(0.02 * torch.randn_like(p))
    return model


def ids(rows):
    # Rows with their end token (VOCAB - 1) at different places, zero padding after it; the
    # last row fills the whole context.
    out = torch.zeros(rows, CONTEXT, dtype=torch.long)
    for r in range(rows):
        n = min(CONTEXT, 3 + 5 * r)
        out[r, 0] = VOCAB - 2
        out[r, 1 : n - 1] = torch.randint(1, VOCAB - 2, (n - 2,))
        out[r, n - 1] = VOCAB - 1
    return out


def write(name, model, seed):
    torch.manual_seed(seed + 100)
    pixels = torch.randn(2, 3, 32, 32)
    tokens = ids(4)
    with torch.no_grad():
        image = model.encode_image(pixels)
        text = model.encode_text(tokens)
        img_n = image / image.norm(dim=-1, keepdim=True)
        txt_n = text / text.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * img_n @ txt_n.t()
        # open_clip's training loss on the two images and the first two texts as pairs.
        loss = ClipLoss()(img_n, txt_n[:2], model.logit_scale.exp())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, OUT / f"{name}.weights.safetensors")
    if model.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU":
        # OpenAI's weights are QuickGELU ones; its JIT state dicts carry three scalars more.
        openai = dict(state)
        openai["input_resolution"] = torch.tensor(32)
        openai["context_length"] = torch.tensor(CONTEXT)
        openai["vocab_size"] = torch.tensor(VOCAB)
        save_file(openai, OUT / f"{name}_openai.weights.safetensors")
    save_file(
        {
            "pixel_values": pixels,
            "input_ids": tokens,
            "image_features": image,
            "text_features": text,
            "logits_per_image": logits,
            "loss_first_pairs": loss.reshape(1),
        },
        OUT / f"{name}.io.safetensors",
    )
    print(name, sum(p.numel() for p in model.parameters()), "parameters")


write("clip_small", build(False, 0), 0)
write("clip_small_quickgelu", build(True, 1), 1)
