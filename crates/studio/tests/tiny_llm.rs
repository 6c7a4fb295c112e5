//! The LLM path end to end on a tiny random-weight llama that the test writes itself: GGUF
//! loading, the tokenizer and chat template from its metadata, sampling, and the JSON
//! constraint, which must hold even though the weights are noise.

use baton_studio::llm::tiny::{write_tiny, write_tiny_llama};
use baton_studio::llm::{Llm, LlmError, Sampler};
use baton_studio::storyboard::{Storyboard, schema};
use candle_core::Device;

/// A tiny llama of random weights (`seed`) written to a folder of its own, and loaded on the CPU.
fn tiny_llama(seed: u64) -> (tempfile::TempDir, std::path::PathBuf, Llm) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_llama(&path, seed).unwrap();
    let llm = Llm::load(&path, &Device::Cpu, None).unwrap();
    (dir, path, llm)
}

fn sampler(seed: u64) -> Sampler {
    Sampler {
        temperature: 0.8,
        top_p: 0.95,
        seed,
        max_tokens: 20_000,
        repeat_penalty: 1.1,
    }
}

#[test]
fn random_weights_still_write_a_valid_storyboard() {
    let (_dir, _, mut llm) = tiny_llama(7);
    assert_eq!(llm.arch, "llama");
    let prompt = llm
        .chat_prompt("You write storyboards.", "Cyberpunk Tokyo")
        .unwrap();
    assert!(
        prompt.starts_with("<|im_start|>system\nYou write storyboards.<|im_end|>"),
        "{prompt}"
    );
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
    let ids = llm.tokenizer.encode(prompt.as_str(), false).unwrap();
    assert_eq!(
        ids.get_ids()[0],
        llm.tokenizer.token_to_id("<|im_start|>").unwrap(),
        "special tokens stay whole"
    );

    for seed in [1, 2] {
        let mut count = 0;
        let out = llm
            .generate_json(&prompt, schema(Some(2)), &sampler(seed), &mut |n| count = n)
            .unwrap();
        assert_eq!(count, out.tokens);
        assert!(out.tokens > 20 && out.tokens_per_second() > 0.0);
        let value: serde_json::Value =
            serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{e}: {}", out.text));
        let board: Storyboard =
            serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}: {}", out.text));
        assert_eq!(board.scenes.len(), 2, "{}", out.text);
        for s in &board.scenes {
            assert!(
                (1..=2).contains(&s.index) && (1.0..=60.0).contains(&s.duration_seconds),
                "{}",
                out.text
            );
            assert!(!s.narration.is_empty() && s.narration.chars().count() <= 400);
        }
    }
    // The same seed writes the same text.
    let a = llm
        .generate_json(&prompt, schema(Some(1)), &sampler(9), &mut |_| {})
        .unwrap();
    let b = llm
        .generate_json(&prompt, schema(Some(1)), &sampler(9), &mut |_| {})
        .unwrap();
    assert_eq!(a.text, b.text);
}

#[test]
fn missing_truncated_and_foreign_models_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    assert!(matches!(
        Llm::load(&missing, &Device::Cpu, None),
        Err(LlmError::MissingModel(_))
    ));

    let path = dir.path().join("tiny.gguf");
    write_tiny_llama(&path, 1).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let err = Llm::load(&cut, &Device::Cpu, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
    std::fs::write(&cut, &bytes[..100]).unwrap();
    let err = Llm::load(&cut, &Device::Cpu, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a readable GGUF"), "{err}");

    // The same file, relabelled as another architecture.
    let needle = b"llama";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut foreign = bytes.clone();
    foreign[at..at + 5].copy_from_slice(b"gemma");
    let other = dir.path().join("other.gguf");
    std::fs::write(&other, &foreign).unwrap();
    let err = Llm::load(&other, &Device::Cpu, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("'gemma' model") && err.contains("llama"),
        "{err}"
    );
}

#[test]
fn a_qwen2_model_loads_and_writes_valid_json_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-qwen2.gguf");
    write_tiny(&path, 5, "qwen2").unwrap();
    let mut llm = Llm::load(&path, &Device::Cpu, None).unwrap();
    assert_eq!(llm.arch, "qwen2");
    let prompt = llm
        .chat_prompt("You write storyboards.", "Cyberpunk Tokyo")
        .unwrap();
    let out = llm
        .generate_json(&prompt, schema(Some(2)), &sampler(3), &mut |_| {})
        .unwrap();
    let board: Storyboard =
        serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{e}: {}", out.text));
    assert_eq!(board.scenes.len(), 2);
    assert!(write_tiny(&path, 5, "mamba").is_err());
}

