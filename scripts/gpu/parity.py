#!/usr/bin/env python3
"""Compares what baton's images stage computed (its --dump) with what diffusers and transformers
compute on the same weights and the same inputs, component by component and end to end.

    parity.py --model DIR --family NAME --run RUN_DIR --dump DUMP_DIR [--device cuda] [--md OUT]

DIR is a model folder baton wrote (`baton bench images`: random weights of the family's real
shapes, with the config files of the real repository's layout); RUN_DIR the run folder of
`baton images --dump DUMP_DIR` (its 1_scripts/*.json holds the prompts, 3_images/images.json
the steps, guidance and size). For each component the reference gets baton's own inputs
(token ids, context, each step's latents), so an error is that component's alone:

  tokens          the reference tokenizer's ids against baton's
  text encoder    hidden states (SD: the last layer's, SDXL: the second-to-last; FLUX: CLIP's
                  pooled vector and T5's states)
  denoiser        each step's prediction (UNet noise, FLUX velocity)
  scheduler       each step's latents from baton's prediction (ancestral schedulers: the
                  deterministic part; the noise they add is the other's own)
  decoder         pixels from baton's final latents
  end to end      the reference pipeline from the same starting noise, against baton's PNG
                  source pixels: PSNR in dB

Where the run's dtype is f16 or bf16, every reference output is also computed in f32, as the
yardstick: "baton vs f32" and "reference vs f32" say how far each low-precision computation is
from the exact one. Random weights amplify rounding far more than trained ones do (nothing
keeps their activations small), so a gap that both share is precision, not a difference.

It prints a markdown table and writes it to --md.
"""

import argparse
import glob
import json
import math
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from safetensors.torch import load_file as load_pt

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


F32 = torch.float32


def rel(a, b):
    """Max abs difference of a and b over b's largest magnitude."""
    return (a - b).abs().max().item() / (b.abs().max().item() or 1.0)


def stats(name, ours, refs, dtype, rows):
    """Baton against the reference in the run's dtype (max abs, max rel to the reference's
    largest magnitude, mean abs), and, when the run is not f32, baton's and the reference's own
    max rel error against the reference in f32."""
    ours = torch.as_tensor(np.asarray(ours)).float().flatten()
    ref = refs[dtype].detach().float().cpu().flatten()
    if ours.shape != ref.shape:
        rows.append((name, "shape", f"{tuple(ours.shape)} vs {tuple(ref.shape)}", "", "", "", ""))
        return
    diff = (ours - ref).abs()
    scale = ref.abs().max().item() or 1.0
    row = [name, f"{diff.max().item():.3e}", f"{diff.max().item() / scale:.3e}", f"{diff.mean().item():.3e}"]
    if F32 in refs and dtype != F32:
        exact = refs[F32].detach().float().cpu().flatten()
        row += [f"{rel(ours, exact):.3e}", f"{rel(ref, exact):.3e}"]
    else:
        row += ["", ""]
    rows.append(tuple(row + [""]))


def note(rows, name, what):
    rows.append((name, what, "", "", "", "", ""))


