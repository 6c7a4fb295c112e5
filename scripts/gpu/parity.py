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


def stats(name, ours, ref, rows):
    """Max abs and max relative error (against the reference's largest magnitude), and PSNR
    when the values are pixels."""
    ours = torch.as_tensor(np.asarray(ours)).float().flatten()
    ref = ref.detach().float().cpu().flatten()
    if ours.shape != ref.shape:
        rows.append((name, "shape", f"{tuple(ours.shape)} vs {tuple(ref.shape)}", "", ""))
        return
    diff = (ours - ref).abs()
    scale = ref.abs().max().item() or 1.0
    rows.append((name, f"{diff.max().item():.3e}", f"{diff.max().item() / scale:.3e}",
                 f"{diff.mean().item():.3e}", ""))


def psnr(ours01, ref01):
    mse = float(((ours01 - ref01) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


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
    record = json.load(open(os.path.join(args.run, "3_images", "images.json")))
    board = json.load(open(glob.glob(os.path.join(args.run, "1_scripts", "*.json"))[0]))
    dtype = DTYPES[{"float32": "f32", "f32": "f32", "f16": "f16", "bf16": "bf16"}[record["dtype"]]]
    dev = torch.device(args.device)
    text = load_np(os.path.join(args.dump, "text.safetensors"))
    den = load_np(os.path.join(args.dump, "denoise.safetensors"))
    dec = load_np(os.path.join(args.dump, "decode.safetensors"))
    rows = []
    flux = "flux" in args.family
    with torch.inference_mode():
        if flux:
            e2e = flux_parity(args, record, board, text, den, dec, dev, dtype, rows)
        else:
            e2e = sd_parity(args, record, board, text, den, dec, dev, dtype, rows)
    lines = [f"### {args.family} ({record['dtype']}, {record['width']}x{record['height']}, "
             f"{record['steps']} steps, guidance {record['guidance']}, on {dev.type})", "",
             "| component | max abs error | max rel error | mean abs error | PSNR (dB) |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    for scene, db in e2e:
        lines.append(f"| end to end, scene {scene} | | | | {db:.1f} |")
    out = "\n".join(lines) + "\n"
    print(out)
    if args.md:
        with open(args.md, "a") as f:
            f.write(out + "\n")


def sd_parity(args, record, board, text, den, dec, dev, dtype, rows):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    import diffusers
    m = args.model
    sdxl = os.path.isdir(os.path.join(m, "text_encoder_2"))
    steps, guidance = record["steps"], record["guidance"]
    guided = guidance > 1.0
    scenes = [s["index"] for s in board["scenes"]]
    prompts = {s["index"]: s["image_prompt"] for s in board["scenes"]}
    encoders = [""] + (["_2"] if sdxl else [])
    ref_text = {}
    for k, suffix in enumerate(encoders):
        tok = clip_tokenizer(os.path.join(m, f"tokenizer{suffix}"))
        enc = clip_model(os.path.join(m, f"text_encoder{suffix}"), dev, dtype)
        for s in scenes:
            ids = tok(prompts[s], padding="max_length", max_length=77, truncation=True).input_ids
            same = list(ids) == [int(i) for i in text[f"scene{s}.ids{k}"].flatten()]
            rows.append((f"tokens, encoder {k + 1}, scene {s}", "equal" if same else "DIFFER", "", "", ""))
            out = enc(torch.tensor(text[f"scene{s}.ids{k}"].astype(np.int64), device=dev),
                      output_hidden_states=True)
            hidden = out.hidden_states[-2] if sdxl else out.last_hidden_state
            stats(f"text encoder {k + 1}, scene {s}", text[f"scene{s}.text{k}"], hidden, rows)
            ref_text[(k, s)] = hidden
            if sdxl and k == len(encoders) - 1:
                stats(f"pooled (text_embeds), scene {s}", text[f"scene{s}.pooled"], out.text_embeds, rows)
                ref_text[("pooled", s)] = out.text_embeds
            if guided and not sdxl:
                uids = tok("", padding="max_length", max_length=77).input_ids
                u = enc(torch.tensor([uids], device=dev), output_hidden_states=True)
                ref_text[(k, "uncond")] = u.hidden_states[-2] if sdxl else u.last_hidden_state
        del enc
    unet = build(UNet2DConditionModel, UNet2DConditionModel.load_config(os.path.join(m, "unet")),
                 load_folder(os.path.join(m, "unet")), dev, dtype)
    sched_cfg = json.load(open(os.path.join(m, "scheduler", "scheduler_config.json")))
    sched_cls = getattr(diffusers, sched_cfg["_class_name"])
    ancestral = "Ancestral" in sched_cfg["_class_name"]
    h, w = record["height"], record["width"]
    rows_n = 2 if guided else 1

    def added(pooled):
        # SDXL: the pooled vector (zeros for the unconditional row) and the size/crop ids.
        if not sdxl:
            return None
        pooled = pooled.to(dev, dtype).reshape(1, -1)
        if guided:
            pooled = torch.cat([torch.zeros_like(pooled), pooled])
        ids = torch.tensor([[h, w, 0, 0, h, w]] * rows_n, device=dev, dtype=dtype)
        return {"text_embeds": pooled, "time_ids": ids}

    for s in scenes:
        ctx = torch.tensor(den[f"scene{s}.context"], device=dev, dtype=dtype)
        cond_added = added(torch.tensor(text[f"scene{s}.pooled"])) if sdxl else None
        sched = sched_cls.from_config(sched_cfg)
        sched.set_timesteps(steps)
        ts = [float(t) for t in sched.timesteps]
        ours_ts = [float(t) for t in den[f"scene{s}.timesteps"]]
        rows.append((f"timesteps, scene {s}", "equal" if np.allclose(ts, ours_ts) else f"DIFFER {ts} vs {ours_ts}", "", "", ""))
        latents = torch.tensor(den[f"scene{s}.noise"], device=dev).float() * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            x = torch.tensor(den[f"scene{s}.step{i}.input"], device=dev, dtype=dtype)
            pred = unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=cond_added).sample.float()
            if guided:
                u, c = pred.chunk(2)
                pred = u + guidance * (c - u)
            stats(f"unet, scene {s}, step {i + 1}", den[f"scene{s}.step{i}.pred"], pred, rows)
            ours_pred = torch.tensor(den[f"scene{s}.step{i}.pred"], device=dev).float()
            prev = torch.tensor(den[f"scene{s}.step{i - 1}.latents"], device=dev).float() if i else latents
            if ancestral:
                # The deterministic part: the step with its noise set to zero.
                gen = torch.Generator(device=dev).manual_seed(0)
                mod = sys.modules[sched_cls.__module__]
                saved = mod.randn_tensor
                mod.randn_tensor = lambda shape, **kw: torch.zeros(shape, device=kw.get("device"), dtype=kw.get("dtype"))
                stepped = sched.step(ours_pred, t, prev, generator=gen).prev_sample
                mod.randn_tensor = saved
                sigma_up = _sigma_up(sched, i)
                name = f"scheduler, scene {s}, step {i + 1} (noise added: {sigma_up:.3g} sd)"
            else:
                stepped = sched.step(ours_pred, t, prev).prev_sample
                name = f"scheduler, scene {s}, step {i + 1}"
            ours_lat = den[f"scene{s}.step{i}.latents"]
            if ancestral and sigma_up > 0:
                resid = torch.tensor(ours_lat, device=dev).float() - stepped
                rows.append((name, "", "", f"residual sd {resid.std().item():.3g}", ""))
            else:
                stats(name, ours_lat, stepped, rows)
    del unet
    vae = build(AutoencoderKL, AutoencoderKL.load_config(os.path.join(m, "vae")),
                load_folder(os.path.join(m, "vae")), dev, dtype, convert=vae_names)
    scale = vae.config.scaling_factor
    for s in scenes:
        last = torch.tensor(den[f"scene{s}.step{steps - 1}.latents"], device=dev, dtype=dtype)
        pix = vae.decode(last / scale).sample
        stats(f"vae, scene {s}", dec[f"scene{s}.pixels"], pix, rows)
    # End to end: the reference's own text encoding, UNet, scheduler and VAE from baton's noise.
    e2e = []
    if ancestral and steps > 1:
        rows.append(("end to end", "skipped: an ancestral scheduler adds its own noise after step 1", "", "", ""))
        return e2e
    unet = build(UNet2DConditionModel, UNet2DConditionModel.load_config(os.path.join(m, "unet")),
                 load_folder(os.path.join(m, "unet")), dev, dtype)
    for s in scenes:
        sched = sched_cls.from_config(sched_cfg)
        sched.set_timesteps(steps)
        cond = torch.cat([ref_text[(k, s)] for k in range(len(encoders))], -1)
        if guided:
            # SDXL: zeros for the empty prompt (force_zeros_for_empty_prompt).
            unc = (torch.zeros_like(cond) if sdxl else
                   torch.cat([ref_text[(k, "uncond")] for k in range(len(encoders))], -1))
            cond = torch.cat([unc, cond])
        ref_added = added(ref_text[("pooled", s)]) if sdxl else None
        lat = torch.tensor(den[f"scene{s}.noise"], device=dev).float() * sched.init_noise_sigma
        for t in sched.timesteps:
            x = torch.cat([lat, lat]) if guided else lat
            x = sched.scale_model_input(x, t).to(dtype)
            pred = unet(x, t, encoder_hidden_states=cond, added_cond_kwargs=ref_added).sample.float()
            if guided:
                u, c = pred.chunk(2)
                pred = u + guidance * (c - u)
            lat = sched.step(pred, t, lat).prev_sample
        pix = vae.decode((lat / scale).to(dtype)).sample.float().cpu()
        ref01 = ((pix + 1) / 2).clamp(0, 1).numpy()
        ours01 = ((torch.tensor(dec[f"scene{s}.pixels"]) + 1) / 2).clamp(0, 1).numpy()
        e2e.append((s, psnr(ours01, ref01)))
    return e2e


def _sigma_up(sched, i):
    s_from, s_to = float(sched.sigmas[i]), float(sched.sigmas[i + 1])
    if s_from == 0:
        return 0.0
    return (s_to ** 2 * (s_from ** 2 - s_to ** 2) / s_from ** 2) ** 0.5


def flux_parity(args, record, board, text, den, dec, dev, dtype, rows):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from transformers import T5Config, T5EncoderModel
    m = args.model
    steps, guidance = record["steps"], record["guidance"]
    h, w = record["height"], record["width"]
    scenes = [s["index"] for s in board["scenes"]]
    prompts = {s["index"]: s["image_prompt"] for s in board["scenes"]}
    tok = clip_tokenizer(os.path.join(m, "tokenizer"))
    clip = clip_model(os.path.join(m, "text_encoder"), dev, dtype)
    ref_pooled, ref_t5 = {}, {}
    for s in scenes:
        ids = tok(prompts[s], padding="max_length", max_length=77, truncation=True).input_ids
        same = list(ids) == [int(i) for i in text[f"scene{s}.ids0"].flatten()]
        rows.append((f"tokens, CLIP, scene {s}", "equal" if same else "DIFFER", "", "", ""))
        out = clip(torch.tensor(text[f"scene{s}.ids0"].astype(np.int64), device=dev))
        stats(f"CLIP pooled, scene {s}", text[f"scene{s}.pooled"], out.pooler_output, rows)
        ref_pooled[s] = out.pooler_output
    del clip
    t5cfg = T5Config.from_pretrained(os.path.join(m, "text_encoder_2"))
    t5_state = load_folder(os.path.join(m, "text_encoder_2"))
    t5_state.setdefault("shared.weight", t5_state.get("encoder.embed_tokens.weight"))
    t5 = build(T5EncoderModel, t5cfg, t5_state, dev, dtype)
    for s in scenes:
        out = t5(torch.tensor(text[f"scene{s}.ids1"].astype(np.int64), device=dev)).last_hidden_state
        stats(f"T5, scene {s}", text[f"scene{s}.text1"], out, rows)
        ref_t5[s] = out
    del t5
    tcfg = FluxTransformer2DModel.load_config(os.path.join(m, "transformer"))
    bfl = glob.glob(os.path.join(m, "flux1-*.safetensors"))[0]
    state = load_pt(bfl, device=str(dev))
    model = build(FluxTransformer2DModel, tcfg, state, dev, dtype,
                  convert=lambda sd: flux_names(sd, tcfg["num_attention_heads"] * tcfg["attention_head_dim"]))
    del state
    lh, lw = h // 8, w // 8
    img_ids = torch.zeros(lh // 2, lw // 2, 3)
    img_ids[..., 1] = torch.arange(lh // 2)[:, None]
    img_ids[..., 2] = torch.arange(lw // 2)[None, :]
    img_ids = img_ids.reshape(-1, 3).to(dev, dtype)
    sched_cfg = json.load(open(os.path.join(m, "scheduler", "scheduler_config.json")))
    g = torch.full([1], guidance, device=dev, dtype=torch.float32) if tcfg["guidance_embeds"] else None

    def velocity(x, sigma, pooled, t5):
        txt_ids = torch.zeros(t5.shape[1], 3, device=dev, dtype=dtype)
        return model(hidden_states=x.to(dtype), timestep=torch.full([1], sigma, device=dev, dtype=dtype),
                     guidance=g, pooled_projections=pooled.to(dtype), encoder_hidden_states=t5.to(dtype),
                     txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0].float()

    for s in scenes:
        sigmas = [float(t) for t in den[f"scene{s}.timesteps"]]
        sched = FlowMatchEulerDiscreteScheduler.from_config(sched_cfg)
        seq = (lh // 2) * (lw // 2)
        mu = None
        if sched_cfg["use_dynamic_shifting"]:
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift
            mu = calculate_shift(seq, 256, 4096, 0.5, 1.15)
        sched.set_timesteps(sigmas=list(np.linspace(1.0, 1 / steps, steps)), mu=mu)
        ref_sig = [float(x) for x in sched.sigmas]
        ok = np.allclose(ref_sig, sigmas, atol=1e-5)
        rows.append((f"sigmas, scene {s}", "equal" if ok else f"DIFFER {ref_sig} vs {sigmas}", "", "", ""))
        pooled = torch.tensor(text[f"scene{s}.pooled"], device=dev)
        t5 = torch.tensor(text[f"scene{s}.text1"], device=dev)
        for i in range(steps):
            x = torch.tensor(den[f"scene{s}.step{i}.input"], device=dev)
            v = velocity(x, sigmas[i], pooled, t5)
            stats(f"transformer, scene {s}, step {i + 1}", den[f"scene{s}.step{i}.pred"], v, rows)
            ours_v = torch.tensor(den[f"scene{s}.step{i}.pred"], device=dev).float()
            stepped = sched.step(ours_v, sched.timesteps[i], x.float()).prev_sample
            stats(f"scheduler, scene {s}, step {i + 1}", den[f"scene{s}.step{i}.latents"], stepped, rows)
    # End to end latents with the reference's encoders, transformer and scheduler.
    finals = {}
    for s in scenes:
        sched = FlowMatchEulerDiscreteScheduler.from_config(sched_cfg)
        mu = None
        if sched_cfg["use_dynamic_shifting"]:
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift
            mu = calculate_shift((lh // 2) * (lw // 2), 256, 4096, 0.5, 1.15)
        sched.set_timesteps(sigmas=list(np.linspace(1.0, 1 / steps, steps)), mu=mu)
        noise = torch.tensor(den[f"scene{s}.noise"], device=dev).float()
        x = noise.view(1, 16, lh // 2, 2, lw // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, -1, 64)
        stats(f"packed noise, scene {s}", den[f"scene{s}.step0.input"], x, rows)
        for i, t in enumerate(sched.timesteps):
            v = velocity(x, float(sched.sigmas[i]), ref_pooled[s], ref_t5[s])
            x = sched.step(v, t, x).prev_sample
        finals[s] = x.view(1, lh // 2, lw // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, lh, lw)
    del model
    vcfg = AutoencoderKL.load_config(os.path.join(m, "vae"))
    ae_state = load_pt(os.path.join(m, "ae.safetensors"))
    vae = build(AutoencoderKL, vcfg, ae_state, dev, dtype,
                convert=lambda sd: convert_ldm_vae_checkpoint(sd, vcfg))
    sf, sh = vcfg["scaling_factor"], vcfg["shift_factor"]
    e2e = []
    for s in scenes:
        lat = torch.tensor(den[f"scene{s}.latents"], device=dev, dtype=dtype)
        pix = vae.decode(lat / sf + sh).sample
        stats(f"autoencoder, scene {s}", dec[f"scene{s}.pixels"], pix, rows)
        pix = vae.decode((finals[s] / sf + sh).to(dtype)).sample.float().cpu()
        ref01 = ((pix + 1) / 2).clamp(0, 1).numpy()
        ours01 = ((torch.tensor(dec[f"scene{s}.pixels"]) + 1) / 2).clamp(0, 1).numpy()
        e2e.append((s, psnr(ours01, ref01)))
    return e2e


if __name__ == "__main__":
    main()