#[test]
fn the_storyboard_is_planned_then_written_scene_by_scene_in_words_only() {
    use baton_studio::quality::has_markup;
    use baton_studio::scenes::generate_storyboard;
    let (_dir, _, mut llm) = tiny_llama(11);
    let mut seen = 0;
    let (board, g) =
        generate_storyboard(&mut llm, "Cyberpunk Tokyo", 3, 1, &sampler(5), &mut |n| {
            seen = n
        })
        .unwrap();
    assert_eq!(board.topic, "Cyberpunk Tokyo");
    assert_eq!(board.scenes.len(), 3);
    board.validate(Some(3)).unwrap();
    for (i, s) in board.scenes.iter().enumerate() {
        assert_eq!(s.index as usize, i + 1);
        assert!((4.0..=8.0).contains(&s.duration_seconds), "{s:?}");
        // Random weights, yet no markup: the constraint allows words only.
        for text in [&s.title, &s.narration] {
            assert!(!has_markup(text) && !text.contains(['(', ')']), "{text:?}");
        }
        // Random weights, yet every narration names the topic: the constraint asks for one
        // of its words.
        let lower = s.narration.to_lowercase();
        assert!(
            lower.contains("cyberpunk") || lower.contains("tokyo"),
            "{:?}",
            s.narration
        );
    }
    assert!(!has_markup(&board.title), "{:?}", board.title);
    // The outline and every scene were generated (at least four constrained parts), and the
    // progress count covers all of them.
    assert!(g.tokens >= seen && seen > 0, "{} {seen}", g.tokens);
    let (again, _) =
        generate_storyboard(&mut llm, "Cyberpunk Tokyo", 3, 1, &sampler(5), &mut |_| {}).unwrap();
    assert_eq!(again, board, "the same seed writes the same storyboard");
}

#[test]
fn drafts_are_written_and_one_is_kept_the_same_way_each_time() {
    use baton_studio::scenes::generate_storyboard;
    let (_dir, _, mut llm) = tiny_llama(11);
    let (_, g1) =
        generate_storyboard(&mut llm, "Cyberpunk Tokyo", 2, 1, &sampler(5), &mut |_| {}).unwrap();
    let (three, g3) =
        generate_storyboard(&mut llm, "Cyberpunk Tokyo", 2, 3, &sampler(5), &mut |_| {}).unwrap();
    three.validate(Some(2)).unwrap();
    // Three outlines and at least three drafts of each scene were written, not one.
    assert!(
        g3.tokens > 2 * g1.tokens,
        "{} against {}",
        g3.tokens,
        g1.tokens
    );
    // A draft's fluency is a mean log-probability: below 0, and counted over the choices.
    for g in [&g1, &g3] {
        let fluency = g.fluency().expect("the model chose tokens");
        assert!(fluency < 0.0 && fluency.is_finite(), "{fluency}");
        assert!(
            g.choices > 0 && g.choices <= g.tokens,
            "{} of {}",
            g.choices,
            g.tokens
        );
    }
    // The same seed writes the same drafts and keeps the same one.
    let (again, _) =
        generate_storyboard(&mut llm, "Cyberpunk Tokyo", 2, 3, &sampler(5), &mut |_| {}).unwrap();
    assert_eq!(again, three);
}

