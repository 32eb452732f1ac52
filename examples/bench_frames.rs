//! Frame times of the real app on the UI thread while it works: the app runs in an egui_kittest
//! harness (everything a frame does on the CPU — draining events, uploading previews and
//! thumbnails, laying out the panels — but no GPU rendering), with a gallery history of N
//! 512×512 images, while it opens a photo, while the user drags the head in the Pose panel
//! (turning it, then tilting it by its ring: the panel's view is drawn again every frame the
//! pose changes, the ControlNet's conditioning image at most every 120 ms), and while it
//! generates 4 images × 25 steps.
//!
//!     cargo run --release --example bench_frames -- [MODELS_DIR] [GALLERY_IMAGES] [pose-only]
//!
//! Without MODELS_DIR (or with `-`) it uses the tiny test models (tests/fixtures). With
//! `pose-only` it stops after the drags, without generating: e.g. `-- - 50 pose-only`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops at the first failure

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arc2face_studio::app::{JobAction, StudioApp};
use arc2face_studio::engine::{GenerationSpec, ImageMetadata};
use arc2face_studio::gallery::history::{Gallery, write_image};
use arc2face_studio::pose::HeadPose;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = tempfile::tempdir()?;
    let models = match args.next() {
        Some(path) if path != "-" => PathBuf::from(path),
        _ => common::generation_and_face_models(dir.path()),
    };
    let history: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let pose_only = match args.next().as_deref() {
        None => false,
        Some("pose-only") => true,
        Some(other) => anyhow::bail!("unknown argument {other:?} (the third may only be `pose-only`)"),
    };

    let gallery_dir = dir.path().join("gallery");
    let started = Instant::now();
    let mut gallery = Gallery::open(&gallery_dir)?;
    let image = image::RgbImage::from_fn(512, 512, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8]));
    for seed in 0..history as u64 {
        gallery.add(&image, metadata(seed))?;
    }
    drop(gallery);
    eprintln!("gallery of {history} images written in {:.1} s", started.elapsed().as_secs_f64());

    // One finished 512×512 image: the worker writes it, the gallery thread records it.
    let one = dir.path().join("gallery-one");
    let mut gallery = Gallery::open(&one)?;
    let started = Instant::now();
    let path = write_image(&one, &image, &metadata(1))?;
    let written = started.elapsed();
    let started = Instant::now();
    gallery.adopt(&path, metadata(1))?;
    eprintln!(
        "one 512x512 result: written by the worker in {:.1} ms, recorded by the gallery thread in {:.1} ms",
        written.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );

    let photo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faces/photos/astronaut.jpg");
    let mut harness = Harness::builder()
        .with_size([1280.0, 800.0])
        .build_eframe(move |cc| StudioApp::new(cc, Some(models), gallery_dir, vec![photo]).expect("the app starts"));

    let mut startup = Vec::new();
    while harness.state().state.photo.is_none() || harness.state().state.gallery.thumbnails.len() < history {
        startup.push(frame(&mut harness));
    }
    report("start: history thumbnails + photo analysis", &startup);

    let started = Instant::now();
    while harness.state().state.pose.head.is_none() || harness.state().state.pose.drawing.is_none() {
        frame(&mut harness);
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "the head did not load");
    }
    pose_drags(&mut harness)?;
    if pose_only {
        return Ok(());
    }

    {
        let settings = &mut harness.state_mut().state.settings;
        (settings.spec.num_images, settings.spec.steps) = (4, 25);
    }
    harness.state_mut().apply(JobAction::Generate);
    let mut generating = Vec::new();
    let started = Instant::now();
    while harness.state().state.running.is_some() || !harness.state().state.queue.is_empty() {
        generating.push(frame(&mut harness));
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "the generation did not finish");
    }
    report("generation: 4 images x 25 steps, a preview per step", &generating);
    let notices: Vec<&str> = harness.state().state.notices.iter().map(|n| n.text.as_str()).collect();
    eprintln!("gallery now {} images; notices: {notices:?}", harness.state().state.gallery.entries.len());
    Ok(())
}

/// Drags on the Pose panel's head as a user would: a turn along a circle (yaw and pitch both
/// change every frame), then the roll ring back and forth; reports the frames of each, and
/// apart the frames that drew the conditioning image too.
fn pose_drags(harness: &mut Harness<'_, StudioApp>) -> anyhow::Result<()> {
    let rect = harness.get_by_label("Head pose").rect();
    let side = rect.width();

    // The turn: three times round a circle about a point at 40 % across, 35 % down (well
    // inside the ring, away from the chin), 100 frames a turn.
    let radius = 60.0_f32.min(0.2 * side);
    let about = rect.min + egui::Vec2::new(0.4, 0.35) * rect.size();
    let on_circle = |i: usize| {
        let angle = std::f32::consts::TAU * i as f32 / 100.0;
        about + radius * egui::Vec2::new(angle.cos(), angle.sin())
    };
    let turn = drag(harness, (0..=300).map(on_circle))?;
    describe("pose drag: turn the head (view + conditioning redraws)", &turn);
    let (yaw, pitch) = (turn.range(|p| p.yaw), turn.range(|p| p.pitch));
    eprintln!("  side {side:.0} points; yaw over {yaw:.1}°, pitch over {pitch:.1}°");
    anyhow::ensure!(yaw > 20.0 && pitch > 20.0, "the drag hardly turned the head: yaw over {yaw:.1}°, pitch over {pitch:.1}°");
    anyhow::ensure!(turn.changed() * 10 >= turn.frames.len() * 9, "the pose changed in only {} frames", turn.changed());
    anyhow::ensure!(turn.range(|p| p.roll) == 0.0, "turning the head tilted it");

    // The roll: from the ring's top along the ring to 15° either way, 120 frames a swing, ending
    // at 15° counter-clockwise.
    let centre = rect.center();
    let ring = 0.47 * side;
    let on_ring = |i: usize| {
        let angle = 15_f32.to_radians() * (std::f32::consts::TAU * i as f32 / 120.0).sin();
        centre + ring * egui::Vec2::new(-angle.sin(), -angle.cos())
    };
    let tilt = drag(harness, (0..=150).map(on_ring))?;
    describe("pose drag: roll ring", &tilt);
    let roll = tilt.range(|p| p.roll);
    let (first, last) = (tilt.poses[0], tilt.poses[tilt.poses.len() - 1]);
    eprintln!("  roll over {roll:.1}°, from {:.1}° to {:.1}°", first.roll, last.roll);
    // The first few points' motion goes to egui's drag threshold, not the ring.
    anyhow::ensure!(roll > 20.0 && last.roll - first.roll > 10.0, "the ring hardly tilted the head: roll over {roll:.1}°");
    anyhow::ensure!(tilt.changed() * 10 >= tilt.frames.len() * 9, "the roll changed in only {} frames", tilt.changed());
    anyhow::ensure!(tilt.range(|p| p.yaw) == 0.0 && tilt.range(|p| p.pitch) == 0.0, "the ring turned the head");
    Ok(())
}

