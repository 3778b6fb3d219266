#!/usr/bin/env python3
"""The PyTorch side of `vitkit bench` (timm's ViT; the official CMT code; SiT from timm's parts): the same architecture, batch, optimizer and loss,
timed the same way, printed as the same JSON object.

The model comes from vitkit's own preset table (`vitkit models --json`), so both sides build
identical shapes:

    vitkit models --json > /tmp/models.json
    python bench/pytorch_baseline.py --models-json /tmp/models.json --model vit_tiny_patch4_32 \
        --batch-size 64 --mode train --json

Train mode times one full step: forward, soft-target cross entropy, backward, global-norm
gradient clipping at 1.0 and AdamW (lr 1e-4, weight decay 0.05 except on 1-D parameters and the
class/position embeddings, eps 1e-8), as vitkit's bench does. Pretrain mode (SiT presets) times
one SiT pretraining step: two views of each of the batch's images, corrupted, through the pretext
heads; rotation cross entropy, NT-Xent (tau 0.5) and L1 reconstruction with the learned uncertainty
weights; then the same backward, clipping and AdamW. Peak memory is the process's peak
resident set (ru_maxrss, the same quantity as vitkit's VmHWM); on CUDA the peak of
torch.cuda.max_memory_allocated is reported as well.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-json", required=True, help="output of `vitkit models --json`")
    p.add_argument("--model", default="vit_tiny_patch4_32")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--mode", choices=["train", "infer", "pretrain"], default="train")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--global-pool", choices=["token", "avg"])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--autocast", choices=["bf16", "fp16"], help="mixed precision autocast")
    p.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32",
                   help="parameters and activations in this type (model.to(dtype)), as vitkit bench --dtype")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", metavar="FILE",
                   help="after timing, profile 3 more steps with torch.profiler and write its kernel table here")
    return p.parse_args()


def build_cmt(cfg):
    """The official CMT (`../shared/ref/cmt/cmt.py`, unchanged) with vitkit's configuration. Two
    things the official constructor cannot say are patched in after construction, as vitkit's
    small-image presets have them: a stem that takes `in_chans` channels (the official one always
    takes 3) and a first stem stride of 1 (the official one is 2; the model is then built for an
    image twice the size, which gives every later layer the shapes of the stride-1 model)."""
    import torch

    ref = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "ref", "cmt")
    sys.path.insert(0, os.path.abspath(ref))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import cmt
    stride = cfg["stem_stride"]
    h, w = cfg["img_size"]
    if h != w:
        sys.exit("pytorch_baseline: the official CMT takes square images")
    model = cmt.CMT(img_size=h * 2 // stride, in_chans=3, num_classes=cfg["num_classes"], embed_dims=cfg["embed_dims"],
                    stem_channel=cfg["stem_channels"], fc_dim=cfg["fc_dim"], num_heads=cfg["num_heads"],
                    mlp_ratios=cfg["mlp_ratios"], qkv_bias=cfg["qkv_bias"], drop_rate=cfg["drop_rate"],
                    attn_drop_rate=cfg["attn_drop_rate"], drop_path_rate=cfg["drop_path_rate"], depths=cfg["depths"],
                    sr_ratios=cfg["sr_ratios"], dp=cfg["head_drop"])
    if stride != 2 or cfg["in_chans"] != 3:
        model.stem_conv1 = torch.nn.Conv2d(cfg["in_chans"], cfg["stem_channels"], 3, stride, 1)
    return model


def build_nest(cfg):
    """timm's `Nest` with vitkit's configuration; the multi-query attention of the CIFAR models
    (which timm lacks) from the fixture generator's reference module."""
    from timm.models.nest import Nest

    model = Nest(img_size=cfg["img_size"][0], in_chans=cfg["in_chans"], patch_size=cfg["patch_size"],
                 num_levels=len(cfg["depths"]), embed_dims=cfg["embed_dims"], num_heads=cfg["num_heads"],
                 depths=cfg["depths"], num_classes=cfg["num_classes"], mlp_ratio=cfg["mlp_ratio"],
                 qkv_bias=cfg["qkv_bias"], drop_rate=cfg["drop_rate"], attn_drop_rate=cfg["attn_drop_rate"],
                 drop_path_rate=cfg["drop_path_rate"], pad_type="same" if cfg["padding"] == "same" else "")
    if cfg["attention"] == "multi-query":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
        from make_nest_fixtures import MultiQueryAttention

        for level, heads in zip(model.levels, cfg["num_heads"]):
            for layer in level.transformer_encoder:
                layer.attn = MultiQueryAttention(layer.norm1.weight.shape[0], heads)
    return model


