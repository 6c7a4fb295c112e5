//! Downloads from a Hugging Face hub, against a small hub the tests run themselves on
//! 127.0.0.1 (the real one is out of reach here): the cache layout the hub's own client writes,
//! resuming a broken download, refusing damaged bytes, gated repositories, missing files,
//! offline mode, and whole image models fetched by family (fp16 variants preferred, T5's shards
//! found through their index).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use baton_studio::hub::{Hub, HubError};
use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A file the test hub serves: its bytes, whether it is a large (LFS) file, and optionally
/// other bytes to send instead (damage) or a point at which to cut the first transfer.
#[derive(Clone, Default)]
struct Served {
    bytes: Vec<u8>,
    lfs: bool,
    damaged: Option<Vec<u8>>,
    cut_first_at: Option<usize>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Served>,
    gated: Option<String>,
    requests: Vec<String>,
    cut_done: bool,
}

struct TestHub {
    endpoint: String,
    state: Arc<Mutex<State>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TestHub {
    fn start() -> TestHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        TestHub { endpoint, state }
    }

    fn add(&self, repo: &str, path: &str, served: Served) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(format!("{repo}/{path}"), served);
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    fn client(&self, cache: &Path, token: Option<&str>) -> Hub {
        Hub::new(
            self.endpoint.clone(),
            token.map(String::from),
            cache.to_path_buf(),
            false,
        )
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_lowercase(), v.trim().to_string());
        }
    }
    let mut out = stream;
    let mut state = state.lock().unwrap();
    let range = headers.get("range").cloned();
    state.requests.push(format!(
        "{method} {target}{}",
        range
            .as_deref()
            .map_or(String::new(), |r| format!(" [{r}]"))
    ));
    let respond = |out: &mut TcpStream, status: &str, extra: &[(String, String)], body: &[u8]| {
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let _ = out.write_all(head.as_bytes());
        let _ = out.write_all(body);
    };
    if let Some(sha) = target.strip_prefix("/cdn/") {
        let Some(file) = state
            .files
            .values()
            .find(|f| sha256_hex(&f.bytes) == sha)
            .cloned()
        else {
            return respond(&mut out, "404 Not Found", &[], b"");
        };
        let body = file.damaged.clone().unwrap_or(file.bytes.clone());
        let from = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
            .unwrap_or(0);
        let (status, rest) = if from > 0 {
            ("206 Partial Content", &body[from..])
        } else {
            ("200 OK", &body[..])
        };
        let length = vec![("Content-Length".to_string(), rest.len().to_string())];
        if let Some(cut) = file.cut_first_at
            && !state.cut_done
        {
            // Promise it all, send part, hang up.
            state.cut_done = true;
            return respond(&mut out, status, &length, &rest[..cut]);
        }
        return respond(&mut out, status, &length, rest);
    }
    let Some(rest) = target.strip_prefix('/') else {
        return respond(&mut out, "400 Bad Request", &[], b"");
    };
    // /OWNER/NAME/resolve/main/PATH
    let pieces: Vec<&str> = rest.splitn(5, '/').collect();
    let [owner, name, "resolve", "main", path] = pieces[..] else {
        return respond(&mut out, "404 Not Found", &[], b"");
    };
    let repo = format!("{owner}/{name}");
    if repo == "acme/old-name" {
        // A renamed repository: the hub sends the client to the new name.
        let h = vec![(
            "Location".to_string(),
            format!("/acme/model/resolve/main/{path}"),
        )];
        return respond(&mut out, "307 Temporary Redirect", &h, b"");
    }
    if let Some(token) = &state.gated
        && headers.get("authorization") != Some(&format!("Bearer {token}"))
    {
        return respond(&mut out, "401 Unauthorized", &[], b"");
    }
    let Some(file) = state.files.get(&format!("{repo}/{path}")).cloned() else {
        let h = vec![("X-Error-Code".to_string(), "EntryNotFound".to_string())];
        return respond(&mut out, "404 Not Found", &h, b"");
    };
    let commit = ("X-Repo-Commit".to_string(), COMMIT.to_string());
    if file.lfs {
        let sha = sha256_hex(&file.bytes);
        let h = vec![
            commit,
            ("X-Linked-Etag".into(), format!("\"{sha}\"")),
            ("X-Linked-Size".into(), file.bytes.len().to_string()),
            ("Location".into(), format!("/cdn/{sha}")),
            ("Content-Length".into(), "0".into()),
        ];
        respond(&mut out, "302 Found", &h, b"");
    } else {
        let etag = sha256_hex(&file.bytes)[..40].to_string();
        let h = vec![
            commit,
            ("ETag".into(), format!("\"{etag}\"")),
            ("Content-Length".into(), file.bytes.len().to_string()),
        ];
        let body = if method == "HEAD" {
            &[][..]
        } else {
            &file.bytes[..]
        };
        respond(&mut out, "200 OK", &h, body);
    }
}

fn fetch(hub: &Hub, repo: &str, path: &str) -> Result<PathBuf, HubError> {
    hub.fetch(repo, "main", path, &mut |_, _| {})
}

