//! The stage keeper: a tiny process between baton and a stage, so that nothing of the stage
//! outlives baton, however baton ends (SIGKILL included).
//!
//! A parent-death signal only reaches the process that asked for it: a stage's shell would die
//! with baton, and the `python3` it started would not. So baton starts each stage as
//! `baton __keep PARENT -- PROGRAM ARGS…`. The keeper:
//! - leads the stage's process group (baton made it so) and is a child subreaper, so every
//!   descendant that loses its parent is re-parented to it, not to init;
//! - asks for SIGUSR2 when baton dies, and checks that baton is still there (it may have died
//!   before the request was made);
//! - starts the stage program in the same group, with a parent-death signal of its own;
//! - when the stage program exits, exits the same way (its code, or its signal), leaving what
//!   the program left to baton's reclaim, which names and stops it;
//! - when baton dies, SIGKILLs its group and every descendant, escaped or not, until none is
//!   left, and exits.
//!
//! A key design decision: the keeper is baton's own executable, started again, not a fork of
//! the supervisor running Rust code (which, in a process with threads, may only call
//! async-signal-safe functions between fork and exec). It costs one exec per stage: baton
//! starts in about 1.5 ms. A cgroup per stage (`cgroup.kill`) would do the same where the
//! machine gives baton a writable cgroup; containers and CI machines often do not.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_base::procfs;

/// The argument that makes baton's executable a keeper: `baton __keep PARENT -- ARGV…`.
pub const KEEP_ARG: &str = "__keep";

static PARENT_DIED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_parent_death(_: libc::c_int) {
    PARENT_DIED.store(true, Ordering::SeqCst);
}

/// The argv that runs `argv` under the keeper `keeper` (baton's executable), for the process
/// `parent` (baton's PID).
pub fn wrap(keeper: &std::path::Path, parent: u32, argv: &[String]) -> Vec<String> {
    [
        keeper.display().to_string(),
        KEEP_ARG.to_string(),
        parent.to_string(),
        "--".to_string(),
    ]
    .into_iter()
    .chain(argv.iter().cloned())
    .collect()
}

/// Runs the keeper with the arguments after `__keep`; returns only when it cannot start the
/// stage (the exit code), else exits the way the stage did.
pub fn run(args: &[String]) -> i32 {
    let (parent, argv) = match args {
        [parent, dash, argv @ ..] if dash == "--" && !argv.is_empty() => {
            match parent.parse::<i32>() {
                Ok(parent) => (parent, argv),
                Err(_) => return usage(),
            }
        }
        _ => return usage(),
    };
    // SAFETY: plain prctl/sigaction calls on this process; the handler only stores a flag.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_parent_death as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut());
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGUSR2 as libc::c_ulong,
            0,
            0,
            0,
        );
        // SIGINT and SIGTERM reach the whole group, the stage included: the keeper lets the
        // stage decide and goes when it goes.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    if parent_gone(parent) {
        return 1;
    }
    let me = std::process::id();
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]);
    // SAFETY: only async-signal-safe calls (prctl, signal, getppid, _exit) between fork and
    // exec: the stage dies if its keeper does, and gets the default signal dispositions.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(signal, libc::SIG_DFL);
            }
            if libc::getppid() as u32 != me {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("baton: cannot start '{}': {e}", argv[0]);
            return 127;
        }
    };
    let main = child.id() as i32;
    loop {
        if PARENT_DIED.load(Ordering::SeqCst) || parent_gone(parent) {
            kill_everything(me);
            return 137;
        }
        // Reap whatever ended: the stage program, or a descendant re-parented to us.
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == main {
            let status = std::process::ExitStatus::from_raw(status);
            if let Some(code) = status.code() {
                return code;
            }
            if let Some(signal) = status.signal() {
                // Die the way the stage did, so baton reads the same signal.
                // SAFETY: restoring the default action and raising a signal at ourselves.
                unsafe {
                    libc::signal(signal, libc::SIG_DFL);
                    libc::raise(signal);
                }
                return 128 + signal;
            }
            return 1;
        }
        if pid <= 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn usage() -> i32 {
    eprintln!("baton: `{KEEP_ARG}` is baton's own: PARENT -- PROGRAM [ARGS…]");
    2
}

/// True when baton is no longer our parent: it died and we were re-parented.
fn parent_gone(parent: i32) -> bool {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() != parent }
}

/// SIGKILLs the keeper's group and every descendant, re-parented or not, until none is left,
/// and reaps its children: a keeper that left zombies would hand them to an init that, in a
/// container, may never reap them.
fn kill_everything(me: u32) {
    for _ in 0..500 {
        // By PID, not by group: the keeper leads the group and must outlive the killing.
        let victims = descendants(me);
        if victims.is_empty() && no_children_left() {
            return;
        }
        for pid in victims {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reaps every child that has ended; true once the keeper has no child at all.
fn no_children_left() -> bool {
    let mut status = 0;
    loop {
        // SAFETY: waitpid with a valid status pointer; WNOHANG never blocks.
        match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
            pid if pid > 0 => continue,
            0 => return false,
            _ => return true,
        }
    }
}

/// Every live process below `root` in the process tree, and every other member of its group.
fn descendants(root: u32) -> Vec<u32> {
    let table: Vec<(u32, procfs::Stat)> = procfs::pids()
        .into_iter()
        .filter_map(|pid| procfs::stat(pid).map(|s| (pid, s)))
        .filter(|(_, s)| !s.is_gone())
        .collect();
    let mut found: Vec<u32> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, stat) in &table {
            if stat.ppid == parent && !found.contains(pid) {
                found.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    for (pid, stat) in &table {
        if stat.pgrp == root && *pid != root && !found.contains(pid) {
            found.push(*pid);
        }
    }
    found
}
