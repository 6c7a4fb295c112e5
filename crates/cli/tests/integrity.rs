//! Nothing lost, nothing corrupted: runs under kills, races, interrupts and reruns, on simulated
//! GPUs with real processes. Each test here failed on the runner before it owned its outputs,
//! locked its run folders, handled signals and walked the dependency graph on resume.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::baton;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `baton run` of the pipeline file `pipeline` for `topic`, on simulated GPUs, to its end.
fn run_pipeline(d: &Path, topic: &str, pipeline: &Path) -> Output {
    baton(d, "1x24GiB")
        .current_dir(d)
        .args(["run", "--device", "sim", "--topic", topic, "--pipeline"])
        .arg(pipeline)
        .output()
        .unwrap()
}

fn manifest(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap()
}

/// The run folders under `dir/output`, oldest first.
fn runs(dir: &Path) -> Vec<PathBuf> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir.join("output"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("run.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    runs.sort();
    runs
}

fn attempts(m: &serde_json::Value, stage: usize) -> usize {
    m["stages"][stage]["attempts"].as_array().unwrap().len()
}

/// Waits until `run.json` in the only run folder says `stage` (an index) is running.
fn wait_until_running(dir: &Path, stage: usize) -> PathBuf {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stage {stage} never ran"
        );
        if let Some(run) = runs(dir).pop()
            && let Ok(bytes) = std::fs::read(run.join("run.json"))
            && let Ok(m) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && m["stages"][stage]["state"] == "running"
        {
            return run;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

#[test]
fn an_attempt_never_appends_to_what_a_failed_one_left() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Appends its output line by line, and fails the first time after writing half of it.
    let pipeline = write(
        d,
        "p.toml",
        r#"[[stage]]
name = "lines"
command = ["sh", "-c", "echo one >> out.txt; echo two >> out.txt; [ -e ../../tried ] || { touch ../../tried; exit 1; }; echo three >> out.txt"]
outputs = ["out.txt"]
retries = 1
"#,
    );
    let out = run_pipeline(d, "t", &pipeline);
    assert!(out.status.success(), "{}", said(&out));
    let run = runs(d).pop().unwrap();
    assert_eq!(
        std::fs::read_to_string(run.join("out.txt")).unwrap(),
        "one\ntwo\nthree\n"
    );
    // The failed attempt's half is kept aside for inspection, not in the way.
    assert_eq!(
        std::fs::read_to_string(run.join(".baton/stale/lines/out.txt")).unwrap(),
        "one\ntwo\n"
    );
    assert!(
        said(&out).contains("moved what an earlier attempt left (out.txt)"),
        "{}",
        said(&out)
    );
}

#[test]
fn two_batons_on_one_run_folder_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pipeline = write(
        d,
        "p.toml",
        "[[stage]]\nname = \"slow\"\ncommand = [\"sh\", \"-c\", \"sleep 1.5; echo done > out.txt\"]\noutputs = [\"out.txt\"]\n",
    );
    let mut first = baton(d, "1x24GiB")
        .current_dir(d)
        .args(["run", "--device", "sim", "--topic", "t", "--pipeline"])
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = wait_until_running(d, 0);
    let second = baton(d, "1x24GiB")
        .arg("resume")
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("in use by baton pid {}", first.id())),
        "{err}"
    );
    assert!(first.wait().unwrap().success());
    let m = manifest(&run);
    assert_eq!(m["state"], "succeeded", "{m}");
    assert_eq!(
        attempts(&m, 0),
        1,
        "the refused resume started nothing: {m}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("out.txt")).unwrap(),
        "done\n"
    );
    // Its holder gone, the folder can be resumed (and every stage kept).
    let again = baton(d, "1x24GiB")
        .arg("resume")
        .arg(&run)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", said(&again));
}

/// Starts a run of a pipeline whose second stage holds simulated memory for a while, waits
/// until it runs, sends baton `sig`, and returns what baton said and the run folder.
fn interrupted_run(d: &Path, sig: i32) -> (Output, PathBuf) {
    let pipeline = write(
        d,
        "p.toml",
        r#"[[stage]]
name = "first"
command = ["sh", "-c", "echo x > a.txt"]
outputs = ["a.txt"]
[[stage]]
name = "hold"
after = ["first"]
command = ["{baton}", "sim", "work", "2GiB", "--seconds", "30"]
memory = "2GiB"
[[stage]]
name = "after"
after = ["hold"]
command = ["true"]
"#,
    );
    let child = baton(d, "1x24GiB")
        .current_dir(d)
        .args(["run", "--device", "sim", "--topic", "t", "--pipeline"])
        .arg(&pipeline)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = wait_until_running(d, 1);
    common::eventually("the stage to hold its memory", || {
        common::sim_used(d) >= 2 << 30
    });
    let started = Instant::now();
    signal(child.id(), sig);
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "baton took too long to stop"
    );
    (out, run)
}

