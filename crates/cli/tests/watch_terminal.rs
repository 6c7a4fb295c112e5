//! `baton watch` in a real terminal (tmux): it draws the devices and processes, and Ctrl-C or
//! `q` leave the terminal as it was.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux must be installed for this test (apt-get install tmux)")
    }

    /// Starts `command` in a detached session "w" of `width` x 30.
    fn session(&self, width: &str, command: &str) {
        let out = self.cmd(&[
            "new-session",
            "-d",
            "-s",
            "w",
            "-x",
            width,
            "-y",
            "30",
            command,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "w"]).stdout).into_owned()
    }

    fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.cmd(&["kill-server"]);
    }
}

fn watch_in_tmux(quit_keys: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let _holder = common::hold(dir.path(), "2x24GiB", &["6GiB", "--device", "1"]);
    let tmux = Tmux {
        socket: format!("baton-test-{}-{}", std::process::id(), quit_keys.join("")),
    };
    let command = format!(
        "BATON_SIM_DIR='{}' BATON_SIM_GPUS=2x24GiB '{}' watch --device sim --interval 100ms; echo EXITED rc=$?; sleep 30",
        dir.path().display(),
        env!("CARGO_BIN_EXE_baton")
    );
    tmux.session("100", &command);

    let screen = tmux.wait_for("the live view", |s| {
        s.contains("processes (1)") && s.contains("reading 3")
    });
    assert!(screen.contains("sim0 Simulated GPU 24.0 GiB"), "{screen}");
    assert!(screen.contains("used 6.0 GiB / 24.0 GiB (25%)"), "{screen}");
    // Temperature, power and clocks (the simulation makes them up from its load).
    assert!(
        screen.contains("42°C · 145/400 W · SM 1980 MHz · mem 2619 MHz"),
        "{screen}"
    );
    assert!(
        screen.contains("baton") && screen.contains("6.0 GiB"),
        "{screen}"
    );

    let mut args = vec!["send-keys", "-t", "w"];
    args.extend_from_slice(quit_keys);
    tmux.cmd(&args);
    let screen = tmux.wait_for("a clean exit", |s| s.contains("EXITED"));
    assert!(screen.contains("EXITED rc=0"), "{screen}");
    assert!(
        !screen.contains("processes ("),
        "the alternate screen must be gone:\n{screen}"
    );
}

#[test]
fn watch_draws_and_quits_on_q() {
    watch_in_tmux(&["q"]);
}

#[test]
fn watch_draws_and_quits_on_ctrl_c() {
    watch_in_tmux(&["C-c"]);
}

/// The process rows name a baton stage's run and stage and every process's command line; `-i`
/// keeps only the devices asked for.
#[test]
fn watch_names_stages_and_selects_devices() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = common::baton(dir.path(), "2x24GiB");
    cmd.env("BATON_RUN_ID", "20261204_093015_cyberpunk_tokyo")
        .env("BATON_STAGE", "images")
        .args(["sim", "hold", "5GiB", "--device", "1"]);
    // Killed when the test ends, pass or fail.
    let stage = common::started(cmd);
    assert!(stage.first_line.contains("holds"), "{}", stage.first_line);
    let tmux = Tmux {
        socket: format!("baton-test-{}-select", std::process::id()),
    };
    let command = format!(
        "BATON_SIM_DIR='{}' BATON_SIM_GPUS=2x24GiB '{}' watch --device sim -i 1 --interval 100ms; echo EXITED rc=$?; sleep 30",
        dir.path().display(),
        env!("CARGO_BIN_EXE_baton")
    );
    tmux.session("120", &command);
    let screen = tmux.wait_for("the live view", |s| {
        s.contains("processes (1)") && s.contains("reading 2")
    });
    assert!(screen.contains("sim1 Simulated GPU 24.0 GiB"), "{screen}");
    assert!(
        !screen.contains("sim0 Simulated"),
        "-i 1 shows sim1 alone:\n{screen}"
    );
    // The stage's name first, then as much of its run's as the column holds.
    assert!(
        screen.contains("images · 20261204_093015_cyber"),
        "{screen}"
    );
    assert!(
        screen.contains("baton sim hold 5GiB --device 1"),
        "{screen}"
    );
    tmux.cmd(&["send-keys", "-t", "w", "q"]);
    let screen = tmux.wait_for("a clean exit", |s| s.contains("EXITED"));
    assert!(screen.contains("EXITED rc=0"), "{screen}");

    // A device the machine does not have is refused before the screen is taken.
    let out = common::baton(dir.path(), "2x24GiB")
        .args(["stats", "--device", "sim", "-i", "7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("-i 7: there is no such device; this machine's are 0, 1"),
        "{err}"
    );
}