fn big(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn files_land_in_the_hub_cache_layout_and_are_served_from_it_after() {
    let hub = TestHub::start();
    let weights = big(3 << 20, 1);
    hub.add(
        "acme/model",
        "unet/weights.safetensors",
        Served {
            bytes: weights.clone(),
            lfs: true,
            ..Default::default()
        },
    );
    hub.add(
        "acme/model",
        "config.json",
        Served {
            bytes: b"{\"a\": 1}".to_vec(),
            ..Default::default()
        },
    );
    let cache = tempfile::tempdir().unwrap();
    let client = hub.client(cache.path(), None);
    let got = fetch(&client, "acme/model", "unet/weights.safetensors").unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), weights);
    let repo = cache.path().join("models--acme--model");
    assert_eq!(
        got,
        repo.join("snapshots")
            .join(COMMIT)
            .join("unet/weights.safetensors")
    );
    // A relative link to the blob named by the sha256, as huggingface_hub writes it.
    let target = std::fs::read_link(&got).unwrap();
    assert_eq!(
        target,
        PathBuf::from("../../../blobs").join(sha256_hex(&weights))
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let config = fetch(&client, "acme/model", "config.json").unwrap();
    assert_eq!(std::fs::read(&config).unwrap(), b"{\"a\": 1}");
    // Asked under a repository's old name, the hub's redirect is followed.
    let renamed = fetch(&client, "acme/old-name", "config.json").unwrap();
    assert_eq!(std::fs::read(&renamed).unwrap(), b"{\"a\": 1}");
    assert!(
        !std::fs::read_dir(repo.join("blobs"))
            .unwrap()
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "incomplete"))
    );
    // Asked again, both come from the cache: no more requests.
    let before = hub.requests().len();
    fetch(&client, "acme/model", "unet/weights.safetensors").unwrap();
    fetch(&client, "acme/model", "config.json").unwrap();
    assert_eq!(hub.requests().len(), before);
}

#[test]
fn a_broken_download_resumes_where_it_stopped() {
    let hub = TestHub::start();
    let weights = big(4 << 20, 2);
    hub.add(
        "acme/model",
        "big.safetensors",
        Served {
            bytes: weights.clone(),
            lfs: true,
            cut_first_at: Some(1 << 20),
            ..Default::default()
        },
    );
    let cache = tempfile::tempdir().unwrap();
    let client = hub.client(cache.path(), None);
    let err = fetch(&client, "acme/model", "big.safetensors").unwrap_err();
    assert!(err.to_string().contains("run again to resume"), "{err}");
    let snapshot = cache
        .path()
        .join("models--acme--model/snapshots")
        .join(COMMIT)
        .join("big.safetensors");
    assert!(!snapshot.exists(), "nothing under its final name yet");
    let got = fetch(&client, "acme/model", "big.safetensors").unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), weights);
    let ranged: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.contains("[bytes="))
        .collect();
    assert_eq!(ranged.len(), 1, "{:?}", hub.requests());
    assert!(
        ranged[0].ends_with(&format!("[bytes={}-]", 1 << 20)),
        "{ranged:?}"
    );
}

