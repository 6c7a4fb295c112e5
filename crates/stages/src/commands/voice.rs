//! `baton voice`: narration for every scene, shown as the voice stage says it.

use std::io::Write;

use baton_base::format_bytes;
use baton_base::protocol::StageLine;
use baton_studio::voice::VoiceOptions;
use baton_studio::voice::parler::{ParlerDebug, ParlerFiles};
use baton_studio::voice::stage::{EngineChoice, VoiceEvent, VoiceRequest, run_voice};

use crate::fetch::{from_hub, unwritable};

pub fn voice(args: &baton::args::VoiceArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use baton::args::VoiceEngineChoice;
    let run_dir = baton_studio::storyboard::run_dir_of(&args.input, args.run_dir.as_deref());
    // As a stage of a run (a run folder given), the runner reads the protocol lines.
    let stage = args.run_dir.is_some();
    let request = VoiceRequest {
        input: &args.input,
        run_dir: &run_dir,
        options: VoiceOptions {
            voice: args.voice.clone(),
            speed: args.speed,
            sample_rate: args.sample_rate,
            description: args.describe.clone(),
        },
        engine: match args.engine {
            VoiceEngineChoice::Auto => EngineChoice::Auto,
            VoiceEngineChoice::Espeak => EngineChoice::Espeak,
            VoiceEngineChoice::Parler => EngineChoice::Parler,
            VoiceEngineChoice::Piper => EngineChoice::Piper,
        },
        voice_model: &args.voice_model,
        piper_voice: &args.piper_voice,
        // Like the default LLM, the default voice is fetched on first use.
        fetch_piper: true,
        seed: args.seed,
        compute: args.compute,
        parler_debug: ParlerDebug {
            dump: args.dump.clone(),
            greedy: args.greedy,
            frames: args.frames,
            f32: args.f32,
        },
    };
    // The download and the stage's events both write to `out`, one after the other.
    let out = std::cell::RefCell::new(out);
    let mut fetch = || {
        from_hub(
            &args.voice_model,
            &mut **out.borrow_mut(),
            |hub, progress| ParlerFiles::fetch(&args.voice_model, hub, progress),
        )
        .map_err(|e| baton_studio::voice::VoiceError::Write(unwritable(e)))?
    };
    let mut failed_write: Option<std::io::Error> = None;
    let input = args.input.display().to_string();
    let mut say = |line: String| {
        let mut out = out.borrow_mut();
        if failed_write.is_none()
            && let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush())
        {
            failed_write = Some(e);
        }
    };
    let manifest = run_voice(
        &request,
        args.fetch.then_some(&mut fetch as &mut dyn FnMut() -> _),
        &mut |event| match event {
            VoiceEvent::Started {
                engine,
                place,
                memory_before,
            } => say(match memory_before {
                Some(memory) => {
                    format!("narrating {input} with {engine} {place}; memory before: {memory}")
                }
                None => format!("narrating {input} with {engine} {place}"),
            }),
            VoiceEvent::Loaded { report, memory } => {
                say(format!("{report}; memory after loading: {memory}"));
                if stage {
                    say(report.stage_line().to_string());
                }
            }
            // As a stage, the runner turns these lines into its progress bar.
            VoiceEvent::Clip { done, total } if stage => say(StageLine::progress(
                done as u64,
                total as u64,
                format!("narrated scene {done}"),
            )
            .to_string()),
            VoiceEvent::Clip { .. } => {}
            VoiceEvent::Fallback { wanted, why } => {
                let banner = format!(
                    "!!! NO NEURAL VOICE: {wanted} cannot be had: {why}\n!!! Narrating with eSpeak NG (embedded, ROBOTIC). For a natural voice: `baton models fetch piper-joe`."
                );
                eprintln!("{banner}");
                say(banner);
                if stage {
                    // The runner repeats this in its output, its table's NOTE and run.json.
                    say(StageLine::warn(format!(
                        "NO NEURAL VOICE ({why}): 2_audio/ is narrated by eSpeak NG"
                    ))
                    .to_string());
                }
            }
            VoiceEvent::Generated { memory } => say(format!("memory after generation: {memory}")),
            VoiceEvent::Released { peak, reclaim } => {
                say(format!("peak: {}; {reclaim}", format_bytes(peak)))
            }
        },
    );
    if let Some(e) = failed_write {
        return Err(e.into());
    }
    let out = out.into_inner();
    let manifest = manifest?;
    for clip in &manifest.clips {
        writeln!(
            out,
            "  scene {:>2}: {:>5.1}s  speech {:.1} dBFS, peak {:.1} dBFS  {}",
            clip.scene,
            clip.seconds,
            clip.speech_rms_dbfs,
            clip.peak_dbfs,
            run_dir.join(&clip.file).display()
        )?;
    }
    writeln!(
        out,
        "narration: {:.1}s in {} ({} clips synthesised in {:.2}s); clip durations in {}",
        manifest.narration_seconds,
        run_dir.join(&manifest.narration).display(),
        manifest.clips.len(),
        manifest.synthesis_seconds,
        run_dir.join("2_audio/voice.json").display()
    )?;
    Ok(())
}
