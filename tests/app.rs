//! The desktop app driven through its accessibility tree with egui_kittest, on the tiny models:
//! drop a photo, pick a face, generate, watch previews, fill the gallery, export, cancel, and
//! the error paths. The worker thread runs for real; the tests step frames until it answers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc2face_studio::app::{GalleryAction, ModelsAction, StudioApp};
use arc2face_studio::engine::{HeadMesh, PoseTarget};
use arc2face_studio::gallery::metadata;
use arc2face_studio::pose::{HeadModel, HeadPose, fit_pose, render_normals};
use egui::Vec2;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

#[derive(Debug)]
struct DroppedPath(PathBuf);

impl egui::DroppedFile for DroppedPath {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn photo(name: &str) -> PathBuf {
    root().join("tests/fixtures/faces/photos").join(name)
}

fn harness(models: PathBuf, gallery: PathBuf) -> Harness<'static, StudioApp> {
    Harness::builder().with_size([1280.0, 800.0]).build_eframe(move |cc| StudioApp::new(cc, Some(models), gallery, Vec::new()).unwrap())
}

/// Steps frames until `done` holds, failing after a generous timeout.
fn run_until(harness: &mut Harness<'_, StudioApp>, what: &str, done: impl Fn(&StudioApp) -> bool) {
    let started = Instant::now();
    while !done(harness.state()) {
        let notices = notices(harness.state());
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {what}; notices: {notices:?}");
        harness.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    harness.step();
}

fn drop_photo(harness: &mut Harness<'_, StudioApp>, path: PathBuf) {
    harness.input_mut().dropped_files.push(Arc::new(DroppedPath(path)));
    harness.step();
}

fn notices(app: &StudioApp) -> Vec<String> {
    app.state.notices.iter().map(|n| n.text.clone()).collect()
}

#[test]
fn drop_pick_generate_watch_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    drop_photo(&mut harness, photo("astronaut.jpg"));
    run_until(&mut harness, "faces", |app| app.state.photo.is_some());
    let photo_state = harness.state().state.photo.as_ref().unwrap();
    assert_eq!(photo_state.faces.len(), 7);
    let largest = arc2face_studio::face::largest_face(&photo_state.faces);
    assert_eq!(photo_state.selected_face, largest, "the largest face is preselected");

    harness.get_by_label("Face 2").click();
    harness.step();
    assert_eq!(harness.state().state.photo.as_ref().unwrap().selected_face, Some(1));

    {
        let settings = &mut harness.state_mut().state.settings;
        settings.spec.num_images = 2;
        settings.spec.steps = 3;
        settings.spec.seed = Some(42);
        settings.seed_locked = true;
    }
    harness.get_by_label("Generate").click();
    harness.step();
    run_until(&mut harness, "a step preview", |app| {
        app.state.running.as_ref().is_some_and(|r| r.preview.is_some()) || app.state.gallery.entries.len() == 2
    });
    run_until(&mut harness, "the gallery", |app| app.state.running.is_none() && app.state.gallery.entries.len() == 2);
    let seeds: Vec<Option<u64>> = harness.state().state.gallery.entries.iter().map(|e| e.metadata.spec.seed).collect();
    assert_eq!(seeds, [Some(42), Some(43)], "image i uses seed + i");
    assert!(notices(harness.state()).is_empty(), "{:?}", notices(harness.state()));

    harness.get_by_label("Select all").click();
    harness.step();
    assert_eq!(harness.state().state.gallery.selection.len(), 2);
    let export = dir.path().join("export");
    harness.state_mut().apply(GalleryAction::ExportTo(export.clone()));
    run_until(&mut harness, "the export", |app| notices(app).iter().any(|n| n.starts_with("Exported 2 image(s)")));
    let exported: Vec<PathBuf> = std::fs::read_dir(&export).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(exported.len(), 2);
    for path in &exported {
        let meta = metadata::read_metadata(path).unwrap().expect("metadata travels with the export");
        assert_eq!((meta.spec.steps, meta.spec.guidance), (3, 3.0));
        assert_eq!(meta.spec.identity.to_string(), "astronaut.jpg (face 1)");
    }

    // Dropping an exported image back in restores its settings and reopens its face.
    let seed = metadata::read_metadata(&exported[0]).unwrap().unwrap().spec.seed;
    {
        let state = &mut harness.state_mut().state;
        (state.settings.spec.steps, state.settings.spec.guidance, state.settings.seed_locked) = (20, 5.0, false);
        state.photo = None;
    }
    drop_photo(&mut harness, exported[0].clone());
    run_until(&mut harness, "the photo reopened", |app| app.state.photo.is_some());
    let state = &harness.state().state;
    assert_eq!(
        (state.settings.spec.steps, state.settings.spec.guidance, state.settings.spec.seed, state.settings.seed_locked),
        (3, 3.0, seed, true)
    );
    let photo_state = state.photo.as_ref().unwrap();
    assert!(photo_state.path.ends_with("astronaut.jpg") && photo_state.selected_face == Some(1));
    assert!(notices(harness.state()).iter().any(|n| n.starts_with("Settings restored from")));

    // History is kept across runs.
    drop(harness);
    let mut harness = self::harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    run_until(&mut harness, "the gallery to open", |app| app.state.gallery.dir.is_some());
    assert_eq!(harness.state().state.gallery.entries.len(), 2);
}

