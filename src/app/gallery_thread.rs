//! The gallery lives on a thread of its own: opening (which may rebuild the index from hundreds
//! of PNGs), index writes, favourite records, trash moves and exports all happen there, never in
//! a frame. The UI keeps a copy of the entries and replaces it whenever the thread reports a
//! change.

use std::path::PathBuf;

use crossbeam_channel::{Receiver, Sender};

use crate::engine::ImageMetadata;
use crate::gallery::history::{Gallery, GalleryEntry, Removed};

/// What the UI asks of the gallery.
pub enum Request {
    /// Record a PNG the worker wrote into the gallery folder.
    Adopt {
        path: PathBuf,
        metadata: Box<ImageMetadata>,
    },
    SetFavourite {
        id: u64,
        favourite: bool,
    },
    Remove {
        ids: Vec<u64>,
    },
    UndoRemove(Removed),
    Export {
        ids: Vec<u64>,
        dest: PathBuf,
    },
    /// One PNG with the images `ids` side by side, in that order.
    ContactSheet {
        ids: Vec<u64>,
        dest: PathBuf,
    },
}

/// What the gallery thread reports; every change comes with the whole new list of entries.
pub enum Report {
    /// The gallery is open in `dir` (a temporary folder when the usual one could not be opened:
    /// `problem` says why).
    Opened {
        dir: PathBuf,
        entries: Vec<GalleryEntry>,
        problem: Option<String>,
    },
    Changed {
        entries: Vec<GalleryEntry>,
    },
    Added {
        id: u64,
        path: PathBuf,
        entries: Vec<GalleryEntry>,
    },
    Removed {
        removed: Removed,
        entries: Vec<GalleryEntry>,
    },
    Exported {
        count: usize,
        dest: PathBuf,
    },
    SheetWritten {
        path: PathBuf,
    },
    /// A request failed; nothing it would have changed did change. The adopted PNG (if any) is
    /// still in the folder, and the gallery finds it when it next opens.
    Failed {
        message: String,
        path: Option<PathBuf>,
    },
}

/// Room for requests: the UI sends one per user action or finished image.
const REQUEST_CAPACITY: usize = 256;
const REPORT_CAPACITY: usize = 256;

pub struct GalleryThread {
    requests: Sender<Request>,
    reports: Receiver<Report>,
}

impl GalleryThread {
    /// Opens the gallery in `dir` on a new thread; `wake` repaints the UI after each report.
    pub fn spawn(dir: PathBuf, wake: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (requests, incoming) = crossbeam_channel::bounded::<Request>(REQUEST_CAPACITY);
        let (outgoing, reports) = crossbeam_channel::bounded(REPORT_CAPACITY);
        std::thread::Builder::new().name("gallery".into()).spawn(move || {
            let report = |report: Report| {
                let sent = outgoing.send(report).is_ok();
                wake();
                sent
            };
            let Some(mut gallery) = open(dir, &report) else { return };
            for request in incoming {
                if !report(handle(&mut gallery, request)) {
                    break;
                }
            }
        })?;
        Ok(Self { requests, reports })
    }

    /// `false` when the request could not be handed over (the thread is gone, or swamped).
    pub fn send(&self, request: Request) -> bool {
        self.requests.try_send(request).is_ok()
    }

    pub fn try_recv(&self) -> Option<Report> {
        self.reports.try_recv().ok()
    }
}

/// Opens `dir`, or a temporary folder when that fails, so that results are never lost.
fn open(dir: PathBuf, report: &impl Fn(Report) -> bool) -> Option<Gallery> {
    let (gallery, problem) = match Gallery::open(&dir) {
        Ok(gallery) => (gallery, None),
        Err(error) => {
            let fallback = std::env::temp_dir().join(format!("arc2face-gallery-{}", std::process::id()));
            let problem = format!("The gallery could not be opened ({error}); results are kept in {} for now", fallback.display());
            match Gallery::open(&fallback) {
                Ok(gallery) => (gallery, Some(problem)),
                Err(second) => {
                    report(Report::Failed { message: format!("{problem}, but that failed too: {second}"), path: None });
                    return None;
                }
            }
        }
    };
    report(Report::Opened { dir: gallery.dir().to_path_buf(), entries: gallery.entries().to_vec(), problem });
    Some(gallery)
}

fn handle(gallery: &mut Gallery, request: Request) -> Report {
    let failed = |error: crate::gallery::history::GalleryError, path: Option<PathBuf>| Report::Failed { message: error.to_string(), path };
    match request {
        Request::Adopt { path, metadata } => match gallery.adopt(&path, *metadata) {
            Ok(entry) => Report::Added { id: entry.id, path, entries: gallery.entries().to_vec() },
            Err(error) => failed(error, Some(path)),
        },
        Request::SetFavourite { id, favourite } => match gallery.set_favourite(id, favourite) {
            Ok(()) => Report::Changed { entries: gallery.entries().to_vec() },
            Err(error) => failed(error, None),
        },
        Request::Remove { ids } => match gallery.remove(&ids) {
            Ok(removed) => Report::Removed { removed, entries: gallery.entries().to_vec() },
            Err(error) => failed(error, None),
        },
        Request::UndoRemove(removed) => match gallery.undo_remove(removed) {
            Ok(()) => Report::Changed { entries: gallery.entries().to_vec() },
            Err(error) => failed(error, None),
        },
        Request::Export { ids, dest } => match gallery.export(&ids, &dest) {
            Ok(paths) => Report::Exported { count: paths.len(), dest },
            Err(error) => failed(error, None),
        },
        Request::ContactSheet { ids, dest } => match gallery.contact_sheet(&ids, &dest) {
            Ok(path) => Report::SheetWritten { path },
            Err(error) => failed(error, None),
        },
    }
}
