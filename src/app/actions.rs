//! Everything a user can do, from buttons, menus, shortcuts and drops alike, grouped by the part
//! of the app it concerns; `StudioApp::apply` hands each group to its own function.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::StudioApp;
use super::color_image;
use super::gallery_thread::Request as GalleryRequest;
use super::models_task::{self, ModelsTask};
use super::state::*;
use crate::engine::{FaceRef, GenerationSpec, IdentitySource, ImageMetadata, PoseSpec, PoseTarget, Sweep};
use crate::gallery::history::SortOrder;
use crate::models::ModelsDir;
use crate::pose::HeadPose;
use crate::worker::{Command, GenerationRequest, PhotoPurpose, ReferencePhoto};

/// The side of the pose pictures in the queue, in pixels.
const QUEUE_THUMBNAIL_SIDE: usize = 48;

#[derive(Debug, Clone)]
pub enum Action {
    Photo(PhotoAction),
    Job(JobAction),
    Gallery(GalleryAction),
    Models(ModelsAction),
    Pose(PoseAction),
    /// The settings panel edited the settings.
    UpdateSettings(Box<Settings>),
    /// Take back the latest pose or expression edit, or the latest delete (Ctrl+Z).
    Undo,
    DismissNotice(usize),
}

#[derive(Debug, Clone)]
pub enum PoseAction {
    /// The head turned as the selected face of the photo is.
    FromSelectedFace,
    /// The head turned as the largest face of another photo is (one dropped on the Pose panel).
    FromPhoto(PathBuf),
}

#[derive(Debug, Clone)]
pub enum PhotoAction {
    Open(PathBuf),
    Browse,
    SelectFace(usize),
    /// Keep the selected face and combine it with faces of further photos into one identity.
    KeepFace,
    ClearKeptFaces,
    /// Restore the settings an image was made with, and its photos and faces when they are
    /// recent photos.
    RestoreFrom {
        path: PathBuf,
        metadata: Box<ImageMetadata>,
    },
}

#[derive(Debug, Clone)]
pub enum JobAction {
    Generate,
    CancelRunning,
    RemoveQueued(u64),
    MoveQueuedUp(u64),
    MoveQueuedDown(u64),
    UseSeedOf(u64),
    NewSeed,
    AddLora(PathBuf),
    BrowseLora,
    RandomExpression,
    /// Queue a sweep: the settings' images from the sweep start to the panels' pose or
    /// expression, one seed.
    GenerateSweep(SweepKind),
    /// Remember the panels' pose or expression as a sweep's start.
    SetSweepStart(SweepKind),
}

#[derive(Debug, Clone)]
pub enum GalleryAction {
    Select {
        id: u64,
        extend: bool,
        toggle: bool,
    },
    SelectAll,
    ClearSelection,
    Open(Option<u64>),
    CompareSelected,
    ToggleFavourite(u64),
    DeleteSelected,
    UndoDelete,
    BrowseExport,
    ExportTo(PathBuf),
    /// Ask where to write a contact sheet of these images (a sweep, in sweep order).
    BrowseContactSheet(Vec<u64>),
    ContactSheetTo {
        ids: Vec<u64>,
        dest: PathBuf,
    },
    SetSort(SortOrder),
}

#[derive(Debug, Clone)]
pub enum ModelsAction {
    Browse,
    SetDir(PathBuf),
    ShowWindow(bool),
    /// Fetch these files of the models folder; none means every missing one.
    Download(Vec<&'static str>),
    Verify,
    CancelTask,
}

impl From<PhotoAction> for Action {
    fn from(action: PhotoAction) -> Self {
        Action::Photo(action)
    }
}
impl From<JobAction> for Action {
    fn from(action: JobAction) -> Self {
        Action::Job(action)
    }
}
impl From<GalleryAction> for Action {
    fn from(action: GalleryAction) -> Self {
        Action::Gallery(action)
    }
}
impl From<ModelsAction> for Action {
    fn from(action: ModelsAction) -> Self {
        Action::Models(action)
    }
}
impl From<PoseAction> for Action {
    fn from(action: PoseAction) -> Self {
        Action::Pose(action)
    }
}

const PHOTO_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"];

impl StudioApp {
    pub fn apply(&mut self, action: impl Into<Action>) {
        match action.into() {
            Action::Photo(action) => self.apply_photo(action),
            Action::Job(action) => self.apply_job(action),
            Action::Gallery(action) => self.apply_gallery(action),
            Action::Models(action) => self.apply_models(action),
            Action::Pose(action) => self.apply_pose(action),
            Action::UpdateSettings(settings) => {
                let before = PanelValues::of(&self.state.settings);
                self.state.settings = *settings;
                self.record_edit(before);
            }
            Action::Undo => self.undo(),
            Action::DismissNotice(index) => {
                if index < self.state.notices.len() {
                    self.state.notices.remove(index);
                }
            }
        }
    }

