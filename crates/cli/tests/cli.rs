//! The `baton` command as a user meets it: outputs, exit codes and error lines.

mod common;

use std::process::Output;

use common::baton;

fn run(dir: &std::path::Path, gpus: &str, args: &[&str]) -> Output {
    baton(dir, gpus).args(args).output().expect("run baton")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Bad input: exit code 2 and one line on stderr that quotes the value.
fn assert_bad_input(out: &Output, value: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(
        err.contains(&format!("'{value}'")),
        "value {value:?} not named in: {err}"
    );
}

#[test]
fn bad_input_gets_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_bad_input(&run(d, "1x24GiB", &["stats", "--device", "tpu"]), "tpu");
    assert_bad_input(&run(d, "3x", &["stats", "--device", "sim"]), "3x");
    assert_bad_input(&run(d, "1x24GiB", &["watch", "--interval", "0"]), "0");
    assert_bad_input(&run(d, "1x24GiB", &["watch", "--interval", "soon"]), "soon");
    let unwritable = d.join("no-such-folder").join("log.jsonl");
    let out = run(
        d,
        "1x24GiB",
        &[
            "watch",
            "--device",
            "sim",
            "--jsonl",
            unwritable.to_str().unwrap(),
        ],
    );
    assert_bad_input(&out, unwritable.to_str().unwrap());
    assert_bad_input(&run(d, "1x24GiB", &["sim", "hold", "lots"]), "lots");
    let out = run(d, "1x24GiB", &["sim", "hold", "1GiB", "--device", "3"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no device 3 on sim"),
        "{}",
        stderr(&out)
    );
    assert_bad_input(&run(d, "1x24GiB", &["run", "--topic", "  "]), "  ");
}

#[test]
fn stats_names_its_backend_and_auto_explains_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), "1x24GiB", &["stats"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.lines().next().unwrap();
    // With a driver, auto uses it; without one, it says so and shows host memory.
    assert!(
        first.starts_with("backend: nvml")
            || (first.starts_with("no NVIDIA driver found") && text.contains("host0")),
        "{text}"
    );
    let out = run(
        dir.path(),
        "1x24GiB",
        &["stats", "--device", "host", "--json"],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["backend"], "host");
    assert!(json["devices"][0]["total"].as_u64().unwrap() > 0);
}

#[test]
fn sim_stats_show_every_simulated_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), "2x24GiB", &["stats", "--device", "sim"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("sim0") && text.contains("sim1") && !text.contains("sim2"),
        "{text}"
    );
    assert!(text.contains("0 B / 24.0 GiB"), "{text}");
    assert!(text.contains("no process holds memory"), "{text}");
}

#[test]
fn watch_without_a_terminal_prints_lines_and_appends_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("watch.jsonl");
    std::fs::write(&jsonl, "{\"earlier\":true}\n").unwrap();
    let _holder = common::hold(dir.path(), "2x24GiB", &["1GiB", "--device", "1"]);
    let out = run(
        dir.path(),
        "2x24GiB",
        &[
            "watch",
            "--device",
            "sim",
            "--interval",
            "50ms",
            "--ticks",
            "3",
            "--jsonl",
            jsonl.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(" sim1 used 1.0 GiB"))
            .count(),
        3,
        "{text}"
    );
    let lines: Vec<String> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines.len(),
        4,
        "the earlier line is kept and 3 are appended"
    );
    assert_eq!(lines[0], "{\"earlier\":true}");
    for line in &lines[1..] {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["backend"], "sim");
        assert_eq!(record["devices"][1]["used"], common::GIB);
        assert!(record["unix_ms"].as_u64().unwrap() > 0);
    }
}

