//! The desktop app (eframe). The UI thread only draws and reacts: panels read `AppState` and
//! return `Action`s, `apply` changes the state and sends commands to the worker thread, and
//! `drain_events` folds the worker's events back in, a few milliseconds' worth per frame.

mod actions;
mod gallery_thread;
mod models_task;
mod panels;
mod pose_view;
pub mod state;
mod thumbnails;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui::{ColorImage, TextureOptions};
use image::RgbImage;

use crate::engine::{ErrorKind, JobOutcome};
use crate::gallery::history::SortOrder;
use crate::gallery::metadata;
use crate::models::hub::HubConfig;
use crate::models::{self, ModelsDir};
use crate::worker::{Command, Event, JobError, PhotoPurpose, Worker};
use actions::notify_error;
pub use actions::{Action, GalleryAction, JobAction, ModelsAction, PhotoAction, PoseAction};
use gallery_thread::{GalleryThread, Report as GalleryReport, Request as GalleryRequest};
use models_task::{ModelsState, ModelsTask};
use state::*;
use thumbnails::{Size, ThumbnailLoader};

const SETTINGS_KEY: &str = "arc2face-settings";
/// How long one frame may spend folding in worker events.
const EVENT_BUDGET: Duration = Duration::from_millis(8);

pub struct StudioApp {
    pub state: AppState,
    /// Where downloads come from: the environment's Hugging Face settings (tests point it at a
    /// local server).
    pub hub: HubConfig,
    worker: Worker,
    gallery_thread: GalleryThread,
    /// Finished images waiting for the gallery thread to record them, by path: their textures
    /// are made once they have an id.
    pending_images: HashMap<PathBuf, RgbImage>,
    thumbnails: ThumbnailLoader,
    /// Images asked of the thumbnail thread and not yet received.
    images_requested: HashSet<(u64, Size)>,
    ctx: egui::Context,
}

/// The app's id on desktops (packaging/io.github.arc2face.Studio.desktop).
pub const APP_ID: &str = "io.github.arc2face.Studio";

/// Where the app keeps its gallery when nothing else is said.
pub fn default_gallery_dir() -> PathBuf {
    crate::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("gallery")
}

