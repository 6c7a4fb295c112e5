//! What a run (or a batch) leaves for people: a terminal table, and `report/vram.svg` and
//! `report/index.html` with each device's memory over time and the stages' spans on it.
//!
//! Reports are drawn from manifests alone, so a resumed run's report includes the attempts of
//! every baton process that worked on it, and a batch's report is the same drawing over many
//! manifests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use baton_base::atomic_file::write_atomic;
use baton_base::format_bytes;

use crate::RunnerError;
use crate::manifest::{Manifest, StageState};

/// The terminal table of one run: per stage, its device, time, peak and reclaim.
pub fn stage_table(manifest: &Manifest) -> String {
    let mut out = format!(
        "{:<14} {:<10} {:<7} {:>8} {:>9} {:>11} {:>11}  {}\n",
        "STAGE", "STATE", "DEVICE", "ATTEMPTS", "WALL", "PEAK", "RECLAIM", "NOTE"
    );
    for s in &manifest.stages {
        let last = s.attempts.last();
        let reclaim = last.and_then(|a| a.reclaim.as_ref());
        let note = match (reclaim, &s.note) {
            (_, Some(note)) => note.clone(),
            (Some(r), None) if !r.orphans.is_empty() => format!(
                "killed orphan(s): {}",
                r.orphans
                    .iter()
                    .map(|o| format!("pid {} ({})", o.pid, o.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (Some(r), None) if r.leaked_bytes > 0 => {
                format!("leak: {} held by no process", format_bytes(r.leaked_bytes))
            }
            _ => String::new(),
        };
        let note = match last.and_then(|a| a.prestart_ms()) {
            Some((ahead, to_running)) => {
                let said = format!(
                    "prepared {:.2}s ahead{}",
                    ahead as f64 / 1000.0,
                    to_running.map_or(String::new(), |ms| format!(", go to running {ms} ms"))
                );
                if note.is_empty() {
                    said
                } else {
                    format!("{said}; {note}")
                }
            }
            None => note,
        };
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:<7} {:>8} {:>9} {:>11} {:>11}  {}",
            s.name,
            format!("{:?}", s.state).to_lowercase(),
            last.map_or("-", |a| a.device.as_str()),
            s.attempts.len(),
            last.and_then(|a| a.wall_ms())
                .map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0)),
            last.map_or("-".into(), |a| format_bytes(a.peak_bytes)),
            reclaim.map_or("-".into(), |r| if r.verified {
                format!("{:.0} ms", r.ms)
            } else {
                format!("FAILED {:.0} ms", r.ms)
            }),
            note
        );
    }
    out
}

/// One attempt drawn on the chart.
struct Span<'a> {
    run: &'a str,
    slug: &'a str,
    stage: &'a str,
    device: &'a str,
    start: u64,
    end: u64,
    state: StageState,
    samples: &'a [(u64, u64, u64)],
}

fn spans<'a>(manifests: &[&'a Manifest]) -> Vec<Span<'a>> {
    let mut out = Vec::new();
    for m in manifests {
        for s in &m.stages {
            for (i, a) in s.attempts.iter().enumerate() {
                let last = i + 1 == s.attempts.len();
                out.push(Span {
                    run: &m.run_id,
                    slug: &m.slug,
                    stage: &s.name,
                    device: &a.device,
                    start: a.started_unix_ms,
                    end: a
                        .ended_unix_ms
                        .or(a.timeline.last().map(|t| t.0))
                        .unwrap_or(a.started_unix_ms),
                    state: if last { s.state } else { StageState::Failed },
                    samples: &a.timeline,
                });
            }
        }
    }
    out
}