#[test]
fn a_closed_pipe_is_a_clean_exit() {
    use std::io::Read;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    // A reader that goes away while watch still has readings to print, as `| head -1` does.
    let mut child = baton(dir.path(), "1x24GiB")
        .args([
            "watch",
            "--device",
            "sim",
            "--interval",
            "10ms",
            "--ticks",
            "1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.is_empty(), "{err}");
}

/// `baton bench load` on the CPU: the checks before the timings (both formats bit-exact, four
/// broken files refused with memory verified), then a safetensors and a GGUF file timed by
/// pread and by mapping, beside candle's own loaders, in the table and the JSON.
#[test]
fn bench_load_checks_then_times_safetensors_and_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let json = d.join("load.json");
    let out = run(
        d,
        "1x24GiB",
        &[
            "bench",
            "load",
            "--compute",
            "cpu",
            "--sizes",
            "1MiB",
            "--gguf-sizes",
            "1MiB",
            "--repeat",
            "1",
            "--lanes",
            "3",
            "--chunk",
            "1MiB",
            "--read",
            "pread,mmap",
            "--dir",
            d.join("files").to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert_eq!(
        text.matches("bit-exact with candle's loader on this device")
            .count(),
        3,
        "{text}"
    );
    assert_eq!(
        text.matches("GGUF bit-exact with candle's reader").count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches("refused: ").count(), 4, "{text}");
    assert!(text.contains("truncated.gguf"), "{text}");
    for row in [
        "page cache read only, 16 threads (no GPU)",
        "baton, warm, 3 lanes x 1.0 MiB x 2",
        "baton mmap, warm, 3 lanes x 1.0 MiB x 2",
        "baton, cold",
        "candle safetensors::load, warm",
        "GGUF baton, warm, 3 lanes x 1.0 MiB x 2",
        "GGUF baton mmap, warm, 3 lanes x 1.0 MiB x 2",
        "GGUF candle Content::tensor, warm",
    ] {
        assert!(
            text.contains(&format!("\n{row} ")),
            "no row '{row}' in {text}"
        );
    }
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert!(rows.len() >= 12, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["gb_per_second"].as_f64().unwrap() > 0.0)
    );
    // The benchmark's files are removed afterwards (no --keep).
    let left: Vec<_> = std::fs::read_dir(d.join("files"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Shell completions name the commands and their flags; the manual is roff, one page per
/// command with --dir.
#[test]
fn completions_and_man_pages_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(d, "1x24GiB", &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["resume", "images", "topic", "rerun", "image-model"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let bad = run(d, "1x24GiB", &["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
    let out = run(d, "1x24GiB", &["man"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(".TH baton 1") && page.contains("resume"),
        "{page}"
    );
    let pages = d.join("man");
    let out = run(d, "1x24GiB", &["man", "--dir", pages.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run_page = std::fs::read_to_string(pages.join("baton-run.1")).unwrap();
    assert!(
        run_page.contains(".TH baton-run 1") && run_page.contains("\\-\\-seed"),
        "{run_page}"
    );
    assert!(pages.join("baton-images.1").is_file() && pages.join("baton.1").is_file());
}

/// -q leaves stderr to errors (no progress lines, no log), -v adds debug lines; both reach
/// the stages through BATON_LOG.
#[test]
fn quiet_and_verbose_set_what_stderr_says() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("p.toml"),
        "[[stage]]\nname = \"a\"\ncommand = [\"sh\", \"-c\", \"echo $BATON_LOG > log.txt\"]\noutputs = [\"log.txt\"]\n",
    )
    .unwrap();
    let go = |flag: &str, topic: &str| {
        let mut cmd = baton(&d.join("sim"), "1x24GiB");
        cmd.current_dir(d);
        if !flag.is_empty() {
            cmd.arg(flag);
        }
        cmd.args([
            "run",
            "--device",
            "sim",
            "--pipeline",
            "p.toml",
            "--topic",
            topic,
        ])
        .output()
        .unwrap()
    };
    let plain = go("", "plain");
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert!(stderr(&plain).contains("a succeeded"), "{}", stderr(&plain));
    let quiet = go("-q", "quiet");
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert_eq!(
        stderr(&quiet),
        "",
        "-q says nothing when nothing goes wrong"
    );
    assert!(
        String::from_utf8_lossy(&quiet.stdout).contains("succeeded"),
        "the table stays"
    );
    let verbose = go("-v", "verbose");
    assert!(verbose.status.success(), "{}", stderr(&verbose));
    assert!(stderr(&verbose).contains("DEBUG"), "{}", stderr(&verbose));
    let log_of = |topic: &str| {
        let run = std::fs::read_dir(d.join("output"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(topic))
            .unwrap();
        std::fs::read_to_string(run.join("log.txt")).unwrap()
    };
    assert_eq!(log_of("quiet").trim(), "error");
    assert!(log_of("verbose").contains("debug"));
}

/// --json: run, resume and batch end with one JSON document on stdout (progress stays on
/// stderr); stats' carries the time of its readings.
#[test]
fn json_summaries_of_run_resume_batch_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("p.toml"),
        "[[stage]]\nname = \"a\"\ncommand = [\"sh\", \"-c\", \"echo x > a.txt\"]\noutputs = [\"a.txt\"]\n",
    )
    .unwrap();
    std::fs::write(d.join("topics.txt"), "one\ntwo\n").unwrap();
    let go = |args: &[&str]| {
        let out = baton(&d.join("sim"), "1x24GiB")
            .current_dir(d)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        json
    };
    let run = go(&[
        "run",
        "--json",
        "--device",
        "sim",
        "--pipeline",
        "p.toml",
        "--topic",
        "t",
    ]);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["stages"][0]["name"], "a");
    assert_eq!(run["stages"][0]["memory_back"], true);
    let dir_of_run = run["dir"].as_str().unwrap().to_string();
    let resumed = go(&["resume", "--json", &dir_of_run]);
    assert_eq!(resumed["resumed"][0]["kept"], true, "{resumed}");
    assert_eq!(resumed["state"], "succeeded");
    let batch = go(&[
        "batch",
        "topics.txt",
        "--json",
        "--device",
        "sim",
        "--pipeline",
        "p.toml",
    ]);
    assert_eq!(batch["topics"], 2, "{batch}");
    assert_eq!(batch["succeeded"], 2);
    assert_eq!(batch["runs"].as_array().unwrap().len(), 2);
    let stats = go(&["stats", "--json", "--device", "sim"]);
    assert!(
        stats["unix_ms"].as_u64().unwrap() > 1_700_000_000_000,
        "{stats}"
    );
}

/// `baton metrics`: DCGM's device memory names and a running stage's memory under its run and
/// stage (a process the runner would have started: its environment names them), once on stdout
/// and served over HTTP; `promtool check metrics` accepts it where Prometheus is installed
/// (scripts/ci-deps.sh installs it for CI).
#[test]
fn metrics_name_a_running_stages_memory_and_pass_promtool() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    let mut cmd = baton(&sim, "2x24GiB");
    cmd.env("BATON_RUN_ID", "20261204_120000_tokyo")
        .env("BATON_STAGE", "images")
        .args(["sim", "hold", "3GiB", "--device", "1"]);
    // Killed when the test ends, pass or fail.
    let mut stage = common::started(cmd);
    assert!(stage.first_line.contains("holds"), "{}", stage.first_line);
    let out = run(&sim, "2x24GiB", &["metrics", "--device", "sim"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("DCGM_FI_DEV_FB_USED{gpu=\"1\",uuid=\"sim-1\",device=\"sim1\"")
            && text
                .lines()
                .any(|l| l.starts_with("DCGM_FI_DEV_FB_USED{gpu=\"1\"") && l.ends_with(" 3072")),
        "{text}"
    );
    let staged = format!(
        "baton_stage_memory_bytes{{gpu=\"1\",uuid=\"sim-1\",run=\"20261204_120000_tokyo\",stage=\"images\"}} {}",
        3u64 << 30
    );
    assert!(text.contains(&staged), "{text}");
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok()
    {
        let (clean, said) = piped("promtool", &["check", "metrics"], &text);
        assert!(clean, "promtool: {said}");
    } else {
        eprintln!(
            "promtool is not installed: the format check is skipped (scripts/ci-deps.sh installs it)"
        );
    }

    // Served: a fresh reading per scrape; other paths 404.
    let mut cmd = baton(&sim, "2x24GiB");
    cmd.args(["metrics", "--device", "sim", "--serve", "127.0.0.1:0"]);
    let server = common::started(cmd);
    let first = &server.first_line;
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("{first}"));
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    };
    let reply = get("/metrics");
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(reply.contains(&staged), "{reply}");
    // The sensors, under DCGM's names (the simulation's are made up from its load: 3 of 24 GiB).
    for line in [
        "DCGM_FI_DEV_GPU_TEMP{gpu=\"1\",uuid=\"sim-1\",device=\"sim1\",",
        "DCGM_FI_DEV_POWER_USAGE{gpu=\"1\"",
        "DCGM_FI_DEV_SM_CLOCK{gpu=\"1\"",
    ] {
        assert!(reply.contains(line), "{line}: {reply}");
    }
    assert!(
        reply
            .lines()
            .any(|l| l.starts_with("DCGM_FI_DEV_GPU_TEMP{gpu=\"1\"") && l.ends_with(" 36")),
        "{reply}"
    );
    assert!(get("/").starts_with("HTTP/1.1 404"));
    scraped_by_prometheus(addr, dir.path());
    stage.kill();
    let reply = get("/metrics");
    assert!(
        !reply.contains("stage=\"images\""),
        "the stage is gone: {reply}"
    );
}

/// A real Prometheus server (Debian's `prometheus`, which scripts/ci-deps.sh installs) scrapes
/// `addr` every second; its query API then names the running stage's memory. Skipped, saying so,
/// where Prometheus is not installed.
fn scraped_by_prometheus(addr: &str, dir: &std::path::Path) {
    use std::io::{Read, Write};
    if std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "prometheus is not installed: the scrape is skipped (scripts/ci-deps.sh installs it)"
        );
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: baton\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed when this ends, pass or fail.
    let _server = common::Holder {
        child,
        first_line: String::new(),
    };
    let query = || -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(
            s,
            "GET /api/v1/query?query=baton_stage_memory_bytes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        Some(reply)
    };
    let start = std::time::Instant::now();
    loop {
        let reply = query().unwrap_or_default();
        if reply.contains("\"stage\":\"images\"") {
            assert!(reply.contains(&format!("\"{}\"", 3u64 << 30)), "{reply}");
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "Prometheus never scraped the stage's memory: {reply}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `program args` with `input` on its stdin: whether it succeeded saying nothing, and what it
/// said.
fn piped(program: &str, args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.trim().is_empty(), said)
}