#[test]
fn damaged_bytes_are_refused_and_discarded() {
    let hub = TestHub::start();
    let weights = big(1 << 20, 3);
    let mut damaged = weights.clone();
    damaged[1000] ^= 0xff;
    hub.add(
        "acme/model",
        "w.safetensors",
        Served {
            bytes: weights.clone(),
            lfs: true,
            damaged: Some(damaged),
            ..Default::default()
        },
    );
    let cache = tempfile::tempdir().unwrap();
    let err = fetch(
        &hub.client(cache.path(), None),
        "acme/model",
        "w.safetensors",
    )
    .unwrap_err();
    let said = err.to_string();
    assert!(matches!(err, HubError::Checksum { .. }), "{said}");
    assert!(
        said.contains(&sha256_hex(&weights)) && said.contains("fetch again"),
        "{said}"
    );
    let repo = cache.path().join("models--acme--model");
    let left: Vec<_> = walk(&repo);
    assert!(
        left.iter().all(|p| p.is_dir()),
        "nothing kept of a damaged download: {left:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn a_gated_repository_needs_a_token_and_says_so() {
    let hub = TestHub::start();
    hub.add(
        "acme/gated",
        "w.safetensors",
        Served {
            bytes: big(1000, 4),
            lfs: true,
            ..Default::default()
        },
    );
    hub.state.lock().unwrap().gated = Some("s3cret".into());
    let cache = tempfile::tempdir().unwrap();
    let err = fetch(
        &hub.client(cache.path(), None),
        "acme/gated",
        "w.safetensors",
    )
    .unwrap_err();
    assert!(matches!(err, HubError::Gated { status: 401, .. }), "{err}");
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");
    let wrong = fetch(
        &hub.client(cache.path(), Some("guess")),
        "acme/gated",
        "w.safetensors",
    );
    assert!(matches!(wrong, Err(HubError::Gated { .. })));
    let got = fetch(
        &hub.client(cache.path(), Some("s3cret")),
        "acme/gated",
        "w.safetensors",
    )
    .unwrap();
    assert_eq!(std::fs::read(got).unwrap(), big(1000, 4));
}

#[test]
fn missing_files_unreachable_hubs_and_offline_mode_are_named() {
    let hub = TestHub::start();
    let cache = tempfile::tempdir().unwrap();
    let err = fetch(&hub.client(cache.path(), None), "acme/model", "nope.bin").unwrap_err();
    assert!(matches!(err, HubError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("no file 'nope.bin'"), "{err}");
    // A port nothing listens on.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let unreachable = Hub::new(endpoint.clone(), None, cache.path().to_path_buf(), false);
    let err = fetch(&unreachable, "acme/model", "w.bin").unwrap_err();
    assert!(matches!(err, HubError::Network { .. }), "{err}");
    assert!(err.to_string().contains(&endpoint), "{err}");
    let offline = Hub::new(hub.endpoint.clone(), None, cache.path().to_path_buf(), true);
    let err = fetch(&offline, "acme/model", "w.bin").unwrap_err();
    assert!(matches!(err, HubError::Offline { .. }), "{err}");
    assert!(hub.requests().len() == 1, "offline asked nothing");
}

/// Serves every file under `dir` (a model folder) as `repo`, safetensors as large files,
/// renaming by `rename`.
fn serve_folder(hub: &TestHub, repo: &str, dir: &Path, rename: &dyn Fn(&str) -> String) {
    for p in walk(dir).into_iter().filter(|p| p.is_file()) {
        let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        hub.add(
            repo,
            &rename(&rel),
            Served {
                bytes: std::fs::read(&p).unwrap(),
                lfs: rel.ends_with(".safetensors"),
                ..Default::default()
            },
        );
    }
}

#[test]
fn an_image_family_is_fetched_whole_taking_the_f16_variant_when_there_is_one() {
    use baton_studio::images::{ImageModel, family, random};
    let hub = TestHub::start();
    let made = tempfile::tempdir().unwrap();
    random::write_random_model(
        made.path(),
        family::find("tiny-sd").unwrap(),
        candle_core::DType::F16,
    )
    .unwrap();
    // The repository has the UNet in both variants, the rest in one: the f16 one is taken.
    serve_folder(&hub, "stabilityai/sd-turbo", made.path(), &|rel| {
        rel.replace("model.safetensors", "model.fp16.safetensors")
            .replace("text_encoder/model.fp16", "text_encoder/model")
    });
    hub.add(
        "stabilityai/sd-turbo",
        "unet/diffusion_pytorch_model.safetensors",
        Served {
            bytes: b"the f32 variant, never fetched".to_vec(),
            lfs: true,
            ..Default::default()
        },
    );
    let cache = tempfile::tempdir().unwrap();
    let client = hub.client(cache.path(), None);
    let model = ImageModel::fetch("sd-turbo", &client, &mut |_, _, _| {}).unwrap();
    assert_eq!(model.family.name, "sd-turbo");
    assert!(model.dir.ends_with(COMMIT), "{}", model.dir.display());
    assert!(
        model
            .denoiser
            .ends_with("unet/diffusion_pytorch_model.fp16.safetensors")
    );
    assert!(
        model.encoders[0]
            .weights
            .iter()
            .all(|w| w.ends_with("text_encoder/model.safetensors"))
    );
    assert!(
        !hub.requests()
            .iter()
            .any(|r| r.contains("unet/diffusion_pytorch_model.safetensors") && r.starts_with("GET")),
        "{:?}",
        hub.requests()
    );
    // A family with no repository is not fetched.
    let err = ImageModel::fetch("tiny-sd", &client, &mut |_, _, _| {}).unwrap_err();
    assert!(
        err.to_string().contains("unknown image model 'tiny-sd'"),
        "{err}"
    );
}

#[test]
fn flux_fetches_t5_shards_by_their_index() {
    use baton_studio::images::{ImageModel, family, random};
    let hub = TestHub::start();
    let made = tempfile::tempdir().unwrap();
    random::write_random_model(
        made.path(),
        family::find("tiny-flux").unwrap(),
        candle_core::DType::F32,
    )
    .unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
        "c": "model-00001-of-00002.safetensors"}});
    std::fs::write(
        made.path()
            .join("text_encoder_2/model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    serve_folder(
        &hub,
        "black-forest-labs/FLUX.1-schnell",
        made.path(),
        &|rel| rel.replace("flux1-tiny", "flux1-schnell"),
    );
    let cache = tempfile::tempdir().unwrap();
    let model = ImageModel::fetch(
        "flux-schnell",
        &hub.client(cache.path(), None),
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(model.encoders.len(), 2);
    let shards: Vec<_> = model.encoders[1]
        .weights
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        shards,
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
    assert!(model.denoiser.ends_with("flux1-schnell.safetensors"));
    // Every shard's bytes are the ones served.
    for s in &model.encoders[1].weights {
        let name = s.strip_prefix(&model.dir).unwrap();
        assert_eq!(
            std::fs::read(s).unwrap(),
            std::fs::read(made.path().join(name)).unwrap()
        );
    }
}
