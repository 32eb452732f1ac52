//! Fetching the files of the models folder: from the Python hub cache when they are there,
//! otherwise from the hub, a few at once. Bytes go to `<file>.part`, which survives a cut
//! connection or a cancel and is resumed with a range request; only a file whose size and
//! checksum match the hub's is renamed into place, so the folder never holds a corrupt file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::check::{self, Checksums, FileState, Recorded, partial_path};
use super::hub::{Checksum, Hub, HubError, RemoteFile};
use super::{ModelFile, ModelsDir};

/// Tries without progress per file: a cut connection resumes, a checksum mismatch starts over.
const ATTEMPTS: usize = 3;

/// What happens to one file, reported as it happens (from several threads at once).
#[derive(Debug, Clone, PartialEq)]
pub enum DownloadEvent {
    /// Bytes will flow: `done` of them are already there (a resumed `.part` or the cache).
    Started {
        total: u64,
        done: u64,
        from_cache: bool,
    },
    Progress {
        done: u64,
    },
    /// The transfer broke; trying again from where it stopped.
    Retrying {
        message: String,
    },
    Finished,
    /// The file was already in the folder.
    AlreadyPresent,
    Failed {
        message: String,
    },
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Hub(#[from] HubError),
    /// No connection to the hub at all (name lookup, connect), and no copy in the cache.
    #[error("not in the Hugging Face cache, and the hub cannot be reached")]
    Unreachable,
    #[error("{0}")]
    Other(String),
    #[error("cancelled")]
    Cancelled,
}

/// How a batch of files is fetched.
#[derive(Debug, Clone, Copy)]
pub struct DownloadOptions {
    /// Files fetched at once.
    pub parallel: usize,
    /// Fetch files that are present too (ones `verify` found wrong); the old file stays until
    /// the new one is verified.
    pub replace: bool,
}

/// How a batch of downloads ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadSummary {
    pub failed: usize,
    /// Set when the hub could not be reached at all: what to tell the user, once.
    pub unreachable: Option<String>,
}

/// What to tell someone whose machine cannot reach the hub.
pub fn unreachable_message(endpoint: &str) -> String {
    format!(
        "The Hugging Face Hub ({endpoint}) cannot be reached: check the network connection or proxy; set HF_ENDPOINT \
         to use a mirror; or point the app at a folder that already holds the files (Change folder…, or --models)"
    )
}

/// Fetches `files` into `models`. `report(i, event)` hears about `files[i]`; `cancel` stops
/// every transfer within one read, keeping the `.part` files. Once the hub turns out to be
/// unreachable, the remaining files are only looked for in the cache.
pub fn download_all(
    models: &ModelsDir,
    files: &[ModelFile],
    hub: &Hub,
    options: DownloadOptions,
    cancel: &AtomicBool,
    report: &(dyn Fn(usize, DownloadEvent) + Sync),
) -> DownloadSummary {
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let unreachable = AtomicBool::new(hub.config.offline);
    let checksums = Mutex::new(());
    std::thread::scope(|scope| {
        for _ in 0..options.parallel.clamp(1, files.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&file) = files.get(index) else { break };
                    let result = if cancel.load(Ordering::Relaxed) {
                        Err(DownloadError::Cancelled)
                    } else {
                        let network = !unreachable.load(Ordering::Relaxed);
                        download_file(models, file, hub, options.replace, network, cancel, &checksums, &|event| report(index, event))
                    };
                    let event = match result {
                        Ok(event) => event,
                        Err(DownloadError::Cancelled) => DownloadEvent::Cancelled,
                        Err(e) => {
                            if matches!(e, DownloadError::Unreachable) {
                                unreachable.store(true, Ordering::Relaxed);
                            }
                            failed.fetch_add(1, Ordering::Relaxed);
                            DownloadEvent::Failed { message: e.to_string() }
                        }
                    };
                    report(index, event);
                }
            });
        }
    });
    let unreachable = (unreachable.into_inner() && !hub.config.offline).then(|| unreachable_message(&hub.config.endpoint));
    DownloadSummary { failed: failed.into_inner(), unreachable }
}