def build_clip(cfg):
    """open_clip's CLIP with vitkit's tower sizes (needs open_clip_torch in the venv)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    v, t = cfg["vision"], cfg["text"]
    vision = CLIPVisionCfg(layers=v["layers"], width=v["width"], head_width=v["width"] // v["heads"],
                           mlp_ratio=v["mlp_ratio"], patch_size=v["patch_size"], image_size=tuple(v["image_size"]))
    text = CLIPTextCfg(context_length=t["context_length"], vocab_size=t["vocab_size"], width=t["width"],
                       heads=t["heads"], layers=t["layers"], mlp_ratio=t["mlp_ratio"])
    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=vision, text_cfg=text, quick_gelu=cfg["quick_gelu"])


def build_sit(cfg, pretext):
    """SiT v1 from timm's PatchEmbed and Block (the parity tests' reference module, in
    tools/make_sit_fixtures.py): pretext heads for pretraining, else the two-token classifier,
    whose logits are the mean of its two heads' as vitkit's."""
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
    from make_sit_fixtures import SiT

    if cfg["mlp_ratio"] != 4.0 or not cfg["qkv_bias"] or cfg["img_size"][0] != cfg["img_size"][1]:
        sys.exit("pytorch_baseline: the SiT reference has mlp ratio 4, qkv bias and square images")
    model = SiT(img=cfg["img_size"][0], patch=cfg["patch_size"], chans=cfg["in_chans"], dim=cfg["embed_dim"],
                depth=cfg["depth"], heads=cfg["num_heads"], classes=None if pretext else cfg["num_classes"],
                contrastive=cfg["contrastive_dim"])
    if pretext:
        return model

    class TwoTokenClassifier(torch.nn.Module):
        def __init__(self, sit):
            super().__init__()
            self.sit = sit
            self.head = sit.contrastive_head  # the weight a step reads back

        def forward(self, x):
            rot, con = self.sit(x)
            return 0.5 * (rot + con)

    return TwoTokenClassifier(model)


def sit_pretext_loss(model, corrupted, clean, rotations):
    """SiT's objective on 2n views (view 1 of each image, then view 2). NT-Xent is written with
    one product of the normalised embeddings (the official loss builds a [2n, 2n, E] tensor of
    cosine similarities; this is the same number, and the faster baseline)."""
    import torch
    import torch.nn.functional as F

    rot, con, rec = model(corrupted)
    n = corrupted.shape[0] // 2
    z = F.normalize(con, dim=1)
    sim = (z @ z.t()) / 0.5
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=sim.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    losses = torch.stack([F.cross_entropy(rot, rotations), F.cross_entropy(sim, positives), F.l1_loss(rec, clean)])
    s = torch.cat([model.rot_w, model.contrastive_w, model.recons_w])
    a = torch.tensor([1.0, 1.0, 0.5], device=s.device)
    return (torch.exp(-a * s) * losses + 0.5 * s).sum()


def build_model(cfg, timm, mode="train"):
    family = cfg.get("family")
    if family == "sit":
        return build_sit(cfg, pretext=mode == "pretrain")
    if mode == "pretrain":
        sys.exit(f"pytorch_baseline: pretrain mode takes a SiT preset, not family {family!r}")
    if family == "clip":
        return build_clip(cfg)
    if family == "cmt":
        return build_cmt(cfg)
    if family == "nest":
        return build_nest(cfg)
    if family != "vit":
        sys.exit(f"pytorch_baseline: no PyTorch counterpart for family {family!r}")
    # vitkit's config keys are timm's VisionTransformer arguments (norm_eps aside: both use 1e-6).
    keys = ("patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth", "num_heads",
            "mlp_ratio", "qkv_bias", "drop_rate", "attn_drop_rate", "drop_path_rate")
    return timm.models.vision_transformer.VisionTransformer(
        img_size=tuple(cfg["img_size"]), **{key: cfg[key] for key in keys}
    )

def adamw_groups(model):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.ndim <= 1 or name.split(".")[-1] in ("cls_token", "pos_embed", "rot_token", "contrastive_token"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]


def write_profile(path, step, cuda):
    """Per-kernel (and per-operator) time of three steps, largest device time first: the split
    to compare with vitkit's own per-kernel profile (bench/gpu_profile.sh)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    with open(path, "w") as f:
        f.write(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90))


