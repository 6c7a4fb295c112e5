//! The stage runner's scenarios on simulated GPUs, with real child processes: placement that
//! fits, waits and refuses; sharing; leaks; orphans; crashes and resume; out-of-memory retries;
//! SIGKILL of baton itself; and a batch over four GPUs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use baton_memory::MemoryBackend;
use baton_memory::sim::SimBackend;
use baton_runner::manifest::{Manifest, StageState};
use common::{GIB, eventually};

struct Scenario {
    dir: tempfile::TempDir,
    gpus: &'static str,
}

impl Scenario {
    fn new(gpus: &'static str) -> Self {
        Scenario {
            dir: tempfile::tempdir().unwrap(),
            gpus,
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
        let mut cmd = common::baton(&self.path("sim"), self.gpus);
        cmd.env("BATON_STATE_DIR", self.path("state"))
            .current_dir(self.dir.path());
        cmd
    }

    /// `baton run` of `pipeline` for `topic` on the simulated GPUs, not yet started.
    fn run_command(&self, pipeline: &Path, topic: &str) -> Command {
        let mut cmd = self.baton();
        cmd.args([
            "run",
            "--device",
            "sim",
            "--output",
            "output",
            "--topic",
            topic,
            "--pipeline",
        ])
        .arg(pipeline);
        cmd
    }

    fn run(&self, pipeline: &Path, topic: &str) -> Output {
        self.run_command(pipeline, topic).output().unwrap()
    }

    fn sim(&self) -> SimBackend {
        SimBackend::open(&self.path("sim"), None).unwrap()
    }

    /// The only run folder made so far.
    fn run_dir(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.path("output"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("run.json").exists())
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs.pop().unwrap()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stage<'a>(m: &'a Manifest, name: &str) -> &'a baton_runner::manifest::StageRecord {
    m.stage(name).unwrap()
}

const WORK: &str = "\"{baton}\", \"sim\", \"work\"";

#[test]
fn a_stage_that_fits_runs_with_an_owned_environment_and_its_files_hashed() {
    let s = Scenario::new("2x24GiB");
    let p = s.pipeline(
        r#"
[[stage]]
name = "probe"
command = ["sh", "-c", "env > env.txt && exec {baton} sim work 3GiB --seconds 0.3 --write out/{slug}.json"]
outputs = ["env.txt", "out/{slug}.json"]
memory = "3GiB"
env = { EXTRA = "for {topic}" }
"#,
    );
    let out = s
        .run_command(&p, "Cyberpunk Tokyo")
        .env("NOT_FOR_STAGES", "secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dir = s.run_dir();
    let m = Manifest::load(&dir).unwrap();
    let probe = stage(&m, "probe");
    assert_eq!(probe.state, StageState::Succeeded);
    let a = &probe.attempts[0];
    assert_eq!(a.peak_bytes, 3 * GIB, "watch saw the stage's memory");
    assert!(
        a.timeline.len() >= 3,
        "sampled at 10 Hz: {:?}",
        a.timeline.len()
    );
    assert!(a.reclaim.as_ref().unwrap().verified);
    assert_eq!(probe.artifacts.len(), 2);
    assert_eq!(probe.artifacts[1].path, "out/cyberpunk_tokyo.json");
    assert_eq!(probe.artifacts[1].sha256.len(), 64);

    let env = std::fs::read_to_string(dir.join("env.txt")).unwrap();
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(String::from)
    };
    let device = a.device_index.to_string();
    assert_eq!(
        var("CUDA_VISIBLE_DEVICES").as_deref(),
        Some(device.as_str())
    );
    assert_eq!(var("BATON_DEVICE"), Some(a.device.clone()));
    assert_eq!(var("BATON_STAGE").as_deref(), Some("probe"));
    assert_eq!(
        var("BATON_MEMORY_BUDGET"),
        Some((3 * GIB + (512 << 20)).to_string())
    );
    assert_eq!(var("EXTRA").as_deref(), Some("for Cyberpunk Tokyo"));
    assert!(var("BATON_STAGE_TOKEN").is_some());
    assert_eq!(var("NOT_FOR_STAGES"), None, "the environment is explicit");
    assert!(
        std::fs::read_to_string(dir.join("logs/probe.log"))
            .unwrap()
            .contains("holding 3.0 GiB on sim")
    );
    assert!(dir.join("report/vram.svg").exists() && dir.join("report/index.html").exists());
    let html = std::fs::read_to_string(dir.join("report/index.html")).unwrap();
    assert!(
        html.contains("probe") && html.contains("succeeded"),
        "{html}"
    );
}

#[test]
fn a_stage_waits_for_memory_then_runs_and_one_that_never_fits_fails_at_once() {
    let s = Scenario::new("1x24GiB");
    let mut holder = common::hold(&s.path("sim"), "1x24GiB", &["16GiB", "--seconds", "1.5"]);
    let p = s.pipeline(&format!(
        "[[stage]]\nname = \"big\"\ncommand = [{WORK}, \"8GiB\"]\nmemory = \"8GiB\"\n"
    ));
    let started = Instant::now();
    let out = s.run(&p, "waits");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "it must have waited for the holder"
    );
    let all = text(&out);
    assert!(
        all.contains("big waits for memory")
            && all.contains("8.0 GiB + 512.0 MiB context = 8.5 GiB"),
        "{all}"
    );
    assert!(
        all.contains(&format!("pid {} ", holder.pid())) || all.contains("8.0 GiB free"),
        "{all}"
    );
    holder.child.wait().unwrap();

