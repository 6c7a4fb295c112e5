//! Owned to the last process: whatever ends baton (SIGKILL, SIGTERM, SIGINT, a fatal error),
//! nothing its stages started is alive a second later, and their simulated memory is free.
//! Each stage here is a shell with a child and a grandchild that hold memory, the way a script,
//! `accelerate launch` or a dataloader's workers sit under a stage.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::baton;

/// The stage's shell starts a child holding 1 GiB and a shell whose own child holds 2 GiB.
const FAMILY: &str = r#"[[stage]]
name = "family"
command = ["sh", "-c", "{baton} sim hold 1GiB & sh -c '{baton} sim hold 2GiB & wait' & wait"]
memory = "4GiB"
"#;

/// Starts `baton run` of `pipeline` and waits until the family holds its 3 GiB; returns the
/// child and the run folder.
fn start(d: &Path, pipeline: &str) -> (std::process::Child, PathBuf) {
    std::fs::write(d.join("p.toml"), pipeline).unwrap();
    let child = baton(d, "1x24GiB")
        .current_dir(d)
        .args([
            "run",
            "--device",
            "sim",
            "--topic",
            "family",
            "--pipeline",
            "p.toml",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::eventually("the family to hold 3 GiB", || {
        common::sim_used(d) >= 3 << 30
    });
    let run = std::fs::read_dir(d.join("output"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    assert!(
        common::processes_of(&run).len() >= 5,
        "keeper, shell, child, shell, grandchild"
    );
    (child, run)
}

/// Nothing of the run is alive, and nothing is held, one second after baton ended.
#[track_caller]
fn nothing_left_a_second_later(d: &Path, run: &Path, ended: Instant) {
    while ended.elapsed() < Duration::from_secs(1) && !common::processes_of(run).is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = common::processes_of(run);
    assert!(
        left.is_empty(),
        "alive {:?} after baton ended: {left:?}",
        ended.elapsed()
    );
    assert_eq!(common::sim_used(d), 0);
}

fn signal_and_wait(child: &mut std::process::Child, signal: i32) -> Instant {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    child.wait().unwrap();
    Instant::now()
}

#[test]
fn sigkill_of_baton_takes_the_whole_family_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, run) = start(dir.path(), FAMILY);
    let ended = signal_and_wait(&mut child, libc::SIGKILL);
    nothing_left_a_second_later(dir.path(), &run, ended);
}

#[test]
fn sigterm_and_sigint_of_baton_take_the_whole_family_with_it() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, run) = start(dir.path(), FAMILY);
        let ended = signal_and_wait(&mut child, signal);
        nothing_left_a_second_later(dir.path(), &run, ended);
    }
}

#[test]
fn a_fatal_error_of_baton_takes_the_whole_family_with_it() {
    let dir = tempfile::tempdir().unwrap();
    // A second stage turns the logs folder into a file, so baton cannot start the third one's
    // log and stops on that error while the family still runs.
    let pipeline = format!(
        "{FAMILY}[[stage]]\nname = \"vandal\"\ncommand = [\"sh\", \"-c\", \"sleep 0.5; rm -rf logs; touch logs\"]\ndevice = \"cpu\"\n[[stage]]\nname = \"next\"\nafter = [\"vandal\"]\ncommand = [\"true\"]\ndevice = \"cpu\"\n"
    );
    let (mut child, run) = start(dir.path(), &pipeline);
    let status = child.wait().unwrap();
    let ended = Instant::now();
    assert_eq!(status.code(), Some(1));
    nothing_left_a_second_later(dir.path(), &run, ended);
}