/// The frames of a drag: each one's time, the panel's pose after it and whether it drew the
/// conditioning image again.
struct Drag {
    frames: Vec<Duration>,
    poses: Vec<HeadPose>,
    conditioning: Vec<bool>,
}

impl Drag {
    /// The frames that changed the pose.
    fn changed(&self) -> usize {
        self.poses.windows(2).filter(|w| w[0] != w[1]).count()
    }

    /// How far a value of the pose went during the drag.
    fn range(&self, value: impl Fn(&HeadPose) -> f64) -> f64 {
        let values: Vec<f64> = self.poses.iter().map(value).collect();
        values.iter().copied().fold(f64::NEG_INFINITY, f64::max) - values.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

fn describe(what: &str, drag: &Drag) {
    report(what, &drag.frames);
    let split = |redrawn: bool| -> Vec<Duration> {
        drag.frames.iter().zip(&drag.conditioning).filter(|&(_, &c)| c == redrawn).map(|(&d, _)| d).collect()
    };
    report("  of which drawing the conditioning image too", &split(true));
    report("  of which drawing the view only", &split(false));
    eprintln!("  the pose changed in {} of {} frames", drag.changed(), drag.frames.len());
}

/// Presses at the path's first point, moves along the rest a frame each, releases at its last:
/// the frames from the press to the release. (The pose before the press comes first in `poses`.)
fn drag(harness: &mut Harness<'_, StudioApp>, path: impl IntoIterator<Item = egui::Pos2>) -> anyhow::Result<Drag> {
    let mut path = path.into_iter();
    let start = path.next().ok_or_else(|| anyhow::anyhow!("an empty path"))?;
    harness.hover_at(start);
    frame(harness);
    let mut drag = Drag { frames: Vec::new(), poses: vec![panel_pose(harness)], conditioning: Vec::new() };
    let mut drawn = conditioning_pose(harness);
    let mut step = |harness: &mut Harness<'_, StudioApp>, drag: &mut Drag| {
        drag.frames.push(frame(harness));
        drag.poses.push(panel_pose(harness));
        let now = conditioning_pose(harness);
        drag.conditioning.push(now != drawn);
        drawn = now;
    };
    harness.drag_at(start);
    step(harness, &mut drag);
    let mut last = start;
    for p in path {
        harness.hover_at(p);
        step(harness, &mut drag);
        last = p;
    }
    harness.drop_at(last);
    step(harness, &mut drag);
    for _ in 0..5 {
        frame(harness); // settle: the last conditioning image, the undo step
    }
    Ok(drag)
}

fn panel_pose(harness: &Harness<'_, StudioApp>) -> HeadPose {
    harness.state().state.settings.spec.pose.as_ref().and_then(|p| p.head_pose()).expect("the panel has a head pose")
}

fn conditioning_pose(harness: &Harness<'_, StudioApp>) -> Option<HeadPose> {
    harness.state().state.pose.drawing.as_ref().map(|d| d.conditioning_pose)
}

/// One frame, timed; then a pause like the display's, so the worker gets ahead as it would.
fn frame(harness: &mut Harness<'_, StudioApp>) -> Duration {
    let started = Instant::now();
    harness.step();
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(8));
    took
}

fn report(what: &str, frames: &[Duration]) {
    if frames.is_empty() {
        eprintln!("{what}: no frames");
        return;
    }
    let mut ms: Vec<f64> = frames.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let over = ms.iter().filter(|&&t| t > 50.0).count();
    eprintln!(
        "{what}: {} frames, median {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {over} over 50 ms",
        ms.len(),
        at(0.5),
        at(0.95),
        at(0.99),
        at(1.0)
    );
}

fn metadata(seed: u64) -> ImageMetadata {
    let spec = GenerationSpec { num_images: 1, seed: Some(seed), size: Some(512), ..Default::default() };
    ImageMetadata {
        format: 2,
        app: "bench".into(),
        app_version: "0".into(),
        spec,
        index: 0,
        count: 1,
        job: 0,
        sweep: None,
        width: 512,
        height: 512,
        ran_on: "CPU, f32".into(),
        model_files: Vec::new(),
        created_unix_ms: 0,
        identity_match: Some(0.5),
    }
}