    let p = s.pipeline(&format!(
        "[[stage]]\nname = \"huge\"\ncommand = [{WORK}, \"30GiB\"]\nmemory = \"30GiB\"\n"
    ));
    let started = Instant::now();
    let out = s.run(&p, "never");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(5));
    let all = text(&out);
    assert!(
        all.contains("30.5 GiB")
            && all.contains("24.0 GiB")
            && all.contains("23.0 GiB is handed out (a 1.0 GiB reserve kept back)"),
        "{all}"
    );
}

#[test]
fn two_stages_that_fit_together_share_a_device() {
    let s = Scenario::new("1x24GiB");
    let p = s.pipeline(&format!(
        "[[stage]]\nname = \"a\"\ncommand = [{WORK}, \"6GiB\", \"--seconds\", \"1\"]\nmemory = \"6GiB\"\n\
         [[stage]]\nname = \"b\"\ncommand = [{WORK}, \"6GiB\", \"--seconds\", \"1\"]\nmemory = \"6GiB\"\n"
    ));
    let out = s.run(&p, "share");
    assert!(out.status.success(), "{}", text(&out));
    let m = Manifest::load(&s.run_dir()).unwrap();
    let (a, b) = (&stage(&m, "a").attempts[0], &stage(&m, "b").attempts[0]);
    assert_eq!((a.device.as_str(), b.device.as_str()), ("sim0", "sim0"));
    assert!(
        b.started_unix_ms < a.ended_unix_ms.unwrap()
            && a.started_unix_ms < b.ended_unix_ms.unwrap(),
        "they overlap"
    );
    let peak_used = a
        .timeline
        .iter()
        .chain(&b.timeline)
        .map(|t| t.1)
        .max()
        .unwrap();
    assert_eq!(peak_used, 12 * GIB, "both were resident at once");
}

#[test]
fn a_leak_is_reported_with_its_numbers() {
    let s = Scenario::new("1x24GiB");
    let p = s.pipeline(&format!(
        "reclaim_timeout = \"300ms\"\n[[stage]]\nname = \"leaky\"\ncommand = [{WORK}, \"1GiB\", \"--leak\", \"2GiB\"]\nmemory = \"1GiB\"\n"
    ));
    let out = s.run(&p, "leak");
    let all = text(&out);
    assert!(
        all.contains(
            "leak after stage 'leaky' on sim0: 2.0 GiB is still used there, held by no process"
        ),
        "{all}"
    );
    let m = Manifest::load(&s.run_dir()).unwrap();
    let r = stage(&m, "leaky").attempts[0].reclaim.clone().unwrap();
    assert!(!r.verified);
    assert_eq!(r.leaked_bytes, 2 * GIB);
    assert!(r.ms >= 300.0);
    assert!(all.contains("leak: 2.0 GiB held by no process"), "{all}");
}

