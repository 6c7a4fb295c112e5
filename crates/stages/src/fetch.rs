//! Downloads from the Hugging Face hub as the commands show them: what is fetched where, a
//! progress bar per file on a terminal, a log line every few seconds otherwise.

use std::io::{IsTerminal, Write};

/// The error of a fetch whose first line could not be written (a closed pipe, mostly), as the
/// stages' error types carry it.
pub(crate) fn unwritable(e: std::io::Error) -> baton_base::FileError {
    baton_base::FileError::new("cannot write", "standard output", e)
}

/// Runs `fetch` against the hub from the environment, saying what is fetched where, with a
/// progress bar per file on a terminal (a log line every few seconds otherwise).
pub(crate) fn from_hub<T>(
    what: &str,
    out: &mut dyn Write,
    fetch: impl FnOnce(&baton_studio::hub::Hub, &mut dyn FnMut(&str, u64, Option<u64>)) -> T,
) -> std::io::Result<T> {
    let hub = baton_studio::hub::Hub::from_env();
    writeln!(
        out,
        "fetching {what} from the Hugging Face hub into {}",
        hub.cache().display()
    )?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("valid template"),
        );
        bar
    });
    let mut lines: Option<(String, baton_studio::hub::ProgressLine)> = None;
    let fetched = fetch(&hub, &mut |file, done, total| {
        if let Some(bar) = &bar {
            bar.set_message(file.to_string());
            bar.set_length(total.unwrap_or(done));
            bar.set_position(done);
        } else {
            if lines.as_ref().is_none_or(|(f, _)| f != file) {
                lines = Some((file.to_string(), baton_studio::hub::ProgressLine::new(file)));
            }
            if let Some((_, line)) = &mut lines {
                line.show(done, total);
            }
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(fetched)
}
