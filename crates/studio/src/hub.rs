//! Downloads from the Hugging Face hub into the hub's own cache layout, so that baton, Python's
//! `huggingface_hub` and candle's examples share one copy of every model.
//!
//! The layout: `models--OWNER--NAME/blobs/ETAG` holds a file's bytes, `snapshots/COMMIT/PATH` is
//! a relative symlink to its blob, `refs/REVISION` names the commit. A file is asked for with a
//! HEAD of `ENDPOINT/REPO/resolve/REVISION/PATH` (not following redirects), which gives the
//! commit (`X-Repo-Commit`), the blob's id (`X-Linked-Etag` for large files, which is their
//! sha256, else `ETag`), its size and where its bytes are (`Location`). The bytes stream into
//! `blobs/ETAG.incomplete`, resumed with a range request if a previous download was cut; a large
//! file's sha256 is checked before the blob is renamed into place. Nothing half-written is ever
//! visible under its final name.
//!
//! Settings follow `huggingface_hub`: `HF_ENDPOINT` (default https://huggingface.co),
//! `HF_TOKEN` (else the token file `$HF_HOME/token`) for gated models, `HF_HUB_CACHE` or
//! `HF_HOME/hub` (default `~/.cache/huggingface/hub`), and `HF_HUB_OFFLINE=1` to never connect.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Why a file could not be had from the hub.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    #[error("{repo} has no file '{path}' at {revision} ({url} answered 404); check the name")]
    NotFound {
        repo: String,
        path: String,
        revision: String,
        url: String,
    },
    #[error(
        "{repo} is gated or private ({url} answered {status}): accept its licence on huggingface.co, then set HF_TOKEN to a token that may read it"
    )]
    Gated {
        repo: String,
        url: String,
        status: u16,
    },
    #[error("{url} answered {status}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Http {
        url: String,
        status: u16,
        detail: String,
    },
    #[error(
        "cannot reach {url}: {why}; check the network (or HF_ENDPOINT), or put the model in the cache by hand"
    )]
    Network { url: String, why: String },
    #[error("HF_HUB_OFFLINE is set: '{path}' of {repo} is not in the cache at {}", .cache.display())]
    Offline {
        repo: String,
        path: String,
        cache: PathBuf,
    },
    #[error(
        "'{path}' of {repo} arrived damaged: its sha256 is {found}, the hub says {expected}; the download was discarded, fetch again"
    )]
    Checksum {
        repo: String,
        path: String,
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

impl baton_base::fault::Classify for HubError {
    /// A file the hub does not have is a name the user got wrong; being offline, refused,
    /// cut off or given bad bytes is the machine's (or the network's) state.
    fn fault(&self) -> baton_base::fault::Fault {
        use baton_base::fault::Fault;
        match self {
            HubError::NotFound { .. } => Fault::Input,
            _ => Fault::Machine,
        }
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HubError + use<> {
    let path = path.to_path_buf();
    move |source| HubError::Io {
        action,
        path,
        source,
    }
}

/// A download's progress, logged every few seconds and at the end: bytes, share, rate.
pub struct ProgressLine {
    what: String,
    started: std::time::Instant,
    last: Option<std::time::Instant>,
}

impl ProgressLine {
    pub fn new(what: &str) -> ProgressLine {
        ProgressLine {
            what: what.to_string(),
            started: std::time::Instant::now(),
            last: None,
        }
    }

    pub fn show(&mut self, done: u64, total: Option<u64>) {
        let now = std::time::Instant::now();
        let finished = total == Some(done);
        if !finished && self.last.is_some_and(|l| now - l < Duration::from_secs(5)) {
            return;
        }
        self.last = Some(now);
        let secs = (now - self.started).as_secs_f64().max(1e-3);
        let of = total.map_or(String::new(), |t| {
            format!(
                " of {} ({:.0}%)",
                baton_base::format_bytes(t),
                done as f64 * 100.0 / t.max(1) as f64
            )
        });
        tracing::info!(
            "fetching {}: {}{of}, {:.1} MB/s",
            self.what,
            baton_base::format_bytes(done),
            done as f64 / secs / 1e6
        );
    }
}

/// The hub's cache folder: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    let var = |n: &str| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
        .unwrap_or_default()
}

/// `repo`'s folder in the cache.
pub fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// `path` of `repo` in the cache: in the snapshot `refs/main` names when there is one, else in
/// any snapshot that has it.
pub fn find_cached(cache: &Path, repo: &str, path: &str) -> Option<PathBuf> {
    let dir = repo_dir(cache, repo);
    if let Ok(commit) = fs::read_to_string(dir.join("refs/main")) {
        let p = dir.join("snapshots").join(commit.trim()).join(path);
        if p.is_file() {
            return Some(p);
        }
    }
    fs::read_dir(dir.join("snapshots"))
        .ok()?
        .flatten()
        .map(|e| e.path().join(path))
        .find(|p| p.is_file())
}

/// The files a sharded checkpoint's index (`*.safetensors.index.json`) names, sorted, each once.
pub fn shards_in_index(index: &Path) -> Result<Vec<String>, String> {
    let text = fs::read_to_string(index).map_err(|e| format!("'{}': {e}", index.display()))?;
    let parsed: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("'{}': {e}", index.display()))?;
    let mut shards: Vec<String> = parsed["weight_map"]
        .as_object()
        .ok_or_else(|| format!("'{}' has no weight_map", index.display()))?
        .values()
        .filter_map(|v| v.as_str())
        .map(String::from)
        .collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// What a HEAD of a file says.
struct Meta {
    commit: String,
    etag: String,
    /// The etag is the file's sha256 (a large file kept outside git).
    sha256: bool,
    size: Option<u64>,
    location: String,
}

/// A client of one hub endpoint, writing into one cache.
pub struct Hub {
    endpoint: String,
    token: Option<String>,
    cache: PathBuf,
    offline: bool,
    head: ureq::Agent,
    get: ureq::Agent,
}

impl Hub {
    /// A client set up as `huggingface_hub` would be from the environment.
    pub fn from_env() -> Hub {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
        let token = var("HF_TOKEN").or_else(|| {
            let home = var("HF_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")))?;
            fs::read_to_string(home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| v != "0" && v != "false");
        Hub::new(
            var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            token,
            cache_dir(),
            offline,
        )
    }

    pub fn new(endpoint: String, token: Option<String>, cache: PathBuf, offline: bool) -> Hub {
        let agent = |redirects: u32| -> ureq::Agent {
            ureq::Agent::config_builder()
                .max_redirects(redirects)
                .max_redirects_will_error(false)
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(30)))
                .timeout_recv_response(Some(Duration::from_secs(60)))
                .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        };
        Hub {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            cache,
            offline,
            head: agent(0),
            get: agent(10),
        }
    }

    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// `path` of `repo` at `revision`: from the cache if it is there, else downloaded into it.
    /// `progress(done, total)` follows the download.
    pub fn fetch(
        &self,
        repo: &str,
        revision: &str,
        path: &str,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<PathBuf, HubError> {
        if revision == "main"
            && let Some(found) = find_cached(&self.cache, repo, path)
        {
            return Ok(found);
        }
        if self.offline {
            return Err(HubError::Offline {
                repo: repo.into(),
                path: path.into(),
                cache: self.cache.clone(),
            });
        }
        let meta = self.head(repo, revision, path)?;
        let dir = repo_dir(&self.cache, repo);
        let blob = dir.join("blobs").join(&meta.etag);
        if !blob.is_file() {
            self.download(repo, path, &meta, &blob, progress)?;
        }
        let link = dir.join("snapshots").join(&meta.commit).join(path);
        link_blob(&link, &blob, path)?;
        let refs = dir.join("refs");
        fs::create_dir_all(&refs).map_err(io("cannot create", &refs))?;
        baton_base::atomic_file::write_atomic(&refs.join(revision), meta.commit.as_bytes())
            .map_err(|e| HubError::Io {
                action: e.action,
                path: e.path,
                source: e.source,
            })?;
        Ok(link)
    }

    fn head(&self, repo: &str, revision: &str, path: &str) -> Result<Meta, HubError> {
        let mut url = format!("{}/{repo}/resolve/{revision}/{path}", self.endpoint);
        let mut hops = 0;
        let response = loop {
            let mut request = self.head.head(&url).header("Accept-Encoding", "identity");
            if let Some(t) = &self.token {
                request = request.header("Authorization", format!("Bearer {t}"));
            }
            let response = request.call().map_err(|e| HubError::Network {
                url: url.clone(),
                why: e.to_string(),
            })?;
            // A renamed repository answers with a redirect on the hub itself (a relative
            // Location, no commit): follow it, as huggingface_hub does. A redirect to where the
            // bytes are (with the commit) is the answer.
            let relative = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .filter(|l| l.starts_with('/'))
                .map(String::from);
            match relative {
                Some(l)
                    if response.status().is_redirection()
                        && !response.headers().contains_key("x-repo-commit")
                        && hops < 3 =>
                {
                    hops += 1;
                    url = format!("{}{l}", origin(&self.endpoint));
                }
                _ => break response,
            }
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.trim()
                        .trim_matches('"')
                        .trim_start_matches("W/")
                        .trim_matches('"')
                })
                .map(String::from)
        };
        match status {
            200..=399 => {}
            401 | 403 => {
                return Err(HubError::Gated {
                    repo: repo.into(),
                    url,
                    status,
                });
            }
            404 => {
                return Err(HubError::NotFound {
                    repo: repo.into(),
                    path: path.into(),
                    revision: revision.into(),
                    url,
                });
            }
            _ => {
                return Err(HubError::Http {
                    url,
                    status,
                    detail: header("x-error-message").unwrap_or_default(),
                });
            }
        }
        let missing = |what: &str| HubError::Http {
            url: url.clone(),
            status,
            detail: format!("the answer has no {what} header; is HF_ENDPOINT a Hugging Face hub?"),
        };
        let commit = header("x-repo-commit").ok_or_else(|| missing("X-Repo-Commit"))?;
        let (etag, sha256) = match header("x-linked-etag") {
            Some(e) => (e, true),
            None => (header("etag").ok_or_else(|| missing("ETag"))?, false),
        };
        // Both name files and folders: nothing that could climb out of the cache.
        let safe = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !safe(&commit) || !safe(&etag) {
            return Err(missing("usable X-Repo-Commit or ETag"));
        }
        let size = header("x-linked-size")
            .or_else(|| header("content-length"))
            .and_then(|s| s.parse().ok());
        let location = match header("location") {
            Some(l) if l.starts_with("http://") || l.starts_with("https://") => l,
            Some(l) if l.starts_with('/') => format!("{}{l}", origin(&self.endpoint)),
            _ => url.clone(),
        };
        Ok(Meta {
            commit,
            etag,
            sha256,
            size,
            location,
        })
    }

    /// Streams the file into `blob` (via `blob.incomplete`, resumed if it exists).
    fn download(
        &self,
        repo: &str,
        path: &str,
        meta: &Meta,
        blob: &Path,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<(), HubError> {
        let blobs = blob.parent().expect("a blob is in blobs/");
        fs::create_dir_all(blobs).map_err(io("cannot create", blobs))?;
        let partial = blob.with_extension("incomplete");
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        if let Ok(mut f) = fs::File::open(&partial) {
            have = std::io::copy(&mut f, &mut HashWriter(&mut hasher))
                .map_err(io("cannot read", &partial))?;
        }
        let same_host = meta.location.starts_with(&self.endpoint);
        let mut request = self.get.get(&meta.location);
        if same_host && let Some(t) = &self.token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let response = request.call().map_err(|e| HubError::Network {
            url: meta.location.clone(),
            why: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let mut file = match status {
            206 => fs::OpenOptions::new()
                .append(true)
                .open(&partial)
                .map_err(io("cannot open", &partial))?,
            200 => {
                // The server sent it whole: start over.
                hasher = Sha256::new();
                have = 0;
                fs::File::create(&partial).map_err(io("cannot create", &partial))?
            }
            401 | 403 => {
                return Err(HubError::Gated {
                    repo: repo.into(),
                    url: meta.location.clone(),
                    status,
                });
            }
            _ => {
                return Err(HubError::Http {
                    url: meta.location.clone(),
                    status,
                    detail: String::new(),
                });
            }
        };
        let mut reader = response.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = have;
        progress(done, meta.size);
        loop {
            let n = reader.read(&mut buf).map_err(|e| HubError::Network {
                url: meta.location.clone(),
                why: format!(
                    "the download broke off after {done} bytes ({e}); run again to resume"
                ),
            })?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .map_err(io("cannot write", &partial))?;
            hasher.update(&buf[..n]);
            done += n as u64;
            progress(done, meta.size);
        }
        file.sync_all().map_err(io("cannot sync", &partial))?;
        drop(file);
        if let Some(size) = meta.size
            && done != size
        {
            return Err(HubError::Network {
                url: meta.location.clone(),
                why: format!("got {done} of {size} bytes; run again to resume"),
            });
        }
        if meta.sha256 {
            let found = format!("{:x}", hasher.finalize());
            if found != meta.etag {
                let _ = fs::remove_file(&partial);
                return Err(HubError::Checksum {
                    repo: repo.into(),
                    path: path.into(),
                    expected: meta.etag.clone(),
                    found,
                });
            }
        }
        fs::rename(&partial, blob).map_err(io("cannot rename", &partial))
    }
}

/// `scheme://host[:port]` of `url`.
fn origin(url: &str) -> String {
    url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/")
}

/// `link` (in a snapshot) pointing at `blob`, relatively, as the hub's own client does.
fn link_blob(link: &Path, blob: &Path, path: &str) -> Result<(), HubError> {
    let parent = link.parent().expect("a snapshot file has a folder");
    fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
    // snapshots/COMMIT/a/b/file -> ../../../blobs/ETAG: one ".." per folder below the repo.
    let depth = path.matches('/').count() + 2;
    let target = PathBuf::from("../".repeat(depth))
        .join("blobs")
        .join(blob.file_name().expect("a blob has a name"));
    let tmp = link.with_extension("baton-link");
    let _ = fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&target, &tmp).map_err(io("cannot link", &tmp))?;
    #[cfg(not(unix))]
    fs::copy(blob, &tmp).map_err(io("cannot copy", &tmp))?;
    fs::rename(&tmp, link).map_err(io("cannot rename", &tmp))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