/// A picture says where the boxes are better than coordinates: every face boxed and numbered,
/// the largest selected (green). Rendered with wgpu (Mesa's software Vulkan in CI).
#[test]
fn snapshot_of_a_photo_with_its_faces_boxed() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    drop_photo(&mut harness, photo("two_faces.jpg"));
    run_until(&mut harness, "faces", |app| app.state.photo.is_some());
    harness.run();
    harness.snapshot("photo_with_faces_boxed");
}

/// A group photo (the astronaut tiled 4×3, so the random test detector finds dozens of faces):
/// the boxes stay on the photo, faces are picked from a strip of pictures, largest first.
#[test]
fn snapshot_of_a_group_photo_picked_from_the_face_strip() {
    let dir = tempfile::tempdir().unwrap();
    let astronaut = image::open(photo("astronaut.jpg")).unwrap().to_rgb8();
    let (w, h) = (astronaut.width() / 2, astronaut.height() / 2);
    let tile = image::imageops::resize(&astronaut, w, h, image::imageops::FilterType::Triangle);
    let mut group = image::RgbImage::new(w * 4, h * 3);
    for (x, y) in (0..4).flat_map(|x| (0..3).map(move |y| (x, y))) {
        image::imageops::replace(&mut group, &tile, (x * w) as i64, (y * h) as i64);
    }
    let group_path = dir.path().join("group.png");
    group.save(&group_path).unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    drop_photo(&mut harness, group_path);
    run_until(&mut harness, "faces", |app| app.state.photo.is_some());
    let photo_state = harness.state().state.photo.as_ref().unwrap();
    let faces = photo_state.faces.len();
    assert!(faces > 12, "a crowd: {faces} faces");
    let areas: Vec<f32> = photo_state.by_size.iter().map(|&i| photo_state.faces[i].area()).collect();
    assert!(areas.windows(2).all(|w| w[0] >= w[1]), "largest first");
    assert_eq!(photo_state.selected_face, Some(photo_state.by_size[0]), "the largest is picked");
    let third = photo_state.by_size[2];
    harness.get_by_label(&format!("Face {}", third + 1)).click();
    harness.run();
    assert_eq!(harness.state().state.photo.as_ref().unwrap().selected_face, Some(third));
    harness.snapshot("group_photo_face_strip");
}