#[test]
fn ctrl_c_stops_the_stages_writes_the_run_as_interrupted_and_says_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (out, run) = interrupted_run(d, libc::SIGINT);
    let text = said(&out);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(
        text.contains(&format!("baton resume {}", run.display())),
        "{text}"
    );
    let m = manifest(&run);
    assert_eq!(m["state"], "interrupted", "{m}");
    assert_eq!(m["stages"][0]["state"], "succeeded", "{m}");
    assert_eq!(m["stages"][1]["state"], "failed", "{m}");
    assert!(
        m["stages"][1]["note"]
            .as_str()
            .unwrap()
            .contains("interrupted by SIGINT"),
        "{m}"
    );
    assert_eq!(m["stages"][2]["state"], "pending", "{m}");
    // Its memory proved back, nothing of it left.
    assert_eq!(
        m["stages"][1]["attempts"][0]["reclaim"]["verified"], true,
        "{m}"
    );
    assert!(common::processes_of(&run).is_empty());
    assert_eq!(common::sim_used(d), 0);
}

#[test]
fn sigterm_is_an_interrupt_too_and_exits_143() {
    let dir = tempfile::tempdir().unwrap();
    let (out, run) = interrupted_run(dir.path(), libc::SIGTERM);
    assert_eq!(out.status.code(), Some(143), "{}", said(&out));
    assert_eq!(manifest(&run)["state"], "interrupted");
    assert!(common::processes_of(&run).is_empty());
}

#[test]
fn resume_follows_dependencies_not_the_order_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // `report` is listed first but runs after `data`.
    let pipeline = write(
        d,
        "p.toml",
        r#"[[stage]]
name = "report"
after = ["data"]
inputs = ["data.txt"]
command = ["sh", "-c", "cat data.txt > report.txt"]
outputs = ["report.txt"]
[[stage]]
name = "data"
command = ["sh", "-c", "echo fresh > data.txt"]
outputs = ["data.txt"]
"#,
    );
    let out = run_pipeline(d, "t", &pipeline);
    assert!(out.status.success(), "{}", said(&out));
    let run = runs(d).pop().unwrap();
    std::fs::write(run.join("data.txt"), "tampered\n").unwrap();
    let out = baton(d, "1x24GiB")
        .arg("resume")
        .arg(&run)
        .output()
        .unwrap();
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("runs again: stage 'data' before it runs again"),
        "{text}"
    );
    let m = manifest(&run);
    assert_eq!((attempts(&m, 0), attempts(&m, 1)), (2, 2), "{m}");
    assert_eq!(
        std::fs::read_to_string(run.join("report.txt")).unwrap(),
        "fresh\n"
    );
}

#[test]
fn a_topic_that_looks_like_a_placeholder_arrives_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pipeline = write(
        d,
        "p.toml",
        "[[stage]]\nname = \"echo\"\ncommand = [\"sh\", \"-c\", \"printf %s \\\"$0\\\" > topic.txt\", \"{topic}\"]\noutputs = [\"topic.txt\"]\n",
    );
    let topic = "Tom & Jerry {run_dir} {baton}";
    let out = run_pipeline(d, topic, &pipeline);
    assert!(out.status.success(), "{}", said(&out));
    let run = runs(d).pop().unwrap();
    assert_eq!(
        std::fs::read_to_string(run.join("topic.txt")).unwrap(),
        topic
    );
}

#[test]
fn a_stage_that_ignores_sigterm_is_still_stopped_at_its_timeout_and_retries_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pipeline = write(
        d,
        "p.toml",
        r#"[[stage]]
name = "stubborn"
command = ["sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30"]
timeout = "500ms"
retries = 0
[[stage]]
name = "flaky"
command = ["false"]
retries = 2
"#,
    );
    let started = Instant::now();
    let out = run_pipeline(d, "t", &pipeline);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(started.elapsed() < Duration::from_secs(20));
    let run = runs(d).pop().unwrap();
    let m = manifest(&run);
    assert_eq!(m["stages"][0]["state"], "failed");
    let why = m["stages"][0]["note"].as_str().unwrap();
    assert!(why.contains("timed out after 500ms"), "{why}");
    assert_eq!(m["stages"][1]["state"], "failed");
    assert_eq!(attempts(&m, 1), 3, "one attempt and two retries: {m}");
    assert!(
        m["stages"][1]["note"]
            .as_str()
            .unwrap()
            .contains("after 3 attempt(s)"),
        "{m}"
    );
    assert!(
        common::processes_of(&run).is_empty(),
        "{:?}",
        common::processes_of(&run)
    );
}

