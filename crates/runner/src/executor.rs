//! How a stage's process is started: behind [`Executor`]; [`LocalExecutor`] runs it on this
//! machine. Under `--executor slurm` the same local executor runs on the node, inside `baton
//! stage-exec` ([`crate::slurm`]).
//!
//! A local stage is owned: its own process group (so stopping it stops everything it started),
//! a parent-death signal (so killing baton, even with SIGKILL, never leaves the stage holding a
//! GPU), an explicit environment (nothing leaks in from baton's own), and its output in its own
//! log file. Output passes through baton on its way to the log, so progress lines and
//! out-of-memory messages are seen as they are printed.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::RunnerError;

/// Everything needed to start one stage attempt.
#[derive(Debug, Clone)]
pub struct Launch {
    pub stage: String,
    pub argv: Vec<String>,
    /// The complete environment of the stage.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Appended to; stdout and stderr both go here.
    pub log: PathBuf,
    /// For a prestarted stage: the read end of its go pipe, left open in the stage (its number
    /// is in the environment as `BATON_GO_FD`).
    pub go: Option<Arc<OwnedFd>>,
}

/// How a stage process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit status {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => write!(f, "unknown exit"),
        }
    }
}

/// Called for every line a stage prints, from its output threads.
pub type LineSink = Arc<dyn Fn(&str) + Send + Sync>;

/// A started stage process.
pub trait StageProcess: Send {
    fn pid(&self) -> u32;
    /// The process group every process of the stage starts in.
    fn group(&self) -> u32;
    /// Waits up to `timeout` for the stage's main process to end; its exit, or `None` while
    /// it still runs.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Exit>, RunnerError>;
    /// Waits (up to `timeout`) until the stage's output has been written to its log. A
    /// process that kept the output open (an orphan) is not waited for beyond that.
    fn finish_output(&mut self, timeout: Duration);
}

/// Starts stage processes.
pub trait Executor: Send + Sync {
    fn launch(
        &self,
        launch: &Launch,
        on_line: LineSink,
    ) -> Result<Box<dyn StageProcess>, RunnerError>;
}

/// Runs stages as child processes of baton.
#[derive(Debug, Default, Clone)]
pub struct LocalExecutor {
    /// Baton's executable, to run each stage under a keeper ([`crate::keeper`]) so that none
    /// of its descendants outlives baton; `None` runs the stage program directly (its own
    /// children then survive a baton that is killed).
    pub keeper: Option<PathBuf>,
}

impl LocalExecutor {
    /// Stages under the keeper that `keeper` (baton's own executable) runs.
    pub fn kept(keeper: PathBuf) -> LocalExecutor {
        LocalExecutor {
            keeper: Some(keeper),
        }
    }
}

impl Executor for LocalExecutor {
    fn launch(
        &self,
        launch: &Launch,
        on_line: LineSink,
    ) -> Result<Box<dyn StageProcess>, RunnerError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(|e| RunnerError::Io {
                action: "cannot open log",
                path: launch.log.clone(),
                source: e,
            })?;
        let log = Arc::new(Mutex::new(log));
        let parent = std::process::id();
        let argv = match &self.keeper {
            Some(keeper) => crate::keeper::wrap(keeper, parent, &launch.argv),
            None => launch.argv.clone(),
        };
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(go) = &launch.go {
            baton_base::protocol::pass_go_fd(&mut command, go.as_raw_fd());
        }
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // PDEATHSIG fires when the thread that forked us ends; baton keeps that thread
                // alive for the whole attempt, so this means "when baton dies".
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| RunnerError::Spawn {
            stage: launch.stage.clone(),
            program: launch.argv[0].clone(),
            source: e,
        })?;
        let readers = vec![
            pump(
                child.stdout.take().expect("piped"),
                log.clone(),
                on_line.clone(),
            ),
            pump(child.stderr.take().expect("piped"), log, on_line),
        ];
        let pidfd = pidfd_open(child.id());
        Ok(Box::new(LocalProcess {
            child,
            readers,
            pidfd,
        }))
    }
}

/// Copies a stream into the log, line by line, showing each line to `on_line`.
fn pump(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<File>>,
    on_line: LineSink,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Ok(mut file) = log.lock() {
                        let _ = file.write_all(&line);
                    }
                    on_line(String::from_utf8_lossy(&line).trim_end());
                }
            }
        }
    })
}

struct LocalProcess {
    child: Child,
    readers: Vec<JoinHandle<()>>,
    /// A pidfd for the child, where the kernel has them (Linux 5.3+).
    pidfd: Option<OwnedFd>,
}

impl LocalProcess {
    fn try_wait(&mut self) -> Result<Option<Exit>, RunnerError> {
        let status = self.child.try_wait().map_err(|e| RunnerError::Io {
            action: "cannot wait for stage process",
            path: PathBuf::from(format!("/proc/{}", self.child.id())),
            source: e,
        })?;
        Ok(status.map(|s| Exit {
            code: s.code(),
            signal: s.signal(),
        }))
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a descriptor that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl StageProcess for LocalProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn group(&self) -> u32 {
        // process_group(0) makes the child the leader of a group named by its own PID.
        self.child.id()
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Exit>, RunnerError> {
        if let Some(exit) = self.try_wait()? {
            return Ok(Some(exit));
        }
        match &self.pidfd {
            // A pidfd turns readable the moment the process exits: no polling delay.
            Some(fd) => {
                let mut poll = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
                // SAFETY: one valid pollfd, whose descriptor self owns during the call.
                unsafe {
                    libc::poll(&mut poll, 1, ms);
                }
            }
            None => std::thread::sleep(timeout.min(Duration::from_millis(2))),
        }
        self.try_wait()
    }

    fn finish_output(&mut self, timeout: Duration) {
        let start = Instant::now();
        while self.readers.iter().any(|r| !r.is_finished()) && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(2));
        }
        for reader in std::mem::take(&mut self.readers) {
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        // Never leave a zombie: the main process has exited or been killed by now.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