/// One file: skip it if present and right, else find it (hub metadata, then cache or network;
/// only the cache without `network`), verify it, move it into place and record its checksum.
#[allow(clippy::too_many_arguments)]
fn download_file(
    models: &ModelsDir,
    file: ModelFile,
    hub: &Hub,
    replace: bool,
    network: bool,
    cancel: &AtomicBool,
    checksums: &Mutex<()>,
    report: &dyn Fn(DownloadEvent),
) -> Result<DownloadEvent, DownloadError> {
    let dest = models.path(file);
    let state = check::file_state(models, file, &Checksums::read(models));
    if matches!(state, FileState::Present { .. }) && !replace {
        return Ok(DownloadEvent::AlreadyPresent);
    }
    // The file is already here, one folder too deep: move it rather than download it again.
    if let Some(nested) = check::nested_copy(models, file)
        && !dest.exists()
        && check::check_structure(file, &nested).is_ok()
    {
        std::fs::rename(&nested, &dest).map_err(|e| io_error(&dest, e))?;
        return Ok(DownloadEvent::Finished);
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    }
    let lock = PartLock::acquire(&dest)?;
    let remote = if !network {
        None
    } else {
        match hub.head(&file.source) {
            Ok(remote) => Some(remote),
            // Without a connection, the cache may still have it (as huggingface_hub does).
            Err(HubError::Network { .. }) => match hub.cached(&file.source, None) {
                Some(_) => None,
                None => return Err(DownloadError::Unreachable),
            },
            Err(e) => return Err(e.into()),
        }
    };
    let (verified, recorded) = match remote {
        Some(remote) => match hub.cached(&file.source, Some(&remote.checksum)) {
            Some((cached, _)) => copy_from_cache(&cached, &dest, remote.size, &remote.checksum, cancel, report)?,
            None => {
                let part = partial_path(&dest);
                lock.discard_part_unless_for(&remote.checksum);
                let refresh = || hub.head(&file.source);
                let recorded = fetch_with_retries(hub, remote, &refresh, &part, cancel, report)?;
                (part, recorded)
            }
        },
        None => {
            let not_cached = || match hub.config.offline {
                true => DownloadError::Other(format!(
                    "{} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE forbids downloading it",
                    file.relative_path,
                    hub.config.cache_dir.as_ref().map_or("none".into(), |d| d.display().to_string())
                )),
                false => DownloadError::Unreachable,
            };
            let (cached, checksum) = hub.cached(&file.source, None).ok_or_else(not_cached)?;
            let size = std::fs::metadata(&cached).map_err(|e| io_error(&cached, e))?.len();
            match checksum {
                Some(checksum) => copy_from_cache(&cached, &dest, size, &checksum, cancel, report)?,
                None => return Err(DownloadError::Other(format!("{}: cannot tell its checksum; not used", cached.display()))),
            }
        }
    };
    std::fs::rename(&verified, &dest).map_err(|e| io_error(&dest, e))?;
    drop(lock);
    let _one_writer = checksums.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Checksums::record(models, file, recorded).map_err(|e| io_error(&models.root().join(Checksums::FILE_NAME), e))?;
    Ok(DownloadEvent::Finished)
}

/// One downloader per file, across threads and processes (the app and the CLI at once): an
/// advisory lock on `<file>.lock`, which the OS releases if the process dies. While a `.part`
/// exists the lock file stays beside it, naming the checksum the `.part` is for, so a `.part`
/// of an older version of the file is never resumed.
struct PartLock {
    path: PathBuf,
    part: PathBuf,
    _file: std::fs::File,
}

impl PartLock {
    fn acquire(dest: &Path) -> Result<Self, DownloadError> {
        let mut name = dest.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        let path = dest.with_file_name(name);
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| io_error(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { path, part: partial_path(dest), _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(DownloadError::Other(format!("{}: being downloaded by another process or window", dest.display())))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io_error(&path, e)),
        }
    }

    /// Removes the `.part` unless it was started for `checksum`, and notes that it now is.
    fn discard_part_unless_for(&self, checksum: &Checksum) {
        let started_for = std::fs::read_to_string(&self.path).unwrap_or_default();
        if started_for.trim() != checksum.hex() {
            let _ = std::fs::remove_file(&self.part);
            let _ = std::fs::write(&self.path, checksum.hex());
        }
    }
}