    fn apply_photo(&mut self, action: PhotoAction) {
        let state = &mut self.state;
        match action {
            PhotoAction::Open(path) => {
                state.settings.recent_photos.retain(|p| p != &path);
                state.settings.recent_photos.insert(0, path.clone());
                state.settings.recent_photos.truncate(MAX_RECENT_PHOTOS);
                if self.worker.send(Command::AnalyzePhoto { path: path.clone(), purpose: PhotoPurpose::Identity }) {
                    state.analyzing = Some(path);
                } else {
                    notify_error(state, "The app is still busy with earlier photos; open this one again in a moment".into());
                }
            }
            PhotoAction::Browse => {
                if let Some(path) = rfd::FileDialog::new().add_filter("Photos", &PHOTO_EXTENSIONS).pick_file() {
                    self.apply_photo(PhotoAction::Open(path));
                }
            }
            PhotoAction::SelectFace(index) => {
                if let Some(photo) = &mut state.photo
                    && index < photo.faces.len()
                {
                    photo.selected_face = Some(index);
                }
            }
            PhotoAction::KeepFace => keep_selected_face(state),
            PhotoAction::ClearKeptFaces => state.kept_faces.clear(),
            PhotoAction::RestoreFrom { path, metadata } => self.restore_from(&path, &metadata),
        }
    }

    /// Takes an image's settings as the next job's (keeping where jobs run) and reopens the
    /// photos its identity came from, when they are recent photos.
    fn restore_from(&mut self, path: &std::path::Path, metadata: &ImageMetadata) {
        let state = &mut self.state;
        state.settings.restore(&metadata.spec);
        let seed = metadata.spec.seed.map_or("none".into(), |s| s.to_string());
        let mut text = format!(
            "Settings restored from {}: seed {seed}, {} steps, guidance {:.1}",
            crate::file_name(path),
            metadata.spec.steps,
            metadata.spec.guidance
        );
        let faces = match &metadata.spec.identity {
            IdentitySource::Faces { faces } => faces.clone(),
            _ => Vec::new(),
        };
        let recent = |face: &FaceRef| {
            let photos = &state.settings.recent_photos;
            photos.iter().find(|p| crate::file_name(p) == face.photo).map(|p| (p.clone(), face.face))
        };
        let found: Option<Vec<(PathBuf, usize)>> = faces.iter().map(recent).collect();
        match found {
            Some(photos) if !photos.is_empty() => {
                state.kept_faces.clear();
                state.pending_faces = photos.into();
                self.open_next_pending_photo();
            }
            _ => text.push_str(&format!("; its identity came from {}: open that photo to make it again", metadata.spec.identity)),
        }
        self.state.notices.push(Notice { text, is_error: false });
    }

    /// Opens the next photo of an identity being restored.
    pub(super) fn open_next_pending_photo(&mut self) {
        if let Some((photo, _)) = self.state.pending_faces.front() {
            let photo = photo.clone();
            self.apply_photo(PhotoAction::Open(photo));
        }
    }

