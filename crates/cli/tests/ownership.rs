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

#[test]
fn memory_held_by_an_escapee_without_baton_s_environment_is_named_by_the_stage_that_waits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The first stage leaves a process that dropped its environment (no token, no run
    // folder): invisible to reclaim. The second stage then waits for its memory.
    let pipeline = r#"wait_timeout = "1s"
[[stage]]
name = "leaver"
command = ["sh", "-c", "setsid env -i BATON_SIM_DIR=\"$BATON_SIM_DIR\" BATON_SIM_GPUS=\"$BATON_SIM_GPUS\" {baton} sim hold 21GiB --seconds 30 >/dev/null 2>&1 & sleep 0.5"]
[[stage]]
name = "needs"
after = ["leaver"]
command = ["true"]
memory = "8GiB"
"#;
    std::fs::write(d.join("p.toml"), pipeline).unwrap();
    let out = baton(d, "1x24GiB")
        .current_dir(d)
        .args([
            "run",
            "--device",
            "sim",
            "--topic",
            "t",
            "--pipeline",
            "p.toml",
        ])
        .output()
        .unwrap();
    // The escapee: it holds memory in this test's simulation, and has no run folder.
    let escapee = common::processes_with(&format!("BATON_SIM_DIR={}", d.display()), |env| {
        !env.windows(13).any(|w| w == b"BATON_RUN_DIR")
    });
    for &pid in &escapee {
        common::kill_pid(pid);
    }
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(escapee.len(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "held there by processes that are not baton's stages: pid {} (baton) 21.0 GiB",
            escapee[0]
        )),
        "{err}"
    );
    // Its context said once.
    assert!(!err.contains("stage 'needs': stage 'needs'"), "{err}");
    assert!(
        !err.contains("stage 'needs' failed: stage 'needs'"),
        "{err}"
    );
}
