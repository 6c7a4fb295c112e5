//! The simulated backend with real processes: what the runner will rely on to test placement,
//! waiting, leaks and orphans without a GPU.

mod common;

use std::sync::Arc;
use std::time::Duration;

use baton_memory::sim::SimBackend;
use baton_memory::{
    MemoryBackend, MemoryError, MemoryScope, Verdict, check_available, wait_available,
};
use common::{GIB, baton, eventually, hold, kill_pid};

#[test]
fn a_child_allocation_is_seen_under_its_pid_and_vanishes_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut holder = hold(dir.path(), "2x24GiB", &["2GiB", "--device", "1"]);
    let pid = holder.pid();
    assert!(
        holder
            .first_line
            .contains(&format!("pid {pid} holds 2.0 GiB on sim1")),
        "{}",
        holder.first_line
    );

    let sim = SimBackend::open(dir.path(), None).unwrap();
    let gpu1 = sim.device(1).unwrap();
    assert_eq!(gpu1.held_by(pid), 2 * GIB);
    assert_eq!(gpu1.used, 2 * GIB);
    assert_eq!(gpu1.processes[0].name, "baton");
    assert_eq!(sim.device(0).unwrap().used, 0);

    // The CLI sees the same, from yet another process.
    let out = baton(dir.path(), "2x24GiB")
        .args(["stats", "--device", "sim", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["devices"].as_array().unwrap().len(), 2);
    assert_eq!(json["devices"][1]["processes"][0]["pid"], pid);
    assert_eq!(json["devices"][1]["processes"][0]["bytes"], 2 * GIB);

    // SIGKILL gives the holder no chance to free: the reading must drop the dead PID itself.
    holder.kill();
    let after = sim.device(1).unwrap();
    assert_eq!(after.used, 0, "{after:?}");
    assert!(after.processes.is_empty());
}

#[test]
fn a_holder_with_seconds_lets_go_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut holder = hold(dir.path(), "1x24GiB", &["1GiB", "--seconds", "0.2"]);
    let status = holder.child.wait().unwrap();
    assert!(status.success());
    let sim = SimBackend::open(dir.path(), None).unwrap();
    assert_eq!(sim.device(0).unwrap().used, 0);
}

#[test]
fn an_orphan_holder_outlives_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let out = baton(dir.path(), "1x24GiB")
        .args(["sim", "hold", "3GiB", "--orphan", "--seconds", "60"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let orphan: u32 = text
        .strip_prefix("orphan pid ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no orphan pid in {text:?}"));

    // The parent has exited (output() waited for it), yet the memory is held, by the orphan.
    let sim = SimBackend::open(dir.path(), None).unwrap();
    let gpu = sim.device(0).unwrap();
    assert_eq!(gpu.held_by(orphan), 3 * GIB, "{gpu:?}");
    assert_eq!(gpu.processes.len(), 1);
    let stat = std::fs::read_to_string(format!("/proc/{orphan}/stat")).unwrap();
    let ppid: u32 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(ppid, std::process::id(), "the orphan must not be our child");

    kill_pid(orphan);
    eventually("the orphan's memory to be freed", || {
        sim.device(0).unwrap().used == 0
    });
}

#[test]
fn check_and_wait_verdicts_follow_a_real_holder() {
    let dir = tempfile::tempdir().unwrap();
    let mut holder = hold(dir.path(), "1x24GiB", &["16GiB"]);
    let sim = SimBackend::open(dir.path(), None).unwrap();

    // 8 GiB free; 0.8 × 8 = 6.4 GiB usable, and 4 GiB + 0.5 GiB context fits.
    let fits = check_available(&sim, 0, 4 * GIB).unwrap();
    assert_eq!(fits.verdict, Verdict::Fits, "{fits}");
    // 8 GiB + 0.5 GiB does not fit now, but would on the empty card.
    let wait = check_available(&sim, 0, 8 * GIB).unwrap();
    assert_eq!(wait.verdict, Verdict::Wait, "{wait}");
    assert_eq!(wait.free, 8 * GIB);
    // 20 GiB + 0.5 GiB is more than 80% of 24 GiB: never.
    assert_eq!(
        check_available(&sim, 0, 20 * GIB).unwrap().verdict,
        Verdict::Never
    );

    match wait_available(&sim, 0, 20 * GIB, Duration::from_secs(5)) {
        Err(MemoryError::NeverFits(a)) => assert_eq!(a.needed, 20 * GIB),
        other => panic!("expected NeverFits at once, got {other:?}"),
    }
    let err = wait_available(&sim, 0, 8 * GIB, Duration::from_millis(300)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, MemoryError::WaitTimedOut { .. }), "{text}");
    assert!(
        text.contains(&format!("pid {} (baton) 16.0 GiB", holder.pid())),
        "{text}"
    );

    // The wait succeeds once the holder dies.
    let pid = holder.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        kill_pid(pid);
    });
    let ok = wait_available(&sim, 0, 8 * GIB, Duration::from_secs(10)).unwrap();
    assert!(ok.fits(), "{ok}");
    killer.join().unwrap();
    holder.kill();
}

#[test]
fn the_scope_guard_catches_an_injected_leak_and_passes_a_clean_release() {
    let dir = tempfile::tempdir().unwrap();
    let sim: Arc<dyn MemoryBackend> =
        Arc::new(SimBackend::open(dir.path(), Some("1x24GiB")).unwrap());
    let concrete = SimBackend::open(dir.path(), None).unwrap();

    let scope = MemoryScope::new(sim.clone(), 0, "mock LLM").unwrap();
    let model = concrete.allocate(0, 4 * GIB, "mock LLM").unwrap();
    drop(model);
    let clean = scope.finish().unwrap();
    assert!(!clean.is_leak(), "{clean}");
    assert_eq!(clean.after, 0);

    let scope = MemoryScope::new(sim.clone(), 0, "leaky image model")
        .unwrap()
        .with_settle(Duration::from_millis(100));
    std::mem::forget(concrete.allocate(0, GIB, "leaked on purpose").unwrap());
    let leak = scope.finish().unwrap();
    assert!(leak.is_leak());
    assert_eq!(leak.excess(), GIB);
    let text = leak.to_string();
    assert!(
        text.contains("leak in 'leaky image model' on sim0") && text.contains("+1.0 GiB"),
        "{text}"
    );
    assert!(matches!(leak.into_result(), Err(MemoryError::Leak(_))));

    // A scope that starts with the leak in place measures from it: only new memory counts.
    let (_, report) = baton_memory::managed(sim.clone(), 0, "after the leak", || {
        let block = concrete.allocate(0, 2 * GIB, "work").unwrap();
        block.bytes()
    })
    .unwrap();
    assert!(!report.is_leak(), "{report}");
    assert_eq!(report.baseline, GIB);

    let model = concrete.allocate(0, 3 * GIB, "model").unwrap();
    let freed = baton_memory::cleanup_model(sim.as_ref(), 0, model).unwrap();
    assert_eq!(freed.bytes(), 3 * GIB);
}