/// Each device's used memory over time, with every attempt's span marked on its device.
pub fn vram_svg(manifests: &[&Manifest]) -> String {
    let spans = spans(manifests);
    let mut devices: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for s in &spans {
        devices.entry(s.device).or_default().push(s);
    }
    let t0 = spans.iter().map(|s| s.start).min().unwrap_or(0);
    let t1 = spans
        .iter()
        .map(|s| s.samples.last().map_or(s.end, |t| t.0.max(s.end)))
        .max()
        .unwrap_or(t0 + 1)
        .max(t0 + 1);
    let (width, left, panel, gap) = (960.0, 90.0, 130.0, 40.0);
    let plot = width - left - 20.0;
    let height = 30.0 + devices.len().max(1) as f64 * (panel + gap);
    let x = |t: u64| left + (t.saturating_sub(t0)) as f64 / (t1 - t0) as f64 * plot;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"13\">device memory over {:.1} s; shaded spans are stages, the line is memory used on the device</text>\n",
        (t1 - t0) as f64 / 1000.0
    );
    let palette = [
        "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f",
    ];
    let mut colors: BTreeMap<&str, &str> = BTreeMap::new();
    for (d, (device, spans)) in devices.iter().enumerate() {
        let top = 30.0 + d as f64 * (panel + gap);
        let bottom = top + panel;
        let max = spans
            .iter()
            .flat_map(|s| s.samples.iter().map(|t| t.1))
            .max()
            .unwrap_or(1)
            .max(1);
        let y = |bytes: u64| bottom - bytes as f64 / max as f64 * (panel - 20.0);
        let _ = writeln!(
            svg,
            "<text x=\"{left}\" y=\"{:.1}\" fill=\"#666\">0 s</text><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#666\" text-anchor=\"end\">{:.1} s</text>",
            bottom + 13.0,
            left + plot,
            bottom + 13.0,
            (t1 - t0) as f64 / 1000.0
        );
        let _ = writeln!(
            svg,
            "<text x=\"4\" y=\"{}\" font-weight=\"bold\">{device}</text>\n<text x=\"4\" y=\"{}\">{}</text>\n\
             <line x1=\"{left}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"#888\"/>",
            top + 14.0,
            top + 30.0,
            format_bytes(max),
            left + plot
        );
        for (i, s) in spans.iter().enumerate() {
            let n = colors.len();
            // One run: a color per stage. A batch: a color per run, labelled with its topic.
            let (key, label) = if manifests.len() > 1 {
                (s.run, format!("{}/{}", s.slug, s.stage))
            } else {
                (s.stage, s.stage.to_string())
            };
            let color = *colors.entry(key).or_insert(palette[n % palette.len()]);
            let (x0, x1) = (x(s.start), x(s.end).max(x(s.start) + 1.0));
            let row = (i % 3) as f64 * 12.0;
            let stroke = if s.state == StageState::Failed {
                "#d62728"
            } else {
                color
            };
            let _ = writeln!(
                svg,
                "<rect x=\"{x0:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{panel}\" fill=\"{color}\" fill-opacity=\"0.15\" stroke=\"{stroke}\"><title>{} / {} on {device}: {:.2} s</title></rect>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{}</text>",
                x1 - x0,
                escape(s.run),
                escape(s.stage),
                (s.end - s.start) as f64 / 1000.0,
                x0 + 2.0,
                top + 12.0 + row,
                escape(&label)
            );
            if !s.samples.is_empty() {
                let points: Vec<String> = s
                    .samples
                    .iter()
                    .map(|t| format!("{:.1},{:.1}", x(t.0), y(t.1)))
                    .collect();
                let _ = writeln!(
                    svg,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
                    points.join(" ")
                );
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The warnings every stage's last attempt gave (storyboard cards instead of pictures, a
/// robotic voice, no video), and the notes of stages that did not succeed: what a reader must
/// see before the figures.
fn warnings_html(m: &Manifest) -> String {
    let mut items = String::new();
    for s in &m.stages {
        for w in s.attempts.last().map_or(&[][..], |a| &a.warnings[..]) {
            let _ = write!(items, "<li><b>{}</b>: {}</li>", escape(&s.name), escape(w));
        }
        if s.state != StageState::Succeeded
            && let Some(note) = &s.note
        {
            let _ = write!(
                items,
                "<li><b>{}</b> ({}): {}</li>",
                escape(&s.name),
                format!("{:?}", s.state).to_lowercase(),
                escape(note)
            );
        }
    }
    if items.is_empty() {
        String::new()
    } else {
        format!("<div class=\"warnings\"><b>Warnings</b><ul>{items}</ul></div>\n")
    }
}

/// The stages' files by their kind, for a run whose catalog draws none itself: pictures as
/// thumbnails, sound and video with players, everything else as a link. Paths are relative to
/// `report/`.
fn files_html(m: &Manifest) -> String {
    let mut out = String::new();
    for s in &m.stages {
        let mut items = String::new();
        for a in &s.artifacts {
            let href = format!("../{}", escape(&a.path));
            let lower = a.path.to_ascii_lowercase();
            let ext = lower.rsplit('.').next().unwrap_or("");
            let _ = match ext {
                "png" | "jpg" | "jpeg" | "webp" | "gif" => write!(
                    items,
                    "<figure><a href=\"{href}\"><img class=\"thumb\" src=\"{href}\" alt=\"{p}\"></a><figcaption>{p}</figcaption></figure>",
                    p = escape(&a.path)
                ),
                "wav" | "mp3" | "ogg" | "flac" => write!(
                    items,
                    "<figure><audio controls preload=\"none\" src=\"{href}\"></audio><figcaption>{}</figcaption></figure>",
                    escape(&a.path)
                ),
                "mp4" | "webm" => write!(
                    items,
                    "<figure><video controls preload=\"metadata\" width=\"480\" src=\"{href}\"></video><figcaption>{}</figcaption></figure>",
                    escape(&a.path)
                ),
                _ => write!(
                    items,
                    "<figure><a href=\"{href}\">{}</a></figure>",
                    escape(&a.path)
                ),
            };
        }
        if !items.is_empty() {
            let _ = writeln!(
                out,
                "<h3>{}</h3><div class=\"files\">{items}</div>",
                escape(&s.name)
            );
        }
    }
    out
}

/// `report/index.html` of one or more runs; `made[i]`, when given, shows what run `i`'s
/// stages made (the catalog's drawing), else its files are shown by their kind.
pub fn html(title: &str, manifests: &[&Manifest], made: &[Option<String>]) -> String {
    let mut body = String::new();
    for (i, m) in manifests.iter().enumerate() {
        body.push_str(&warnings_html(m));
        let _ = write!(
            body,
            "<h2>{} <small>({})</small></h2>\n<p>topic: {} · pipeline: {} · backend: {}{}</p>\n<pre>{}</pre>\n",
            escape(&m.run_id),
            format!("{:?}", m.state).to_lowercase(),
            escape(&m.topic),
            escape(&m.pipeline),
            escape(&m.backend),
            m.error.as_ref().map_or(String::new(), |e| format!(
                "<br><b>error:</b> {}",
                escape(e)
            )),
            escape(&stage_table(m))
        );
        // A batch's report links each run's own instead of repeating its media.
        if manifests.len() == 1 {
            match made.get(i).and_then(Option::as_deref) {
                Some(section) => body.push_str(section),
                None => body.push_str(&files_html(m)),
            }
        }
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}\
         .warnings{{background:#fff3cd;border:2px solid #e0a800;padding:.5em 1em;margin:1em 0}}\
         .files,.scenes{{display:flex;flex-wrap:wrap;gap:1em}} figure{{margin:0}} .thumb{{width:256px;border:1px solid #ccc}}\
         .scene{{display:flex;gap:1em;border-top:1px solid #ddd;padding:1em 0}} .scene p{{margin:.3em 0}}</style></head>\n\
         <body><h1>{t}</h1>\n<img src=\"vram.svg\" alt=\"device memory over time\">\n{body}</body></html>\n",
        t = escape(title)
    )
}

/// Writes `report/vram.svg` and `report/index.html` into `dir`.
pub fn write_report(
    dir: &Path,
    title: &str,
    manifests: &[&Manifest],
    made: &[Option<String>],
) -> Result<(), RunnerError> {
    let report = dir.join("report");
    std::fs::create_dir_all(&report).map_err(|e| RunnerError::Io {
        action: "cannot create",
        path: report.clone(),
        source: e,
    })?;
    write_atomic(&report.join("vram.svg"), vram_svg(manifests).as_bytes())
        .map_err(RunnerError::File)?;
    write_atomic(
        &report.join("index.html"),
        html(title, manifests, made).as_bytes(),
    )
    .map_err(RunnerError::File)
}

/// The report of one run; `made` is what its catalog drew of the run's files, if anything.
pub fn write_run_report(
    dir: &Path,
    manifest: &Manifest,
    made: Option<String>,
) -> Result<(), RunnerError> {
    write_report(
        dir,
        &format!("baton run {}", manifest.run_id),
        &[manifest],
        &[made],
    )
}

/// Text made safe for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
