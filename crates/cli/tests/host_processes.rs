//! The host backend with real processes and real resident memory. One test function, because
//! resident memory is per process and parallel tests would move each other's numbers.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;

use baton_memory::host::HostBackend;
use baton_memory::{MemoryBackend, MemoryScope, Verdict, check_available};
use common::eventually;

#[test]
fn host_backend_sees_children_and_proves_release() {
    let host: Arc<dyn MemoryBackend> = Arc::new(HostBackend::new());

    // A child process shows with its PID and resident memory, and goes when it dies.
    let mut child = Command::new("sleep")
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    eventually("the child to show in the host snapshot", || {
        host.device(0)
            .unwrap()
            .processes
            .iter()
            .any(|p| p.pid == pid && p.name == "sleep")
    });
    assert!(host.process_usage(0, pid).unwrap() > 0);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(host.process_usage(0, pid).unwrap(), 0);
    assert!(
        !host
            .device(0)
            .unwrap()
            .processes
            .iter()
            .any(|p| p.pid == pid)
    );

    // Availability on the host counts no context.
    let snap = host.device(0).unwrap();
    assert_eq!(
        check_available(host.as_ref(), 0, 1 << 20).unwrap().verdict,
        Verdict::Fits
    );
    assert_eq!(
        check_available(host.as_ref(), 0, snap.total)
            .unwrap()
            .verdict,
        Verdict::Never
    );

    // A released block passes the scope; a leaked one is caught with its size.
    let scope = MemoryScope::new(host.clone(), 0, "released").unwrap();
    let block = vec![7u8; 256 << 20];
    assert_eq!(block[12345], 7);
    let during = host.process_usage(0, std::process::id()).unwrap();
    assert!(
        during >= scope.baseline() + (250 << 20),
        "{during} vs {}",
        scope.baseline()
    );
    drop(block);
    let clean = scope.finish().unwrap();
    assert!(!clean.is_leak(), "{clean}");

    let scope = MemoryScope::new(host.clone(), 0, "leaked")
        .unwrap()
        .with_settle(std::time::Duration::from_millis(100));
    let leaked = vec![9u8; 256 << 20].leak();
    assert_eq!(leaked[777], 9);
    let report = scope.finish().unwrap();
    assert!(report.is_leak(), "{report}");
    assert!(report.excess() >= 250 << 20, "{report}");
}