def psnr(ours01, ref01):
    mse = float(((ours01 - ref01) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def to01(pixels):
    if not torch.is_tensor(pixels):
        pixels = torch.as_tensor(np.asarray(pixels))
    return ((pixels.float().cpu() + 1) / 2).clamp(0, 1).numpy()


class Ref:
    """A reference model in the run's dtype and, when that is not f32, in f32 as well."""

    def __init__(self, make, dtype):
        self.models = {dt: make(dt) for dt in dict.fromkeys([dtype, F32])}

    def __call__(self, f):
        """`f(model, dtype)` with each model: its output (or each of its outputs, when it
        returns a tuple) by dtype, as f32."""
        outs = {dt: f(m, dt) for dt, m in self.models.items()}
        first = next(iter(outs.values()))
        if isinstance(first, tuple):
            return tuple({dt: o[i].float() for dt, o in outs.items()} for i in range(len(first)))
        return {dt: o.float() for dt, o in outs.items()}


def load_folder(folder):
    """Every safetensors file in a folder, one state dict."""
    sd = {}
    for f in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        sd.update(load_pt(f))
    return sd


def build(cls, config, state, device, dtype, convert=None):
    """`cls(config)` built on `device` in `dtype`, given `state` (converted if asked); keys
    whose prefix the class does not use (transformers 5's CLIP has no `text_model.`) are
    matched without it."""
    with torch.device(device):
        model = cls(config) if not hasattr(cls, "from_config") else cls.from_config(config)
    model = model.to(dtype)
    if convert is not None:
        state = convert(state)
    own = set(model.state_dict())
    for prefix in ("text_model.",):
        if not any(k.startswith(prefix) for k in own):
            state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing or unexpected:
        print(f"  {cls.__name__}: missing {missing[:8]} unexpected {unexpected[:8]}",
              file=sys.stderr)
    return model.eval()


def vae_names(state):
    """The VAE's attention under diffusers' current names (older checkpoints, and the ones baton
    writes, say query/key/value/proj_attn; diffusers' from_pretrained renames them too)."""
    old = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
    out = {}
    for k, v in state.items():
        for a, b in old.items():
            k = k.replace(a, b)
        out[k] = v
    return out


def flux_names(ckpt, inner):
    """FLUX's original (BFL) checkpoint under diffusers' names, for any width `inner` (diffusers'
    own converter assumes FLUX.1's 3072)."""
    out = {}
    pop = ckpt.pop
    swap = lambda w: torch.cat(w.chunk(2, 0)[::-1], 0)  # (shift, scale) -> (scale, shift)
    for a, b in [("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
                 ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
                 ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
                 ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
                 ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
                 ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
                 ("txt_in", "context_embedder"), ("img_in", "x_embedder"),
                 ("final_layer.linear", "proj_out")]:
        for p in ("weight", "bias"):
            if f"{a}.{p}" in ckpt:
                out[f"{b}.{p}"] = pop(f"{a}.{p}")
    for p in ("weight", "bias"):
        out[f"norm_out.linear.{p}"] = swap(pop(f"final_layer.adaLN_modulation.1.{p}"))
    doubles = sorted({int(k.split(".")[1]) for k in ckpt if k.startswith("double_blocks.")})
    singles = sorted({int(k.split(".")[1]) for k in ckpt if k.startswith("single_blocks.")})
    for i in doubles:
        d, o = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for p in ("weight", "bias"):
            for side, names in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
                for n, t in zip(names, pop(f"{d}{side}_attn.qkv.{p}").chunk(3, 0)):
                    out[f"{o}attn.{n}.{p}"] = t
            for a, b in [("img_mod.lin", "norm1.linear"), ("txt_mod.lin", "norm1_context.linear"),
                         ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"),
                         ("txt_mlp.0", "ff_context.net.0.proj"), ("txt_mlp.2", "ff_context.net.2"),
                         ("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out")]:
                out[f"{o}{b}.{p}"] = pop(f"{d}{a}.{p}")
        for a, b in [("img_attn.norm.query_norm", "attn.norm_q"), ("img_attn.norm.key_norm", "attn.norm_k"),
                     ("txt_attn.norm.query_norm", "attn.norm_added_q"),
                     ("txt_attn.norm.key_norm", "attn.norm_added_k")]:
            out[f"{o}{b}.weight"] = pop(f"{d}{a}.scale")
    for i in singles:
        d, o = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for p in ("weight", "bias"):
            lin = pop(f"{d}linear1.{p}")
            q, k, v, mlp = lin.split([inner, inner, inner, lin.shape[0] - 3 * inner], 0)
            for n, t in (("attn.to_q", q), ("attn.to_k", k), ("attn.to_v", v), ("proj_mlp", mlp)):
                out[f"{o}{n}.{p}"] = t
            out[f"{o}norm.linear.{p}"] = pop(f"{d}modulation.lin.{p}")
            out[f"{o}proj_out.{p}"] = pop(f"{d}linear2.{p}")
        out[f"{o}attn.norm_q.weight"] = pop(f"{d}norm.query_norm.scale")
        out[f"{o}attn.norm_k.weight"] = pop(f"{d}norm.key_norm.scale")
    if ckpt:
        print(f"  FLUX: {len(ckpt)} tensors not converted: {list(ckpt)[:6]}", file=sys.stderr)
    return out


def clip_model(folder, device, dtype):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    cfg = CLIPTextConfig.from_pretrained(folder)
    cls = CLIPTextModelWithProjection if "WithProjection" in cfg.architectures[0] else CLIPTextModel
    cfg._attn_implementation = "eager"
    return build(cls, cfg, load_folder(folder), device, dtype)


def clip_tokenizer(folder):
    from transformers import CLIPTokenizer
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                         **{k: v for k, v in json.load(
                             open(os.path.join(folder, "special_tokens_map.json"))).items()})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--family", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--md")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    record = json.load(open(os.path.join(args.run, "3_images", "images.json")))
    board = json.load(open(glob.glob(os.path.join(args.run, "1_scripts", "*.json"))[0]))
    dtype = DTYPES[{"float32": "f32", "f32": "f32", "f16": "f16", "bf16": "bf16"}[record["dtype"]]]
    dev = torch.device(args.device)
    dumps = [load_np(os.path.join(args.dump, f"{p}.safetensors")) for p in ("text", "denoise", "decode")]
    rows, e2e = [], []
    with torch.inference_mode():
        run = flux_parity if "flux" in args.family else sd_parity
        run(args, record, board, *dumps, dev, dtype, rows, e2e)
    low = dtype != F32
    lines = [f"### {args.family} ({record['dtype']}, {record['width']}x{record['height']}, "
             f"{record['steps']} steps, guidance {record['guidance']}, on {dev.type})", "",
             "| component | max abs error | max rel error | mean abs error | baton vs f32 (max rel) "
             "| reference vs f32 (max rel) | PSNR (dB) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    for scene, db, db_ref32, db_ours32 in e2e:
        extra = f" (baton vs f32 reference {db_ours32:.1f}; reference vs its f32 {db_ref32:.1f})" if low else ""
        lines.append(f"| end to end, scene {scene} | | | | | | {db:.1f}{extra} |")
    out = "\n".join(lines) + "\n"
    print(out)
    if args.md:
        with open(args.md, "a") as f:
            f.write(out + "\n")


def end_to_end(rows, e2e, scene, ours, pixels, dtype):
    """PSNR of baton's pixels against the reference's in the run's dtype, and both against
    the reference in f32."""
    ours01 = to01(ours)
    ref = {dt: to01(p) for dt, p in pixels.items()}
    exact = ref.get(F32, ref[dtype])
    e2e.append((scene, psnr(ours01, ref[dtype]), psnr(ref[dtype], exact), psnr(ours01, exact)))


def sd_parity(args, record, board, text, den, dec, dev, dtype, rows, e2e):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    import diffusers
    m = args.model
    sdxl = os.path.isdir(os.path.join(m, "text_encoder_2"))
    steps, guidance = record["steps"], record["guidance"]
    guided = guidance > 1.0
    h, w = record["height"], record["width"]
    scenes = [s["index"] for s in board["scenes"]]
    prompts = {s["index"]: s["image_prompt"] for s in board["scenes"]}
    encoders = [""] + (["_2"] if sdxl else [])
    ref_text = {}
    for k, suffix in enumerate(encoders):
        tok = clip_tokenizer(os.path.join(m, f"tokenizer{suffix}"))
        folder = os.path.join(m, f"text_encoder{suffix}")
        enc = Ref(lambda dt: clip_model(folder, dev, dt), dtype)

        def run(ids):
            ids = torch.tensor(ids, device=dev)
            return enc(lambda model, dt: _clip_out(model(ids, output_hidden_states=True), sdxl))

        for s in scenes:
            ids = tok(prompts[s], padding="max_length", max_length=77, truncation=True).input_ids
            same = list(ids) == [int(i) for i in text[f"scene{s}.ids{k}"].flatten()]
            note(rows, f"tokens, encoder {k + 1}, scene {s}", "equal" if same else "DIFFER")
            hidden, pooled = run(text[f"scene{s}.ids{k}"].astype(np.int64))
            stats(f"text encoder {k + 1}, scene {s}", text[f"scene{s}.text{k}"], hidden, dtype, rows)
            ref_text[(k, s)] = hidden
            if sdxl and k == len(encoders) - 1:
                stats(f"pooled (text_embeds), scene {s}", text[f"scene{s}.pooled"], pooled, dtype, rows)
                ref_text[("pooled", s)] = pooled
            if guided and not sdxl:
                uids = tok("", padding="max_length", max_length=77).input_ids
                ref_text[(k, "uncond")] = run([uids])[0]
        del enc
    unet_dir = os.path.join(m, "unet")
    unet_state = load_folder(unet_dir)
    unet = Ref(lambda dt: build(UNet2DConditionModel, UNet2DConditionModel.load_config(unet_dir),
                                unet_state, dev, dt), dtype)
    del unet_state
    sched_cfg = json.load(open(os.path.join(m, "scheduler", "scheduler_config.json")))
    sched_cls = getattr(diffusers, sched_cfg["_class_name"])
    ancestral = "Ancestral" in sched_cfg["_class_name"]
    rows_n = 2 if guided else 1

    def added(pooled, dt):
        # SDXL: the pooled vector (zeros for the unconditional row) and the size/crop ids.
        if not sdxl:
            return None
        pooled = pooled.to(dev, dt).reshape(1, -1)
        if guided:
            pooled = torch.cat([torch.zeros_like(pooled), pooled])
        ids = torch.tensor([[h, w, 0, 0, h, w]] * rows_n, device=dev, dtype=dt)
        return {"text_embeds": pooled, "time_ids": ids}

    def predict(model, dt, x, t, ctx, pooled):
        pred = model(x.to(dt), t, encoder_hidden_states=ctx.to(dt),
                     added_cond_kwargs=added(pooled, dt)).sample.float()
        if guided:
            u, c = pred.chunk(2)
            pred = u + guidance * (c - u)
        return pred

    for s in scenes:
        ctx = torch.tensor(den[f"scene{s}.context"], device=dev)
        pooled = torch.tensor(text[f"scene{s}.pooled"]) if sdxl else None
        sched = sched_cls.from_config(sched_cfg)
        sched.set_timesteps(steps)
        ts = [float(t) for t in sched.timesteps]
        ours_ts = [float(t) for t in den[f"scene{s}.timesteps"]]
        note(rows, f"timesteps, scene {s}", "equal" if np.allclose(ts, ours_ts) else f"DIFFER {ts} vs {ours_ts}")
        latents = torch.tensor(den[f"scene{s}.noise"], device=dev).float() * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            x = torch.tensor(den[f"scene{s}.step{i}.input"], device=dev)
            preds = unet(lambda model, dt: predict(model, dt, x, t, ctx, pooled))
            stats(f"unet, scene {s}, step {i + 1}", den[f"scene{s}.step{i}.pred"], preds, dtype, rows)
            ours_pred = torch.tensor(den[f"scene{s}.step{i}.pred"], device=dev).float()
            prev = torch.tensor(den[f"scene{s}.step{i - 1}.latents"], device=dev).float() if i else latents
            sigma_up = _sigma_up(sched, i) if ancestral else 0.0
            if ancestral:
                # The deterministic part: the step with its noise set to zero.
                mod = sys.modules[sched_cls.__module__]
                saved = mod.randn_tensor
                mod.randn_tensor = lambda shape, **kw: torch.zeros(shape, device=kw.get("device"), dtype=kw.get("dtype"))
                stepped = sched.step(ours_pred, t, prev).prev_sample
                mod.randn_tensor = saved
                name = f"scheduler, scene {s}, step {i + 1} (noise added: {sigma_up:.3g} sd)"
            else:
                stepped = sched.step(ours_pred, t, prev).prev_sample
                name = f"scheduler, scene {s}, step {i + 1}"
            ours_lat = den[f"scene{s}.step{i}.latents"]
            if sigma_up > 0:
                resid = torch.tensor(ours_lat, device=dev).float() - stepped
                note(rows, name, f"residual sd {resid.std().item():.3g}")
            else:
                stats(name, ours_lat, {dtype: stepped}, dtype, rows)
    vae_dir = os.path.join(m, "vae")
    vae_state = vae_names(load_folder(vae_dir))
    vae = Ref(lambda dt: build(AutoencoderKL, AutoencoderKL.load_config(vae_dir), vae_state, dev, dt), dtype)
    scale = AutoencoderKL.load_config(vae_dir)["scaling_factor"]
    for s in scenes:
        last = torch.tensor(den[f"scene{s}.step{steps - 1}.latents"], device=dev)
        pix = vae(lambda model, dt: model.decode((last / scale).to(dt)).sample)
        stats(f"vae, scene {s}", dec[f"scene{s}.pixels"], pix, dtype, rows)
    # End to end: the reference's own text encoding, UNet, scheduler and VAE from baton's noise.
    if ancestral and steps > 1:
        note(rows, "end to end", "skipped: an ancestral scheduler adds its own noise after step 1")
        return

    def generate(dt, s):
        unet_m, vae_m = unet.models[dt], vae.models[dt]
        sched = sched_cls.from_config(sched_cfg)
        sched.set_timesteps(steps)
        cond = torch.cat([ref_text[(k, s)][dt] for k in range(len(encoders))], -1)
        if guided:
            # SDXL: zeros for the empty prompt (force_zeros_for_empty_prompt).
            unc = (torch.zeros_like(cond) if sdxl else
                   torch.cat([ref_text[(k, "uncond")][dt] for k in range(len(encoders))], -1))
            cond = torch.cat([unc, cond])
        pooled = ref_text[("pooled", s)][dt] if sdxl else None
        lat = torch.tensor(den[f"scene{s}.noise"], device=dev).float() * sched.init_noise_sigma
        for t in sched.timesteps:
            x = torch.cat([lat, lat]) if guided else lat
            x = sched.scale_model_input(x, t)
            lat = sched.step(predict(unet_m, dt, x, t, cond, pooled), t, lat).prev_sample
        return vae_m.decode((lat / scale).to(dt)).sample.float()

    for s in scenes:
        pixels = {dt: generate(dt, s) for dt in unet.models}
        end_to_end(rows, e2e, s, dec[f"scene{s}.pixels"], pixels, dtype)


def _clip_out(out, sdxl):
    """The hidden states SD conditions on, and the pooled vector (projected where the model has
    a projection)."""
    hidden = out.hidden_states[-2] if sdxl else out.last_hidden_state
    pooled = getattr(out, "text_embeds", None)
    return hidden, out.pooler_output if pooled is None else pooled


def _sigma_up(sched, i):
    s_from, s_to = float(sched.sigmas[i]), float(sched.sigmas[i + 1])
    if s_from == 0:
        return 0.0
    return (s_to ** 2 * (s_from ** 2 - s_to ** 2) / s_from ** 2) ** 0.5


def flux_parity(args, record, board, text, den, dec, dev, dtype, rows, e2e):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from transformers import T5Config, T5EncoderModel
    m = args.model
    steps, guidance = record["steps"], record["guidance"]
    h, w = record["height"], record["width"]
    scenes = [s["index"] for s in board["scenes"]]
    prompts = {s["index"]: s["image_prompt"] for s in board["scenes"]}
    tok = clip_tokenizer(os.path.join(m, "tokenizer"))
    clip = Ref(lambda dt: clip_model(os.path.join(m, "text_encoder"), dev, dt), dtype)
    ref_pooled, ref_t5 = {}, {}
    for s in scenes:
        ids = tok(prompts[s], padding="max_length", max_length=77, truncation=True).input_ids
        same = list(ids) == [int(i) for i in text[f"scene{s}.ids0"].flatten()]
        note(rows, f"tokens, CLIP, scene {s}", "equal" if same else "DIFFER")
        ids = torch.tensor(text[f"scene{s}.ids0"].astype(np.int64), device=dev)
        pooled = clip(lambda model, dt: model(ids).pooler_output)
        stats(f"CLIP pooled, scene {s}", text[f"scene{s}.pooled"], pooled, dtype, rows)
        ref_pooled[s] = pooled
    del clip
    t5cfg = T5Config.from_pretrained(os.path.join(m, "text_encoder_2"))
    t5_state = load_folder(os.path.join(m, "text_encoder_2"))
    t5_state.setdefault("shared.weight", t5_state.get("encoder.embed_tokens.weight"))
    t5 = Ref(lambda dt: build(T5EncoderModel, t5cfg, t5_state, dev, dt), dtype)
    del t5_state
    for s in scenes:
        ids = torch.tensor(text[f"scene{s}.ids1"].astype(np.int64), device=dev)
        out = t5(lambda model, dt: model(ids).last_hidden_state)
        stats(f"T5, scene {s}", text[f"scene{s}.text1"], out, dtype, rows)
        ref_t5[s] = out
    del t5
    tcfg = FluxTransformer2DModel.load_config(os.path.join(m, "transformer"))
    bfl = glob.glob(os.path.join(m, "flux1-*.safetensors"))[0]
    state = flux_names(load_pt(bfl, device=str(dev)), tcfg["num_attention_heads"] * tcfg["attention_head_dim"])
    model = Ref(lambda dt: build(FluxTransformer2DModel, tcfg, state, dev, dt), dtype)
    del state
    lh, lw = h // 8, w // 8
    img_ids = torch.zeros(lh // 2, lw // 2, 3)
    img_ids[..., 1] = torch.arange(lh // 2)[:, None]
    img_ids[..., 2] = torch.arange(lw // 2)[None, :]
    img_ids = img_ids.reshape(-1, 3).to(dev)
    sched_cfg = json.load(open(os.path.join(m, "scheduler", "scheduler_config.json")))
    guided = tcfg["guidance_embeds"]

    def velocity(net, dt, x, sigma, pooled, context):
        return net(hidden_states=x.to(dt), timestep=torch.full([1], sigma, device=dev, dtype=dt),
                   guidance=torch.full([1], guidance, device=dev, dtype=dt) if guided else None,
                   pooled_projections=pooled.to(dt), encoder_hidden_states=context.to(dt),
                   txt_ids=torch.zeros(context.shape[1], 3, device=dev, dtype=dt),
                   img_ids=img_ids.to(dt), return_dict=False)[0].float()

    def scheduler():
        sched = FlowMatchEulerDiscreteScheduler.from_config(sched_cfg)
        mu = calculate_shift((lh // 2) * (lw // 2), 256, 4096, 0.5, 1.15) if sched_cfg["use_dynamic_shifting"] else None
        sched.set_timesteps(sigmas=list(np.linspace(1.0, 1 / steps, steps)), mu=mu)
        return sched

    for s in scenes:
        sigmas = [float(t) for t in den[f"scene{s}.timesteps"]]
        sched = scheduler()
        ref_sig = [float(x) for x in sched.sigmas]
        ok = np.allclose(ref_sig, sigmas, atol=1e-5)
        note(rows, f"sigmas, scene {s}", "equal" if ok else f"DIFFER {ref_sig} vs {sigmas}")
        pooled = torch.tensor(text[f"scene{s}.pooled"], device=dev)
        context = torch.tensor(text[f"scene{s}.text1"], device=dev)
        for i in range(steps):
            x = torch.tensor(den[f"scene{s}.step{i}.input"], device=dev)
            v = model(lambda net, dt: velocity(net, dt, x, sigmas[i], pooled, context))
            stats(f"transformer, scene {s}, step {i + 1}", den[f"scene{s}.step{i}.pred"], v, dtype, rows)
            ours_v = torch.tensor(den[f"scene{s}.step{i}.pred"], device=dev).float()
            stepped = sched.step(ours_v, sched.timesteps[i], x.float()).prev_sample
            stats(f"scheduler, scene {s}, step {i + 1}", den[f"scene{s}.step{i}.latents"], {dtype: stepped}, dtype, rows)
    # End to end latents with the reference's encoders, transformer and scheduler.
    finals = {}
    for s in scenes:
        noise = torch.tensor(den[f"scene{s}.noise"], device=dev).float()
        packed = noise.view(1, 16, lh // 2, 2, lw // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, -1, 64)
        stats(f"packed noise, scene {s}", den[f"scene{s}.step0.input"], {dtype: packed}, dtype, rows)
        finals[s] = {}
        for dt, net in model.models.items():
            sched, x = scheduler(), packed
            for i, t in enumerate(sched.timesteps):
                v = velocity(net, dt, x, float(sched.sigmas[i]), ref_pooled[s][dt], ref_t5[s][dt])
                x = sched.step(v, t, x).prev_sample
            finals[s][dt] = x.view(1, lh // 2, lw // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, lh, lw)
    del model
    vcfg = AutoencoderKL.load_config(os.path.join(m, "vae"))
    ae_state = convert_ldm_vae_checkpoint(load_pt(os.path.join(m, "ae.safetensors")), vcfg)
    vae = Ref(lambda dt: build(AutoencoderKL, vcfg, ae_state, dev, dt), dtype)
    sf, sh = vcfg["scaling_factor"], vcfg["shift_factor"]
    for s in scenes:
        lat = torch.tensor(den[f"scene{s}.latents"], device=dev)
        pix = vae(lambda net, dt: net.decode((lat / sf + sh).to(dt)).sample)
        stats(f"autoencoder, scene {s}", dec[f"scene{s}.pixels"], pix, dtype, rows)
        pixels = {dt: net.decode((finals[s][dt] / sf + sh).to(dt)).sample.float() for dt, net in vae.models.items()}
        end_to_end(rows, e2e, s, dec[f"scene{s}.pixels"], pixels, dtype)


if __name__ == "__main__":
    main()
