//! `baton-espeak` as baton runs it: text on standard input, a whole WAV file out, clear refusals.
//! (Building this test also builds the program, which baton's own tests run as the voice engine.)

use std::io::Write;
use std::process::{Command, Stdio};

fn speak(args: &[&str], text: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton-espeak"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A program that refuses its arguments may exit before it reads its input: the pipe is
    // then closed under the write, which is its answer, not the test's failure.
    match child.stdin.take().unwrap().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        written => written.unwrap(),
    }
    child.wait_with_output().unwrap()
}

#[test]
fn text_becomes_a_wav_file_and_bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hello.wav");
    let data = dir.path().join("data");
    let ok = speak(
        &[
            "--out",
            out.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        "Hello from the night market.",
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..16], b"WAVEfmt ");
    let rate = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    let data_len = u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize;
    assert_eq!(rate, 22050);
    assert_eq!(data_len + 44, bytes.len());
    // About a second and a half of speech, not an empty or runaway file.
    let seconds = data_len as f64 / 2.0 / rate as f64;
    assert!((0.5..10.0).contains(&seconds), "{seconds} s");
    assert!(!dir.path().join("hello.wav.part").exists());

    let bad = speak(&["--out", out.to_str().unwrap(), "--rate", "9000"], "x");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--rate '9000'"));
    let empty = speak(
        &[
            "--out",
            out.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        "  ",
    );
    assert_eq!(empty.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no text"));
}
