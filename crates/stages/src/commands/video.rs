//! `baton video`: the run's mp4 and subtitles, shown as the video stage says it: a progress
//! bar on a terminal, protocol lines as a stage of a run, a loud banner when ffmpeg is missing.

use std::io::{IsTerminal, Write};

use baton_base::protocol::StageLine;
use baton_studio::video::{Aspect, VideoEvent, VideoOptions, VideoRequest, run_video};

pub fn video(args: &baton::args::VideoArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let run_dir = baton_studio::storyboard::run_dir_of(&args.input, args.run_dir.as_deref());
    let stage = args.run_dir.is_some();
    let request = VideoRequest {
        input: &args.input,
        run_dir: &run_dir,
        options: VideoOptions {
            aspect: Aspect::parse(&args.aspect)?,
            resolution: args.resolution,
            fps: args.fps,
            crossfade: args.crossfade,
            burn_subtitles: args.burn_subtitles,
            crf: args.crf,
            preset: args.preset.clone(),
        },
    };
    let bar = (!stage && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "encoding [{bar:30}] {pos}/{len} frames {per_sec} {eta}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar
    });
    let mut failed_write: Option<std::io::Error> = None;
    let mut say = |out: &mut dyn Write, line: String| {
        if failed_write.is_none()
            && let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush())
        {
            failed_write = Some(e);
        }
    };
    // A protocol line every 5% is plenty for the runner's bar.
    let mut next_step = 0;
    let manifest = run_video(&request, &mut |event| match event {
        VideoEvent::Encoding { ffmpeg, frames } => {
            say(
                out,
                format!(
                    "encoding {frames} frames with {} into {}",
                    ffmpeg.display(),
                    run_dir.join(baton_studio::video::VIDEO_DIR).display()
                ),
            );
            if let Some(bar) = &bar {
                bar.set_length(frames);
            }
        }
        VideoEvent::Frames { done, total } => {
            if let Some(bar) = &bar {
                bar.set_position(done);
            }
            if stage && done >= next_step {
                next_step = done + total.div_ceil(20);
                say(
                    out,
                    StageLine::progress(done, total, "frames encoded").to_string(),
                );
            }
        }
        VideoEvent::Skipped { why } => {
            let banner = format!(
                "!!! NO VIDEO: {why}.\n!!! The pictures, the narration and the subtitles are in the run folder; after installing ffmpeg, run `baton video --input {}`.",
                args.input.display()
            );
            eprintln!("{banner}");
            say(out, banner);
            if stage {
                say(
                    out,
                    StageLine::warn(
                        "NO VIDEO: ffmpeg is not installed; 4_video/ holds the subtitles only",
                    )
                    .to_string(),
                );
            }
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(e) = failed_write {
        return Err(e.into());
    }
    let manifest = manifest?;
    if let Some(video) = &manifest.video {
        writeln!(
            out,
            "video: {} ({}x{}, {} fps, {:.2}s; narration {:.2}s), encoded in {:.1}s; subtitles {}",
            run_dir.join(video).display(),
            manifest.width,
            manifest.height,
            manifest.fps,
            manifest.seconds,
            manifest.narration_seconds,
            manifest.encode_seconds,
            run_dir
                .join(manifest.subtitles.as_deref().unwrap_or_default())
                .display()
        )?;
    }
    Ok(())
}