/// Opens the window and runs until it closes.
pub fn run(models_dir: Option<PathBuf>, photos: Vec<PathBuf>) -> anyhow::Result<()> {
    // A broken icon must not keep the app from starting.
    let icon = eframe::icon_data::from_png_bytes(include_bytes!("../../icons/hicolor/256x256/apps/io.github.arc2face.Studio.png")).ok();
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Arc2Face Studio")
            // The desktop file's name and StartupWMClass: desktops match the window to it.
            .with_app_id(APP_ID)
            .with_icon(std::sync::Arc::new(icon.unwrap_or_default()))
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([800.0, 560.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "Arc2Face Studio",
        options,
        Box::new(move |cc| Ok(Box::new(StudioApp::new(cc, models_dir, default_gallery_dir(), photos)?))),
    )
    .map_err(|e| anyhow::anyhow!("the window could not be opened: {e}"))
}

impl StudioApp {
    /// `models_dir` overrides the saved one (from `--models`); `photos` are loaded at start.
    /// Fails only when the system cannot start the app's threads.
    pub fn new(
        cc: &eframe::CreationContext<'_>,
        models_dir: Option<PathBuf>,
        gallery_dir: PathBuf,
        photos: Vec<PathBuf>,
    ) -> std::io::Result<Self> {
        let settings: Settings = cc.storage.and_then(|s| eframe::get_value(s, SETTINGS_KEY)).unwrap_or_default();
        let models_dir = models_dir.or_else(|| settings.models_dir.clone()).unwrap_or_else(models::default_models_dir);
        let ctx = cc.egui_ctx.clone();
        let waker = || {
            let ctx = ctx.clone();
            move || ctx.request_repaint()
        };
        let worker = Worker::spawn(models_dir.clone(), waker())?;
        let gallery_thread = GalleryThread::spawn(gallery_dir, waker())?;
        let thumbnails = ThumbnailLoader::spawn(waker())?;
        let mut models = ModelsState::default();
        models.refresh(&ModelsDir::new(&models_dir));
        let mut app = Self {
            hub: HubConfig::from_env(),
            state: AppState {
                models,
                settings,
                models_dir,
                photo: None,
                analyzing: None,
                pending_faces: VecDeque::new(),
                runtime_in_use: None,
                kept_faces: Vec::new(),
                pose: PoseState::default(),
                sweep_start: SweepStarts::default(),
                undo: Vec::new(),
                undo_press: None,
                queue: VecDeque::new(),
                running: None,
                next_job_id: 1,
                busy: None,
                notices: Vec::new(),
                gallery: GalleryState {
                    dir: None,
                    entries: Vec::new(),
                    selection: BTreeSet::new(),
                    anchor: None,
                    sort: SortOrder::Newest,
                    thumbnails: HashMap::new(),
                    full_size: Vec::new(),
                    last_removed: None,
                    opened: None,
                    comparing: None,
                    open_newest: false,
                },
            },
            worker,
            gallery_thread,
            pending_images: HashMap::new(),
            thumbnails,
            images_requested: HashSet::new(),
            ctx,
        };
        app.load_head();
        for photo in photos {
            app.apply(PhotoAction::Open(photo));
        }
        Ok(app)
    }

    /// Loads the head the models folder prefers for the Pose panel and jobs (in the background).
    pub(super) fn load_head(&mut self) {
        let ctx = self.ctx.clone();
        self.state.pose.loading =
            Some(pose_view::load_preferred_head(&ModelsDir::new(&self.state.models_dir), move || ctx.request_repaint()));
    }

    /// Takes the loaded head when it is ready, and draws the panel's pose again if it changed.
    fn refresh_pose(&mut self) {
        let pose = &mut self.state.pose;
        if let Some((head, problem)) = pose.loading.as_ref().and_then(|r| r.try_recv().ok()) {
            pose.loading = None;
            pose.head = Some(head);
            if let Some(problem) = problem {
                notify_error(&mut self.state, problem);
            }
        }
        let state = &mut self.state;
        let Some(head) = &state.pose.head else { return };
        let Some(head_pose) = state.settings.spec.pose.as_ref().and_then(crate::engine::PoseSpec::head_pose) else { return };
        let job_size = state.settings.spec.size.unwrap_or(crate::engine::TRAINED_SIZE);
        let dragging = self.ctx.input(|i| i.pointer.any_down());
        pose_view::refresh(&self.ctx, &mut state.pose.drawing, head, &head_pose, job_size, dragging);
    }

    fn start_next_job(&mut self) {
        if self.state.running.is_some() {
            return;
        }
        if let Some(request) = self.state.queue.pop_front() {
            self.state.pose.queue_thumbnails.remove(&request.job_id);
            if !self.worker.send(Command::Generate(Box::new(request.clone()))) {
                // The worker is gone (it never is: it catches panics) or swamped: keep the job.
                self.state.queue.push_front(request);
                return;
            }
            self.state.running = Some(RunningJob {
                request,
                started: Instant::now(),
                image_index: 0,
                step: 0,
                steps: 0,
                steps_done: 0,
                preview: None,
                cancelling: false,
            });
        }
    }

    /// Folds in worker and download events until none are left or the frame's budget is spent.
    pub fn drain_events(&mut self) {
        let started = Instant::now();
        while started.elapsed() < EVENT_BUDGET {
            let Some(event) = self.worker.try_recv() else { break };
            self.handle_event(event);
        }
        while started.elapsed() < EVENT_BUDGET {
            let models = &mut self.state.models;
            let Some(event) = models.task.as_ref().and_then(ModelsTask::try_recv) else { break };
            if models.handle(event) {
                models.refresh(&ModelsDir::new(&self.state.models_dir));
                if models.missing_required().is_empty() {
                    // Anything that failed to load before the download loads afresh.
                    self.worker.send(Command::UnloadModels { models_dir: self.state.models_dir.clone() });
                    self.state.runtime_in_use = None;
                }
            }
        }
    }

    fn handle_event(&mut self, event: Event) {
        let state = &mut self.state;
        match event {
            Event::PhotoAnalyzed { path, purpose: PhotoPurpose::Pose, faces, .. } => {
                state.busy = None;
                if state.pose.fitting.as_ref() == Some(&path) {
                    state.pose.fitting = None;
                }
                match crate::face::largest_face(&faces) {
                    Some(largest) => {
                        let keypoints = faces[largest].kps;
                        self.set_pose_from_keypoints(&keypoints);
                        self.state.notices.push(Notice { text: format!("Pose copied from {}", crate::file_name(&path)), is_error: false });
                    }
                    None => notify_error(state, format!("No face found in {}, so no pose to copy", crate::file_name(&path))),
                }
            }
            Event::PhotoFailed { path, purpose: PhotoPurpose::Pose, message } => {
                state.busy = None;
                if state.pose.fitting.as_ref() == Some(&path) {
                    state.pose.fitting = None;
                }
                notify_error(state, message);
            }
            Event::PhotoAnalyzed { path, purpose: PhotoPurpose::Identity, photo, faces, crops } => {
                state.busy = None;
                if state.analyzing.as_ref() == Some(&path) {
                    state.analyzing = None;
                }
                if faces.is_empty() {
                    notify_error(
                        state,
                        format!("No face found in {}: try a photo with more margin around the face", crate::file_name(&path)),
                    );
                }
                // Restoring an identity: select its face, and keep it when more photos follow.
                let restored = match state.pending_faces.front() {
                    Some((pending, face)) if pending == &path => Some(*face).filter(|&face| face < faces.len()),
                    _ => None,
                };
                let selected_face = restored.or_else(|| crate::face::largest_face(&faces));
                let size = [photo.width() as usize, photo.height() as usize];
                let texture = self.ctx.load_texture(format!("photo:{}", path.display()), color_image(&photo), TextureOptions::LINEAR);
                let face_crops = crops
                    .iter()
                    .enumerate()
                    .map(|(i, crop)| self.ctx.load_texture(format!("face:{i}"), color_image(crop), TextureOptions::LINEAR))
                    .collect();
                let mut by_size: Vec<usize> = (0..faces.len()).collect();
                by_size.sort_by(|&a, &b| faces[b].area().total_cmp(&faces[a].area()));
                state.photo = Some(PhotoState { path, texture, size, faces, face_crops, by_size, selected_face });
                if restored.is_some() {
                    state.pending_faces.pop_front();
                    if !state.pending_faces.is_empty() {
                        self.apply(PhotoAction::KeepFace);
                        self.open_next_pending_photo();
                    }
                }
            }
            Event::PhotoFailed { path, purpose: PhotoPurpose::Identity, message } => {
                state.busy = None;
                state.pending_faces.clear();
                if state.analyzing.as_ref() == Some(&path) {
                    state.analyzing = None;
                }
                notify_error(state, message);
            }
            Event::Busy { what } => state.busy = Some(what),
            Event::ModelsLoaded { runtime } => {
                state.busy = None;
                state.runtime_in_use = Some(runtime);
            }
            Event::Progress { job_id, image_index, step, steps, preview } => {
                state.busy = None;
                if let Some(running) = state.running.as_mut().filter(|r| r.request.job_id == job_id) {
                    running.image_index = image_index;
                    running.step = step;
                    running.steps = steps;
                    running.steps_done = image_index * steps + step;
                    let image = color_image(&preview);
                    match &mut running.preview {
                        Some(texture) => texture.set(image, TextureOptions::NEAREST),
                        None => running.preview = Some(self.ctx.load_texture("preview", image, TextureOptions::NEAREST)),
                    }
                }
            }
            Event::ImageReady { image, saved, metadata, .. } => match saved {
                Ok(path) => {
                    if self.gallery_thread.send(GalleryRequest::Adopt { path: path.clone(), metadata: Box::new(metadata) }) {
                        self.pending_images.insert(path, image);
                    } else {
                        notify_error(
                            state,
                            format!("The gallery is busy; {} is saved and appears when the gallery next opens", path.display()),
                        );
                    }
                }
                // Never drop a result silently: say where it failed.
                Err(e) => notify_error(state, format!("A finished image could not be saved: {e}")),
            },
            Event::JobFinished { job_id, outcome } => {
                if state.running.as_ref().is_some_and(|r| r.request.job_id == job_id) {
                    state.running = None;
                }
                if outcome == JobOutcome::Cancelled {
                    state.notices.push(Notice { text: "Generation cancelled; finished images were kept".into(), is_error: false });
                }
                // Show the newest result large (once the gallery has it), unless the user is
                // looking at something else.
                if state.gallery.opened.is_none() && state.gallery.comparing.is_none() && state.queue.is_empty() {
                    state.gallery.open_newest = true;
                }
                self.start_next_job();
            }
            Event::JobFailed { job_id, error } => {
                if state.running.as_ref().is_some_and(|r| r.request.job_id == job_id) {
                    state.running = None;
                }
                state.busy = None;
                notify_error(state, failure_text(&error));
                self.start_next_job();
            }
        }
    }

    /// Folds in the gallery thread's reports.
    fn drain_gallery(&mut self) {
        let started = Instant::now();
        while started.elapsed() < EVENT_BUDGET {
            let Some(report) = self.gallery_thread.try_recv() else { break };
            let state = &mut self.state;
            let gallery = &mut state.gallery;
            match report {
                GalleryReport::Opened { dir, entries, problem } => {
                    gallery.dir = Some(dir);
                    gallery.entries = entries;
                    if let Some(problem) = problem {
                        notify_error(state, problem);
                    }
                }
                GalleryReport::Changed { entries } => gallery.entries = entries,
                GalleryReport::Added { id, path, entries } => {
                    gallery.entries = entries;
                    if let Some(image) = self.pending_images.remove(&path) {
                        let thumbnail = color_image(&thumbnails::downscale(&image));
                        gallery.thumbnails.insert(id, self.ctx.load_texture(format!("entry:{id}"), thumbnail, TextureOptions::LINEAR));
                        let full = self.ctx.load_texture(format!("entry-full:{id}"), color_image(&image), TextureOptions::LINEAR);
                        keep_full_size(gallery, id, full);
                    }
                }
                GalleryReport::Removed { removed, entries } => {
                    let count = removed.entries().len();
                    gallery.entries = entries;
                    gallery.last_removed = Some(removed);
                    state.undo.push(UndoStep::Delete);
                    gallery.selection.clear();
                    gallery.opened = None;
                    gallery.comparing = None;
                    state.notices.push(Notice { text: format!("Deleted {count} image(s) — Undo with Ctrl+Z"), is_error: false });
                }
                GalleryReport::Exported { count, dest } => {
                    state.notices.push(Notice { text: format!("Exported {count} image(s) to {}", dest.display()), is_error: false });
                }
                GalleryReport::SheetWritten { path } => {
                    state.notices.push(Notice { text: format!("Contact sheet written to {}", path.display()), is_error: false });
                }
                GalleryReport::Failed { message, path } => {
                    if let Some(path) = path {
                        self.pending_images.remove(&path);
                        let text = format!(
                            "{message}; the image itself is safe at {} and the gallery finds it when it next opens",
                            path.display()
                        );
                        notify_error(state, text);
                    } else {
                        notify_error(state, message);
                    }
                }
            }
        }
        let gallery = &mut self.state.gallery;
        if gallery.open_newest && self.pending_images.is_empty() {
            gallery.open_newest = false;
            gallery.opened = gallery.entries.last().map(|e| e.id);
        }
    }

    /// Asks the thumbnail thread for the images the gallery shows and does not have yet (a
    /// thumbnail of every entry, full size for those opened large) and uploads those it has
    /// decoded; the gallery shows a placeholder until then.
    fn load_gallery_images(&mut self) {
        let gallery = &mut self.state.gallery;
        let Some(dir) = &gallery.dir else { return };
        let opened = gallery.opened.into_iter().chain(gallery.comparing.into_iter().flat_map(|(a, b)| [a, b]));
        let wanted_full: Vec<u64> = opened.filter(|&id| gallery.full_size(id).is_none()).collect();
        let wanted = gallery
            .entries
            .iter()
            .filter(|e| !gallery.thumbnails.contains_key(&e.id))
            .map(|e| (e.id, Size::Thumbnail))
            .chain(wanted_full.into_iter().map(|id| (id, Size::Full)));
        for (id, size) in wanted {
            let Some(entry) = gallery.get(id) else { continue };
            if !self.images_requested.contains(&(id, size)) {
                if !self.thumbnails.request(id, dir.join(&entry.file_name), size) {
                    break;
                }
                self.images_requested.insert((id, size));
            }
        }
        let started = Instant::now();
        while started.elapsed() < EVENT_BUDGET {
            let Some((id, size, image)) = self.thumbnails.try_recv() else { break };
            self.images_requested.remove(&(id, size));
            let texture = self.ctx.load_texture(format!("entry:{id}:{size:?}"), color_image(&image), TextureOptions::LINEAR);
            match size {
                Size::Thumbnail => {
                    gallery.thumbnails.insert(id, texture);
                }
                Size::Full => keep_full_size(gallery, id, texture),
            }
        }
    }

    fn handle_input(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).collect());
        // A photo dropped on the Pose panel lends its pose, not its face.
        let on_pose_panel =
            ctx.input(|i| i.pointer.hover_pos()).is_some_and(|at| panels::pose_drop_zone(ctx).is_some_and(|zone| zone.contains(at)));
        for path in dropped {
            // An image this app made carries its settings (a few bytes before the pixels).
            let made_here = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("png"))
                .then(|| metadata::read_metadata(&path).ok().flatten())
                .flatten();
            let is_lora = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
            match made_here {
                Some(metadata) => self.apply(PhotoAction::RestoreFrom { path, metadata: Box::new(metadata) }),
                None if is_lora => self.apply(JobAction::AddLora(path)),
                None if on_pose_panel => self.apply(PoseAction::FromPhoto(path)),
                None => self.apply(PhotoAction::Open(path)),
            }
        }
        use egui::{Key, KeyboardShortcut, Modifiers};
        let shortcuts: [(KeyboardShortcut, Action); 7] = [
            (KeyboardShortcut::new(Modifiers::COMMAND, Key::Enter), JobAction::Generate.into()),
            (KeyboardShortcut::new(Modifiers::COMMAND, Key::O), PhotoAction::Browse.into()),
            (KeyboardShortcut::new(Modifiers::COMMAND, Key::E), GalleryAction::BrowseExport.into()),
            (KeyboardShortcut::new(Modifiers::COMMAND, Key::A), GalleryAction::SelectAll.into()),
            (KeyboardShortcut::new(Modifiers::COMMAND, Key::Z), Action::Undo),
            (KeyboardShortcut::new(Modifiers::NONE, Key::Delete), GalleryAction::DeleteSelected.into()),
            (KeyboardShortcut::new(Modifiers::NONE, Key::Escape), JobAction::CancelRunning.into()),
        ];
        // A text field being typed in keeps its own shortcuts (its own undo, select all).
        let typing = ctx.egui_wants_keyboard_input();
        for (shortcut, action) in shortcuts {
            if !typing && ctx.input_mut(|i| i.consume_shortcut(&shortcut)) {
                self.apply(action);
            }
        }
        for (key, step) in [(egui::Key::ArrowRight, 1i64), (egui::Key::ArrowLeft, -1)] {
            if ctx.input(|i| i.key_pressed(key) && !i.modifiers.any())
                && let Some(id) = self.neighbour_entry(step)
            {
                self.apply(GalleryAction::Select { id, extend: false, toggle: false });
                if self.state.gallery.opened.is_some() {
                    self.apply(GalleryAction::Open(Some(id)));
                }
            }
        }
    }

    /// The gallery entry `step` places from the current one, in display order.
    fn neighbour_entry(&self, step: i64) -> Option<u64> {
        let gallery = &self.state.gallery;
        let order: Vec<u64> = gallery.sorted().iter().map(|e| e.id).collect();
        let current = gallery.opened.or(gallery.anchor)?;
        let at = order.iter().position(|&id| id == current)? as i64 + step;
        order.get(usize::try_from(at).ok()?).copied()
    }
}

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.drain_events();
        self.drain_gallery();
        self.load_gallery_images();
        let ctx = ui.ctx().clone();
        self.handle_input(&ctx);
        self.refresh_pose();
        let actions = panels::show(ui, &self.state);
        for action in actions {
            self.apply(action);
        }
        if self.state.running.is_some() || self.state.analyzing.is_some() || self.state.models.task.is_some() {
            // Keep ETAs and speeds ticking between events.
            ctx.request_repaint_after(Duration::from_millis(250));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SETTINGS_KEY, &self.state.settings);
    }
}