def main():
    args = parse_args()
    import torch
    import timm

    torch.set_num_threads(args.threads)
    with open(args.models_json) as f:
        presets = json.load(f)
    if args.model not in presets:
        sys.exit(f"pytorch_baseline: unknown model {args.model!r}; valid: {', '.join(presets)}")
    cfg = dict(presets[args.model])
    clip = cfg.get("family") == "clip"
    if clip:  # two towers: images of the image tower's size, texts filling the context
        cfg["img_size"] = cfg["vision"]["image_size"]
        cfg["in_chans"] = cfg["vision"]["in_chans"]
        cfg["num_classes"] = 1
    if isinstance(cfg["img_size"], int):  # NesT's configuration holds one side
        cfg["img_size"] = [cfg["img_size"]] * 2
    for key in ("in_chans", "num_classes", "global_pool"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    model = build_model(cfg, timm, args.mode).to(device=device, dtype=dtype)
    h, w = cfg["img_size"]
    pretrain = args.mode == "pretrain"
    # Pretraining: two views of each image, corrupted inputs and clean targets, each view's rotation.
    views = 2 * args.batch_size if pretrain else args.batch_size
    x = torch.randn(views, cfg["in_chans"], h, w, device=device, dtype=dtype)
    if pretrain:
        clean = torch.randn_like(x)
        rotations = torch.randint(0, 4, (views,), device=device)
    labels = torch.rand(args.batch_size, cfg["num_classes"], device=device)
    if clip:
        ctx, eot = cfg["text"]["context_length"], cfg["text"]["vocab_size"] - 1
        tokens = torch.randint(1, eot - 1, (args.batch_size, ctx), device=device)
        tokens[:, -1] = eot
        from open_clip.loss import ClipLoss
        clip_loss = ClipLoss()

        def clip_forward(model):
            img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
            txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
            return img, txt
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.autocast)
    fwd = torch.compile(model) if args.compile else model

    def autocast():
        if autocast_dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=autocast_dtype)

    if args.mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                if clip:
                    img, txt = clip_forward(model)
                    return (img @ txt.t()).float().sum().item()
                return fwd(x).float().sum().item()

    else:
        model.train()
        optim = torch.optim.AdamW(adamw_groups(model), lr=1e-4, eps=1e-8)
        scaler = torch.amp.GradScaler(enabled=args.autocast == "fp16")

        def step():
            optim.zero_grad(set_to_none=True)
            with autocast():
                if clip:
                    img, txt = clip_forward(model)
                    loss = clip_loss(img.float(), txt.float(), model.logit_scale.exp())
                elif pretrain:
                    loss = sit_pretext_loss(fwd, x, clean, rotations)
                    loss.item()  # vitkit's loop reads every step's loss, as here
                else:
                    logits = fwd(x)
            if not clip and not pretrain:
                loss = -(torch.log_softmax(logits.float(), dim=1) * labels).sum(1).mean()
            scaler.scale(loss).backward()
            scaler.unscale_(optim)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optim)
            scaler.update()
            # Reading a weight waits for the step, as vitkit's bench does.
            return (model.text_projection if clip else model.contrastive_head.weight if pretrain
                    else model.head.weight)[0, 0].item()

    times = []
    for i in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)

    if args.profile:
        write_profile(args.profile, step, cuda)

    median = statistics.median(sorted(times))
    result = {
        "model": args.model,
        "mode": args.mode,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "median_ms": 1e3 * median,
        "min_ms": 1e3 * min(times),
        "max_ms": 1e3 * max(times),
        "images_per_s": args.batch_size / median,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "framework": f"torch {torch.__version__}, timm {timm.__version__}",
        "threads": args.threads,
        "device": str(device),
        "compile": args.compile,
        "autocast": args.autocast,
        "dtype": args.dtype,
        "config": cfg,
    }
    if cuda:
        result["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['model']} {result['mode']} batch {result['batch_size']}: median {result['median_ms']:.1f} ms "
            f"(min {result['min_ms']:.1f}, max {result['max_ms']:.1f}) over {args.steps} steps, "
            f"{result['images_per_s']:.1f} images/s, peak RSS {result['peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
