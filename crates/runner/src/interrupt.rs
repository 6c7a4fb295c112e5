//! Ctrl-C and SIGTERM: the first one asks the engine to stop every running stage (its whole
//! process group: TERM, then KILL after a grace), prove their memory back, write the runs as
//! `interrupted` and return, so the command can say how to resume; a second one ends baton at
//! once (its stages die with it: their parent-death signal).
//!
//! The handler only stores the signal's number; everything else happens on the engine's
//! thread, which looks at [`requested`] every time it wakes.

use std::sync::atomic::{AtomicI32, Ordering};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    if SIGNAL.swap(signal, Ordering::SeqCst) != 0 {
        // The second one: the default action, now. Both calls are async-signal-safe.
        // SAFETY: restoring a signal's default disposition and raising it have no memory
        // preconditions.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
}

/// Routes SIGINT and SIGTERM to the engine for the rest of the process's life.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls async-signal-safe functions.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The signal that asked baton to stop, if one did.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// The signal's name, for messages: `SIGINT`, `SIGTERM`.
pub fn name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}