#[test]
fn an_orphan_that_keeps_memory_is_killed_and_named() {
    let s = Scenario::new("1x24GiB");
    let p = s.pipeline(&format!(
        "[[stage]]\nname = \"parent\"\ncommand = [{WORK}, \"1GiB\", \"--orphan\", \"3GiB\"]\nmemory = \"4GiB\"\n"
    ));
    let out = s.run(&p, "orphan");
    assert!(out.status.success(), "{}", text(&out));
    let m = Manifest::load(&s.run_dir()).unwrap();
    let r = stage(&m, "parent").attempts[0].reclaim.clone().unwrap();
    assert_eq!(r.orphans.len(), 1, "{r:?}");
    let orphan = &r.orphans[0];
    assert_eq!((orphan.name.as_str(), orphan.bytes), ("baton", 3 * GIB));
    assert!(r.verified, "memory came back once the orphan was killed");
    assert!(text(&out).contains(&format!(
        "left orphan pid {} (baton) holding 3.0 GiB on sim0",
        orphan.pid
    )));
    assert!(
        !Path::new(&format!("/proc/{}", orphan.pid)).exists()
            || baton_runner::group::is_zombie(orphan.pid)
    );
    assert_eq!(s.sim().device(0).unwrap().used, 0);
}

#[test]
fn a_crash_mid_run_then_resume_keeps_finished_stages_and_checks_their_hashes() {
    let s = Scenario::new("1x24GiB");
    let p = s.pipeline(&format!(
        "retries = 0\n\
         [[stage]]\nname = \"scenes\"\ncommand = [{WORK}, \"2GiB\", \"--write\", \"1_scripts/s.json\"]\noutputs = [\"1_scripts/s.json\"]\nmemory = \"2GiB\"\n\
         [[stage]]\nname = \"images\"\nafter = [\"scenes\"]\ninputs = [\"1_scripts/s.json\"]\ncommand = [{WORK}, \"2GiB\", \"--fail-once\", \"{{run_dir}}/crashed\", \"--write\", \"3_images/i.json\"]\noutputs = [\"3_images/i.json\"]\nmemory = \"2GiB\"\n\
         [[stage]]\nname = \"video\"\nafter = [\"images\"]\ncommand = [{WORK}, \"1GiB\", \"--write\", \"v.json\"]\noutputs = [\"v.json\"]\nmemory = \"1GiB\"\n"
    ));
    let out = s.run(&p, "crash");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let dir = s.run_dir();
    let m = Manifest::load(&dir).unwrap();
    assert_eq!(stage(&m, "scenes").state, StageState::Succeeded);
    assert_eq!(stage(&m, "images").state, StageState::Failed);
    assert_eq!(stage(&m, "video").state, StageState::Skipped);
    assert!(
        m.error.as_deref().unwrap().contains("crashing on purpose"),
        "{:?}",
        m.error
    );
    let scenes_before = std::fs::read(dir.join("1_scripts/s.json")).unwrap();

    let out = s.baton().arg("resume").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("kept: 1 artifact(s) verified by sha256"),
        "{}",
        text(&out)
    );
    let m = Manifest::load(&dir).unwrap();
    assert!(m.stages.iter().all(|s| s.state == StageState::Succeeded));
    assert_eq!(
        stage(&m, "scenes").attempts.len(),
        1,
        "scenes was not redone"
    );
    assert_eq!(stage(&m, "images").attempts.len(), 2);
    assert_eq!(
        std::fs::read(dir.join("1_scripts/s.json")).unwrap(),
        scenes_before
    );

    // A changed artifact is caught by its hash, and that stage and those after it run again.
    std::fs::write(dir.join("1_scripts/s.json"), b"tampered").unwrap();
    let out = s.baton().arg("resume").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("runs again: '1_scripts/s.json' changed since the stage wrote it"),
        "{}",
        text(&out)
    );
    let m = Manifest::load(&dir).unwrap();
    assert_eq!(stage(&m, "scenes").attempts.len(), 2);
    assert_eq!(stage(&m, "images").attempts.len(), 3);
}

