#!/usr/bin/env python3
"""Compares what baton's Parler-TTS computed (`baton voice --engine parler --dump DIR`) with
parler-tts on the same weights and the same inputs.

    parity_voice.py --model DIR --dump DUMP_DIR [--device cuda] [--md OUT]

DIR is a Parler-TTS folder baton wrote (`baton bench voice`: random weights of mini's shapes, or
the tests' tiny ones); DUMP_DIR holds one voice-N.safetensors per clip, with the texts, the
token ids, T5's output, every step's decoder input and logits, and the codes. For each clip:

  tokens          the model's tokenizer.json (transformers' T5 tokenizer) against baton's ids,
                  for the description and the prompt
  text encoder    T5's states, projected to the decoder's width, from baton's description ids
  decoder logits  every step's logits for every codebook, the decoder fed baton's own inputs
                  (its codes in the delay pattern) in one pass: teacher forcing
  greedy codes    (dumps made with --greedy) parler-tts' own generate(), greedy, with the
                  codes a DAC can decode allowed (the end token barred, as --frames bars it):
                  how many frames of each codebook equal baton's before the first difference

In bf16 every reference output is also computed in f32, as the yardstick (see parity.py).
DAC's decoder is not compared: parler-tts imports descript-audio-codec at start, which is
replaced here by a stand-in without weights (the comparison ends at the codes).
"""

import argparse
import glob
import json
import os
import re
import sys
import types

import numpy as np
import torch
from safetensors import safe_open

from parity import DTYPES, F32, Ref, load_folder, note, stats


def import_parler():
    """parler_tts, with descript-audio-codec replaced by a stand-in when it is not installed."""
    try:
        import dac.model  # noqa: F401
    except ImportError:
        dac = types.ModuleType("dac")
        model = types.ModuleType("dac.model")

        class DAC(torch.nn.Module):
            def __init__(self, **_):
                super().__init__()

        model.DAC = DAC
        dac.model = model
        sys.modules["dac"], sys.modules["dac.model"] = dac, model
    import parler_tts

    return parler_tts


def hf_config(parler_tts, cfg):
    """parler-tts' config for baton's config.json (the sub-configs named by model type)."""
    dac_type = parler_tts.DACConfig.model_type
    return parler_tts.ParlerTTSConfig(
        text_encoder=dict(cfg["text_encoder"], model_type="t5"),
        audio_encoder=dict(cfg["audio_encoder"], model_type=dac_type),
        decoder=dict(cfg["decoder"]),
        vocab_size=cfg["vocab_size"],
        pad_token_id=cfg["pad_token_id"],
        decoder_start_token_id=cfg["decoder_start_token_id"],
    )