/// Fast mode switches sampler, LoRA, steps and guidance together, and back to what they were;
/// a dropped LoRA file joins the list; the job carries all of it.
#[test]
fn fast_mode_and_loras_go_into_the_job() {
    use arc2face_studio::diffusion::schedulers::Sampler;
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    {
        let spec = &mut harness.state_mut().state.settings.spec;
        (spec.steps, spec.guidance, spec.sampler) = (30, 4.5, Sampler::Euler);
    }
    harness.get_by_label("Fast").click();
    harness.run();
    let spec = harness.state().state.settings.spec.clone();
    assert!(spec.is_fast() && (spec.steps, spec.guidance, spec.sampler) == (4, 1.0, Sampler::Lcm), "{spec:?}");

    let lora = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/reference/features/lora/peft.safetensors");
    drop_photo(&mut harness, lora.clone());
    assert_eq!(harness.state().state.settings.spec.loras.len(), 2, "the LCM-LoRA and the dropped one");

    drop_photo(&mut harness, photo("astronaut.jpg"));
    run_until(&mut harness, "faces", |app| app.state.photo.is_some());
    harness.get_by_label("Generate").click();
    harness.step();
    let request = harness.state().state.running.as_ref().map(|r| r.request.clone()).expect("a job runs");
    assert_eq!(request.spec.sampler, Sampler::Lcm);
    assert_eq!(
        request.spec.loras.iter().map(|l| l.file.as_str()).collect::<Vec<_>>(),
        ["lcm_lora/pytorch_lora_weights.safetensors", lora.to_str().unwrap()]
    );
    run_until(&mut harness, "the job", |app| app.state.running.is_none());
    assert!(notices(harness.state()).is_empty(), "{:?}", notices(harness.state()));

    harness.get_by_label("Fast").click();
    harness.run();
    let spec = &harness.state().state.settings.spec;
    assert_eq!((spec.steps, spec.guidance, spec.sampler), (30, 4.5, Sampler::Euler), "back to what it was");
    assert_eq!(spec.loras.len(), 1, "the dropped LoRA stays");
}

/// An expression set in the panel goes into the job (with its strength), each image records
/// it, and dropping that image back in restores it into the panel.
#[test]
fn an_expression_is_generated_recorded_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    drop_photo(&mut harness, photo("astronaut.jpg"));
    run_until(&mut harness, "faces", |app| app.state.photo.is_some());
    // Below the Pose panel, maybe out of view: clicked through the accessibility tree.
    harness.get_by_label("Use this expression").click_accesskit();
    harness.get_by_label("Mouth open").click_accesskit();
    harness.run();
    {
        let settings = &mut harness.state_mut().state.settings;
        (settings.spec.num_images, settings.spec.steps) = (1, 2);
        settings.spec.expression.as_mut().unwrap().scale = 0.7;
    }
    harness.get_by_label("Generate").click();
    harness.step();
    let request = harness.state().state.running.as_ref().map(|r| r.request.clone()).expect("a job runs");
    let expression = request.spec.expression.clone().expect("the job has the expression");
    assert_eq!((expression.expression.jaw_open, expression.scale), (0.35, 0.7));
    run_until(&mut harness, "the image", |app| app.state.running.is_none() && app.state.gallery.entries.len() == 1);
    assert!(notices(harness.state()).is_empty(), "{:?}", notices(harness.state()));
    let entry = harness.state().state.gallery.entries[0].clone();
    assert_eq!(entry.metadata.spec.expression, Some(expression.clone()));

    {
        let settings = &mut harness.state_mut().state.settings;
        settings.use_expression = false;
        settings.spec.expression.as_mut().unwrap().expression = Default::default();
    }
    let png = harness.state().state.gallery.dir.clone().unwrap().join(&entry.file_name);
    drop_photo(&mut harness, png);
    run_until(&mut harness, "the photo reopened", |app| app.state.analyzing.is_none());
    let settings = &harness.state().state.settings;
    assert!(settings.use_expression, "restoring switches the expression on");
    assert_eq!(settings.spec.expression, Some(expression));
}

/// The embedding and index of the face selected on the photo shown.
fn selected_face(harness: &Harness<'_, StudioApp>) -> (Vec<f32>, usize) {
    let photo = harness.state().state.photo.as_ref().expect("a photo is shown");
    let index = photo.selected_face.expect("a face is selected");
    (photo.faces[index].embedding.clone(), index)
}

#[test]
fn faces_of_several_photos_combine_into_one_identity() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    drop_photo(&mut harness, photo("astronaut.jpg"));
    run_until(&mut harness, "faces", |app| app.state.photo.is_some());
    let (first, first_face) = selected_face(&harness);
    harness.get_by_label("Keep face, add another photo").click();
    harness.step();
    assert_eq!(harness.state().state.kept_faces.len(), 1);
    drop_photo(&mut harness, photo("two_faces.jpg"));
    run_until(&mut harness, "faces of the second photo", |app| app.state.photo.as_ref().is_some_and(|p| p.path.ends_with("two_faces.jpg")));
    assert!(harness.query_by_label_contains("Identity combines astronaut.jpg").is_some());
    let (second, second_face) = selected_face(&harness);
    harness.state_mut().state.settings.spec.steps = 100;
    harness.get_by_label("Generate").click();
    harness.step();
    let request = harness.state().state.running.as_ref().map(|r| r.request.clone()).expect("a job runs");
    assert_eq!(request.spec.identity.to_string(), format!("astronaut.jpg (face {first_face}), two_faces.jpg (face {second_face})"));
    assert_eq!(request.identity, arc2face_studio::face::mean_identity(&[first, second]));
    harness.get_by_label("Cancel").click();
    run_until(&mut harness, "the cancellation", |app| app.state.running.is_none());
}

