//! The supervisor stays light: no tensor library, no CUDA, no tokenizer and no HTTP client in
//! `baton` or the crates it is made of, even in a build that turns CUDA on for the stage
//! program beside it (cargo unifies features across one build); the binary needs no CUDA
//! library to load; and it starts and reads devices with nothing on the loader path.

use std::path::Path;
use std::process::Command;

/// Crates that must never be in the supervisor's dependency graph: the tensor stack and CUDA,
/// the tokenizers and the grammar engine, and HTTP clients.
const HEAVY: &[&str] = &[
    "candle-core",
    "candle-nn",
    "candle-transformers",
    "cudarc",
    "ug-cuda",
    "llguidance",
    "tokenizers",
    "toktrie_hf_tokenizers",
    "ureq",
    "hyper",
    "reqwest",
    "rustls",
];

/// `cargo tree` over the workspace, as the build that runs these tests resolved it.
fn cargo_tree(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .args(["tree", "--locked", "-e", "normal,build", "--prefix", "none"])
        .args(args)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn crates_in(tree: &str) -> Vec<&str> {
    tree.lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

#[test]
fn no_heavy_crate_in_the_supervisor_or_the_runner() {
    for package in [
        "baton",
        "baton-runner",
        "baton-content",
        "baton-memory",
        "baton-base",
    ] {
        let tree = cargo_tree(&["-p", package]);
        let found: Vec<&str> = crates_in(&tree)
            .into_iter()
            .filter(|c| HEAVY.contains(c))
            .collect();
        assert!(found.is_empty(), "{package} depends on {found:?}:\n{tree}");
        assert!(
            crates_in(&tree).contains(&package),
            "cargo tree printed nothing useful for {package}:\n{tree}"
        );
    }
}

#[test]
fn a_cuda_build_of_the_stage_program_does_not_reach_the_supervisor() {
    // Everything that depends on cudarc when the stage program is built with CUDA, in the
    // same resolve as the supervisor: the stage program is there, the supervisor is not.
    let tree = cargo_tree(&[
        "-p",
        "baton",
        "-p",
        "baton-stages",
        "--features",
        "baton-stages/cuda",
        "--invert",
        "cudarc",
    ]);
    let dependents = crates_in(&tree);
    assert!(dependents.contains(&"baton-stages"), "{tree}");
    assert!(!dependents.contains(&"baton"), "{tree}");
    assert!(!dependents.contains(&"baton-runner"), "{tree}");
}

/// The `DT_NEEDED` entries of an ELF64 little-endian file: the libraries the loader must find
/// before the program's first instruction runs.
fn needed_libraries(path: &Path) -> Vec<String> {
    let elf = std::fs::read(path).unwrap();
    assert_eq!(
        &elf[..4],
        b"\x7fELF",
        "{} is not an ELF file",
        path.display()
    );
    assert_eq!((elf[4], elf[5]), (2, 1), "expected ELF64 little-endian");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    let section = |i: usize| {
        let at = shoff + i * shentsize;
        // (type, offset, size, link)
        (
            u32::from_le_bytes(elf[at + 4..at + 8].try_into().unwrap()),
            u64_at(at + 0x18),
            u64_at(at + 0x20),
            u32::from_le_bytes(elf[at + 0x28..at + 0x2c].try_into().unwrap()) as usize,
        )
    };
    const SHT_DYNAMIC: u32 = 6;
    const DT_NEEDED: u64 = 1;
    let mut needed = Vec::new();
    for i in 0..shnum {
        let (kind, offset, size, link) = section(i);
        if kind != SHT_DYNAMIC {
            continue;
        }
        let (_, strtab, _, _) = section(link);
        for entry in (offset..offset + size).step_by(16) {
            let (tag, value) = (u64_at(entry) as u64, u64_at(entry + 8));
            if tag == DT_NEEDED {
                let name = &elf[strtab + value..];
                let end = name.iter().position(|&b| b == 0).unwrap();
                needed.push(String::from_utf8_lossy(&name[..end]).into_owned());
            }
        }
    }
    needed
}

#[test]
fn the_supervisor_loads_without_cuda_and_starts_with_nothing_on_the_loader_path() {
    let baton = Path::new(env!("CARGO_BIN_EXE_baton"));
    let needed = needed_libraries(baton);
    assert!(
        needed.iter().any(|l| l.starts_with("libc.so")),
        "{needed:?}"
    );
    for lib in &needed {
        for cuda in [
            "libcuda",
            "libcudart",
            "libcublas",
            "libcurand",
            "libnvrtc",
            "libnvidia-ml",
        ] {
            assert!(
                !lib.starts_with(cuda),
                "baton links {lib} at load time: {needed:?}"
            );
        }
    }
    // No loader path, no CUDA, no driver (NVML is loaded at run time and its absence is a
    // reason, not a crash): --version and stats still answer.
    let run = |args: &[&str]| {
        Command::new(baton)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap()
    };
    let version = run(&["--version"]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("baton "));
    let stats = run(&["stats", "--json"]);
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert!(
        !report["devices"].as_array().unwrap().is_empty(),
        "{report}"
    );
}
