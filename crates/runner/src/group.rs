//! Which processes belong to a stage: its process group, and every descendant that carries the
//! stage's token in its environment.
//!
//! The process group alone is not enough: a child that calls `setsid` (a daemon, a detached
//! worker, `baton sim hold --orphan`) leaves the group but keeps the environment it inherited.
//! So every stage process gets `BATON_STAGE_TOKEN`, and a process holding memory counts as the
//! stage's if it is in the group or carries the token. That is how orphans are found and named.

use std::collections::HashMap;

use baton_base::procfs;

/// The environment variable that marks a stage's processes.
pub const TOKEN_VAR: &str = "BATON_STAGE_TOKEN";

/// Decides, with a cache, whether a PID belongs to one stage attempt.
#[derive(Debug)]
pub struct Membership {
    pgid: u32,
    needle: Vec<u8>,
    cache: HashMap<u32, bool>,
    /// Start time (clock ticks since boot) of the group's leader: no process that started
    /// before it can be the stage's, which spares reading most processes' environments.
    since: u64,
}

impl Membership {
    pub fn new(pgid: u32, token: &str) -> Membership {
        Membership {
            pgid,
            needle: format!("{TOKEN_VAR}={token}").into_bytes(),
            cache: HashMap::new(),
            since: procfs::stat(pgid).map_or(0, |s| s.start_ticks),
        }
    }

    /// Whether `pid` is the stage's, or `None` when it has exited (so nothing can be said).
    fn matches(&self, pid: u32) -> Option<bool> {
        let stat = procfs::stat(pid)?;
        if stat.pgrp == self.pgid {
            return Some(true);
        }
        Some(stat.start_ticks >= self.since && procfs::environ_contains(pid, &self.needle))
    }

    /// True when `pid` is in the stage's process group or carries its token.
    pub fn is_ours(&mut self, pid: u32) -> bool {
        if let Some(&known) = self.cache.get(&pid) {
            return known;
        }
        // A process that has exited reads as not ours; don't remember that, its PID may
        // not have been read in full.
        match self.matches(pid) {
            Some(ours) => {
                self.cache.insert(pid, ours);
                ours
            }
            None => false,
        }
    }

    /// Every live process of the stage: the group and the token carriers.
    pub fn live_members(&self) -> Vec<u32> {
        procfs::pids()
            .into_iter()
            .filter(|&pid| pid != std::process::id())
            .filter(|&pid| self.matches(pid) == Some(true))
            .filter(|&pid| !is_zombie(pid))
            .collect()
    }
}

/// Every live process that carries `token` (used by resume to clear what a killed baton left).
pub fn processes_with_token(token: &str) -> Vec<u32> {
    let needle = format!("{TOKEN_VAR}={token}").into_bytes();
    procfs::pids()
        .into_iter()
        .filter(|&pid| {
            pid != std::process::id() && procfs::environ_contains(pid, &needle) && !is_zombie(pid)
        })
        .collect()
}

/// True when `pid` no longer runs (exited, a zombie, or dead).
pub use procfs::is_gone as is_zombie;

impl Membership {
    /// True while a live process (not a zombie waiting to be reaped) is left in the stage's
    /// process group.
    fn group_alive(&self) -> bool {
        // SAFETY: signal 0 only asks whether the group exists; a negative PID names a group.
        let exists = unsafe { libc::kill(-(self.pgid as i32), 0) == 0 };
        // A group of zombies still exists for the kernel until they are reaped.
        exists
            && procfs::pids()
                .into_iter()
                .any(|pid| procfs::stat(pid).is_some_and(|s| s.pgrp == self.pgid && !s.is_gone()))
    }

    /// The stage's processes that left its group (`setsid`) but carry its token.
    fn escapees(&self) -> Vec<u32> {
        self.live_members()
            .into_iter()
            .filter(|&pid| procfs::stat(pid).is_some_and(|s| s.pgrp != self.pgid))
            .collect()
    }

    /// Stops the whole stage: SIGTERM to its process group at once (the kernel delivers it to
    /// every member, however many it forked since), and to each escapee carrying its token;
    /// SIGKILL, after `grace`, to whatever of either is left. Returns how many processes still
    /// needed SIGKILL (a group counts as one).
    pub fn stop(&self, grace: std::time::Duration) -> usize {
        let signal_group = |signal| {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(-(self.pgid as i32), signal);
            }
        };
        signal_group(libc::SIGTERM);
        let escapees = self.escapees();
        for &pid in &escapees {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        let start = std::time::Instant::now();
        let alive = || self.group_alive() || escapees.iter().any(|&p| !is_zombie(p));
        while start.elapsed() < grace && alive() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut stubborn = 0;
        if self.group_alive() {
            signal_group(libc::SIGKILL);
            stubborn += 1;
        }
        stubborn + terminate(&escapees, std::time::Duration::ZERO).len()
    }
}

/// Sends `signal` to each PID, then waits up to `grace` for them to go; returns those that
/// were still alive after SIGKILL was needed.
pub fn terminate(pids: &[u32], grace: std::time::Duration) -> Vec<u32> {
    for &pid in pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    let start = std::time::Instant::now();
    while start.elapsed() < grace && pids.iter().any(|&p| !is_zombie(p)) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let stubborn: Vec<u32> = pids.iter().copied().filter(|&p| !is_zombie(p)).collect();
    for &pid in &stubborn {
        // SAFETY: as above.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    stubborn
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn group_and_token_members_are_found_and_strangers_are_not() {
        let token = format!("test-{}", std::process::id());
        let mut leader = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = leader.id();
        let mut carrier = Command::new("sleep")
            .arg("30")
            .env(TOKEN_VAR, &token)
            .spawn()
            .unwrap();
        let mut stranger = Command::new("sleep").arg("30").spawn().unwrap();
        // Until a child has exec'd, /proc shows the environment it was forked with (this
        // test's, without the token): wait for all three to be `sleep`.
        let started = std::time::Instant::now();
        while [&leader, &carrier, &stranger]
            .iter()
            .any(|c| procfs::comm(c.id()).as_deref() != Some("sleep"))
        {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut m = Membership::new(pgid, &token);
        assert!(m.is_ours(leader.id()));
        assert!(m.is_ours(carrier.id()));
        assert!(!m.is_ours(stranger.id()));
        assert!(!m.is_ours(std::process::id()));
        let mut members = m.live_members();
        members.sort();
        let mut expected = vec![leader.id(), carrier.id()];
        expected.sort();
        assert_eq!(members, expected);
        assert_eq!(processes_with_token(&token), vec![carrier.id()]);
        let stubborn = terminate(&members, std::time::Duration::from_secs(2));
        assert!(stubborn.is_empty(), "sleep dies on SIGTERM");
        for child in [&mut leader, &mut carrier, &mut stranger] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
