//! The Hugging Face Hub, spoken the way Python's `huggingface_hub` speaks it, so that the same
//! environment variables, mirrors and cache work for both.
//!
//! A file is `{endpoint}/{spaces/}{repo}/resolve/main/{path}`. A HEAD request there answers with
//! the file's size and checksum: for large (LFS) files a redirect to the storage server carrying
//! `X-Linked-Size` and `X-Linked-Etag` (the sha256), for small files a 200 whose `ETag` is the
//! git blob id (sha1 of `"blob {size}\0" + content`). The Python cache keeps each file as
//! `{cache}/{models|spaces}--{owner}--{name}/blobs/{etag}` with `snapshots/{commit}/{path}`
//! linking to it and `refs/main` naming the commit.
//!
//! Not the `hf-hub` crate: it writes only into the hub cache, does not check sha256 and has no
//! cancellation; the models folder needs all three.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{HubFile, RepoKind};

/// Where and how to reach the hub, from the environment as `huggingface_hub` reads it.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// `HF_ENDPOINT`, default `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), else the token file that
    /// `huggingface-cli login` writes (`HF_TOKEN_PATH`, default `$HF_HOME/token`).
    pub token: Option<String>,
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`; `HF_HOME` defaults to `~/.cache/huggingface`.
    pub cache_dir: Option<PathBuf>,
    /// `HF_HUB_OFFLINE=1`: no network at all, only the cache.
    pub offline: bool,
}

impl HubConfig {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            let cache =
                var("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| directories::BaseDirs::new().map(|b| b.home_dir().join(".cache")));
            cache.map(|dir| dir.join("huggingface"))
        });
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let file = var("HF_TOKEN_PATH").map(PathBuf::from).or_else(|| hf_home.as_ref().map(|home| home.join("token")))?;
            std::fs::read_to_string(file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true"));
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()).trim_end_matches('/').to_string(),
            token,
            cache_dir: var("HF_HUB_CACHE").map(PathBuf::from).or_else(|| hf_home.map(|home| home.join("hub"))),
            offline,
        }
    }
}

/// The checksum the hub gives for a file: sha256 for LFS files, the git blob id for the others.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checksum {
    Sha256(String),
    GitSha1(String),
}

impl Checksum {
    /// From an ETag as the hub sends it (possibly quoted or weak).
    pub fn from_etag(etag: &str) -> Option<Self> {
        let hex = etag.trim().trim_start_matches("W/").trim_matches('"').to_ascii_lowercase();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        match hex.len() {
            64 => Some(Checksum::Sha256(hex)),
            40 => Some(Checksum::GitSha1(hex)),
            _ => None,
        }
    }

    /// The name the Python cache gives the blob.
    pub fn hex(&self) -> &str {
        match self {
            Checksum::Sha256(hex) | Checksum::GitSha1(hex) => hex,
        }
    }
}

/// A hub file as the HEAD request describes it.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    pub size: u64,
    pub checksum: Checksum,
    /// Where the bytes are: the storage server for LFS files, the resolve URL otherwise.
    pub download_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{url}: not found (404)")]
    NotFound { url: String },
    #[error("{url}: access denied ({status}); log in to the hub and set HF_TOKEN (and accept the model's terms on its page)")]
    Unauthorized { url: String, status: u16 },
    #[error("{url}: the hub answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: the hub did not say the file's {what}")]
    Incomplete { url: String, what: &'static str },
    /// No connection, a timeout or a cut transfer: worth retrying or falling back to the cache.
    #[error("{url}: {message}")]
    Network { url: String, message: String },
}

/// A client for one hub endpoint.
pub struct Hub {
    pub config: HubConfig,
    agent: ureq::Agent,
}

/// A response body being read, and the offset in the file where it starts.
pub struct Body {
    pub reader: Box<dyn Read + Send>,
    pub start: u64,
}

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            // A stalled transfer (dropped Wi-Fi, a NAT timeout) fails and resumes rather than hangs.
            .timeout_per_read(Some(Duration::from_secs(30)))
            .user_agent(concat!("arc2face-studio/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { config, agent }
    }

    pub fn resolve_url(&self, file: &HubFile) -> String {
        let prefix = match file.kind {
            RepoKind::Model => "",
            RepoKind::Space => "spaces/",
        };
        format!("{}/{prefix}{}/resolve/main/{}", self.config.endpoint, file.repo, file.path)
    }

    /// The file's size, checksum and download location. Relative redirects (a renamed repo) are
    /// followed; an absolute one is the storage server, where the bytes are.
    pub fn head(&self, file: &HubFile) -> Result<RemoteFile, HubError> {
        let mut url = self.resolve_url(file);
        for _ in 0..5 {
            let request = self.authorized(self.agent.head(&url), &url).header("Accept-Encoding", "identity");
            let response =
                request.config().max_redirects(0).max_redirects_will_error(false).build().call().map_err(|e| network(&url, e))?;
            let status = response.status().as_u16();
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let location = header("location");
            match status {
                200 | 301 | 302 | 303 | 307 | 308 => {}
                401 | 403 => return Err(HubError::Unauthorized { url, status }),
                404 => return Err(HubError::NotFound { url }),
                _ => return Err(HubError::Status { url, status }),
            }
            if status != 200 && location.as_deref().is_some_and(|l| l.starts_with('/')) {
                url = format!("{}{}", origin(&url), location.unwrap_or_default());
                continue;
            }
            let checksum = header("x-linked-etag")
                .or_else(|| header("etag"))
                .and_then(|etag| Checksum::from_etag(&etag))
                .ok_or(HubError::Incomplete { url: url.clone(), what: "checksum (ETag)" })?;
            let size = header("x-linked-size")
                .or_else(|| header("content-length"))
                .and_then(|s| s.parse().ok())
                .ok_or(HubError::Incomplete { url: url.clone(), what: "size" })?;
            let download_url = if status == 200 { url } else { location.ok_or(HubError::Incomplete { url, what: "redirect location" })? };
            return Ok(RemoteFile { size, checksum, download_url });
        }
        Err(HubError::Network { url, message: "too many redirects".into() })
    }

    /// The file's bytes from offset `from` on (a range request). A server that ignores the range
    /// sends everything: `Body::start` says which happened.
    pub fn open(&self, remote: &RemoteFile, from: u64) -> Result<Body, HubError> {
        let url = &remote.download_url;
        let mut request = self.authorized(self.agent.get(url), url).header("Accept-Encoding", "identity");
        if from > 0 {
            request = request.header("Range", &format!("bytes={from}-"));
        }
        let response = request.call().map_err(|e| network(url, e))?;
        let status = response.status().as_u16();
        let start = match status {
            206 => from,
            200 => 0,
            // The storage server's links are signed and expire: a fresh HEAD gives a new one.
            401 | 403 if origin(url) != origin(&self.config.endpoint) => {
                return Err(HubError::Network {
                    url: url.clone(),
                    message: format!("the storage server refused the link ({status}); it may have expired"),
                });
            }
            401 | 403 => return Err(HubError::Unauthorized { url: url.clone(), status }),
            404 => return Err(HubError::NotFound { url: url.clone() }),
            _ => return Err(HubError::Status { url: url.clone(), status }),
        };
        Ok(Body { reader: Box::new(response.into_body().into_reader()), start })
    }

    /// A small text document (a package index page), in the format `accept` asks for.
    pub fn get_text(&self, url: &str, accept: &str) -> Result<String, HubError> {
        let response = self.agent.get(url).header("Accept", accept).call().map_err(|e| network(url, e))?;
        match response.status().as_u16() {
            200 => response.into_body().read_to_string().map_err(|e| network(url, e)),
            404 => Err(HubError::NotFound { url: url.to_string() }),
            status => Err(HubError::Status { url: url.to_string(), status }),
        }
    }

    /// The token goes only to the hub itself, never to a storage server it redirects to.
    fn authorized<B>(&self, request: ureq::RequestBuilder<B>, url: &str) -> ureq::RequestBuilder<B> {
        match &self.config.token {
            Some(token) if origin(url) == origin(&self.config.endpoint) => request.header("Authorization", &format!("Bearer {token}")),
            _ => request,
        }
    }

    /// The file in the Python hub cache, if it is there: by checksum when known (the blob's name),
    /// else the snapshot `refs/main` points at. The checksum comes back when the cache says it.
    pub fn cached(&self, file: &HubFile, checksum: Option<&Checksum>) -> Option<(PathBuf, Option<Checksum>)> {
        let kind = match file.kind {
            RepoKind::Model => "models",
            RepoKind::Space => "spaces",
        };
        let repo_dir = self.config.cache_dir.as_ref()?.join(format!("{kind}--{}", file.repo.replace('/', "--")));
        if let Some(checksum) = checksum {
            let blob = repo_dir.join("blobs").join(checksum.hex());
            return blob.is_file().then(|| (blob, Some(checksum.clone())));
        }
        let commit = std::fs::read_to_string(repo_dir.join("refs").join("main")).ok()?;
        let snapshot = repo_dir.join("snapshots").join(commit.trim()).join(file.path);
        let blob = std::fs::canonicalize(&snapshot).ok().filter(|path| path.is_file())?;
        let checksum = blob.file_name().and_then(|name| Checksum::from_etag(&name.to_string_lossy()));
        Some((blob, checksum))
    }
}

fn network(url: &str, error: ureq::Error) -> HubError {
    HubError::Network { url: url.to_string(), message: error.to_string() }
}

/// `scheme://host[:port]` of a URL.
pub(crate) fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..].find('/').map_or(url, |i| &url[..after_scheme + i])
}