#[test]
fn a_storyboard_that_does_not_finish_is_tried_again_and_then_fails_naming_the_limit() {
    use baton_studio::scenes::{ScenesError, generate_storyboard};
    let (_dir, _, mut llm) = tiny_llama(11);
    let tight = Sampler {
        max_tokens: 5,
        ..sampler(1)
    };
    let err =
        generate_storyboard(&mut llm, "Cyberpunk Tokyo", 2, 1, &tight, &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            ScenesError::Llm(LlmError::Unfinished { tokens: 5, .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("not finished after 5 tokens"),
        "{err}"
    );
}

#[test]
fn a_gemma3_model_reads_its_sentencepiece_tokenizer_and_writes_valid_json() {
    use baton_studio::llm::tiny::write_tiny_gemma3;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-gemma3.gguf");
    write_tiny_gemma3(&path, 9).unwrap();
    let mut llm = Llm::load(&path, &Device::Cpu, None).unwrap();
    assert_eq!(llm.arch, "gemma3");
    // Pieces merge by score ("▁the" is one token), anything else falls back to bytes, and
    // both decode to the same text.
    let text = "in the scene, Zürich ☃\n\"title\"";
    let enc = llm.tokenizer.encode(text, false).unwrap();
    assert!(
        enc.get_tokens().iter().any(|t| t == "\u{2581}the"),
        "{:?}",
        enc.get_tokens()
    );
    assert!(
        enc.get_tokens().iter().any(|t| t == "scene"),
        "{:?}",
        enc.get_tokens()
    );
    assert!(enc.get_tokens().iter().any(|t| t.starts_with("<0x")));
    assert_eq!(llm.tokenizer.decode(enc.get_ids(), true).unwrap(), text);
    // No template in the file: Gemma's turns, the system text inside the first user turn.
    let prompt = llm
        .chat_prompt("You write storyboards.", "Cyberpunk Tokyo")
        .unwrap();
    assert_eq!(
        prompt,
        "<bos><start_of_turn>user\nYou write storyboards.\n\nCyberpunk Tokyo<end_of_turn>\n<start_of_turn>model\n"
    );
    let ids = llm.tokenizer.encode(prompt.as_str(), false).unwrap();
    assert_eq!(ids.get_ids()[0], 2, "<bos> is its token");
    let out = llm
        .generate_json(&prompt, schema(Some(2)), &sampler(3), &mut |_| {})
        .unwrap();
    let board: Storyboard =
        serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{e}: {}", out.text));
    assert_eq!(board.scenes.len(), 2);
}

#[test]
fn a_prompt_that_shares_its_start_with_the_last_one_gives_what_a_fresh_model_gives() {
    use baton_studio::llm::tiny::write_tiny_gemma3;
    let dir = tempfile::tempdir().unwrap();
    let llama = dir.path().join("tiny.gguf");
    let gemma = dir.path().join("tiny-gemma3.gguf");
    write_tiny_llama(&llama, 4).unwrap();
    write_tiny_gemma3(&gemma, 4).unwrap();
    let greedy = Sampler {
        temperature: 0.0,
        ..sampler(1)
    };
    // A short string: greedy random weights would otherwise write one forever.
    let schema = serde_json::json!({"type": "object",
        "properties": {"a": {"type": "string", "maxLength": 24}},
        "required": ["a"], "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}});
    // Long enough that gemma3's sliding window is crossed while the cache is reused.
    let shared = "Write a storyboard about the sea at night. ".repeat(6);
    let (first, second) = (
        format!("{shared}Scene one."),
        format!("{shared}Scene two, please."),
    );
    for path in [&llama, &gemma] {
        let mut warm = Llm::load(path, &Device::Cpu, None).unwrap();
        warm.generate_json(&first, schema.clone(), &greedy, &mut |_| {})
            .unwrap();
        // The second prompt reuses the first's cached start, and a third goes back to a
        // shorter one.
        let reused = warm
            .generate_json(&second, schema.clone(), &greedy, &mut |_| {})
            .unwrap();
        let back = warm
            .generate_json(&shared, schema.clone(), &greedy, &mut |_| {})
            .unwrap();
        let mut fresh = Llm::load(path, &Device::Cpu, None).unwrap();
        let expected = fresh
            .generate_json(&second, schema.clone(), &greedy, &mut |_| {})
            .unwrap();
        assert_eq!(reused.text, expected.text, "{}", path.display());
        fresh.forget().unwrap();
        let expected = fresh
            .generate_json(&shared, schema.clone(), &greedy, &mut |_| {})
            .unwrap();
        assert_eq!(back.text, expected.text, "{}", path.display());
    }
}

#[test]
fn a_prompt_longer_than_a_pass_is_computed_in_parts_to_the_same_logits() {
    use baton_studio::llm::{PREFILL_CHUNK, candle_reference};
    let (_dir, path, mut llm) = tiny_llama(3);
    // Two passes and a bit: the parts attend to what the earlier ones cached.
    let tokens: Vec<u32> = (0..2 * PREFILL_CHUNK as u32 + 37)
        .map(|i| i * 7 % 200)
        .collect();
    let ours = llm.logits(&tokens).unwrap();
    let (candle, _) = candle_reference(&path, &Device::Cpu, &tokens)
        .unwrap()
        .expect("candle has a quantized llama");
    assert_eq!(ours.len(), candle.len());
    let worst = ours
        .iter()
        .zip(&candle)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // candle computes all of it in one pass: the same numbers up to summation order.
    assert!(worst < 1e-4, "logits differ by up to {worst}");
}

#[test]
fn a_word_the_tokenizer_splits_into_three_pieces_after_a_space_is_coined() {
    // The tiny tokenizer merges no letters: " a" is two pieces ("Ġ", "a"), " ab" three.
    let (_dir, _path, llm) = tiny_llama(1);
    assert_eq!(llm.coined_words("a ab, c-de", &[]), vec!["ab", "de"]);
    // The topic's words and their forms are not counted, whatever their pieces.
    let keep = vec!["abc".to_string()];
    assert_eq!(llm.coined_words("a abcs xy", &keep), vec!["xy"]);
}
