//! `--executor slurm` against a real one-node Slurm cluster on this machine
//! (`scripts/slurm-local.sh up`: Debian's slurm-wlm, 4 GPUs as GRES on fake device files), with
//! simulated GPUs mapped to the GRES indices: a pipeline of three stages, a batch of 20 topics
//! over the 4 GPUs, a job cancelled with scancel, an out-of-memory stage resubmitted with a
//! larger request, and `kill -9` of baton mid-batch followed by `resume`.
//!
//! The cluster is started by the first test that needs it when it is not up (CI starts it
//! before the tests); that needs root, as Slurm's daemons do here.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use baton_runner::manifest::{Manifest, StageState};

/// Starts the local cluster unless it answers already.
fn cluster() {
    static UP: Once = Once::new();
    UP.call_once(|| {
        let answers = || {
            Command::new("sinfo")
                .args(["-h", "-o", "%t %G"])
                .output()
                .is_ok_and(|o| {
                    let s = String::from_utf8_lossy(&o.stdout).to_string();
                    o.status.success() && s.contains("gpu:4") && !s.contains("down")
                })
        };
        if answers() {
            return;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/slurm-local.sh");
        let out = Command::new("bash").arg(&script).arg("up").output().unwrap();
        assert!(
            out.status.success() && answers(),
            "the local Slurm cluster did not start ({}); run `sudo scripts/slurm-local.sh up`:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

struct Scenario {
    dir: tempfile::TempDir,
}

impl Scenario {
    fn new() -> Scenario {
        cluster();
        Scenario {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pipeline(&self, toml: &str) -> PathBuf {
        let path = self.path("pipeline.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    fn baton(&self) -> Command {
        let mut cmd = common::baton(&self.path("sim"), "4x24GiB");
        cmd.env("BATON_STATE_DIR", self.path("state"))
            .current_dir(self.dir.path());
        cmd
    }

    /// `baton ARGS --executor slurm --device sim --output output --pipeline P`.
    fn command(&self, args: &[&str], pipeline: &Path) -> Command {
        let mut cmd = self.baton();
        cmd.args(args)
            .args([
                "--executor",
                "slurm",
                "--device",
                "sim",
                "--output",
                "output",
            ])
            .arg("--pipeline")
            .arg(pipeline);
        cmd
    }

    fn run_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.path("output"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("run.json").exists())
            .collect();
        dirs.sort();
        dirs
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `scontrol show job ID -o`, as one line.
fn job(id: u64) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", &id.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

const WORK: &str = "\"{baton}\", \"sim\", \"work\"";

#[test]
fn a_three_stage_pipeline_runs_as_jobs_supervised_on_the_node_with_reclaim_proved() {
    let s = Scenario::new();
    let p = s.pipeline(&format!(
        "[[stage]]\nname = \"write\"\ncommand = [{WORK}, \"4GiB\", \"--seconds\", \"0.3\", \"--steps\", \"3\", \"--write\", \"a.json\"]\noutputs = [\"a.json\"]\nmemory = \"4GiB\"\n\
         [[stage]]\nname = \"voice\"\nafter = [\"write\"]\ninputs = [\"a.json\"]\ncommand = [{WORK}, \"2GiB\", \"--orphan\", \"1GiB\", \"--write\", \"b.json\"]\noutputs = [\"b.json\"]\nmemory = \"4GiB\"\n\
         [[stage]]\nname = \"draw\"\nafter = [\"voice\"]\ninputs = [\"b.json\"]\ncommand = [{WORK}, \"8GiB\", \"--seconds\", \"0.3\", \"--write\", \"c.json\"]\noutputs = [\"c.json\"]\nmemory = \"8GiB\"\n"
    ));
    let out = s
        .command(&["run", "--topic", "three jobs"], &p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dir = &s.run_dirs()[0];
    let m = Manifest::load(dir).unwrap();
    let mut jobs = BTreeSet::new();
    for (stage, output) in [("write", "a.json"), ("voice", "b.json"), ("draw", "c.json")] {
        let record = m.stage(stage).unwrap();
        assert_eq!(record.state, StageState::Succeeded, "{stage}: {record:?}");
        assert_eq!(record.attempts.len(), 1);
        let a = &record.attempts[0];
        let id = a.job_id.expect("the attempt names its job");
        jobs.insert(id);
        assert!(job(id).contains("JobState=COMPLETED"), "{}", job(id));
        // Supervised on the node as locally: sampled, reclaimed, on the GPU Slurm gave.
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(output)).unwrap()).unwrap();
        assert_eq!(written["device"], a.device, "{stage}");
        assert!(a.device.starts_with("sim"), "{a:?}");
        assert!(a.peak_bytes > 0, "{stage}: {a:?}");
        let reclaim = a.reclaim.as_ref().unwrap();
        assert!(reclaim.verified, "{stage}: {reclaim:?}");
        assert!(dir.join(format!("slurm/{stage}-1.record.json")).is_file());
        assert!(!record.artifacts.is_empty());
    }
    assert_eq!(jobs.len(), 3);
    // The orphan the voice stage left was killed on the node, and named.
    let voice = &m.stage("voice").unwrap().attempts[0];
    assert_eq!(voice.reclaim.as_ref().unwrap().orphans.len(), 1);
    // The stage's own output is in its log, as locally.
    let log = std::fs::read_to_string(dir.join("logs/write.log")).unwrap();
    assert!(log.contains("baton:progress 3/3"), "{log}");
}

#[test]
fn a_batch_of_twenty_topics_spreads_over_the_four_gres_gpus_without_sharing_one() {
    let s = Scenario::new();
    // 20 GiB on a 24 GiB GPU: two on one GPU would fail to allocate.
    let p = s.pipeline(&format!(
        "[[stage]]\nname = \"first\"\ncommand = [{WORK}, \"20GiB\", \"--seconds\", \"0.4\", \"--write\", \"a.json\"]\noutputs = [\"a.json\"]\nmemory = \"20GiB\"\n\
         [[stage]]\nname = \"second\"\nafter = [\"first\"]\ncommand = [{WORK}, \"20GiB\", \"--seconds\", \"0.2\", \"--write\", \"b.json\"]\noutputs = [\"b.json\"]\nmemory = \"20GiB\"\n"
    ));
    let topics: String = (1..=20).map(|i| format!("topic {i}\n")).collect();
    std::fs::write(s.path("topics.txt"), topics).unwrap();
    let out = s
        .command(&["batch", s.path("topics.txt").to_str().unwrap()], &p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dirs = s.run_dirs();
    assert_eq!(dirs.len(), 20);
    let mut by_device: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    let mut jobs = BTreeSet::new();
    for dir in &dirs {
        let m = Manifest::load(dir).unwrap();
        for record in &m.stages {
            assert_eq!(
                record.state,
                StageState::Succeeded,
                "{}: {record:?}",
                dir.display()
            );
            assert_eq!(record.attempts.len(), 1, "{record:?}");
            let a = &record.attempts[0];
            assert!(jobs.insert(a.job_id.unwrap()), "one job per attempt");
            by_device
                .entry(a.device.clone())
                .or_default()
                .push((a.started_unix_ms, a.ended_unix_ms.unwrap()));
        }
    }
    assert_eq!(jobs.len(), 40);
    let devices: BTreeSet<&str> = by_device.keys().map(String::as_str).collect();
    assert_eq!(
        devices,
        BTreeSet::from(["sim0", "sim1", "sim2", "sim3"]),
        "{by_device:?}"
    );
    for (device, mut spans) in by_device {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{device}: {pair:?} overlap");
        }
    }
}

#[test]
fn a_job_cancelled_with_scancel_is_a_failed_attempt_with_its_reason_and_is_retried() {
    let s = Scenario::new();
    // The first attempt works for a minute (and is cancelled); the second at once.
    let p = s.pipeline(
        "[[stage]]\nname = \"long\"\nretries = 1\noutputs = [\"done.json\"]\nmemory = \"2GiB\"\n\
         command = [\"sh\", \"-c\", \"if [ -e again ]; then exec \\\"$0\\\" sim work 2GiB --write done.json; else touch again; exec \\\"$0\\\" sim work 2GiB --seconds 60; fi\", \"{baton}\"]\n",
    );
    let child = s
        .command(&["run", "--topic", "cancelled"], &p)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once its job runs, cancel it as an operator would.
    let start = Instant::now();
    let id = loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the job never ran"
        );
        let running = s.path("output").is_dir()
            && s.run_dirs()
                .first()
                .is_some_and(|d| d.join("again").exists());
        if running
            && let Ok(m) = Manifest::load(&s.run_dirs()[0])
            && let Some(id) = m.stage("long").unwrap().attempts[0].job_id
        {
            break id;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    let cancelled = Command::new("scancel")
        .arg(id.to_string())
        .status()
        .unwrap();
    assert!(cancelled.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let m = Manifest::load(&s.run_dirs()[0]).unwrap();
    let long = m.stage("long").unwrap();
    assert_eq!(long.state, StageState::Succeeded);
    assert_eq!(long.attempts.len(), 2);
    let first = long.attempts[0].failure.as_deref().unwrap();
    assert!(
        first.contains(&format!("Slurm job {id} ended CANCELLED")),
        "{first}"
    );
    assert_ne!(long.attempts[1].job_id, Some(id));
}

#[test]
fn an_out_of_memory_stage_is_resubmitted_with_the_next_larger_request() {
    let s = Scenario::new();
    let p = s.pipeline(
        "[slurm]\n[[slurm.request]]\nup_to = \"8GiB\"\ngres = \"gpu:1\"\n[[slurm.request]]\nup_to = \"48GiB\"\ngres = \"gpu:2\"\n\
         [[stage]]\nname = \"big\"\nretries = 0\noutputs = [\"done.json\"]\nmemory = \"6GiB\"\n\
         command = [\"sh\", \"-c\", \"if [ -e again ]; then exec \\\"$0\\\" sim work 6GiB --write done.json; else touch again; echo 'RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB'; exit 1; fi\", \"{baton}\"]\n",
    );
    let out = s.command(&["run", "--topic", "oom"], &p).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let m = Manifest::load(&s.run_dirs()[0]).unwrap();
    let big = m.stage("big").unwrap();
    assert_eq!(big.state, StageState::Succeeded);
    assert_eq!(big.attempts.len(), 2);
    assert!(big.attempts[0].out_of_memory, "{:?}", big.attempts[0]);
    let asked = |n: usize| job(big.attempts[n].job_id.unwrap());
    assert!(
        asked(0).contains("gpu:1") && !asked(0).contains("gpu:2"),
        "{}",
        asked(0)
    );
    assert!(
        asked(1).contains("gpu:2"),
        "the retry asks for more: {}",
        asked(1)
    );
}

#[test]
fn sigkill_of_baton_mid_batch_then_resume_follows_its_jobs_and_submits_none_twice() {
    let s = Scenario::new();
    let p = s.pipeline(&format!(
        "[[stage]]\nname = \"first\"\ncommand = [{WORK}, \"4GiB\", \"--seconds\", \"3\", \"--write\", \"a.json\"]\noutputs = [\"a.json\"]\nmemory = \"4GiB\"\n\
         [[stage]]\nname = \"second\"\nafter = [\"first\"]\ninputs = [\"a.json\"]\ncommand = [{WORK}, \"4GiB\", \"--write\", \"b.json\"]\noutputs = [\"b.json\"]\nmemory = \"4GiB\"\n"
    ));
    std::fs::write(s.path("topics.txt"), "alpha\nbeta\ngamma\n").unwrap();
    let mut child = s
        .command(&["batch", s.path("topics.txt").to_str().unwrap()], &p)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill baton once every topic's first job is submitted.
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the jobs were never submitted"
        );
        let submitted = s.path("output").is_dir()
            && s.run_dirs().len() == 3
            && s.run_dirs().iter().all(|d| {
                Manifest::load(d).is_ok_and(|m| {
                    m.stage("first")
                        .unwrap()
                        .attempts
                        .first()
                        .is_some_and(|a| a.job_id.is_some())
                })
            });
        if submitted {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for dir in s.run_dirs() {
        let before = Manifest::load(&dir).unwrap();
        let first_job = before.stage("first").unwrap().attempts[0].job_id.unwrap();
        let out = s
            .baton()
            .args(["resume", "--executor", "slurm", "--device", "sim"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("follows Slurm job {first_job}")),
            "{}",
            text(&out)
        );
        let m = Manifest::load(&dir).unwrap();
        let first = m.stage("first").unwrap();
        // The job baton left running was followed, not submitted again.
        assert_eq!(first.attempts.len(), 1, "{first:?}");
        assert_eq!(first.attempts[0].job_id, Some(first_job));
        assert_eq!(first.state, StageState::Succeeded);
        assert_eq!(m.stage("second").unwrap().state, StageState::Succeeded);
        // Every output there and verified: a resume keeps them all.
        let again = s
            .baton()
            .args(["resume", "--executor", "slurm", "--device", "sim"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(again.status.success(), "{}", text(&again));
        assert_eq!(text(&again).matches("kept:").count(), 2, "{}", text(&again));
        let plans = std::fs::read_dir(dir.join("slurm"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".plan.json"))
            .count();
        assert_eq!(plans, 2, "one job per stage, none twice");
    }
}

#[test]
fn on_a_host_without_slurm_the_executor_is_refused_before_a_run_folder_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::baton(&dir.path().join("sim"), "1x24GiB")
        .current_dir(dir.path())
        .env("PATH", "/nonexistent")
        .args([
            "run",
            "--executor",
            "slurm",
            "--device",
            "sim",
            "--topic",
            "x",
        ])
        .args(["--output", "output"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("--executor slurm: cannot run sbatch") && said.contains("--executor local"),
        "{said}"
    );
    assert!(!dir.path().join("output").exists());
}
