//! The desktop app (eframe). The UI thread only draws and reacts: panels read `AppState` and
//! return `Action`s, `apply` changes the state and sends commands to the worker thread, and
//! `drain_events` folds the worker's events back in, a few milliseconds' worth per frame.

mod models_task;
mod panels;
pub mod state;
mod thumbnails;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::{ColorImage, TextureOptions};
use image::RgbImage;

use crate::engine::JobOutcome;
use crate::gallery::history::{Gallery, SortOrder};
use crate::gallery::metadata::{self, GenerationMetadata};
use crate::models::hub::HubConfig;
use crate::models::{self, ModelsDir};
use crate::worker::{Command, Event, GenerationRequest, Worker};
use models_task::{ModelsState, ModelsTask};
use state::*;
use thumbnails::ThumbnailLoader;

const SETTINGS_KEY: &str = "arc2face-settings";
/// How long one frame may spend folding in worker events.
const EVENT_BUDGET: Duration = Duration::from_millis(8);

/// Everything a user can do, from buttons, menus and shortcuts alike.
#[derive(Debug, Clone)]
pub enum Action {
    OpenPhoto(PathBuf),
    BrowsePhoto,
    SelectFace(usize),
    /// Keep the selected face and combine it with faces of further photos into one identity.
    KeepFace,
    ClearKeptFaces,
    /// Restore the settings (and, when it is a recent photo, the face) an exported image was
    /// made with.
    RestoreFrom {
        path: PathBuf,
        metadata: Box<GenerationMetadata>,
    },
    Generate,
    CancelRunning,
    RemoveQueued(u64),
    MoveQueuedUp(u64),
    MoveQueuedDown(u64),
    UseSeedOf(u64),
    NewSeed,
    SelectEntry {
        id: u64,
        extend: bool,
        toggle: bool,
    },
    SelectAll,
    ClearSelection,
    OpenEntry(Option<u64>),
    CompareSelected,
    ToggleFavourite(u64),
    DeleteSelected,
    UndoDelete,
    BrowseExport,
    ExportTo(PathBuf),
    SetSort(SortOrder),
    BrowseModels,
    SetModelsDir(PathBuf),
    ShowModelsWindow(bool),
    /// Fetch these files of the models folder; none means every missing one.
    DownloadModels(Vec<&'static str>),
    VerifyModels,
    CancelModelsTask,
    DismissNotice(usize),
    UpdateSettings(Box<Settings>),
}

pub struct StudioApp {
    pub state: AppState,
    /// Where downloads come from: the environment's Hugging Face settings (tests point it at a
    /// local server).
    pub hub: HubConfig,
    worker: Worker,
    thumbnails: ThumbnailLoader,
    /// Gallery entries whose images were asked of the thumbnail thread.
    thumbnails_requested: HashSet<u64>,
    ctx: egui::Context,
}

/// The app's id on desktops (packaging/io.github.arc2face.Studio.desktop).
pub const APP_ID: &str = "io.github.arc2face.Studio";

/// Where the app keeps its gallery when nothing else is said.
pub fn default_gallery_dir() -> PathBuf {
    crate::face::runtime::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("gallery")
}

/// Opens the window and runs until it closes.
pub fn run(models_dir: Option<PathBuf>, photos: Vec<PathBuf>) -> anyhow::Result<()> {
    let icon = eframe::icon_data::from_png_bytes(include_bytes!("../../icons/hicolor/256x256/apps/io.github.arc2face.Studio.png"))
        .expect("the embedded icon is a PNG");
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Arc2Face Studio")
            // The desktop file's name and StartupWMClass: desktops match the window to it.
            .with_app_id(APP_ID)
            .with_icon(std::sync::Arc::new(icon))
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([800.0, 560.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "Arc2Face Studio",
        options,
        Box::new(move |cc| Ok(Box::new(StudioApp::new(cc, models_dir, default_gallery_dir(), photos)))),
    )
    .map_err(|e| anyhow::anyhow!("the window could not be opened: {e}"))
}

impl StudioApp {
    /// `models_dir` overrides the saved one (from `--models`); `photos` are loaded at start.
    pub fn new(cc: &eframe::CreationContext<'_>, models_dir: Option<PathBuf>, gallery_dir: PathBuf, photos: Vec<PathBuf>) -> Self {
        let settings: Settings = cc.storage.and_then(|s| eframe::get_value(s, SETTINGS_KEY)).unwrap_or_default();
        let models_dir = models_dir.or_else(|| settings.models_dir.clone()).unwrap_or_else(models::default_models_dir);
        let ctx = cc.egui_ctx.clone();
        let wake_ctx = ctx.clone();
        let worker = Worker::spawn(models_dir.clone(), move || wake_ctx.request_repaint()).expect("the worker thread starts");
        let mut notices = Vec::new();
        let gallery = Gallery::open(&gallery_dir).unwrap_or_else(|e| {
            notices.push(Notice {
                text: format!("The gallery could not be opened ({e}); results are kept in a temporary folder"),
                is_error: true,
            });
            let fallback = std::env::temp_dir().join(format!("arc2face-gallery-{}", std::process::id()));
            Gallery::open(&fallback).expect("a gallery in the temporary folder")
        });
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
                pending_face: None,
                kept_faces: Vec::new(),
                queue: VecDeque::new(),
                running: None,
                next_job_id: 1,
                busy: None,
                notices,
                gallery: GalleryState {
                    gallery,
                    selection: BTreeSet::new(),
                    anchor: None,
                    sort: SortOrder::Newest,
                    thumbnails: HashMap::new(),
                    last_removed: None,
                    opened: None,
                    comparing: None,
                },
            },
            worker,
            thumbnails: ThumbnailLoader::spawn({
                let ctx = ctx.clone();
                move || ctx.request_repaint()
            }),
            thumbnails_requested: HashSet::new(),
            ctx,
        };
        for photo in photos {
            app.apply(Action::OpenPhoto(photo));
        }
        app
    }