#[test]
fn an_out_of_memory_stage_is_retried_on_another_device() {
    let s = Scenario::new("2x24GiB");
    let go = s.path("go");
    // The stage declares 1 GiB but allocates 8 GiB, once told to go.
    let p = s.pipeline(&format!(
        "retries = 0\n[[stage]]\nname = \"greedy\"\ncommand = [{WORK}, \"8GiB\", \"--wait-for\", \"{}\"]\nmemory = \"1GiB\"\n",
        go.display()
    ));
    let child = s
        .run_command(&p, "oom")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once it is placed, something else takes most of that device, then the stage allocates.
    let mut first = None;
    eventually("the stage to be placed", || {
        let Ok(dirs) = std::fs::read_dir(s.path("output")) else {
            return false;
        };
        for d in dirs.flatten() {
            if let Ok(m) = Manifest::load(&d.path())
                && let Some(a) = stage(&m, "greedy").attempts.first()
                && stage(&m, "greedy").state == StageState::Running
            {
                first = Some(a.device_index);
                return true;
            }
        }
        false
    });
    let first = first.unwrap();
    let _thief = common::hold(
        &s.path("sim"),
        "2x24GiB",
        &["20GiB", "--device", &first.to_string()],
    );
    std::fs::write(&go, b"go").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let m = Manifest::load(&s.run_dir()).unwrap();
    let attempts = &stage(&m, "greedy").attempts;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts[0].out_of_memory && attempts[0].device_index == first);
    assert_ne!(attempts[1].device_index, first);
    assert!(attempts[1].failure.is_none());
    assert!(
        text(&out).contains("ran out of memory on sim"),
        "{}",
        text(&out)
    );
}

#[test]
fn sigkill_of_baton_loses_only_the_running_stage_and_resume_finishes() {
    let s = Scenario::new("1x24GiB");
    let p = s.pipeline(&format!(
        "[[stage]]\nname = \"first\"\ncommand = [{WORK}, \"2GiB\", \"--write\", \"a.json\"]\noutputs = [\"a.json\"]\nmemory = \"2GiB\"\n\
         [[stage]]\nname = \"second\"\nafter = [\"first\"]\ncommand = [{WORK}, \"4GiB\", \"--seconds\", \"1.5\", \"--write\", \"b.json\"]\noutputs = [\"b.json\"]\nmemory = \"4GiB\"\n"
    ));
    let mut child = s
        .run_command(&p, "killed")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sim = s.sim();
    eventually("the second stage to hold its memory", || {
        sim.device(0).unwrap().used == 4 * GIB
    });
    let stage_pid = sim.device(0).unwrap().processes[0].pid;
    child.kill().unwrap();
    child.wait().unwrap();
    // The parent-death signal takes the stage down with baton, and its memory with it.
    eventually("the orphaned stage to die", || {
        sim.device(0).unwrap().used == 0
    });
    assert!(
        !Path::new(&format!("/proc/{stage_pid}")).exists()
            || baton_runner::group::is_zombie(stage_pid)
    );

    let dir = s.run_dir();
    let m = Manifest::load(&dir).expect("the manifest is whole after SIGKILL");
    assert_eq!(stage(&m, "first").state, StageState::Succeeded);
    assert_eq!(stage(&m, "second").state, StageState::Running);

    let out = s.baton().arg("resume").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let m = Manifest::load(&dir).unwrap();
    assert_eq!(stage(&m, "first").attempts.len(), 1);
    let second = stage(&m, "second");
    assert_eq!(second.state, StageState::Succeeded);
    assert_eq!(second.attempts.len(), 2);
    assert!(
        second.attempts[0]
            .failure
            .as_deref()
            .unwrap()
            .contains("interrupted")
    );
}