#[test]
fn cancel_stops_within_a_step_and_keeps_finished_images() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    drop_photo(&mut harness, photo("astronaut.jpg"));
    run_until(&mut harness, "faces", |app| app.state.photo.is_some());
    {
        let settings = &mut harness.state_mut().state.settings;
        settings.spec.num_images = 3;
        settings.spec.steps = 100;
    }
    harness.get_by_label("Generate").click();
    run_until(&mut harness, "the second image", |app| app.state.running.as_ref().is_some_and(|r| r.image_index == 1 && r.step >= 1));
    harness.get_by_label("Cancel").click();
    run_until(&mut harness, "the cancellation", |app| app.state.running.is_none());
    assert_eq!(harness.state().state.gallery.entries.len(), 1, "the finished image is kept");
    assert!(notices(harness.state()).iter().any(|n| n.contains("cancelled")));
}

#[test]
fn a_photo_without_a_face_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    drop_photo(&mut harness, photo("no_face.png"));
    run_until(&mut harness, "the analysis", |app| app.state.photo.is_some());
    assert!(notices(harness.state()).iter().any(|n| n.starts_with("No face found in no_face.png")));
    assert!(harness.query_by_label("Generate").is_some());
    assert!(harness.query_by_label("Face 1").is_none());
}

#[test]
fn a_missing_models_folder_is_explained_and_the_app_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(dir.path().join("nowhere"), dir.path().join("gallery"));
    assert!(harness.query_by_label_contains("model files missing").is_some());
    drop_photo(&mut harness, photo("astronaut.jpg"));
    run_until(&mut harness, "the analysis", |app| app.state.analyzing.is_none());
    assert!(notices(harness.state()).iter().any(|n| n.contains("scrfd_10g_bnkps.onnx: missing")), "{:?}", notices(harness.state()));
    // A broken photo after that still gives its own clear message.
    let broken = dir.path().join("broken.jpg");
    std::fs::write(&broken, "not a photo").unwrap();
    harness.state_mut().apply(ModelsAction::SetDir(common::generation_and_face_models(dir.path())));
    drop_photo(&mut harness, broken);
    run_until(&mut harness, "the analysis", |app| app.state.analyzing.is_none());
    assert!(notices(harness.state()).iter().any(|n| n.contains("not an image")), "{:?}", notices(harness.state()));
}

#[test]
fn the_models_window_downloads_what_is_missing_shows_failures_and_retries() {
    use arc2face_studio::models::{self, ALL_FILES, check::FileState};
    let dir = tempfile::tempdir().unwrap();
    let hub = common::mock_hub::MockHub::start();
    let missing_on_the_hub = models::DETECTOR;
    for (i, file) in ALL_FILES.into_iter().enumerate().filter(|(_, f)| *f != missing_on_the_hub) {
        hub.host(file, vec![i as u8; 10_000 * (i + 1)], file.relative_path.ends_with(".safetensors"));
    }
    let mut harness = harness(dir.path().join("models"), dir.path().join("gallery"));
    harness.state_mut().hub = hub.config(&dir.path().join("hf-cache"));

    harness.get_by_label("Get the models…").click();
    // A new window and its grid take a few frames to size themselves before they show.
    harness.run();
    assert!(harness.query_by_label("arcface.onnx").is_some(), "the window lists every file");
    assert_eq!(harness.query_all_by_label_contains("non-commercial research only").count(), 2, "licences are shown");
    harness.get_by_label("Download (14)").click();
    harness.step();
    run_until(&mut harness, "the downloads", |app| app.state.models.task.is_none());

    let models = &harness.state().state.models;
    let present = models.statuses.iter().filter(|s| matches!(s.state, FileState::Present { .. })).count();
    assert_eq!(present, models::ALL_FILES.len() - 1, "all but the one the hub lacks");
    assert!(models.transfers[missing_on_the_hub.relative_path].failed);
    assert_eq!(harness.query_all_by_label_contains("not found (404)").count(), 1);
    assert_eq!(harness.state().state.models.missing_required(), [missing_on_the_hub]);

    hub.host(missing_on_the_hub, vec![7; 5000], true);
    harness.get_by_label("Retry").click();
    harness.step();
    run_until(&mut harness, "the retry", |app| app.state.models.task.is_none());
    assert!(harness.state().state.models.missing_required().is_empty());
    assert!(harness.query_by_label_contains("model files missing").is_none(), "the banner is gone");
    assert!(harness.query_by_label("Download (0)").is_some());
}