    fn apply_job(&mut self, action: JobAction) {
        let state = &mut self.state;
        match action {
            JobAction::Generate => self.queue_job(None),
            JobAction::CancelRunning => {
                if let Some(running) = &mut state.running {
                    running.cancelling = true;
                    self.worker.cancel(running.request.job_id);
                }
            }
            JobAction::RemoveQueued(job_id) => {
                state.queue.retain(|job| job.job_id != job_id);
                state.pose.queue_thumbnails.remove(&job_id);
            }
            JobAction::MoveQueuedUp(job_id) => {
                if let Some(i) = state.queue.iter().position(|job| job.job_id == job_id).filter(|&i| i > 0) {
                    state.queue.swap(i, i - 1);
                }
            }
            JobAction::MoveQueuedDown(job_id) => {
                if let Some(i) = state.queue.iter().position(|job| job.job_id == job_id).filter(|&i| i + 1 < state.queue.len()) {
                    state.queue.swap(i, i + 1);
                }
            }
            JobAction::UseSeedOf(id) => {
                if let Some(seed) = state.gallery.get(id).and_then(|e| e.metadata.spec.seed) {
                    state.settings.spec.seed = Some(seed);
                    state.settings.seed_locked = true;
                }
            }
            JobAction::NewSeed => state.settings.spec.seed = Some(crate::engine::random_seed()),
            JobAction::AddLora(path) => {
                let file = path.to_string_lossy().into_owned();
                if !state.settings.spec.loras.iter().any(|l| l.file == file) {
                    state.settings.spec.loras.push(crate::engine::LoraSpec { file, scale: 1.0 });
                }
            }
            JobAction::RandomExpression => {
                let before = PanelValues::of(&state.settings);
                if let Some(target) = &mut state.settings.spec.expression {
                    target.expression = target.expression.randomized(crate::engine::random_seed());
                }
                self.record_edit(before);
            }
            JobAction::SetSweepStart(kind) => state.sweep_start.set(kind, &state.settings.spec),
            JobAction::GenerateSweep(kind) => {
                let sweep = state.sweep_start.sweep(kind);
                self.queue_job(Some(sweep));
            }
            JobAction::BrowseLora => {
                if let Some(path) = rfd::FileDialog::new().add_filter("LoRA", &["safetensors"]).pick_file() {
                    self.apply_job(JobAction::AddLora(path));
                }
            }
        }
    }

    /// Queues the settings' job (a sweep when given) for the selected face.
    fn queue_job(&mut self, sweep: Option<Sweep>) {
        let state = &mut self.state;
        let Some(photo) = &state.photo else {
            notify_error(state, "Open a photo with a face first".into());
            return;
        };
        let Some(gallery_dir) = state.gallery.dir.clone() else {
            notify_error(state, "The gallery is still opening; press Generate again in a moment".into());
            return;
        };
        let Some(face_index) = photo.selected_face else {
            notify_error(state, "No face is selected: pick one on the photo".into());
            return;
        };
        if !state.settings.seed_locked || state.settings.spec.seed.is_none() {
            state.settings.spec.seed = Some(crate::engine::random_seed());
        }
        // A sweep runs with the panel's pose or expression even while it is switched off.
        let mut sweep_spec = state.settings.job_spec();
        match &sweep {
            Some(Sweep::Expression { .. }) => sweep_spec.expression = state.settings.spec.expression.clone(),
            Some(Sweep::Pose { .. }) => sweep_spec.pose = state.settings.spec.pose.clone(),
            None => {}
        }
        // The head the Pose panel shows is the one the job renders.
        if let (Some(PoseSpec { target: PoseTarget::Head { mesh, .. }, .. }), Some(head)) = (&mut sweep_spec.pose, &state.pose.head) {
            *mesh = head.mesh.clone();
        }
        if sweep.is_some() {
            sweep_spec.num_images = sweep_spec.num_images.max(2);
        }
        sweep_spec.sweep = sweep;
        let selected = FaceRef { photo: crate::file_name(&photo.path), face: face_index };
        let mut embeddings: Vec<Vec<f32>> = state.kept_faces.iter().map(|kept| kept.embedding.clone()).collect();
        let mut faces: Vec<FaceRef> = state.kept_faces.iter().map(|kept| kept.face.clone()).collect();
        if !faces.contains(&selected) {
            embeddings.push(photo.faces[face_index].embedding.clone());
            faces.push(selected);
        }
        // The look kept is the selected face's photo's.
        let reference = sweep_spec.reference.as_mut().map(|reference| {
            reference.photo = crate::file_name(&photo.path);
            reference.face = Some(face_index);
            ReferencePhoto { path: photo.path.clone(), keypoints: photo.faces[face_index].kps }
        });
        let request = GenerationRequest {
            job_id: state.next_job_id,
            spec: GenerationSpec { identity: IdentitySource::Faces { faces }, ..sweep_spec },
            identity: crate::face::mean_identity(&embeddings),
            gallery_dir,
            reference,
        };
        state.next_job_id += 1;
        if let (Some(head), Some(pose)) = (&state.pose.head, request.spec.pose.as_ref().and_then(PoseSpec::head_pose)) {
            let thumbnail = crate::pose::render_normals_rolled(&head.model, &pose.clamped(), QUEUE_THUMBNAIL_SIDE);
            let texture = self.ctx.load_texture(format!("queued-pose:{}", request.job_id), color_image(&thumbnail), Default::default());
            state.pose.queue_thumbnails.insert(request.job_id, texture);
        }
        state.queue.push_back(request);
        self.start_next_job();
    }

