//! The Models window's background work: downloading or verifying model files on a thread of
//! its own (never the generation worker's: a 3 GB download must not hold up a generation),
//! reporting through a channel that the UI drains each frame.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::models::check::{self, FileState, FileStatus};
use crate::models::download::{self, DownloadError, DownloadEvent, DownloadOptions, TransferProgress};
use crate::models::hub::{Hub, HubConfig};
use crate::models::onnxruntime::{self, PinnedLibrary};
use crate::models::{ModelFile, ModelsDir};

/// The Models window's row for the ONNX Runtime library.
pub const RUNTIME_ROW: &str = "ONNX Runtime";

/// Files fetched at once.
const PARALLEL_DOWNLOADS: usize = 2;
/// Events waiting for the UI at most.
const EVENT_CAPACITY: usize = 256;

pub enum TaskEvent {
    File {
        relative_path: &'static str,
        event: DownloadEvent,
    },
    Checking {
        relative_path: &'static str,
    },
    Verified(Vec<FileStatus>),
    /// The hub could not be reached: what to tell the user, once.
    Unreachable(String),
    Finished,
}

/// A download or a verification under way.
pub struct ModelsTask {
    pub verifying: bool,
    cancel: Arc<AtomicBool>,
    events: Receiver<TaskEvent>,
}

impl ModelsTask {
    /// Fetches `files` into `models`, replacing any that are there (the caller passes missing
    /// and wrong files), and ONNX Runtime when `runtime` says where; `wake` repaints the UI
    /// after each event.
    pub fn download(
        models: ModelsDir,
        files: Vec<ModelFile>,
        runtime: Option<(PathBuf, PinnedLibrary)>,
        hub: HubConfig,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        Self::spawn(false, wake, move |cancel, send| {
            let hub = Hub::new(hub);
            let report = |index: usize, event| send(TaskEvent::File { relative_path: files[index].relative_path, event });
            let options = DownloadOptions { parallel: PARALLEL_DOWNLOADS, replace: true };
            let summary = download::download_all(&models, &files, &hub, options, cancel, &report);
            if let Some(message) = summary.unreachable {
                send(TaskEvent::Unreachable(message));
            }
            if let Some((dir, library)) = runtime {
                let report = |event| send(TaskEvent::File { relative_path: RUNTIME_ROW, event });
                let event = match onnxruntime::install(&dir, &onnxruntime::index_url(), &library, &hub, cancel, &report) {
                    Ok(_) => DownloadEvent::Finished,
                    Err(DownloadError::Cancelled) => DownloadEvent::Cancelled,
                    Err(e) => DownloadEvent::Failed { message: e.to_string() },
                };
                report(event);
            }
        })
    }

    /// Opens every present file as its loader would (hashing those with a recorded checksum).
    pub fn verify(models: ModelsDir, wake: impl Fn() + Send + Sync + 'static) -> std::io::Result<Self> {
        Self::spawn(true, wake, move |_, send| {
            let statuses = check::verify(&models, |file| send(TaskEvent::Checking { relative_path: file.relative_path }));
            send(TaskEvent::Verified(statuses));
        })
    }