/// The Pose panel's head pose (the settings' pose target).
fn panel_pose(app: &StudioApp) -> HeadPose {
    app.state.settings.spec.pose.as_ref().and_then(|p| p.head_pose()).expect("a head pose")
}

fn head_loaded(app: &StudioApp) -> bool {
    app.state.pose.head.is_some() && app.state.pose.drawing.is_some()
}

/// Drags on the head from `from` (a point of its widget, 0–1 each way) by `by` points.
fn drag_head(harness: &mut Harness<'_, StudioApp>, from: Vec2, by: Vec2) {
    let rect = harness.get_by_label("Head pose").rect();
    let start = rect.min + from * rect.size();
    harness.hover_at(start);
    harness.step();
    harness.drag_at(start);
    harness.step();
    for i in 1..=4 {
        harness.hover_at(start + by * (i as f32 / 4.0));
        harness.step();
    }
    harness.drop_at(start + by);
    harness.step();
}

fn field(harness: &mut Harness<'_, StudioApp>, label: &str, value: &str) {
    let field = harness.get_by_role_and_label(egui::accesskit::Role::SpinButton, label);
    field.click();
    harness.step();
    let field = harness.get_by_role_and_label(egui::accesskit::Role::SpinButton, label);
    field.type_text(value);
    harness.key_press(egui::Key::Enter);
    harness.run();
}

/// Dragging turns the head (yaw, pitch), the ring tilts it, the fields and presets set it, and
/// Ctrl+Z steps back through the edits, a whole drag at a time.
#[test]
fn the_head_turns_by_drags_fields_and_presets_and_undo_steps_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    run_until(&mut harness, "the head", head_loaded);
    assert_eq!(panel_pose(harness.state()), HeadPose::FRONTAL);

    let side = harness.get_by_label("Head pose").rect().width();
    drag_head(&mut harness, Vec2::new(0.4, 0.35), Vec2::new(30.0, -15.0));
    let turned = panel_pose(harness.state());
    let per_point = 120.0 / side as f64;
    assert!((turned.yaw - 30.0 * per_point).abs() < 1e-3, "yaw {} after 30 points right", turned.yaw);
    assert!((turned.pitch - 15.0 * per_point).abs() < 1e-3, "pitch {} after 15 points up", turned.pitch);
    assert_eq!(harness.state().state.pose.drawing.as_ref().unwrap().pose, turned, "the view follows");

    // The ring's top, dragged to the left: counter-clockwise, positive roll.
    drag_head(&mut harness, Vec2::new(0.5, 0.5 - 0.47), Vec2::new(-40.0, 10.0));
    let tilted = panel_pose(harness.state());
    assert!(tilted.roll > 5.0 && tilted.yaw == turned.yaw, "roll {} by the ring, yaw kept", tilted.roll);

    field(&mut harness, "Yaw", "-20");
    assert_eq!(panel_pose(harness.state()).yaw, -20.0);
    field(&mut harness, "Yaw", "99");
    assert_eq!(panel_pose(harness.state()).yaw, 60.0, "the field keeps within the limit");

    harness.get_by_label("Presets").click();
    harness.run();
    harness.get_by_label("Looking up").click();
    harness.run();
    assert_eq!(panel_pose(harness.state()), HeadPose { pitch: 20.0, ..HeadPose::FRONTAL });

    let undo = |harness: &mut Harness<'_, StudioApp>| {
        harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
        harness.run();
        panel_pose(harness.state())
    };
    assert_eq!(undo(&mut harness).yaw, 60.0);
    assert_eq!(undo(&mut harness).yaw, -20.0);
    assert_eq!(undo(&mut harness), tilted);
    assert_eq!(undo(&mut harness), turned, "the ring's drag was one step");
    assert_eq!(undo(&mut harness), HeadPose::FRONTAL, "and so was the first drag");
}

