//! ONNX Runtime for face analysis, fetched the way `scripts/onnxruntime.sh` does it: the pinned
//! `onnxruntime` wheel from the package index pip uses (its JSON simple API, PEP 691; checked
//! against the index's sha256), its shared library taken out and checked against the sha256
//! pinned here, then put where `face::runtime` looks for it.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::check::partial_path;
use super::download::{self, DownloadError, DownloadEvent};
use super::hub::{Checksum, Hub, RemoteFile};
use crate::face::runtime::ONNXRUNTIME_VERSION;

/// Where the wheel comes from: pip's index (`PIP_INDEX_URL`, default PyPI).
pub fn index_url() -> String {
    std::env::var("PIP_INDEX_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "https://pypi.org/simple".into())
}

/// The library of this platform: which wheel has it, its path inside, and its sha256.
#[derive(Debug, Clone)]
pub struct PinnedLibrary {
    /// A wheel is for this platform when its file name contains every one of these.
    pub wheel_tags: &'static [&'static str],
    pub member: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
}

/// The pinned library for this platform; only Linux x86_64 is pinned so far.
pub fn pinned() -> Option<PinnedLibrary> {
    if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        Some(PinnedLibrary {
            wheel_tags: &["manylinux", "x86_64"],
            member: "onnxruntime/capi/libonnxruntime.so.1.31.1",
            file_name: "libonnxruntime.so.1.31.1",
            // The same value as in scripts/onnxruntime.sh.
            sha256: "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
        })
    } else {
        None
    }
}

/// A project page of the JSON simple API.
#[derive(serde::Deserialize)]
struct Project {
    files: Vec<ProjectFile>,
}

#[derive(serde::Deserialize)]
struct ProjectFile {
    filename: String,
    url: String,
    size: u64,
    hashes: Hashes,
}

#[derive(serde::Deserialize)]
struct Hashes {
    sha256: String,
}

/// Puts the pinned library into `dir` (unless it is already there) and returns its path.
/// `report` hears about the wheel's download.
pub fn install(
    dir: &Path,
    index: &str,
    library: &PinnedLibrary,
    hub: &Hub,
    cancel: &AtomicBool,
    report: &dyn Fn(DownloadEvent),
) -> Result<PathBuf, DownloadError> {
    let dest = dir.join(library.file_name);
    if super::hub::sha256_of(&dest).is_ok_and(|sha| sha == library.sha256) {
        return Ok(dest);
    }
    std::fs::create_dir_all(dir).map_err(|e| other(dir, e))?;
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(DownloadError::Cancelled);
    }
    let url = format!("{}/onnxruntime/", index.trim_end_matches('/'));
    let project: Project = serde_json::from_str(&hub.get_text(&url, "application/vnd.pypi.simple.v1+json")?)
        .map_err(|e| DownloadError::Other(format!("{url}: not a package index page (PEP 691 JSON): {e}")))?;
    let prefix = format!("onnxruntime-{ONNXRUNTIME_VERSION}-");
    let wheel = project
        .files
        .iter()
        .find(|f| {
            f.filename.starts_with(&prefix) && f.filename.ends_with(".whl") && library.wheel_tags.iter().all(|tag| f.filename.contains(tag))
        })
        .ok_or_else(|| DownloadError::Other(format!("{url}: no onnxruntime {ONNXRUNTIME_VERSION} wheel for this platform")))?;
    // PEP 691 allows links relative to the page (private indexes use them).
    let download_url = match &wheel.url {
        absolute if absolute.contains("://") => absolute.clone(),
        rooted if rooted.starts_with('/') => format!("{}{rooted}", super::hub::origin(&url)),
        relative => format!("{url}{relative}"),
    };
    let remote = RemoteFile { size: wheel.size, checksum: Checksum::Sha256(wheel.hashes.sha256.to_ascii_lowercase()), download_url };
    let wheel_part = dir.join(format!("{}.part", wheel.filename));
    download::fetch_with_retries(hub, remote.clone(), &|| Ok(remote.clone()), &wheel_part, cancel, report)?;
    let extracted = extract(&wheel_part, library, &dest);
    let _ = std::fs::remove_file(&wheel_part);
    extracted?;
    Ok(dest)
}

/// Copies the library out of the wheel, checks it against the pinned sha256, moves it into place.
fn extract(wheel: &Path, library: &PinnedLibrary, dest: &Path) -> Result<(), DownloadError> {
    let file = std::fs::File::open(wheel).map_err(|e| other(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| other(wheel, e))?;
    let mut member = archive.by_name(library.member).map_err(|e| other(wheel, format!("{}: {e}", library.member)))?;
    let part = partial_path(dest);
    let mut out = std::fs::File::create(&part).map_err(|e| other(&part, e))?;
    std::io::copy(&mut member, &mut out).map_err(|e| other(&part, e))?;
    let sha = super::hub::sha256_of(&part).map_err(|e| other(&part, e))?;
    if sha != library.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(DownloadError::Other(format!(
            "{} in {} has sha256 {sha}, not the pinned {}",
            library.member,
            wheel.display(),
            library.sha256
        )));
    }
    std::fs::rename(&part, dest).map_err(|e| other(dest, e))
}

fn other(path: &Path, error: impl std::fmt::Display) -> DownloadError {
    DownloadError::Other(format!("{}: {error}", path.display()))
}