#[test]
fn a_run_whose_manifest_cannot_be_written_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The run of topic "broken" turns its own run.json into a folder, so the next write fails.
    let pipeline = write(
        d,
        "p.toml",
        r#"[[stage]]
name = "work"
command = ["sh", "-c", "if [ \"$BATON_TOPIC\" = broken ]; then rm run.json; mkdir -p run.json/x; fi; sleep 0.2"]
[[stage]]
name = "more"
after = ["work"]
command = ["true"]
"#,
    );
    let topics = write(d, "topics.txt", "broken\nfine\n");
    let out = baton(d, "2x24GiB")
        .current_dir(d)
        .args(["batch", "--device", "sim", "--pipeline"])
        .arg(&pipeline)
        .arg(&topics)
        .output()
        .unwrap();
    let text = said(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("1 of 2 topic(s) succeeded"), "{text}");
    assert!(text.contains("cannot write its manifest"), "{text}");
    let fine = runs(d)
        .into_iter()
        .find(|r| r.to_string_lossy().ends_with("_fine"))
        .unwrap();
    let m = manifest(&fine);
    assert_eq!(m["state"], "succeeded", "{m}");
}

/// A small random number generator (xorshift), seeded per test run and printed, so a failing
/// sequence of kills can be replayed with BATON_FAULT_SEED.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn killed_at_random_moments_and_resumed_every_output_is_whole_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An appending shell stage, a stage on a simulated GPU, and one that reads the first.
    let pipeline = write(
        d,
        "p.toml",
        r#"retries = 0
oom_retries = 0
[[stage]]
name = "lines"
command = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line$i >> lines.txt; sleep 0.01; done"]
outputs = ["lines.txt"]
[[stage]]
name = "hold"
after = ["lines"]
command = ["{baton}", "sim", "work", "3GiB", "--seconds", "0.15", "--write", "held.json"]
outputs = ["held.json"]
memory = "3GiB"
[[stage]]
name = "count"
after = ["hold"]
inputs = ["lines.txt"]
command = ["sh", "-c", "sleep 0.05; wc -l < lines.txt > count.txt"]
outputs = ["count.txt"]
"#,
    );
    let seed = std::env::var("BATON_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("BATON_FAULT_SEED={seed}");
    let mut rng = Rng(seed);
    let (mut baton_kills, mut stage_kills) = (0, 0);
    let mut finished: Vec<PathBuf> = Vec::new();
    // Rounds until 30 kills have landed while a run was in progress: each round is one run,
    // killed up to 5 times, then resumed to its end.
    while baton_kills + stage_kills < 30 {
        assert!(finished.len() < 60, "too few kills landed (seed {seed})");
        let mut kills_this_run = 0;
        let run = loop {
            let mut cmd = baton(d, "1x24GiB");
            cmd.current_dir(d)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            match runs(d).into_iter().find(|r| !finished.contains(r)) {
                Some(run) => cmd.arg("resume").arg(&run),
                None => cmd
                    .args(["run", "--device", "sim", "--topic"])
                    .arg(format!("round {}", finished.len()))
                    .arg("--pipeline")
                    .arg(&pipeline),
            };
            let mut child = cmd.spawn().unwrap();
            if kills_this_run < 5 {
                std::thread::sleep(Duration::from_millis(rng.below(400)));
                if child.try_wait().unwrap().is_none() {
                    let stage = runs(d)
                        .into_iter()
                        .find(|r| !finished.contains(r))
                        .and_then(|run| common::processes_of(&run).first().copied());
                    match stage {
                        // A stage dies on its own; baton goes on (and fails the run: no
                        // retries), then the run is resumed.
                        Some(pid) if rng.below(4) == 0 => {
                            signal(pid, libc::SIGKILL);
                            stage_kills += 1;
                        }
                        _ => {
                            signal(child.id(), libc::SIGKILL);
                            baton_kills += 1;
                        }
                    }
                    kills_this_run += 1;
                }
            }
            let status = child.wait().unwrap();
            if let Some(run) = runs(d).into_iter().find(|r| !finished.contains(r)) {
                // Whatever happened, run.json is whole.
                let m = manifest(&run);
                if status.success() && m["state"] == "succeeded" {
                    break run;
                }
            }
        };
        // Whole outputs: ten lines, once each; the count stage read all of them.
        let lines = std::fs::read_to_string(run.join("lines.txt")).unwrap();
        let expected: String = (1..=10).map(|i| format!("line{i}\n")).collect();
        assert_eq!(lines, expected, "{}, seed {seed}", run.display());
        assert_eq!(
            std::fs::read_to_string(run.join("count.txt"))
                .unwrap()
                .trim(),
            "10"
        );
        common::eventually("every stage process of the run to be gone", || {
            common::processes_of(&run).is_empty()
        });
        finished.push(run);
    }
    eprintln!(
        "{baton_kills} kills of baton and {stage_kills} of stages over {} runs",
        finished.len()
    );
    assert_eq!(
        common::sim_used(d),
        0,
        "simulated memory left behind (seed {seed})"
    );
}