    fn apply_pose(&mut self, action: PoseAction) {
        let state = &mut self.state;
        match action {
            PoseAction::FromSelectedFace => {
                let keypoints = state.photo.as_ref().and_then(|p| p.faces.get(p.selected_face?)).map(|face| face.kps);
                match keypoints {
                    Some(keypoints) => self.set_pose_from_keypoints(&keypoints),
                    None => notify_error(state, "Open a photo and pick a face to copy its pose".into()),
                }
            }
            PoseAction::FromPhoto(path) => {
                if self.worker.send(Command::AnalyzePhoto { path: path.clone(), purpose: PhotoPurpose::Pose }) {
                    state.pose.fitting = Some(path);
                } else {
                    notify_error(state, "The app is still busy with earlier photos; drop this one again in a moment".into());
                }
            }
        }
    }

    /// Turns the Pose panel's head as the face with these five keypoints is turned, and
    /// switches the pose on.
    pub(super) fn set_pose_from_keypoints(&mut self, keypoints: &[[f32; 2]; 5]) {
        let state = &mut self.state;
        let Some(head) = &state.pose.head else {
            notify_error(state, "The head is still loading; try again in a moment".into());
            return;
        };
        let fitted = crate::pose::fit_pose(&head.model, keypoints);
        let before = PanelValues::of(&state.settings);
        let pose = state.settings.spec.pose.get_or_insert_with(PoseSpec::default);
        pose.target = match &pose.target {
            PoseTarget::Head { pose: old, mesh } => {
                PoseTarget::Head { pose: HeadPose { yaw: fitted.yaw, pitch: fitted.pitch, roll: fitted.roll, ..*old }, mesh: mesh.clone() }
            }
            PoseTarget::Image { .. } => PoseTarget::Head { pose: fitted, mesh: head.mesh.clone() },
        };
        state.settings.use_pose = true;
        self.record_edit(before);
    }

    /// Remembers `before` as an undo step when the panels' values changed from it; the edits of
    /// one pointer press (a drag) make one step.
    fn record_edit(&mut self, before: PanelValues) {
        let state = &mut self.state;
        if PanelValues::of(&state.settings) == before {
            return;
        }
        let press = self.ctx.input(|i| if i.pointer.any_down() { i.pointer.press_start_time() } else { None });
        if press.is_none() || press != state.undo_press {
            state.undo.push(UndoStep::Edit(Box::new(before)));
            if state.undo.len() > UNDO_STEPS {
                state.undo.remove(0);
            }
        }
        state.undo_press = press;
    }

    fn undo(&mut self) {
        self.state.undo_press = None;
        while let Some(step) = self.state.undo.pop() {
            match step {
                UndoStep::Edit(values) => {
                    values.restore_into(&mut self.state.settings);
                    return;
                }
                // Already taken back with the gallery's own button: look further back.
                UndoStep::Delete if self.state.gallery.last_removed.is_none() => {}
                UndoStep::Delete => {
                    self.apply_gallery(GalleryAction::UndoDelete);
                    return;
                }
            }
        }
    }