    fn spawn(
        verifying: bool,
        wake: impl Fn() + Send + Sync + 'static,
        work: impl FnOnce(&AtomicBool, &(dyn Fn(TaskEvent) + Sync)) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (sender, events): (Sender<TaskEvent>, _) = crossbeam_channel::bounded(EVENT_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
        let task_cancel = cancel.clone();
        std::thread::Builder::new().name("models".into()).spawn(move || {
            let send = |event: TaskEvent| {
                // Progress the UI has no room for is dropped (a newer count follows); the rest waits.
                let progress = matches!(event, TaskEvent::File { event: DownloadEvent::Progress { .. }, .. });
                let sent = if progress { sender.try_send(event).is_ok() } else { sender.send(event).is_ok() };
                if sent {
                    wake();
                }
            };
            work(&task_cancel, &send);
            send(TaskEvent::Finished);
        })?;
        Ok(Self { verifying, cancel, events })
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub fn try_recv(&self) -> Option<TaskEvent> {
        self.events.try_recv().ok()
    }
}

/// One file's transfer as the Models window shows it.
#[derive(Debug, Clone, Default)]
pub struct Transfer {
    pub progress: TransferProgress,
    /// "from the Hugging Face cache", "retrying: …", "failed: …", "cancelled", "checking".
    pub note: Option<String>,
    pub failed: bool,
}

/// What the Models window shows: each file's state and transfer, and the task under way.
#[derive(Default)]
pub struct ModelsState {
    pub window_open: bool,
    pub statuses: Vec<FileStatus>,
    pub transfers: HashMap<&'static str, Transfer>,
    pub task: Option<ModelsTask>,
    /// Where the ONNX Runtime library was found, or why not.
    pub runtime: Option<Result<PathBuf, String>>,
    /// The last download found the hub unreachable: why, and what to do, in one line.
    pub unreachable: Option<String>,
}

impl ModelsState {
    /// Re-reads the folder's names and sizes, and looks for ONNX Runtime without loading it
    /// (loading is the worker's job, and can take a while).
    pub fn refresh(&mut self, models: &ModelsDir) {
        self.statuses = check::status(models);
        self.runtime = Some(crate::face::runtime::find_library().ok_or_else(crate::face::runtime::not_found_message));
    }

    /// Whether `file` is known to be missing (or wrong) in the models folder.
    pub fn is_missing(&self, file: ModelFile) -> bool {
        self.statuses.iter().any(|s| s.file == file && !matches!(s.state, FileState::Present { .. }))
    }

    /// Files the app cannot generate from a photo without.
    pub fn missing_required(&self) -> Vec<ModelFile> {
        self.statuses
            .iter()
            .filter(|s| s.file.needed_for.required() && !matches!(s.state, FileState::Present { .. }))
            .map(|s| s.file)
            .collect()
    }

    /// The files a "Download" fetches: missing ones, and ones found wrong (by their size, or by
    /// "Check files"), which it replaces.
    pub fn downloadable(&self) -> Vec<ModelFile> {
        self.statuses.iter().filter(|s| !matches!(s.state, FileState::Present { .. })).map(|s| s.file).collect()
    }

    /// Where to put ONNX Runtime and which build, when it is missing and this platform has a pin.
    pub fn runtime_to_fetch(&self) -> Option<(PathBuf, PinnedLibrary)> {
        if !matches!(self.runtime, Some(Err(_))) {
            return None;
        }
        Some((crate::face::runtime::install_dir()?, onnxruntime::pinned()?))
    }

    /// Folds in one event; returns true when a download has ended and the folder should be re-read.
    pub fn handle(&mut self, event: TaskEvent) -> bool {
        match event {
            TaskEvent::File { relative_path, event } => {
                let transfer = self.transfers.entry(relative_path).or_default();
                transfer.progress.follow(&event, Instant::now());
                match event {
                    DownloadEvent::Started { from_cache, .. } => {
                        transfer.note = from_cache.then(|| "from the Hugging Face cache".into());
                        transfer.failed = false;
                    }
                    DownloadEvent::Progress { .. } => {}
                    DownloadEvent::Retrying { message } => transfer.note = Some(format!("retrying: {message}")),
                    DownloadEvent::Finished | DownloadEvent::AlreadyPresent => {
                        self.transfers.remove(relative_path);
                    }
                    DownloadEvent::Failed { message } => {
                        transfer.note = Some(message);
                        transfer.failed = true;
                    }
                    DownloadEvent::Cancelled => transfer.note = Some("cancelled; Download resumes it".into()),
                }
                false
            }
            TaskEvent::Checking { relative_path } => {
                self.transfers.insert(relative_path, Transfer { note: Some("checking".into()), ..Default::default() });
                false
            }
            TaskEvent::Verified(statuses) => {
                self.transfers.retain(|_, t| t.note.as_deref() != Some("checking"));
                self.statuses = statuses;
                false
            }
            TaskEvent::Unreachable(message) => {
                self.unreachable = Some(message);
                false
            }
            // A verification's statuses are already in; a download's need the folder re-read.
            TaskEvent::Finished => self.task.take().is_some_and(|task| !task.verifying),
        }
    }
}
