//! `baton-espeak`: speaks the text on its standard input into a WAV file, with eSpeak NG.
//!
//! It exists as its own program because eSpeak NG is GPL-3.0-or-later: this binary links it and
//! carries that licence (COPYING), while baton (MIT OR Apache-2.0) runs it as a separate process
//! and reads only the file it writes. The English voice data is compiled in and unpacked once
//! into a folder (`--data`), so it works on a fresh machine with no system packages.
//!
//! ```text
//! baton-espeak --out FILE.wav [--data DIR] [--voice en-us] [--rate WPM] [--pitch 0-100] < text
//! ```
//! Output: 16-bit mono PCM WAV at the engine's rate (22050 Hz), written whole (temporary name,
//! then rename). Exit 0 on success, 2 for bad arguments, 1 when synthesis fails.
//!
//! ```text
//! baton-espeak --ipa [--data DIR] [--voice en-us] < text
//! ```
//! Output: the text's phonemes in IPA on standard output, one sentence a line, the way Piper's
//! voices were trained on them (`piper.phonemize_espeak`): each clause's phonemes followed by
//! its punctuation, and a space after `,` `:` `;`. This is what baton's Piper voice reads.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use espeak_ng::{EspeakNg, Parameter};

struct Args {
    out: PathBuf,
    /// Print phonemes instead of writing audio.
    ipa: bool,
    /// Where the bundled voice data is unpacked (baton passes its cache folder).
    data: PathBuf,
    voice: String,
    rate: i32,
    pitch: i32,
}

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "baton-espeak: {why}\nusage: baton-espeak --out FILE.wav [--data DIR] [--voice en-us] [--rate 80-450] [--pitch 0-100] < text\n       baton-espeak --ipa [--data DIR] [--voice en-us] < text"
    );
    ExitCode::from(2)
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        out: PathBuf::new(),
        ipa: false,
        data: std::env::temp_dir().join(format!("baton-espeak-data-{}", env!("CARGO_PKG_VERSION"))),
        voice: "en-us".into(),
        rate: 175,
        pitch: 50,
    };
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => args.out = PathBuf::from(value()?),
            "--ipa" => args.ipa = true,
            "--data" => args.data = PathBuf::from(value()?),
            "--voice" => args.voice = value()?,
            "--rate" => {
                let v = value()?;
                args.rate = v
                    .parse()
                    .ok()
                    .filter(|r| (80..=450).contains(r))
                    .ok_or(format!("--rate '{v}': use words per minute, 80 to 450"))?;
            }
            "--pitch" => {
                let v = value()?;
                args.pitch = v
                    .parse()
                    .ok()
                    .filter(|p| (0..=100).contains(p))
                    .ok_or(format!("--pitch '{v}': use 0 to 100"))?;
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    if args.out.as_os_str().is_empty() && !args.ipa {
        return Err("--out FILE.wav (or --ipa) is required".into());
    }
    Ok(args)
}

/// Unpacks the bundled data unless a complete copy is there; a half-unpacked copy is never
/// used, because the folder appears only by a rename once complete.
fn ensure_data(dir: &Path) -> std::io::Result<()> {
    if dir.join("phontab").is_file() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".espeak-unpack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    espeak_ng::install_bundled_languages(&tmp, espeak_ng::bundled_languages())?;
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another process unpacked it first.
        Err(_) if dir.join("phontab").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn wav(samples: &[i16], rate: u32) -> Vec<u8> {
    let data = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// The text split where eSpeak NG ends a clause: after `.` `!` `?` `,` `:` `;` when a space or
/// the end follows. Each clause comes with its terminator, if it has one.
fn clauses(text: &str) -> Vec<(&str, Option<char>)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let ends = matches!(c, '.' | '!' | '?' | ',' | ':' | ';')
            && chars.peek().is_none_or(|(_, next)| next.is_whitespace());
        if ends {
            out.push((&text[start..i], Some(c)));
            start = i + c.len_utf8();
        }
    }
    out.push((&text[start..], None));
    out.retain(|(clause, end)| !clause.trim().is_empty() || end.is_some());
    out
}

/// Phonemes a sentence a line, as Piper's phonemizer writes them: a clause's IPA (language
/// switch flags such as `(fr)` removed), then its punctuation; `, : ;` continue the sentence
/// after a space, `. ! ?` end it.
fn sentences(engine: &EspeakNg, text: &str) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let mut sentence = String::new();
    for (clause, end) in clauses(text) {
        let ipa = if clause.trim().is_empty() {
            String::new()
        } else {
            engine
                .text_to_phonemes(clause.trim())
                .map_err(|e| format!("phonemizing '{clause}' failed: {e}"))?
        };
        let mut flags = false;
        for c in ipa.trim().chars() {
            match c {
                '(' => flags = true,
                ')' if flags => flags = false,
                // A clause eSpeak NG split further comes back on several lines.
                '\n' if !flags => sentence.push(' '),
                _ if !flags => sentence.push(c),
                _ => {}
            }
        }
        match end {
            Some(c @ (',' | ':' | ';')) => {
                sentence.push(c);
                sentence.push(' ');
            }
            Some(c) => {
                sentence.push(c);
                done.push(std::mem::take(&mut sentence));
            }
            None => {}
        }
    }
    if !sentence.trim().is_empty() {
        done.push(sentence);
    }
    Ok(done
        .into_iter()
        .map(|s| s.trim_end().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

fn run(args: &Args) -> Result<(), String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the text on standard input: {e}"))?;
    if text.trim().is_empty() {
        return Err("no text on standard input".into());
    }
    let dir = &args.data;
    ensure_data(dir)
        .map_err(|e| format!("cannot unpack the voice data into {}: {e}", dir.display()))?;
    // Only the bundled languages' dictionaries are here: a voice of another language would
    // fail deep in synthesis ("translate_to_codes: dict not found"), so refuse it by name.
    let language = args.voice.split(['-', '+']).next().unwrap_or_default();
    if !espeak_ng::has_bundled_language(&language.to_lowercase()) {
        let usable: Vec<String> = espeak_ng::voices::list_voices(dir)
            .into_iter()
            .filter(|v| {
                let lang = v.language.split('-').next().unwrap_or_default();
                espeak_ng::has_bundled_language(lang)
            })
            .map(|v| v.language)
            .collect();
        return Err(format!(
            "voice '{}': this build carries eSpeak NG's {} voices only; use one of {}",
            args.voice,
            espeak_ng::bundled_languages().join(", "),
            usable.join(", ")
        ));
    }
    let mut engine = EspeakNg::with_data_dir(&args.voice, dir)
        .map_err(|e| format!("voice '{}': {e}", args.voice))?;
    if args.ipa {
        let mut out = std::io::stdout().lock();
        for sentence in sentences(&engine, text.trim())? {
            writeln!(out, "{sentence}").map_err(|e| format!("cannot write: {e}"))?;
        }
        return Ok(());
    }
    engine.set_parameter(Parameter::Rate, args.rate);
    engine.set_parameter(Parameter::Pitch, args.pitch);
    let (samples, rate) = engine
        .synth(text.trim())
        .map_err(|e| format!("synthesis failed: {e}"))?;
    let tmp = args.out.with_extension("wav.part");
    std::fs::write(&tmp, wav(&samples, rate))
        .and_then(|()| std::fs::rename(&tmp, &args.out))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", args.out.display())
        })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(why) => return usage(&why),
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("baton-espeak: {why}");
            ExitCode::from(1)
        }
    }
}
