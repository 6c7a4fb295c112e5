//! One contract, every backend: what the runner may assume of any `MemoryBackend`. Runs on the
//! host and simulated backends always, and on NVML where a driver answers.

use baton_memory::host::HostBackend;
use baton_memory::nvml::NvmlBackend;
use baton_memory::sim::SimBackend;
use baton_memory::{MemoryBackend, MemoryError, Verdict, check_available};

fn contract(backend: &dyn MemoryBackend) {
    let all = backend.snapshot().unwrap();
    assert!(!all.is_empty(), "{} lists no device", backend.kind());
    for (i, d) in all.iter().enumerate() {
        assert_eq!(d.index, i);
        assert_eq!(d.backend, backend.kind());
        assert!(d.total > 0, "{d:?}");
        assert!(d.used <= d.total && d.free <= d.total, "{d:?}");
        assert!(!d.uuid.is_empty() && !d.name.is_empty());
        let sizes: Vec<_> = d.processes.iter().map(|p| p.bytes).collect();
        let mut sorted = sizes.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(sizes, sorted, "process rows are largest first");
        let one = backend.device(i).unwrap();
        assert_eq!((one.index, &one.uuid, one.total), (i, &d.uuid, d.total));
        // A need of nothing fits anywhere; one past the total never does.
        assert_eq!(
            check_available(backend, i, 0).unwrap().verdict,
            Verdict::Fits
        );
        assert_eq!(
            check_available(backend, i, d.total).unwrap().verdict,
            Verdict::Never
        );
    }
    match backend.device(all.len()) {
        Err(e @ MemoryError::NoSuchDevice { .. }) => assert!(e.is_bad_input()),
        other => panic!("device past the end: {other:?}"),
    }
    assert!(
        backend
            .process_usage(all.len(), std::process::id())
            .is_err()
    );
    backend.trim().unwrap();
}

#[test]
fn host_keeps_the_contract() {
    contract(&HostBackend::new());
}

#[test]
fn sim_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimBackend::open(dir.path(), Some("3x24GiB")).unwrap();
    let _held = sim.allocate(2, 5 << 30, "contract").unwrap();
    contract(&sim);
}

#[test]
fn nvml_keeps_the_contract_where_a_driver_answers() {
    match NvmlBackend::open() {
        Ok(nvml) => contract(&nvml),
        // Without a driver the backend must say so in words, not crash.
        Err(err) => {
            let text = err.to_string();
            assert!(text.contains("NVIDIA") || text.contains("NVML"), "{text}");
            eprintln!("nvml not checked on this machine: {text}");
        }
    }
}