/// The pose of the selected face, then of a photo dropped on the Pose panel; a job with it
/// carries it (the conditioning image the panel shows is the renderer's), the gallery records
/// it and dropping the result back restores it.
#[test]
fn a_pose_from_a_photo_is_generated_recorded_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    drop_photo(&mut harness, photo("astronaut.jpg"));
    run_until(&mut harness, "faces and the head", |app| app.state.photo.is_some() && head_loaded(app));
    harness.get_by_label("From the photo").click();
    harness.run();
    let head = HeadModel::builtin().unwrap();
    let photo_state = harness.state().state.photo.as_ref().unwrap();
    let fitted = fit_pose(&head, &photo_state.faces[photo_state.selected_face.unwrap()].kps);
    assert_eq!(panel_pose(harness.state()), fitted);
    assert!(harness.state().state.settings.use_pose, "copying a pose switches it on");

    // Another photo dropped on the Pose panel lends its pose and leaves the photo as it was.
    let zone = harness.get_by_label("Head pose").rect().center();
    harness.hover_at(zone);
    harness.step();
    drop_photo(&mut harness, photo("rotated.jpg"));
    assert!(harness.state().state.pose.fitting.is_some());
    run_until(&mut harness, "the dropped photo's pose", |app| app.state.pose.fitting.is_none());
    assert!(harness.state().state.photo.as_ref().unwrap().path.ends_with("astronaut.jpg"), "the photo stays");
    let from_drop = panel_pose(harness.state());
    assert_ne!(from_drop, fitted, "{:?}", notices(harness.state()));

    {
        let settings = &mut harness.state_mut().state.settings;
        (settings.spec.num_images, settings.spec.steps, settings.spec.size) = (1, 2, Some(32));
    }
    harness.run();
    let drawing = harness.state().state.pose.drawing.as_ref().unwrap();
    assert_eq!(drawing.conditioning, render_normals(&head, &from_drop.clamped(), 32), "the panel shows the ControlNet's input");
    harness.get_by_label("Generate").click();
    harness.step();
    let request = harness.state().state.running.as_ref().map(|r| r.request.clone()).expect("a job runs");
    let pose = request.spec.pose.clone().expect("the job has the pose");
    assert_eq!(pose.target, PoseTarget::Head { pose: from_drop, mesh: HeadMesh::Builtin });
    run_until(&mut harness, "the image", |app| app.state.running.is_none() && app.state.gallery.entries.len() == 1);
    assert!(notices(harness.state()).iter().all(|n| n.starts_with("Pose copied")), "{:?}", notices(harness.state()));
    let entry = harness.state().state.gallery.entries[0].clone();
    assert_eq!(entry.metadata.spec.pose, Some(pose.clone()));

    harness.get_by_label("Reset pose").click();
    harness.state_mut().state.settings.use_pose = false;
    harness.run();
    let png = harness.state().state.gallery.dir.clone().unwrap().join(&entry.file_name);
    drop_photo(&mut harness, png);
    run_until(&mut harness, "the photo reopened", |app| app.state.analyzing.is_none());
    assert!(harness.state().state.settings.use_pose, "restoring switches the pose on");
    assert_eq!(harness.state().state.settings.spec.pose, Some(pose));
}

