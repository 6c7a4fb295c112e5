//! What `baton run`, `resume` and `batch` show while stages run: a progress bar per running
//! stage in a terminal (indicatif), plain lines on stderr otherwise.
//!
//! A stage drives its bar by printing `baton:progress DONE/TOTAL message`; without such lines
//! its bar is a spinner with the device and the memory it holds.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use baton_base::format_bytes;
use baton_runner::{Event, Observer, StageState};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct ProgressView {
    bars: Option<MultiProgress>,
    active: Mutex<HashMap<String, (ProgressBar, String)>>,
    /// Prefix stages with their run (batch mode).
    show_run: bool,
    /// `-q`: only what went wrong (failed stages, notices), no bars.
    quiet: bool,
}

impl ProgressView {
    pub fn new(show_run: bool) -> Self {
        let quiet = crate::quiet();
        ProgressView {
            bars: (!quiet && std::io::stderr().is_terminal()).then(MultiProgress::new),
            active: Mutex::new(HashMap::new()),
            show_run,
            quiet,
        }
    }

    fn name(&self, run: &str, stage: &str) -> String {
        if self.show_run {
            format!("{run}/{stage}")
        } else {
            stage.to_string()
        }
    }

    fn say(&self, line: String) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(line);
            }
            None => eprintln!("{line}"),
        }
    }
}

impl Observer for ProgressView {
    fn event(&self, event: &Event) {
        let trouble = matches!(
            *event,
            Event::Notice { .. }
                | Event::Finished {
                    state: StageState::Failed,
                    ..
                }
        );
        if self.quiet && !trouble {
            return;
        }
        match *event {
            Event::Started {
                run,
                stage,
                device,
                attempt,
            } => {
                let name = self.name(run, stage);
                let again = if attempt > 1 {
                    format!(" (attempt {attempt})")
                } else {
                    String::new()
                };
                self.say(format!("▶ {name} started on {device}{again}"));
                if let Some(bars) = &self.bars {
                    let bar = bars.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>4} {msg}")
                            .expect("valid template"),
                    );
                    bar.set_prefix(name.clone());
                    bar.set_message(format!("on {device}"));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    if let Ok(mut active) = self.active.lock() {
                        active.insert(name, (bar, device.to_string()));
                    }
                }
            }
            Event::Progress {
                run,
                stage,
                done,
                total,
                message,
            } => {
                if let Ok(active) = self.active.lock()
                    && let Some((bar, device)) = active.get(&self.name(run, stage))
                {
                    if bar.length() != Some(total) {
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{prefix:.bold} [{bar:30}] {pos}/{len} {elapsed:>4} {msg}",
                            )
                            .expect("valid template")
                            .progress_chars("=> "),
                        );
                        bar.set_length(total);
                    }
                    bar.set_position(done);
                    bar.set_message(format!("on {device} · {message}"));
                } else if self.bars.is_none() {
                    eprintln!("  {} {done}/{total} {message}", self.name(run, stage));
                }
            }
            Event::Memory {
                run,
                stage,
                bytes,
                peak,
            } => {
                if let Ok(active) = self.active.lock()
                    && let Some((bar, device)) = active.get(&self.name(run, stage))
                    && bar.length().is_none()
                {
                    bar.set_message(format!(
                        "on {device} · holds {} (peak {})",
                        format_bytes(bytes),
                        format_bytes(peak)
                    ));
                }
            }
            Event::Waiting {
                run,
                stage,
                reason,
                what,
            } => self.say(format!(
                "… {} waits for {what}: {reason}",
                self.name(run, stage)
            )),
            Event::Finished {
                run,
                stage,
                attempt,
                state,
            } => {
                let name = self.name(run, stage);
                if let Ok(mut active) = self.active.lock()
                    && let Some((bar, _)) = active.remove(&name)
                {
                    bar.finish_and_clear();
                }
                let reclaim = attempt.reclaim.as_ref().map_or(String::new(), |r| {
                    if r.verified {
                        format!(", memory back in {:.0} ms", r.ms)
                    } else {
                        format!(", memory NOT back after {:.0} ms", r.ms)
                    }
                });
                let mark = match state {
                    StageState::Succeeded => "✔",
                    StageState::Pending => "↻",
                    _ => "✘",
                };
                let wall = attempt.wall_ms().map_or(0.0, |ms| ms as f64 / 1000.0);
                self.say(format!(
                    "{mark} {name} {} on {} in {wall:.2}s, peak {}{reclaim}",
                    format!("{state:?}").to_lowercase(),
                    attempt.device,
                    format_bytes(attempt.peak_bytes)
                ));
            }
            Event::Notice { run, message } => self.say(format!(
                "! {}{message}",
                if self.show_run {
                    format!("{run}: ")
                } else {
                    String::new()
                }
            )),
            Event::RunFinished { .. } => {}
        }
    }
}
