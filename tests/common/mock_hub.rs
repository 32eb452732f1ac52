//! A local stand-in for the Hugging Face Hub (127.0.0.1 only): the hub itself and a storage
//! server on another port, redirects to it for LFS files, HEAD with X-Linked-Etag and
//! X-Linked-Size, range requests, and faults on demand — a connection cut halfway, corrupt
//! bytes, 401 and 404.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha1::Digest as _;

use arc2face_studio::models::hub::{Hub, HubConfig};
use arc2face_studio::models::{ModelFile, RepoKind};

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Fault {
    /// Close the connection after this many body bytes, once.
    CutAfter(usize),
    /// Send flipped bytes, once.
    CorruptOnce,
    /// Always send flipped bytes.
    CorruptAlways,
    /// Refuse the storage link (403, as an expired signed URL), once.
    RefuseOnce,
}

struct Hosted {
    bytes: Vec<u8>,
    lfs: bool,
}

#[derive(Default)]
pub struct State {
    /// By resolve path, `/{spaces/}{repo}/resolve/main/{path}`.
    files: HashMap<String, Hosted>,
    faults: HashMap<String, Fault>,
    pub token: Option<String>,
    /// Documents served as they are at their path (a package index page).
    pages: HashMap<String, String>,
    /// "METHOD path [range] [auth]" of every request, in order.
    log: Vec<String>,
}

pub struct MockHub {
    pub endpoint: String,
    storage_origin: String,
    pub state: Arc<Mutex<State>>,
}

impl MockHub {
    /// Two servers, like the real hub and its storage: different origins, one state.
    pub fn start() -> Self {
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let storage = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", hub.local_addr().unwrap());
        let storage_origin = format!("http://{}", storage.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        for listener in [hub, storage] {
            let (shared, origin) = (state.clone(), storage_origin.clone());
            let accept = move || {
                for stream in listener.incoming().flatten() {
                    let (state, origin) = (shared.clone(), origin.clone());
                    std::thread::Builder::new().name("mock-hub-connection".into()).spawn(move || serve(stream, &state, &origin)).unwrap();
                }
            };
            std::thread::Builder::new().name("mock-hub".into()).spawn(accept).unwrap();
        }
        Self { endpoint, storage_origin, state }
    }

    pub fn host(&self, file: ModelFile, bytes: Vec<u8>, lfs: bool) {
        self.state.lock().unwrap().files.insert(resolve_path(file), Hosted { bytes, lfs });
    }

    /// Bytes on the storage server only (a wheel a package index links to); returns their URL.
    pub fn host_blob(&self, bytes: Vec<u8>) -> String {
        let url = format!("{}/cdn/{}", self.storage_origin, sha256(&bytes));
        self.state.lock().unwrap().files.insert(format!("blob:{url}"), Hosted { bytes, lfs: true });
        url
    }

    pub fn serve_page(&self, path: &str, text: String) {
        self.state.lock().unwrap().pages.insert(path.to_string(), text);
    }

    pub fn fault(&self, file: ModelFile, fault: Fault) {
        self.state.lock().unwrap().faults.insert(resolve_path(file), fault);
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// A client of this hub with `cache` as its Python hub cache.
    pub fn hub(&self, cache: &Path) -> Hub {
        Hub::new(self.config(cache))
    }

    pub fn config(&self, cache: &Path) -> HubConfig {
        HubConfig { endpoint: self.endpoint.clone(), token: None, cache_dir: Some(cache.to_path_buf()), offline: false }
    }
}

fn resolve_path(file: ModelFile) -> String {
    let prefix = if file.source.kind == RepoKind::Space { "spaces/" } else { "" };
    format!("/{prefix}{}/resolve/main/{}", file.source.repo, file.source.path)
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

pub fn git_sha1(bytes: &[u8]) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, storage_origin: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let range_start: usize = headers.get("range").and_then(|r| r.strip_prefix("bytes=")?.trim_end_matches('-').parse().ok()).unwrap_or(0);
    let mut state = state.lock().unwrap();
    state.log.push(format!(
        "{method} {path}{}{}",
        headers.get("range").map(|r| format!(" range={r}")).unwrap_or_default(),
        headers.get("authorization").map(|a| format!(" auth={a}")).unwrap_or_default()
    ));
    let respond = |stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8], cut: Option<usize>| {
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let body = &body[..cut.unwrap_or(body.len()).min(body.len())];
        let _ = stream.write_all(body);
        let _ = stream.flush();
    };

    if let Some(sha) = path.strip_prefix("/cdn/") {
        // The storage server: no token needed, ranges honoured, faults injected here.
        let Some((key, hosted)) = state.files.iter().find(|(_, f)| sha256(&f.bytes) == sha) else {
            return respond(&mut stream, "404 Not Found", &[], b"", None);
        };
        let key = key.clone();
        let mut body = hosted.bytes[range_start.min(hosted.bytes.len())..].to_vec();
        let total = hosted.bytes.len();
        let fault = state.faults.get(&key).copied();
        let mut cut = None;
        match fault {
            Some(Fault::CutAfter(n)) => {
                cut = Some(n);
                state.faults.remove(&key);
            }
            Some(Fault::RefuseOnce) => {
                state.faults.remove(&key);
                return respond(&mut stream, "403 Forbidden", &[("Content-Length".into(), "0".into())], b"", None);
            }
            Some(Fault::CorruptOnce | Fault::CorruptAlways) => {
                body.iter_mut().for_each(|b| *b ^= 0x5a);
                if fault == Some(Fault::CorruptOnce) {
                    state.faults.remove(&key);
                }
            }
            None => {}
        }
        let mut headers = vec![("Content-Length".to_string(), body.len().to_string())];
        let status = if range_start > 0 {
            headers.push(("Content-Range".into(), format!("bytes {range_start}-{}/{total}", total - 1)));
            "206 Partial Content"
        } else {
            "200 OK"
        };
        return respond(&mut stream, status, &headers, &body, cut);
    }

    if let Some(page) = state.pages.get(&path) {
        let page = page.clone().into_bytes();
        return respond(&mut stream, "200 OK", &[("Content-Length".into(), page.len().to_string())], &page, None);
    }
    if let Some(token) = &state.token
        && headers.get("authorization") != Some(&format!("Bearer {token}"))
    {
        return respond(&mut stream, "401 Unauthorized", &[("X-Error-Code".into(), "GatedRepo".into())], b"", None);
    }
    let Some(hosted) = state.files.get(&path) else {
        return respond(&mut stream, "404 Not Found", &[("X-Error-Code".into(), "EntryNotFound".into())], b"", None);
    };
    let commit = ("X-Repo-Commit".to_string(), "0123456789abcdef0123456789abcdef01234567".to_string());
    if hosted.lfs {
        let sha = sha256(&hosted.bytes);
        let headers = [
            ("Location".to_string(), format!("{storage_origin}/cdn/{sha}")),
            ("X-Linked-Etag".into(), format!("\"{sha}\"")),
            ("X-Linked-Size".into(), hosted.bytes.len().to_string()),
            ("ETag".into(), format!("\"{}\"", git_sha1(b"pointer"))),
            ("Content-Length".into(), "0".into()),
            commit,
        ];
        respond(&mut stream, "302 Found", &headers, b"", None);
    } else {
        let headers = [
            ("ETag".to_string(), format!("\"{}\"", git_sha1(&hosted.bytes))),
            ("Content-Length".into(), hosted.bytes.len().to_string()),
            commit,
        ];
        let body = if method == "HEAD" { Vec::new() } else { hosted.bytes.clone() };
        respond(&mut stream, "200 OK", &headers, &body, None);
    }
}
