//! What the runner tells whoever watches it (the CLI's progress bars, a test's recorder), as
//! it happens. The runner never draws anything itself.

use crate::manifest::{Attempt, StageState};

#[derive(Debug)]
pub enum Event<'a> {
    /// A ready stage found no device with room; `reason` has the numbers.
    Waiting {
        run: &'a str,
        stage: &'a str,
        reason: &'a str,
        /// What it waits for: "memory" or "cores".
        what: &'static str,
    },
    Started {
        run: &'a str,
        stage: &'a str,
        device: &'a str,
        attempt: u32,
    },
    /// The stage printed `baton:progress DONE/TOTAL message`.
    Progress {
        run: &'a str,
        stage: &'a str,
        done: u64,
        total: u64,
        message: &'a str,
    },
    /// A memory sample of a running stage.
    Memory {
        run: &'a str,
        stage: &'a str,
        bytes: u64,
        peak: u64,
    },
    /// An attempt ended; `state` is the stage's state after it (pending means a retry).
    Finished {
        run: &'a str,
        stage: &'a str,
        attempt: &'a Attempt,
        state: StageState,
    },
    /// Something the user should read: an orphan killed, a leak, a retry.
    Notice { run: &'a str, message: &'a str },
    /// A run reached its end.
    RunFinished { run: &'a str, succeeded: bool },
}

pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

/// Ignores everything.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event) {}
}
