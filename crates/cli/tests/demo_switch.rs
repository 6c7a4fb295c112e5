//! `baton demo switch` on simulated GPUs and host memory: both modes prove the memory came back,
//! an injected leak fails the verdict, and bad sizes are refused before anything is allocated.

mod common;

use std::process::Output;

fn demo(gpus: &str, args: &[&str]) -> (tempfile::TempDir, Output) {
    let dir = tempfile::tempdir().unwrap();
    let out = common::baton(dir.path(), gpus).args(args).output().unwrap();
    (dir, out)
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn both_modes_on_simulated_gpus_free_the_first_model_before_the_second() {
    let (_dir, out) = demo(
        "1x24GiB",
        &["demo", "switch", "--device", "sim", "--size", "8GiB"],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("baton demo switch: two mock models of 8.0 GiB on simulated GPUs"),
        "{stdout}"
    );
    for mode in ["mode processes", "mode in-process"] {
        let table = &stdout[stdout
            .find(mode)
            .unwrap_or_else(|| panic!("{mode} missing: {stdout}"))..];
        assert!(
            table.contains("+8.0 GiB") && table.contains("-8.0 GiB"),
            "{table}"
        );
        assert!(
            table.contains("verdict: PASS: 8.0 GiB freed between the models"),
            "{table}"
        );
        assert!(
            table.contains("left after release 0 B above the baseline of 0 B"),
            "{table}"
        );
    }
    // The second model's process is started ahead, while the first holds its model, and gets
    // its go once the first's memory is back.
    let processes =
        &stdout[stdout.find("mode processes").unwrap()..stdout.find("mode in-process").unwrap()];
    let prepare = processes.find("prepare the next process").expect(processes);
    let exits = processes.find("mock LLM process exits").expect(processes);
    let second = processes
        .find("start mock image model process")
        .expect(processes);
    assert!(prepare < exits && exits < second, "{processes}");
    // Two 8 GiB models never coexist: the peak is one model.
    assert_eq!(stdout.matches("peak 8.0 GiB").count(), 2, "{stdout}");
    assert!(stdout.contains("side by side: switch"), "{stdout}");
}

#[test]
fn on_host_memory_the_first_line_says_so_and_both_modes_pass() {
    let (_dir, out) = demo("1x24GiB", &["demo", "switch", "--size", "64MiB"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let first = stdout.lines().next().unwrap();
    // Without a driver (CI) auto says why it uses host memory; with one, a build without CUDA
    // says that it was built without CUDA.
    assert!(
        first.contains("on host memory: no NVIDIA driver found")
            || first.contains("built without CUDA")
            || first.contains("on the GPU"),
        "{first}"
    );
    if first.contains("on host memory") {
        assert_eq!(stdout.matches("verdict: PASS").count(), 2, "{stdout}");
        assert!(
            stdout.contains("+64.0 MiB") || stdout.contains("+6"),
            "{stdout}"
        );
    }
}

#[test]
fn an_injected_leak_fails_the_verdict() {
    let (_dir, out) = demo(
        "1x24GiB",
        &[
            "demo",
            "switch",
            "--device",
            "sim",
            "--mode",
            "in-process",
            "--size",
            "2GiB",
            "--inject-leak",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("verdict: FAIL: leak in 'mock LLM' on sim0"),
        "{stdout}"
    );
    assert!(stdout.contains("+2.0 GiB, tolerance 64.0 MiB"), "{stdout}");
    assert!(
        stderr.contains("memory did not come back in mode in-process"),
        "{stderr}"
    );
}

#[test]
fn bad_sizes_are_refused_before_anything_is_allocated() {
    for (args, needle, value) in [
        (
            vec!["--size", "0"],
            "a model of 0 bytes proves nothing",
            "'0'",
        ),
        (
            vec!["--size", "lots"],
            "does not start with a number",
            "'lots'",
        ),
        (
            vec!["--size", "100GiB"],
            "is more than the 24.0 GiB free on sim0",
            "100.0 GiB",
        ),
    ] {
        let mut all = vec!["demo", "switch", "--device", "sim"];
        all.extend(args);
        let (dir, out) = demo("1x24GiB", &all);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
        assert!(
            stderr.contains(needle) && stderr.contains(value),
            "{stderr}"
        );
        // Nothing was allocated: the simulation holds nothing.
        let sim = baton_memory::sim::SimBackend::open(dir.path(), None).unwrap();
        assert_eq!(
            baton_memory::MemoryBackend::device(&sim, 0).unwrap().used,
            0
        );
    }
}

#[test]
fn the_switch_benchmark_reports_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("switch.json");
    let out = common::baton(dir.path(), "1x24GiB")
        .args([
            "bench", "switch", "--device", "sim", "--size", "4GiB", "--repeat", "3", "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("processes") && stdout.contains("in-process"),
        "{stdout}"
    );
    assert!(
        stderr.is_empty(),
        "benchmarks print tables, not logs: {stderr}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["repeat"], 3);
    for mode in ["processes", "in-process"] {
        let m = &doc["modes"][mode];
        assert_eq!(m["switch_seconds"].as_array().unwrap().len(), 3, "{m}");
        assert_eq!(m["verified"], true);
        assert!(
            m["peak"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p.as_f64() == Some((4u64 << 30) as f64)),
            "{m}"
        );
        assert!(
            m["left_after_release"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p.as_f64() == Some(0.0)),
            "{m}"
        );
    }
}