impl Drop for PartLock {
    fn drop(&mut self) {
        if !self.part.exists() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Downloads into `part`, resuming what is there. A cut connection resumes, a wrong checksum
/// starts over; a transfer that made progress does not count against the [`ATTEMPTS`] that
/// end it. Each retry asks `refresh` for the file's location again, since storage links
/// expire.
pub fn fetch_with_retries(
    hub: &Hub,
    mut remote: RemoteFile,
    refresh: &dyn Fn() -> Result<RemoteFile, HubError>,
    part: &Path,
    cancel: &AtomicBool,
    report: &dyn Fn(DownloadEvent),
) -> Result<Recorded, DownloadError> {
    let mut last_error = String::new();
    let mut fruitless = 0;
    while fruitless < ATTEMPTS {
        if !last_error.is_empty() {
            report(DownloadEvent::Retrying { message: last_error.clone() });
            std::thread::sleep(Duration::from_millis(500 << fruitless.min(4)));
            match refresh() {
                Ok(fresh) if fresh.checksum == remote.checksum => remote = fresh,
                Ok(_) => {
                    return Err(DownloadError::Other(format!("{}: the file changed on the hub during the download", remote.download_url)));
                }
                Err(HubError::Network { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let before = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        match fetch_once(hub, &remote, part, cancel, report) {
            Ok(()) => match verify_part(part, &remote) {
                Ok(recorded) => return Ok(recorded),
                Err(message) => {
                    // A complete file with the wrong bytes cannot be resumed: start over.
                    let _ = std::fs::remove_file(part);
                    last_error = message;
                    fruitless += 1;
                }
            },
            Err(DownloadError::Hub(HubError::Network { message, .. })) => {
                let after = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
                if after <= before {
                    fruitless += 1;
                }
                last_error = message;
            }
            Err(e) => return Err(e),
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(DownloadError::Cancelled);
        }
    }
    Err(DownloadError::Other(format!("{}: gave up after {ATTEMPTS} tries: {last_error}", remote.download_url)))
}

/// One transfer from where the `.part` file ends.
fn fetch_once(
    hub: &Hub,
    remote: &RemoteFile,
    part: &Path,
    cancel: &AtomicBool,
    report: &dyn Fn(DownloadEvent),
) -> Result<(), DownloadError> {
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > remote.size {
        std::fs::remove_file(part).map_err(|e| io_error(part, e))?;
        have = 0;
    }
    if have == remote.size {
        return Ok(());
    }
    let body = hub.open(remote, have)?;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(body.start > 0)
        .write(true)
        .truncate(body.start == 0)
        .open(part)
        .map_err(|e| io_error(part, e))?;
    report(DownloadEvent::Started { total: remote.size, done: body.start, from_cache: false });
    let network = |message: String| HubError::Network { url: remote.download_url.clone(), message };
    let done = copy_reporting(body.reader, &mut out, body.start, cancel, report).map_err(|e| match e {
        CopyError::Read(done, e) => DownloadError::Hub(network(format!("connection lost after {done} of {} bytes: {e}", remote.size))),
        CopyError::Write(e) => io_error(part, e),
        CopyError::Cancelled => DownloadError::Cancelled,
    })?;
    if done < remote.size {
        return Err(network(format!("connection lost after {done} of {} bytes", remote.size)).into());
    }
    Ok(())
}

/// The file is the hub's file: same size, same checksum.
fn verify_part(part: &Path, remote: &RemoteFile) -> Result<Recorded, String> {
    let size = std::fs::metadata(part).map_err(|e| e.to_string())?.len();
    if size != remote.size {
        return Err(format!("got {size} bytes, the hub says {}", remote.size));
    }
    let actual = super::hub::checksum_of(part, &remote.checksum).map_err(|e| e.to_string())?;
    if actual != remote.checksum {
        return Err(format!("checksum mismatch: got {}, the hub says {}", actual.hex(), remote.checksum.hex()));
    }
    Ok(Recorded { size, checksum: actual })
}

/// A file of the Python hub cache, put beside `dest` as `<file>.from-cache`: hard-linked when on
/// the same disk (no copy, no space), else copied; verified either way, since a cache can be
/// corrupt too. Never the `.part` file: a resumed download must not append to a cache blob.
fn copy_from_cache(
    cached: &Path,
    dest: &Path,
    size: u64,
    checksum: &Checksum,
    cancel: &AtomicBool,
    report: &dyn Fn(DownloadEvent),
) -> Result<(PathBuf, Recorded), DownloadError> {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".from-cache");
    let copy = dest.with_file_name(name);
    let _ = std::fs::remove_file(&copy);
    report(DownloadEvent::Started { total: size, done: 0, from_cache: true });
    if std::fs::hard_link(cached, &copy).is_err() {
        let reader = std::fs::File::open(cached).map_err(|e| io_error(cached, e))?;
        let mut out = std::fs::File::create(&copy).map_err(|e| io_error(&copy, e))?;
        copy_reporting(reader, &mut out, 0, cancel, report).map_err(|e| {
            let _ = std::fs::remove_file(&copy);
            match e {
                CopyError::Read(_, e) => io_error(cached, e),
                CopyError::Write(e) => io_error(&copy, e),
                CopyError::Cancelled => DownloadError::Cancelled,
            }
        })?;
    }
    report(DownloadEvent::Progress { done: size });
    let remote = RemoteFile { size, checksum: checksum.clone(), download_url: cached.display().to_string() };
    let recorded = verify_part(&copy, &remote).map_err(|message| {
        let _ = std::fs::remove_file(&copy);
        DownloadError::Other(format!("{} in the Hugging Face cache is damaged: {message}", cached.display()))
    })?;
    Ok((copy, recorded))
}

enum CopyError {
    /// How far it got, and why it stopped.
    Read(u64, std::io::Error),
    Write(std::io::Error),
    Cancelled,
}

/// Copies until the reader ends, reporting progress at most every 100 ms; returns the offset
/// reached. Writes are flushed so that a kill keeps everything reported as done.
fn copy_reporting(
    mut reader: impl Read,
    out: &mut std::fs::File,
    start: u64,
    cancel: &AtomicBool,
    report: &dyn Fn(DownloadEvent),
) -> Result<u64, CopyError> {
    let mut buffer = vec![0u8; 256 << 10];
    let mut done = start;
    let mut last_report = Instant::now();
    loop {
        if cancel.load(Ordering::Relaxed) {
            let _ = out.flush();
            return Err(CopyError::Cancelled);
        }
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = out.flush();
                return Err(CopyError::Read(done, e));
            }
        };
        out.write_all(&buffer[..n]).map_err(CopyError::Write)?;
        done += n as u64;
        if last_report.elapsed() >= Duration::from_millis(100) {
            report(DownloadEvent::Progress { done });
            last_report = Instant::now();
        }
    }
    out.flush().map_err(CopyError::Write)?;
    report(DownloadEvent::Progress { done });
    Ok(done)
}

fn io_error(path: &Path, error: std::io::Error) -> DownloadError {
    DownloadError::Other(format!("{}: {error}", path.display()))
}

/// One file's transfer as its events tell it: its size, the bytes so far, and the speed and
/// time left, smoothed over the last few seconds.
#[derive(Debug, Clone, Default)]
pub struct TransferProgress {
    pub total: u64,
    pub done: u64,
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl TransferProgress {
    const WINDOW: Duration = Duration::from_secs(5);

    /// Takes in what `event` says about the bytes; other events change nothing.
    pub fn follow(&mut self, event: &DownloadEvent, now: Instant) {
        match *event {
            DownloadEvent::Started { total, done, .. } => {
                *self = TransferProgress { total, ..Default::default() };
                self.record(now, done);
            }
            DownloadEvent::Progress { done } => self.record(now, done),
            _ => {}
        }
    }

    fn record(&mut self, now: Instant, done: u64) {
        self.done = done;
        self.samples.push_back((now, done));
        while self.samples.len() > 2 && self.samples.front().is_some_and(|(t, _)| now.duration_since(*t) > Self::WINDOW) {
            self.samples.pop_front();
        }
    }

    /// How much is done, from 0 to 1.
    pub fn fraction(&self) -> f32 {
        self.done as f32 / self.total.max(1) as f32
    }

    /// Bytes per second, once there are two samples apart in time.
    pub fn bytes_per_second(&self) -> Option<f64> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let seconds = last.0.duration_since(first.0).as_secs_f64();
        (seconds > 0.0 && last.1 >= first.1).then(|| (last.1 - first.1) as f64 / seconds)
    }

    pub fn time_left(&self) -> Option<Duration> {
        let speed = self.bytes_per_second().filter(|s| *s > 0.0)?;
        Some(Duration::from_secs_f64(self.total.saturating_sub(self.done) as f64 / speed))
    }
}
