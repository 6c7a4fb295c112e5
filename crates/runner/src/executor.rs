//! How a stage's process is started: behind [`Executor`], so a cluster executor can come later;
//! [`LocalExecutor`] runs it on this machine.
//!
//! A local stage is owned: its own process group (so stopping it stops everything it started),
//! a parent-death signal (so killing baton, even with SIGKILL, never leaves the stage holding a
//! GPU), an explicit environment (nothing leaks in from baton's own), and its output in its own
//! log file. Output passes through baton on its way to the log, so progress lines and
//! out-of-memory messages are seen as they are printed.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
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
    /// The exit, once the stage's main process has ended.
    fn try_wait(&mut self) -> Result<Option<Exit>, RunnerError>;
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
#[derive(Debug, Default)]
pub struct LocalExecutor;

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
        let mut command = Command::new(&launch.argv[0]);
        command
            .args(&launch.argv[1..])
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
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
        Ok(Box::new(LocalProcess { child, readers }))
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
}

impl StageProcess for LocalProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn group(&self) -> u32 {
        // process_group(0) makes the child the leader of a group named by its own PID.
        self.child.id()
    }

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
