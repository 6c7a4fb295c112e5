//! The stage line protocol: what a stage prints on its output, one line each, for the runner to
//! read. A stage that prints none of these still runs; these only make the runner say more.
//!
//! - `baton:progress DONE/TOTAL [message]` drives the stage's progress bar;
//! - `baton:load BYTES SECONDS NAME` records a weights load in the attempt's `loads`;
//! - `baton:warn MESSAGE` is repeated in the runner's own output and kept in `run.json`;
//! - `baton:ready` and `baton:running` frame a prestarted stage's wait for its go ([`await_go`]).
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
    /// A prestarted stage has prepared (context, kernels, host-side weights) and waits for go.
    Ready,
    /// A prestarted stage got its go and runs.
    Running,
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
        match line {
            "baton:ready" => return Some(StageLine::Ready),
            "baton:running" => return Some(StageLine::Running),
            _ => {}
        }
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
            StageLine::Ready => write!(f, "baton:ready"),
            StageLine::Running => write!(f, "baton:running"),
        }
    }
}

/// A pipe for a go: the read end for the stage, the write end for the one that gives the go;
/// both close on exec ([`pass_go_fd`] opens the read end in one child alone).
pub fn go_pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given, which this code then
    // owns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened by pipe2 and belong to nobody else.
    unsafe {
        Ok((
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        ))
    }
}

/// Keeps the go pipe's read end `fd` open across `command`'s exec (in that child only) and
/// names it in its environment as [`GO_FD_VAR`].
pub fn pass_go_fd(command: &mut std::process::Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    command.env(GO_FD_VAR, fd.to_string());
    // SAFETY: fcntl is async-signal-safe; it changes a flag of the child's own descriptor.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The variable that gives a prestarted stage the file descriptor its go arrives on.
pub const GO_FD_VAR: &str = "BATON_GO_FD";

/// The budget the go granted, once [`await_go`] has it.
static GRANTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// The device memory the runner granted a prestarted stage with its go (`None` before the go,
/// or when the stage was not prestarted: then `BATON_MEMORY_BUDGET` holds it).
pub fn granted_budget() -> Option<u64> {
    GRANTED.get().copied()
}

/// For a stage the runner started ahead of its turn (`BATON_GO_FD` set): says `baton:ready` on
/// stdout, then blocks until the runner's go, a line `go BYTES` on that descriptor, and says
/// `baton:running`. The budget it grants is returned, and kept for [`granted_budget`]. Without
/// the variable it returns `Ok(None)` at once: the stage was started in its turn.
///
/// Call it once preparing is done (CUDA context made, kernels loaded, weights read into host
/// memory) and before the device memory is taken. An error means the runner will not send go
/// (it closed the pipe: its upstream failed, or it stopped waiting): the stage should exit.
pub fn await_go() -> std::io::Result<Option<u64>> {
    use std::io::{BufRead, Write};
    use std::os::fd::FromRawFd;
    let Some(fd) = std::env::var_os(GO_FD_VAR) else {
        return Ok(None);
    };
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let fd: i32 = fd
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| {
            bad(format!(
                "{GO_FD_VAR} '{}' is not a descriptor above 2",
                fd.to_string_lossy()
            ))
        })?;
    // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags; it fails on a closed one.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(bad(format!("{GO_FD_VAR} {fd} is not an open descriptor")));
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", StageLine::Ready)?;
    stdout.flush()?;
    drop(stdout);
    // SAFETY: the descriptor is open (checked above) and the runner gave it to this process
    // alone, for this one read; it is closed when the reader drops.
    let pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut line = String::new();
    std::io::BufReader::new(pipe).read_line(&mut line)?;
    let granted = line
        .trim()
        .strip_prefix("go ")
        .and_then(|b| b.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                if line.is_empty() {
                    "the runner closed the go pipe: it will not run this stage now".to_string()
                } else {
                    format!("the runner sent '{}', not 'go BYTES'", line.trim())
                },
            )
        })?;
    let _ = GRANTED.set(granted);
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", StageLine::Running)?;
    stdout.flush()?;
    Ok(Some(granted))
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
            StageLine::Ready,
            StageLine::Running,
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