#[test]
fn outputs_that_lead_out_of_the_run_folder_are_refused_before_anything_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (output, topic) in [
        ("{run_dir}/../../x.json", "t"),
        ("{pipeline_dir}/x.json", "t"),
        ("{topic}/f.txt", ".."),
    ] {
        let pipeline = write(
            d,
            "p.toml",
            &format!(
                "[[stage]]\nname = \"out\"\ncommand = [\"sh\", \"-c\", \"echo x > '{output}'\"]\noutputs = [\"{output}\"]\n"
            ),
        );
        let out = run_pipeline(d, topic, &pipeline);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{output}: {err}");
        assert!(err.contains("is outside the run folder"), "{output}: {err}");
        assert!(runs(d).is_empty(), "no run folder for {output}");
        assert!(!d.join("x.json").exists() && !d.join("f.txt").exists());
        let _ = std::fs::remove_dir_all(d.join("output"));
    }
}

/// `resume --rerun STAGE` runs a stage whose files verify again, and what uses its files after
/// it, keeping the rest; a stage the run does not have is refused with the closest name. The
/// run's settings (`--seed` here) come back on resume unless the environment sets them again.
#[test]
fn resume_reruns_a_stage_asked_for_with_the_settings_the_run_began_with() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pipeline = write(
        d,
        "p.toml",
        r#"[[stage]]
name = "first"
command = ["sh", "-c", "echo once > first.txt"]
outputs = ["first.txt"]

[[stage]]
name = "seeded"
after = ["first"]
command = ["sh", "-c", "echo seed=$BATON_SEED >> seeded.txt"]
outputs = ["seeded.txt"]

[[stage]]
name = "last"
after = ["seeded"]
command = ["sh", "-c", "cat seeded.txt > last.txt"]
outputs = ["last.txt"]
"#,
    );
    let out = baton(d, "1x24GiB")
        .current_dir(d)
        .env_remove("BATON_SEED")
        .args([
            "run",
            "--device",
            "sim",
            "--topic",
            "t",
            "--seed",
            "5",
            "--pipeline",
        ])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", said(&out));
    let run = runs(d).pop().unwrap();
    let read = |f: &str| std::fs::read_to_string(run.join(f)).unwrap();
    assert_eq!(read("seeded.txt"), "seed=5\n");

    let resume = |extra: &[&str], seed: Option<&str>| {
        let mut cmd = baton(d, "1x24GiB");
        cmd.env_remove("BATON_SEED")
            .arg("resume")
            .arg(&run)
            .args(extra);
        if let Some(s) = seed {
            cmd.env("BATON_SEED", s);
        }
        cmd.output().unwrap()
    };
    let typo = resume(&["--rerun", "seded"], None);
    assert_eq!(typo.status.code(), Some(2), "{}", said(&typo));
    assert!(
        said(&typo).contains("--rerun 'seded'") && said(&typo).contains("did you mean 'seeded'"),
        "{}",
        said(&typo)
    );

    let again = resume(&["--rerun", "seeded"], None);
    assert!(again.status.success(), "{}", said(&again));
    assert!(
        said(&again).contains("setting BATON_SEED=5 (as the run began)"),
        "{}",
        said(&again)
    );
    assert_eq!(read("first.txt"), "once\n");
    // An attempt starts from nothing (the last one's file is moved aside), with the run's seed.
    assert_eq!(read("seeded.txt"), "seed=5\n");
    assert_eq!(read("last.txt"), "seed=5\n");
    let m = manifest(&run);
    assert_eq!(attempts(&m, 0), 1, "first is kept: {m}");
    assert_eq!(attempts(&m, 1), 2, "{m}");
    assert_eq!(attempts(&m, 2), 2, "last uses seeded's file: {m}");

    // The environment wins over what the run began with; --from is the same as --rerun.
    let third = resume(&["--from", "seeded"], Some("9"));
    assert!(third.status.success(), "{}", said(&third));
    assert_eq!(read("last.txt"), "seed=9\n");
    assert_eq!(attempts(&manifest(&run), 0), 1);
}