/// A pose sweep: one job, one seed, the head going from the remembered pose to the panel's; the
/// gallery keeps its images together and writes them as one contact sheet.
#[test]
fn a_pose_sweep_fills_a_strip_and_a_contact_sheet() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    drop_photo(&mut harness, photo("astronaut.jpg"));
    run_until(&mut harness, "faces and the head", |app| app.state.photo.is_some() && head_loaded(app));
    field(&mut harness, "Yaw", "-45");
    harness.get_by_label("Sweep from this pose").click();
    field(&mut harness, "Yaw", "45");
    {
        let settings = &mut harness.state_mut().state.settings;
        (settings.spec.num_images, settings.spec.steps, settings.spec.size) = (3, 2, Some(32));
    }
    harness.get_by_label("Sweep to this pose").click();
    harness.step();
    run_until(&mut harness, "the sweep", |app| app.state.running.is_none() && app.state.gallery.entries.len() == 3);
    let entries = harness.state().state.gallery.entries.clone();
    let yaws: Vec<f64> = entries.iter().map(|e| e.metadata.spec.pose.as_ref().unwrap().head_pose().unwrap().yaw).collect();
    assert_eq!(yaws, [-45.0, 0.0, 45.0]);
    assert!(entries.iter().all(|e| e.metadata.spec.seed == entries[0].metadata.spec.seed && e.metadata.job == entries[0].metadata.job));
    assert!(harness.query_by_label("Pose sweep").is_some() && harness.query_by_label("3 images").is_some(), "the strip groups the sweep");
    let sheet = dir.path().join("sweep.png");
    harness.state_mut().apply(GalleryAction::ContactSheetTo { ids: entries.iter().map(|e| e.id).collect(), dest: sheet.clone() });
    run_until(&mut harness, "the contact sheet", |app| app.state.notices.iter().any(|n| n.text.starts_with("Contact sheet written")));
    assert_eq!(image::open(&sheet).unwrap().width(), 3 * 32 + 4 * 8);
}

/// What the Pose panel looks like: the head, its skeleton and ring, the ControlNet's input in
/// beside the fields, the buttons.
#[test]
fn snapshot_of_the_pose_panel() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    run_until(&mut harness, "the head", head_loaded);
    harness.state_mut().state.settings.spec.pose.as_mut().unwrap().target =
        PoseTarget::Head { pose: HeadPose { yaw: 30.0, pitch: 10.0, roll: 8.0, jaw: 0.5, ..HeadPose::FRONTAL }, mesh: HeadMesh::Builtin };
    harness.run();
    harness.snapshot("pose_panel");
}

/// "Keep the photo's look": the job carries the photo and face it keeps the look of (the worker
/// aligns it), the image records it, and restoring switches it on again.
#[test]
fn keeping_the_photo_look_goes_into_the_job_and_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(common::generation_and_face_models(dir.path()), dir.path().join("gallery"));
    drop_photo(&mut harness, photo("astronaut.jpg"));
    run_until(&mut harness, "faces", |app| app.state.photo.is_some());
    harness.get_by_label("Keep the photo's look").click();
    harness.run();
    {
        let settings = &mut harness.state_mut().state.settings;
        (settings.spec.num_images, settings.spec.steps, settings.spec.size) = (1, 2, Some(32));
        settings.spec.reference.as_mut().unwrap().scale = 0.6;
    }
    harness.get_by_label("Generate").click();
    harness.step();
    let request = harness.state().state.running.as_ref().map(|r| r.request.clone()).expect("a job runs");
    let (index, kps) = {
        let photo_state = harness.state().state.photo.as_ref().unwrap();
        let index = photo_state.selected_face.unwrap();
        (index, photo_state.faces[index].kps)
    };
    let reference = request.spec.reference.clone().expect("the job keeps the look");
    assert_eq!((reference.photo.as_str(), reference.face, reference.scale), ("astronaut.jpg", Some(index), 0.6));
    assert_eq!(request.reference.as_ref().map(|r| r.keypoints), Some(kps));
    run_until(&mut harness, "the image", |app| app.state.running.is_none() && app.state.gallery.entries.len() == 1);
    assert!(notices(harness.state()).is_empty(), "{:?}", notices(harness.state()));
    let entry = harness.state().state.gallery.entries[0].clone();
    assert_eq!(entry.metadata.spec.reference, Some(reference.clone()));
    assert!(entry.metadata.model_files.iter().any(|f| f.path == "ref_adapter/pytorch_lora_weights.safetensors"));

    harness.state_mut().state.settings.use_reference = false;
    let png = harness.state().state.gallery.dir.clone().unwrap().join(&entry.file_name);
    drop_photo(&mut harness, png);
    run_until(&mut harness, "the photo reopened", |app| app.state.analyzing.is_none());
    assert!(harness.state().state.settings.use_reference, "restoring switches it on");
}
