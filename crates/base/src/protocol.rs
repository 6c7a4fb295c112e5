//! The stage line protocol: what a stage prints on its output, one line each, for the runner to
//! read. A stage that prints none of these still runs; these only make the runner say more.
//!
//! - `baton:progress DONE/TOTAL [message]` drives the stage's progress bar;
//! - `baton:load BYTES SECONDS NAME` records a weights load in the attempt's `loads`;
//! - `baton:warn MESSAGE` is repeated in the runner's own output and kept in `run.json`.
//!
//! The writer ([`StageLine`]'s `Display`) and the parser ([`StageLine::parse`]) live side by
//! side and are tested against each other, so the two ends cannot drift apart. Any program can
//! speak it: `echo "baton:progress 3/6 drawing"` from a shell script is a stage line.

use std::fmt;

/// One line of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum StageLine {
    Progress {
        done: u64,
        total: u64,
        message: String,
    },
    Load {
        bytes: u64,
        seconds: f64,
        name: String,
    },
    Warn(String),
}

impl StageLine {
    /// `baton:progress DONE/TOTAL message`.
    pub fn progress(done: u64, total: u64, message: impl Into<String>) -> StageLine {
        StageLine::Progress {
            done,
            total,
            message: message.into(),
        }
    }

    /// `baton:load BYTES SECONDS NAME`.
    pub fn load(name: impl Into<String>, bytes: u64, seconds: f64) -> StageLine {
        StageLine::Load {
            bytes,
            seconds,
            name: name.into(),
        }
    }

    /// `baton:warn MESSAGE`.
    pub fn warn(message: impl Into<String>) -> StageLine {
        StageLine::Warn(message.into())
    }

    /// Reads one output line; `None` for anything that is not a well-formed stage line (a
    /// load of zero seconds, a progress of `x/2`, an empty warning are not).
    pub fn parse(line: &str) -> Option<StageLine> {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("baton:progress ") {
            let (fraction, message) = rest.split_once(' ').unwrap_or((rest, ""));
            let (done, total) = fraction.split_once('/')?;
            return Some(StageLine::Progress {
                done: done.parse().ok()?,
                total: total.parse().ok()?,
                message: message.trim().to_string(),
            });
        }
        if let Some(rest) = line.strip_prefix("baton:load ") {
            let mut parts = rest.splitn(3, ' ');
            let bytes: u64 = parts.next()?.parse().ok()?;
            let seconds: f64 = parts.next()?.parse().ok()?;
            let name = parts.next()?.trim();
            return (seconds.is_finite() && seconds > 0.0 && !name.is_empty()).then(|| {
                StageLine::Load {
                    bytes,
                    seconds,
                    name: name.to_string(),
                }
            });
        }
        let message = line.strip_prefix("baton:warn ")?.trim();
        (!message.is_empty()).then(|| StageLine::Warn(message.to_string()))
    }
}

impl fmt::Display for StageLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageLine::Progress {
                done,
                total,
                message,
            } if message.is_empty() => write!(f, "baton:progress {done}/{total}"),
            StageLine::Progress {
                done,
                total,
                message,
            } => write!(f, "baton:progress {done}/{total} {message}"),
            StageLine::Load {
                bytes,
                seconds,
                name,
            } => write!(f, "baton:load {bytes} {seconds:.6} {name}"),
            StageLine::Warn(message) => write!(f, "baton:warn {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_the_writer_writes_parses_back() {
        for line in [
            StageLine::progress(3, 6, "drawing scene 3"),
            StageLine::progress(1, 2, ""),
            StageLine::load("/models/flux dev.safetensors", 4_000_000_000, 0.5),
            StageLine::warn("NO IMAGE MODEL: cards"),
        ] {
            assert_eq!(
                StageLine::parse(&line.to_string()),
                Some(line.clone()),
                "{line}"
            );
        }
    }

    #[test]
    fn lines_as_scripts_print_them() {
        assert_eq!(
            StageLine::parse("  baton:progress 3/6 drawing scene 3  "),
            Some(StageLine::progress(3, 6, "drawing scene 3"))
        );
        assert_eq!(
            StageLine::parse("baton:warn  no model here "),
            Some(StageLine::warn("no model here"))
        );
        assert_eq!(
            StageLine::parse("baton:load 4000000000 0.5 /models/flux dev.safetensors"),
            Some(StageLine::load(
                "/models/flux dev.safetensors",
                4_000_000_000,
                0.5
            ))
        );
    }

    #[test]
    fn malformed_lines_are_not_stage_lines() {
        for bad in [
            "baton:progress x/2",
            "baton:progress 3",
            "baton:load 12 0 x",
            "baton:load 12 fast x",
            "baton:load 12 1.0",
            "baton:warn   ",
            "progress 1/2",
            "some output mentioning baton:warn later",
        ] {
            assert_eq!(StageLine::parse(bad), None, "{bad}");
        }
    }
}