    fn apply_gallery(&mut self, action: GalleryAction) {
        let state = &mut self.state;
        let gallery = &mut state.gallery;
        let request = match action {
            GalleryAction::Select { id, extend, toggle } => {
                select_entry(gallery, id, extend, toggle);
                None
            }
            GalleryAction::SelectAll => {
                gallery.selection = gallery.entries.iter().map(|e| e.id).collect();
                None
            }
            GalleryAction::ClearSelection => {
                gallery.selection.clear();
                None
            }
            GalleryAction::Open(id) => {
                gallery.opened = id;
                gallery.comparing = None;
                None
            }
            GalleryAction::CompareSelected => {
                let mut selected = gallery.selection.iter().copied();
                if let (Some(a), Some(b)) = (selected.next(), selected.next()) {
                    gallery.comparing = Some((a, b));
                    gallery.opened = None;
                }
                None
            }
            GalleryAction::ToggleFavourite(id) => {
                gallery.get(id).map(|entry| GalleryRequest::SetFavourite { id, favourite: !entry.favourite })
            }
            GalleryAction::DeleteSelected => {
                let ids: Vec<u64> = gallery.selection.iter().copied().collect();
                (!ids.is_empty()).then_some(GalleryRequest::Remove { ids })
            }
            GalleryAction::UndoDelete => gallery.last_removed.take().map(GalleryRequest::UndoRemove),
            GalleryAction::BrowseExport => {
                if let Some(dir) = rfd::FileDialog::new().pick_folder() {
                    self.apply_gallery(GalleryAction::ExportTo(dir));
                }
                None
            }
            GalleryAction::ExportTo(dest) => Some(GalleryRequest::Export { ids: gallery.selection.iter().copied().collect(), dest }),
            GalleryAction::BrowseContactSheet(ids) => {
                if let Some(dest) = rfd::FileDialog::new().set_file_name("sweep.png").add_filter("PNG", &["png"]).save_file() {
                    self.apply_gallery(GalleryAction::ContactSheetTo { ids, dest });
                }
                None
            }
            GalleryAction::ContactSheetTo { ids, dest } => Some(GalleryRequest::ContactSheet { ids, dest }),
            GalleryAction::SetSort(order) => {
                gallery.sort = order;
                None
            }
        };
        if let Some(request) = request
            && !self.gallery_thread.send(request)
        {
            notify_error(&mut self.state, "The gallery is busy with earlier changes; try again in a moment".into());
        }
    }

    fn apply_models(&mut self, action: ModelsAction) {
        let state = &mut self.state;
        match action {
            ModelsAction::Browse => {
                if let Some(dir) = rfd::FileDialog::new().pick_folder() {
                    self.apply_models(ModelsAction::SetDir(dir));
                }
            }
            ModelsAction::SetDir(dir) => {
                if let Some(task) = &state.models.task {
                    task.cancel();
                }
                state.models.refresh(&ModelsDir::new(&dir));
                state.settings.models_dir = Some(dir.clone());
                state.models_dir = dir.clone();
                state.runtime_in_use = None;
                self.worker.send(Command::UnloadModels { models_dir: dir });
                self.load_head();
            }
            ModelsAction::ShowWindow(open) => {
                state.models.window_open = open;
                if open && state.models.task.is_none() {
                    state.models.refresh(&ModelsDir::new(&state.models_dir));
                }
            }
            ModelsAction::Download(only) => {
                let files: Vec<_> =
                    state.models.downloadable().into_iter().filter(|f| only.is_empty() || only.contains(&f.relative_path)).collect();
                let runtime = state.models.runtime_to_fetch().filter(|_| only.is_empty() || only.contains(&models_task::RUNTIME_ROW));
                if state.models.task.is_none() && (!files.is_empty() || runtime.is_some()) {
                    state.models.unreachable = None;
                    let wake = self.ctx.clone();
                    let models = ModelsDir::new(&state.models_dir);
                    match ModelsTask::download(models, files, runtime, self.hub.clone(), move || wake.request_repaint()) {
                        Ok(task) => state.models.task = Some(task),
                        Err(e) => notify_error(state, format!("The download could not start: {e}")),
                    }
                }
            }
            ModelsAction::Verify => {
                if state.models.task.is_none() {
                    let wake = self.ctx.clone();
                    match ModelsTask::verify(ModelsDir::new(&state.models_dir), move || wake.request_repaint()) {
                        Ok(task) => state.models.task = Some(task),
                        Err(e) => notify_error(state, format!("The check could not start: {e}")),
                    }
                }
            }
            ModelsAction::CancelTask => {
                if let Some(task) = &state.models.task {
                    task.cancel();
                }
            }
        }
    }
}

/// Keeps the selected face for the identity, once.
fn keep_selected_face(state: &mut AppState) {
    if let Some(photo) = &state.photo
        && let Some(index) = photo.selected_face
        && let Some(face) = photo.faces.get(index)
    {
        let face_ref = FaceRef { photo: crate::file_name(&photo.path), face: index };
        if !state.kept_faces.iter().any(|kept| kept.face == face_ref) {
            state.kept_faces.push(KeptFace { face: face_ref, embedding: face.embedding.clone() });
        }
    }
}

fn select_entry(gallery: &mut GalleryState, id: u64, extend: bool, toggle: bool) {
    if extend && let Some(anchor) = gallery.anchor {
        let order: Vec<u64> = gallery.sorted().iter().map(|e| e.id).collect();
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

pub(super) fn notify_error(state: &mut AppState, text: String) {
    state.notices.push(Notice { text, is_error: true });
}