#[test]
fn a_batch_spreads_over_four_gpus_and_one_failing_topic_stops_no_other() {
    let s = Scenario::new("4x24GiB");
    std::fs::write(
        s.path("topics.txt"),
        "# topics\nalpha\nbeta\ngamma\nbad topic\n\ndelta\nepsilon\nzeta\neta\n",
    )
    .unwrap();
    let p = s.pipeline(
        "retries = 0\n[[stage]]\nname = \"draw\"\ncommand = [\"sh\", \"-c\", \"test \\\"$BATON_TOPIC\\\" != 'bad topic' && exec {baton} sim work 16GiB --seconds 0.5 --write out.json\"]\noutputs = [\"out.json\"]\nmemory = \"16GiB\"\n"
    );
    let out = s
        .baton()
        .args([
            "batch",
            "--device",
            "sim",
            "--output",
            "output",
            "--pipeline",
        ])
        .arg(&p)
        .arg(s.path("topics.txt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("batch: 8 topic(s) over 4 device(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("7 of 8 topic(s) succeeded"), "{stdout}");
    let mut devices = std::collections::BTreeSet::new();
    let mut max_together = 0;
    let mut spans = Vec::new();
    for d in std::fs::read_dir(s.path("output")).unwrap().flatten() {
        let Ok(m) = Manifest::load(&d.path()) else {
            continue;
        };
        let a = &stage(&m, "draw").attempts[0];
        devices.insert(a.device.clone());
        spans.push((a.started_unix_ms, a.ended_unix_ms.unwrap()));
        assert_eq!(
            m.topic == "bad topic",
            stage(&m, "draw").state == StageState::Failed
        );
    }
    for &(start, _) in &spans {
        max_together = max_together.max(
            spans
                .iter()
                .filter(|&&(s0, e0)| s0 <= start && start < e0)
                .count(),
        );
    }
    assert_eq!(devices.len(), 4, "every GPU was used: {devices:?}");
    assert!(
        max_together >= 3,
        "stages ran side by side on several GPUs ({max_together})"
    );
    assert!(stdout.contains("bad topic"), "{stdout}");
    let batch_reports: Vec<_> = std::fs::read_dir(s.path("output"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("batch_"))
        .collect();
    assert_eq!(batch_reports.len(), 1);
    let svg = std::fs::read_to_string(batch_reports[0].path().join("report/vram.svg")).unwrap();
    for d in ["sim0", "sim1", "sim2", "sim3"] {
        assert!(
            svg.contains(&format!(">{d}</text>")),
            "{d} missing from the batch report"
        );
    }
}

#[test]
fn bad_pipelines_and_run_folders_are_refused_without_writing() {
    let s = Scenario::new("1x24GiB");
    let refuse = |toml: &str, needle: &str| {
        let p = s.pipeline(toml);
        let out = s.run(&p, "bad");
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains(needle), "expected {needle:?} in {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            !s.path("output").exists(),
            "nothing may be written for bad input"
        );
    };
    let stage = |extra: &str| format!("[[stage]]\nname = \"a\"\ncommand = [\"true\"]\n{extra}\n");
    refuse(
        &format!(
            "{}[[stage]]\nname = \"b\"\ncommand = [\"true\"]\nafter = [\"a\"]\n",
            stage("after = [\"b\"]")
        ),
        "dependency cycle: a → b → a",
    );
    refuse(
        &stage("after = [\"scenez\"]"),
        "runs after 'scenez', which is not a stage",
    );
    refuse(
        &stage("inputs = [\"/nonexistent/scenes.json\"]"),
        "'/nonexistent/scenes.json', which does not exist",
    );
    refuse(&stage("memory = \"twelve\""), "'twelve'");
    for ok in ["12 GB", "12GiB"] {
        let p = s.pipeline(&stage(&format!("memory = \"{ok}\"")));
        let out = s.run(&p, "sizes");
        assert!(out.status.success(), "{ok}: {}", text(&out));
    }

    // Resume refuses what is not a run folder, and a corrupt manifest, changing nothing.
    let plain = s.path("plain");
    std::fs::create_dir(&plain).unwrap();
    let out = s.baton().arg("resume").arg(&plain).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("is not a baton run folder"),
        "{}",
        text(&out)
    );
    let run = std::fs::read_dir(s.path("output"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    std::fs::write(run.join("run.json"), b"{\"version\": 1, \"truncat").unwrap();
    let out = s.baton().arg("resume").arg(&run).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is corrupt") && text(&out).contains("nothing was changed"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(run.join("run.json")).unwrap(),
        b"{\"version\": 1, \"truncat"
    );
}

#[test]
fn a_learned_memory_need_is_the_last_peak_with_headroom() {
    let s = Scenario::new("1x24GiB");
    let p = s.pipeline(&format!(
        "[[stage]]\nname = \"grow\"\ncommand = [{WORK}, \"6GiB\", \"--seconds\", \"0.4\"]\nmemory = \"learn\"\nmemory_initial = \"1GiB\"\n"
    ));
    let context = 512u64 << 20;
    let mut granted = Vec::new();
    for topic in ["first", "second"] {
        let out = s.run(&p, topic);
        assert!(out.status.success(), "{}", text(&out));
        let dir = std::fs::read_dir(s.path("output"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(topic))
            .unwrap();
        let m = Manifest::load(&dir).unwrap();
        let a = &stage(&m, "grow").attempts[0];
        assert_eq!(a.peak_bytes, 6 * GIB);
        granted.push(a.granted_bytes);
    }
    assert_eq!(
        granted[0],
        GIB + context,
        "the first run has only the initial guess"
    );
    assert_eq!(
        granted[1],
        ((6 * GIB) as f64 * 1.1) as u64 + context,
        "the second uses the peak"
    );
}

#[test]
fn the_next_stages_weights_are_warmed_while_the_one_before_runs() {
    let s = Scenario::new("1x24GiB");
    std::fs::write(s.path("weights.bin"), vec![7u8; 1 << 20]).unwrap();
    let p = s.pipeline(
        r#"
[[stage]]
name = "first"
command = ["{baton}", "sim", "work", "1GiB", "--seconds", "0.3"]
memory = "1GiB"

[[stage]]
name = "second"
command = ["{baton}", "sim", "work", "1GiB", "--seconds", "0.1"]
after = ["first"]
memory = "1GiB"
warm = ["weights.bin", "{pipeline_dir}/missing.bin"]
"#,
    );
    let out = s.run_command(&p, "Warm").output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("warming 1 file(s), 1.0 MiB, for stage 'second' while 'first' runs"),
        "{said}"
    );
    assert!(
        said.contains("missing.bin' for stage 'second': no such file"),
        "{said}"
    );
    // Nothing waits for the last stage: nothing is warmed when it starts.
    assert_eq!(said.matches("warming").count(), 1, "{said}");
    // Turned off, nothing is warmed (nor looked for).
    let off = s
        .run_command(&p, "Cold")
        .env("BATON_WARM_AHEAD", "0")
        .output()
        .unwrap();
    assert!(off.status.success(), "{}", text(&off));
    assert!(!text(&off).contains("warm"), "{}", text(&off));
}

/// Cores are placed on the host like memory: two topics whose stage keeps every core busy run
/// one after the other (the second waits, saying why); stages of one core each share the
/// machine's two.
#[test]
fn host_stages_that_would_oversubscribe_the_cores_run_one_after_the_other() {
    let s = Scenario::new("1x24GiB");
    std::fs::write(s.path("topics.txt"), "alpha\nbeta\n").unwrap();
    let intervals = |threads: &str| {
        let p = s.pipeline(&format!(
            "[[stage]]\nname = \"think\"\ndevice = \"cpu\"\nthreads = {threads}\nmemory = \"64MiB\"\ncommand = [\"sh\", \"-c\", \"sleep 0.6; echo done > out.txt\"]\noutputs = [\"out.txt\"]\n"
        ));
        let out = s
            .baton()
            .env("BATON_HOST_CORES", "2")
            .args([
                "batch",
                "--device",
                "sim",
                "--output",
                "output",
                "--json",
                "--pipeline",
            ])
            .arg(&p)
            .arg(s.path("topics.txt"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut spans: Vec<(u64, u64)> = summary["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let m = Manifest::load(std::path::Path::new(r["dir"].as_str().unwrap())).unwrap();
                let a = &m.stages[0].attempts[0];
                (a.started_unix_ms, a.ended_unix_ms.unwrap())
            })
            .collect();
        spans.sort();
        (spans, text(&out))
    };
    let (all, said) = intervals("\"all\"");
    assert!(
        all[1].0 >= all[0].1,
        "two stages of every core overlapped: {all:?}"
    );
    assert!(
        said.contains("cores are busy (think); it needs 2"),
        "{said}"
    );
    let (one, _) = intervals("1");
    assert!(
        one[1].0 < one[0].1,
        "two one-core stages on two cores ran apart: {one:?}"
    );
}

/// A first stage that works for `seconds` holding 16 GiB (and leaves a 4 GiB orphan behind),
/// then a second that opted in to a prestart (`prepare` seconds of preparing) and needs 18 GiB:
/// on one 24 GiB card they never fit together, but the second's context fits beside the first.
fn prestart_pipeline(s: &Scenario, first: &str, second: &str) -> PathBuf {
    s.pipeline(&format!(
        "[[stage]]\nname = \"first\"\nretries = 0\ncommand = [{WORK}, \"16GiB\", {first}, \"--write\", \"a.json\"]\noutputs = [\"a.json\"]\nmemory = \"20GiB\"\n\
         [[stage]]\nname = \"second\"\nafter = [\"first\"]\nprestart = true\nretries = 1\ncommand = [{WORK}, \"18GiB\", {second}, \"--write\", \"b.json\"]\noutputs = [\"b.json\"]\nmemory = \"18GiB\"\n"
    ))
}

#[test]
fn a_prestarted_stage_prepares_while_the_one_before_runs_and_goes_only_after_its_reclaim() {
    let s = Scenario::new("1x24GiB");
    let p = prestart_pipeline(
        &s,
        "\"--seconds\", \"1.5\", \"--orphan\", \"4GiB\"",
        "\"--prepare\", \"0.3\"",
    );
    let child = s
        .run_command(&p, "ahead")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sim = s.sim();
    // While the first works, the second holds its context beside it, and no more.
    eventually("the second stage's context beside the first", || {
        let d = sim.device(0).unwrap();
        d.used == 16 * GIB + (512 << 20) && d.processes.len() == 2
    });
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let m = Manifest::load(&s.run_dir()).unwrap();
    let first = &stage(&m, "first").attempts[0];
    let second = &stage(&m, "second").attempts[0];
    assert_eq!(stage(&m, "second").attempts.len(), 1);
    let ended = first.ended_unix_ms.unwrap();
    let reclaim = first.reclaim.as_ref().unwrap();
    assert_eq!(reclaim.orphans.len(), 1, "the orphan was found and killed");
    // Prepared while the first ran...
    let ready = second.ready_unix_ms.expect("the second said it was ready");
    assert!(
        second.started_unix_ms < ended && ready < ended,
        "{second:?}"
    );
    // ...and given its go only after the first's memory came back, orphan included.
    let go = second.go_unix_ms.expect("a go was sent");
    assert!(
        go >= ended + reclaim.ms as u64,
        "go {go}, exit {ended}, reclaim {reclaim:?}"
    );
    assert!(second.running_unix_ms.unwrap() >= go);
    // The go carried the grant: its need and a context.
    assert_eq!(second.granted_bytes, 18 * GIB + (512 << 20));
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.run_dir().join("b.json")).unwrap())
            .unwrap();
    assert_eq!(b["granted"], 18 * GIB + (512 << 20));
    let (ahead, _) = second.prestart_ms().unwrap();
    assert!(ahead >= 300, "prepared {ahead} ms ahead");
    assert!(text(&out).contains("prepared 0."), "{}", text(&out));
    assert_eq!(sim.device(0).unwrap().used, 0);
}

#[test]
fn a_prepared_stage_is_stopped_when_its_upstream_fails() {
    let s = Scenario::new("1x24GiB");
    let p = prestart_pipeline(
        &s,
        "\"--seconds\", \"1\", \"--exit\", \"3\"",
        "\"--prepare\", \"0.1\"",
    );
    let out = s.run(&p, "upstream fails");
    assert!(!out.status.success(), "{}", text(&out));
    let m = Manifest::load(&s.run_dir()).unwrap();
    assert_eq!(stage(&m, "first").state, StageState::Failed);
    let second = stage(&m, "second");
    assert_eq!(second.state, StageState::Skipped);
    assert_eq!(
        second.note.as_deref(),
        Some("not run: stage 'first' did not succeed")
    );
    // It was prepared, never given a go, and not retried.
    assert_eq!(second.attempts.len(), 1);
    assert!(second.attempts[0].ready_unix_ms.is_some());
    assert_eq!(second.attempts[0].go_unix_ms, None);
    assert!(!s.run_dir().join("b.json").exists());
    assert_eq!(s.sim().device(0).unwrap().used, 0);
}

#[test]
fn a_prepared_stage_that_crashes_is_retried_as_usual() {
    let s = Scenario::new("1x24GiB");
    let marker = s.path("crashed-once");
    let second = format!("\"--fail-once\", \"{}\"", marker.display());
    let p = prestart_pipeline(&s, "\"--seconds\", \"1\"", &second);
    let out = s.run(&p, "crash while prepared");
    assert!(out.status.success(), "{}", text(&out));
    let m = Manifest::load(&s.run_dir()).unwrap();
    let second = stage(&m, "second");
    assert_eq!(second.state, StageState::Succeeded);
    assert_eq!(second.attempts.len(), 2);
    let crashed = &second.attempts[0];
    assert!(
        crashed
            .failure
            .as_deref()
            .unwrap()
            .contains("crashing on purpose"),
        "{crashed:?}"
    );
    assert_eq!(crashed.go_unix_ms, None, "it crashed before any go");
    assert!(s.run_dir().join("b.json").exists());
}

#[test]
fn sigkill_of_baton_while_a_stage_is_prepared_leaves_no_process_behind() {
    let s = Scenario::new("1x24GiB");
    let p = prestart_pipeline(&s, "\"--seconds\", \"30\"", "\"--prepare\", \"0\"");
    let mut child = s
        .run_command(&p, "killed while prepared")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sim = s.sim();
    eventually("the second stage to be prepared", || {
        sim.device(0).unwrap().processes.len() == 2
    });
    let pids: Vec<u32> = sim
        .device(0)
        .unwrap()
        .processes
        .iter()
        .map(|p| p.pid)
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    eventually("every stage process to die with baton", || {
        sim.device(0).unwrap().used == 0
    });
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists() || baton_runner::group::is_zombie(pid),
            "pid {pid} outlived baton"
        );
    }
}

#[test]
fn a_prestarted_stage_that_does_not_wait_for_its_go_fails_saying_what_it_must_do() {
    let s = Scenario::new("1x24GiB");
    let p = s.pipeline(&format!(
        "[[stage]]\nname = \"first\"\ncommand = [{WORK}, \"2GiB\", \"--seconds\", \"1\"]\nmemory = \"2GiB\"\n\
         [[stage]]\nname = \"eager\"\nafter = [\"first\"]\nprestart = true\ncommand = [\"sh\", \"-c\", \"echo done > eager.txt\"]\noutputs = [\"eager.txt\"]\nmemory = \"1GiB\"\n"
    ));
    let out = s.run(&p, "eager");
    assert!(!out.status.success(), "{}", text(&out));
    let m = Manifest::load(&s.run_dir()).unwrap();
    assert_eq!(stage(&m, "first").state, StageState::Succeeded);
    let eager = stage(&m, "eager");
    assert_eq!(eager.state, StageState::Failed);
    assert_eq!(eager.attempts.len(), 1, "not retried");
    let why = eager.attempts[0].failure.as_deref().unwrap();
    assert!(
        why.contains("ended before its go") && why.contains("BATON_GO_FD"),
        "{why}"
    );
}