    pub fn apply(&mut self, action: Action) {
        let state = &mut self.state;
        match action {
            Action::OpenPhoto(path) => {
                state.analyzing = Some(path.clone());
                state.settings.recent_photos.retain(|p| p != &path);
                state.settings.recent_photos.insert(0, path.clone());
                state.settings.recent_photos.truncate(MAX_RECENT_PHOTOS);
                self.worker.send(Command::AnalyzePhoto { path });
            }
            Action::BrowsePhoto => {
                let picked = rfd::FileDialog::new().add_filter("Photos", &["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"]).pick_file();
                if let Some(path) = picked {
                    self.apply(Action::OpenPhoto(path));
                }
            }
            Action::SelectFace(index) => {
                if let Some(photo) = &mut state.photo {
                    photo.selected_face = Some(index);
                }
            }
            Action::KeepFace => {
                if let Some(photo) = &state.photo
                    && let Some(index) = photo.selected_face
                {
                    let source = crate::face::identity_source(&photo.path, index);
                    if !state.kept_faces.iter().any(|kept| kept.source == source) {
                        state.kept_faces.push(KeptFace { source, embedding: photo.faces[index].embedding.clone() });
                    }
                }
            }
            Action::ClearKeptFaces => state.kept_faces.clear(),
            Action::RestoreFrom { path, metadata } => {
                state.settings.steps = metadata.steps;
                state.settings.guidance = metadata.guidance;
                if let Some(seed) = metadata.seed {
                    state.settings.seed = seed;
                    state.settings.seed_locked = true;
                }
                let seed = metadata.seed.map_or("none".into(), |s| s.to_string());
                let mut text = format!(
                    "Settings restored from {}: seed {seed}, {} steps, guidance {:.1}",
                    file_name(&path),
                    metadata.steps,
                    metadata.guidance
                );
                let source = crate::face::parse_identity_source(&metadata.identity_source);
                let photo = source.and_then(|(name, face)| {
                    let recent = state.settings.recent_photos.iter().find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == name));
                    recent.map(|p| (p.clone(), face))
                });
                match photo {
                    Some((photo, face)) => {
                        state.pending_face = Some((photo.clone(), face));
                        self.apply(Action::OpenPhoto(photo));
                    }
                    None => {
                        text.push_str(&format!("; its identity came from {}: open that photo to make it again", metadata.identity_source))
                    }
                }
                self.state.notices.push(Notice { text, is_error: false });
            }
            Action::Generate => self.queue_generation(),
            Action::CancelRunning => {
                if let Some(running) = &mut state.running {
                    running.cancelling = true;
                    self.worker.cancel(running.request.job_id);
                }
            }
            Action::RemoveQueued(job_id) => state.queue.retain(|job| job.job_id != job_id),
            Action::MoveQueuedUp(job_id) => {
                if let Some(i) = state.queue.iter().position(|job| job.job_id == job_id).filter(|&i| i > 0) {
                    state.queue.swap(i, i - 1);
                }
            }
            Action::MoveQueuedDown(job_id) => {
                if let Some(i) = state.queue.iter().position(|job| job.job_id == job_id).filter(|&i| i + 1 < state.queue.len()) {
                    state.queue.swap(i, i + 1);
                }
            }
            Action::UseSeedOf(id) => {
                if let Some(seed) = state.gallery.gallery.get(id).and_then(|e| e.metadata.seed) {
                    state.settings.seed = seed;
                    state.settings.seed_locked = true;
                }
            }
            Action::NewSeed => state.settings.seed = crate::engine::random_seed(),
            Action::SelectEntry { id, extend, toggle } => select_entry(&mut state.gallery, id, extend, toggle),
            Action::SelectAll => {
                state.gallery.selection = state.gallery.gallery.entries().iter().map(|e| e.id).collect();
            }
            Action::ClearSelection => state.gallery.selection.clear(),
            Action::OpenEntry(id) => {
                state.gallery.opened = id;
                state.gallery.comparing = None;
            }
            Action::CompareSelected => {
                let mut selected = state.gallery.selection.iter().copied();
                if let (Some(a), Some(b)) = (selected.next(), selected.next()) {
                    state.gallery.comparing = Some((a, b));
                    state.gallery.opened = None;
                }
            }
            Action::ToggleFavourite(id) => {
                let favourite = state.gallery.gallery.get(id).is_some_and(|e| !e.favourite);
                if let Err(e) = state.gallery.gallery.set_favourite(id, favourite) {
                    notify_error(state, e.to_string());
                }
            }
            Action::DeleteSelected => {
                let ids: Vec<u64> = state.gallery.selection.iter().copied().collect();
                if !ids.is_empty() {
                    match state.gallery.gallery.remove(&ids) {
                        Ok(removed) => {
                            state.gallery.last_removed = Some(removed);
                            state.gallery.selection.clear();
                            state.gallery.opened = None;
                            state.gallery.comparing = None;
                            state
                                .notices
                                .push(Notice { text: format!("Deleted {} image(s) — Undo with Ctrl+Z", ids.len()), is_error: false });
                        }
                        Err(e) => notify_error(state, e.to_string()),
                    }
                }
            }
            Action::UndoDelete => {
                if let Some(removed) = state.gallery.last_removed.take()
                    && let Err(e) = state.gallery.gallery.undo_remove(removed)
                {
                    notify_error(state, e.to_string());
                }
            }
            Action::BrowseExport => {
                if let Some(dir) = rfd::FileDialog::new().pick_folder() {
                    self.apply(Action::ExportTo(dir));
                }
            }
            Action::ExportTo(dir) => {
                let ids: Vec<u64> = state.gallery.selection.iter().copied().collect();
                match state.gallery.gallery.export(&ids, &dir) {
                    Ok(paths) => state
                        .notices
                        .push(Notice { text: format!("Exported {} image(s) to {}", paths.len(), dir.display()), is_error: false }),
                    Err(e) => notify_error(state, e.to_string()),
                }
            }
            Action::SetSort(order) => state.gallery.sort = order,
            Action::BrowseModels => {
                if let Some(dir) = rfd::FileDialog::new().pick_folder() {
                    self.apply(Action::SetModelsDir(dir));
                }
            }
            Action::SetModelsDir(dir) => {
                if let Some(task) = &state.models.task {
                    task.cancel();
                }
                state.models.refresh(&ModelsDir::new(&dir));
                state.settings.models_dir = Some(dir.clone());
                state.models_dir = dir.clone();
                self.worker.send(Command::UnloadModels { models_dir: dir });
            }
            Action::ShowModelsWindow(open) => {
                state.models.window_open = open;
                if open && state.models.task.is_none() {
                    state.models.refresh(&ModelsDir::new(&state.models_dir));
                }
            }
            Action::DownloadModels(only) => {
                let files: Vec<_> =
                    state.models.downloadable().into_iter().filter(|f| only.is_empty() || only.contains(&f.relative_path)).collect();
                let runtime = state.models.runtime_to_fetch().filter(|_| only.is_empty() || only.contains(&models_task::RUNTIME_ROW));
                if state.models.task.is_none() && (!files.is_empty() || runtime.is_some()) {
                    let wake = self.ctx.clone();
                    let models = ModelsDir::new(&state.models_dir);
                    state.models.task =
                        Some(ModelsTask::download(models, files, runtime, self.hub.clone(), move || wake.request_repaint()));
                }
            }
            Action::VerifyModels => {
                if state.models.task.is_none() {
                    let wake = self.ctx.clone();
                    state.models.task = Some(ModelsTask::verify(ModelsDir::new(&state.models_dir), move || wake.request_repaint()));
                }
            }
            Action::CancelModelsTask => {
                if let Some(task) = &state.models.task {
                    task.cancel();
                }
            }
            Action::UpdateSettings(settings) => state.settings = *settings,
            Action::DismissNotice(index) => {
                if index < state.notices.len() {
                    state.notices.remove(index);
                }
            }
        }
    }

    fn queue_generation(&mut self) {
        let state = &mut self.state;
        let Some(photo) = &state.photo else {
            notify_error(state, "Open a photo with a face first".into());
            return;
        };
        let Some(face_index) = photo.selected_face else {
            notify_error(state, "No face is selected: pick one on the photo".into());
            return;
        };
        if !state.settings.seed_locked {
            state.settings.seed = crate::engine::random_seed();
        }
        let selected = crate::face::identity_source(&photo.path, face_index);
        let mut embeddings: Vec<Vec<f32>> = state.kept_faces.iter().map(|kept| kept.embedding.clone()).collect();
        let mut sources: Vec<String> = state.kept_faces.iter().map(|kept| kept.source.clone()).collect();
        if !sources.contains(&selected) {
            embeddings.push(photo.faces[face_index].embedding.clone());
            sources.push(selected);
        }
        let request = GenerationRequest {
            job_id: state.next_job_id,
            identity: crate::face::mean_identity(&embeddings),
            identity_source: sources.join(", "),
            num_images: state.settings.num_images,
            steps: state.settings.steps,
            guidance: state.settings.guidance,
            seed: state.settings.seed,
            gallery_dir: state.gallery.gallery.dir().to_path_buf(),
        };
        state.next_job_id += 1;
        state.queue.push_back(request);
        self.start_next_job();
    }

    fn start_next_job(&mut self) {
        if self.state.running.is_some() {
            return;
        }
        if let Some(request) = self.state.queue.pop_front() {
            self.worker.send(Command::Generate(request.clone()));
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
                }
            }
        }
    }

    fn handle_event(&mut self, event: Event) {
        let state = &mut self.state;
        match event {
            Event::PhotoAnalyzed { path, photo, faces } => {
                state.busy = None;
                if state.analyzing.as_ref() == Some(&path) {
                    state.analyzing = None;
                }
                if faces.is_empty() {
                    notify_error(state, format!("No face found in {}: try a photo with more margin around the face", file_name(&path)));
                }
                let restored = state.pending_face.take_if(|(pending, _)| pending == &path).map(|(_, face)| face);
                let selected_face = restored.filter(|&face| face < faces.len()).or_else(|| crate::face::largest_face(&faces));
                let size = [photo.width() as usize, photo.height() as usize];
                let texture = self.ctx.load_texture(format!("photo:{}", path.display()), color_image(&photo), TextureOptions::LINEAR);
                state.photo = Some(PhotoState { path, texture, size, faces, selected_face });
            }
            Event::PhotoFailed { path, message } => {
                state.busy = None;
                if state.analyzing.as_ref() == Some(&path) {
                    state.analyzing = None;
                }
                notify_error(state, message);
            }
            Event::Busy { what } => state.busy = Some(what),
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
            Event::ImageReady { image, saved, metadata, identity_match, .. } => {
                let recorded = saved.and_then(|path| {
                    let entry = state.gallery.gallery.adopt(&path, metadata, identity_match).map_err(|e| {
                        format!("{e}; the image itself is safe at {} and the gallery finds it when it next opens", path.display())
                    })?;
                    Ok(entry.id)
                });
                match recorded {
                    Ok(id) => {
                        let texture = self.ctx.load_texture(format!("entry:{id}"), color_image(&image), TextureOptions::LINEAR);
                        state.gallery.thumbnails.insert(id, texture);
                    }
                    // Never drop a result silently: say where it failed.
                    Err(e) => notify_error(state, format!("A finished image could not be saved: {e}")),
                }
            }
            Event::JobFinished { job_id, outcome } => {
                if state.running.as_ref().is_some_and(|r| r.request.job_id == job_id) {
                    state.running = None;
                }
                if outcome == JobOutcome::Cancelled {
                    state.notices.push(Notice { text: "Generation cancelled; finished images were kept".into(), is_error: false });
                }
                // Show the newest result large, unless the user is looking at something else.
                if state.gallery.opened.is_none() && state.gallery.comparing.is_none() && state.queue.is_empty() {
                    state.gallery.opened = state.gallery.gallery.entries().last().map(|e| e.id);
                }
                self.start_next_job();
            }
            Event::JobFailed { job_id, message } => {
                if state.running.as_ref().is_some_and(|r| r.request.job_id == job_id) {
                    state.running = None;
                }
                state.busy = None;
                notify_error(state, message);
                self.start_next_job();
            }
        }
    }

    /// Asks the thumbnail thread for gallery images not yet shown and uploads those it has
    /// decoded; the gallery shows a placeholder until then.
    fn load_thumbnails(&mut self) {
        let gallery = &mut self.state.gallery;
        for entry in gallery.gallery.entries() {
            if !gallery.thumbnails.contains_key(&entry.id) && self.thumbnails_requested.insert(entry.id) {
                self.thumbnails.request(entry.id, gallery.gallery.path(entry));
            }
        }
        let started = Instant::now();
        while started.elapsed() < EVENT_BUDGET {
            let Some((id, image)) = self.thumbnails.try_recv() else { break };
            let texture = self.ctx.load_texture(format!("entry:{id}"), color_image(&image), TextureOptions::LINEAR);
            gallery.thumbnails.insert(id, texture);
        }
    }

    fn handle_input(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).collect());
        for path in dropped {
            // An image this app made carries its settings (a few bytes before the pixels).
            let made_here = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("png"))
                .then(|| metadata::read_metadata(&path).ok().flatten())
                .flatten();
            match made_here {
                Some(metadata) => self.apply(Action::RestoreFrom { path, metadata: Box::new(metadata) }),
                None => self.apply(Action::OpenPhoto(path)),
            }
        }
        use egui::{Key, KeyboardShortcut, Modifiers};
        let shortcuts = [
            (KeyboardShortcut::new(Modifiers::COMMAND, Key::Enter), Action::Generate),
            (KeyboardShortcut::new(Modifiers::COMMAND, Key::O), Action::BrowsePhoto),
            (KeyboardShortcut::new(Modifiers::COMMAND, Key::E), Action::BrowseExport),
            (KeyboardShortcut::new(Modifiers::COMMAND, Key::A), Action::SelectAll),
            (KeyboardShortcut::new(Modifiers::COMMAND, Key::Z), Action::UndoDelete),
            (KeyboardShortcut::new(Modifiers::NONE, Key::Delete), Action::DeleteSelected),
            (KeyboardShortcut::new(Modifiers::NONE, Key::Escape), Action::CancelRunning),
        ];
        for (shortcut, action) in shortcuts {
            if ctx.input_mut(|i| i.consume_shortcut(&shortcut)) {
                self.apply(action);
            }
        }
        for (key, step) in [(egui::Key::ArrowRight, 1i64), (egui::Key::ArrowLeft, -1)] {
            if ctx.input(|i| i.key_pressed(key) && !i.modifiers.any())
                && let Some(id) = self.neighbour_entry(step)
            {
                self.apply(Action::SelectEntry { id, extend: false, toggle: false });
                if self.state.gallery.opened.is_some() {
                    self.apply(Action::OpenEntry(Some(id)));
                }
            }
        }
    }

    /// The gallery entry `step` places from the current one, in display order.
    fn neighbour_entry(&self, step: i64) -> Option<u64> {
        let gallery = &self.state.gallery;
        let order: Vec<u64> = gallery.gallery.sorted(gallery.sort).iter().map(|e| e.id).collect();
        let current = gallery.opened.or(gallery.anchor)?;
        let at = order.iter().position(|&id| id == current)? as i64 + step;
        order.get(usize::try_from(at).ok()?).copied()
    }
}

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.drain_events();
        self.load_thumbnails();
        let ctx = ui.ctx().clone();
        self.handle_input(&ctx);
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

fn select_entry(gallery: &mut GalleryState, id: u64, extend: bool, toggle: bool) {
    if extend && let Some(anchor) = gallery.anchor {
        let order: Vec<u64> = gallery.gallery.sorted(gallery.sort).iter().map(|e| e.id).collect();
        if let (Some(a), Some(b)) = (order.iter().position(|&x| x == anchor), order.iter().position(|&x| x == id)) {
            gallery.selection.extend(&order[a.min(b)..=a.max(b)]);
            return;
        }
    }
    if toggle {
        if !gallery.selection.remove(&id) {
            gallery.selection.insert(id);
        }
    } else {
        gallery.selection = BTreeSet::from([id]);
    }
    gallery.anchor = Some(id);
}

fn notify_error(state: &mut AppState, text: String) {
    state.notices.push(Notice { text, is_error: true });
}

pub fn color_image(image: &RgbImage) -> ColorImage {
    ColorImage::from_rgb([image.width() as usize, image.height() as usize], image.as_raw())
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