/// Computes a [`Checksum`] of the same kind as an expected one, incrementally.
enum FileHasher {
    Sha256(sha2::Sha256),
    GitSha1(sha1::Sha1),
}

impl FileHasher {
    /// A git blob id hashes a header with the size first, so the size must be known up front.
    fn like(expected: &Checksum, size: u64) -> Self {
        use sha1::Digest as _;
        match expected {
            Checksum::Sha256(_) => FileHasher::Sha256(sha2::Sha256::default()),
            Checksum::GitSha1(_) => {
                let mut hasher = sha1::Sha1::new();
                hasher.update(format!("blob {size}\0").as_bytes());
                FileHasher::GitSha1(hasher)
            }
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        match self {
            FileHasher::Sha256(h) => h.update(bytes),
            FileHasher::GitSha1(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Checksum {
        use sha2::Digest as _;
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        match self {
            FileHasher::Sha256(h) => Checksum::Sha256(hex(&h.finalize())),
            FileHasher::GitSha1(h) => Checksum::GitSha1(hex(&h.finalize())),
        }
    }
}

/// The sha256 of a whole file, as lowercase hex.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    checksum_of(path, &Checksum::Sha256(String::new())).map(|c| c.hex().to_string())
}

/// The checksum of a whole file, of the same kind as `expected`.
pub fn checksum_of(path: &Path, expected: &Checksum) -> std::io::Result<Checksum> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = FileHasher::like(expected, file.metadata()?.len());
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buffer)? {
            0 => return Ok(hasher.finish()),
            n => hasher.update(&buffer[..n]),
        }
    }
}