/// A failed job's message with what the user can do about it.
fn failure_text(error: &JobError) -> String {
    let hint = match error.kind {
        ErrorKind::MissingFile => " — open Models… to get the missing file",
        ErrorKind::CorruptFile => " — open Models… and Check files: a damaged file can be downloaded again",
        ErrorKind::OutOfMemory => " — try a smaller image size, fewer images, or f16 precision",
        ErrorKind::Unsupported => " — choose another device or precision in the settings",
        ErrorKind::Output => " — free some disk space, or check that the gallery folder can be written",
        ErrorKind::BadInput | ErrorKind::Internal => "",
    };
    format!("Generation failed: {}{hint}", error.message)
}

/// How many full-size images stay uploaded: the ones opened large, and a few recent ones.
const FULL_SIZE_KEPT: usize = 4;

/// Keeps `texture` as `id`'s full-size image, dropping the least recently used beyond
/// [`FULL_SIZE_KEPT`].
fn keep_full_size(gallery: &mut GalleryState, id: u64, texture: egui::TextureHandle) {
    gallery.full_size.retain(|(entry, _)| *entry != id);
    gallery.full_size.push((id, texture));
    if gallery.full_size.len() > FULL_SIZE_KEPT {
        drop(gallery.full_size.remove(0));
    }
}

pub fn color_image(image: &RgbImage) -> ColorImage {
    ColorImage::from_rgb([image.width() as usize, image.height() as usize], image.as_raw())
}