def load_dump(path):
    with safe_open(path, "np") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--md")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    parler_tts = import_parler()
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    config = hf_config(parler_tts, cfg)
    state = load_folder(args.model)
    # T5's input embedding is tied: one name or the other is stored.
    state.setdefault("text_encoder.shared.weight", state.get("text_encoder.encoder.embed_tokens.weight"))
    dev = torch.device(args.device)
    clips = sorted(glob.glob(os.path.join(args.dump, "voice-*.safetensors")),
                   key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0]))
    if not clips:
        sys.exit(f"no voice-N.safetensors in {args.dump}: run `baton voice --engine parler --dump DIR`")
    meta, _ = load_dump(clips[0])
    dtype = DTYPES[{"f32": "f32", "bf16": "bf16", "f16": "f16"}[meta["dtype"]]]

    def make(dt):
        model = parler_tts.ParlerTTSForConditionalGeneration(config).to(dev).to(dt)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # The stand-in DAC has no weights: baton's audio_encoder.* are the only ones left over.
        unexpected = [k for k in unexpected if not k.startswith("audio_encoder.")]
        missing = [k for k in missing if not k.startswith("audio_encoder.")]
        if missing or unexpected:
            sys.exit(f"parler-tts and baton's weights differ: missing {missing[:8]} unexpected {unexpected[:8]}")
        return model.eval()

    ref = Ref(make, dtype)
    tokenizer = None
    tok_path = os.path.join(args.model, "tokenizer.json")
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=tok_path)
    rows, greedy_rows = [], []
    books = cfg["decoder"]["num_codebooks"]
    codebook = cfg["audio_encoder"]["codebook_size"]
    with torch.inference_mode():
        for path in clips:
            meta, d = load_dump(path)
            scene = int(re.findall(r"\d+", os.path.basename(path))[0])
            p = f"scene{scene}."
            desc = torch.as_tensor(d[p + "description_ids"].astype(np.int64), device=dev)
            prompt = torch.as_tensor(d[p + "prompt_ids"].astype(np.int64), device=dev)
            for what, ids in (("description", desc), ("prompt", prompt)):
                text = meta.get(p + what)
                if text is None:
                    continue
                theirs = tokenizer(text)["input_ids"]
                if theirs[-1:] != [1]:
                    theirs = theirs + [1]
                ours = ids[0].tolist()
                same = theirs == ours
                note(rows, f"scene {scene} tokens ({what})",
                     "equal" if same else f"DIFFER: baton {ours[:12]}… reference {theirs[:12]}…")

            def encode(m, dt):
                h = m.text_encoder(input_ids=desc).last_hidden_state
                if m.text_encoder.config.hidden_size != m.decoder.config.hidden_size:
                    h = m.enc_to_dec_proj(h)
                return h

            stats(f"scene {scene} text encoder (projected)", d[p + "encoder"], ref(encode), dtype, rows)

            inputs = torch.as_tensor(d[p + "inputs"].astype(np.int64), device=dev)  # (steps, books)
            steps = inputs.shape[0]

            def teacher(m, dt):
                out = m(input_ids=desc, prompt_input_ids=prompt,
                        decoder_input_ids=inputs.T.contiguous(), use_cache=False)
                return out.logits[:, -steps:, :].transpose(0, 1)  # (steps, books, vocab)

            logits = ref(teacher)
            ours = d[p + "logits"]
            stats(f"scene {scene} decoder logits ({steps} steps x {books} codebooks)", ours, logits, dtype, rows)
            # Where baton drew (the codebooks past their delay), the same most likely code?
            theirs = logits[dtype].float().cpu().numpy()[..., :codebook]
            mine = ours[..., :codebook]
            drawn = np.array([[s >= b for b in range(books)] for s in range(steps)])
            agree = (theirs.argmax(-1) == mine.argmax(-1))[drawn].mean()
            note(rows, f"scene {scene} same most likely code", f"{100 * agree:.2f}% of {drawn.sum()} draws")

            if meta.get("greedy") == "true":
                codes = d[p + "codes"]  # (books, frames)
                frames = codes.shape[1]
                greedy_rows.append((scene, generate(ref.models[dtype], desc, prompt, frames, books, codebook), codes))
    lines = [f"### Parler-TTS ({meta['dtype']}, {books} codebooks, decoder {cfg['decoder']['num_hidden_layers']} "
             f"layers x {cfg['decoder']['hidden_size']}, on {dev.type})", "",
             "| component | max abs error | max rel error | mean abs error | baton vs f32 (max rel) "
             "| reference vs f32 (max rel) | |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    if greedy_rows:
        lines += ["", "Greedy decoding, parler-tts' generate() against baton: frames equal from the start, "
                  "per codebook", "", "| scene | frames | equal frames per codebook | all equal |",
                  "| --- | --- | --- | --- |"]
        for scene, theirs, ours in greedy_rows:
            n = min(theirs.shape[1], ours.shape[1])
            equal = []
            for b in range(books):
                diff = np.nonzero(theirs[b, :n] != ours[b, :n])[0]
                equal.append(int(diff[0]) if len(diff) else n)
            lines.append(f"| {scene} | {ours.shape[1]} (reference {theirs.shape[1]}) | "
                         f"{', '.join(map(str, equal))} | {'yes' if all(e == n for e in equal) and theirs.shape == ours.shape else 'NO'} |")
    out = "\n".join(lines) + "\n"
    print(out)
    if args.md:
        with open(args.md, "a") as f:
            f.write(out + "\n")


def generate(model, desc, prompt, frames, books, codebook):
    """parler-tts' greedy generate() with only codes allowed: (books, frames) as numpy. The codes
    are taken where they would reach DAC's decoder."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class CodesOnly(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores[:, codebook:] = -float("inf")
            return scores

    seen = []

    def decode(audio_codes, **_):
        seen.append(audio_codes.detach().cpu().numpy())
        return types.SimpleNamespace(audio_values=torch.zeros(1, 1, 1))

    model.audio_encoder.decode = decode
    model.generate(input_ids=desc, prompt_input_ids=prompt, do_sample=False,
                   max_new_tokens=frames + books - 1,
                   logits_processor=LogitsProcessorList([CodesOnly()]))
    codes = seen[-1]
    return codes.reshape(-1, books, codes.shape[-1])[0]


if __name__ == "__main__":
    main()
