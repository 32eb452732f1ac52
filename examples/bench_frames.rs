//! Frame times of the real app on the UI thread while it works: the app runs in an egui_kittest
//! harness (everything a frame does on the CPU — draining events, uploading previews and
//! thumbnails, laying out the panels — but no GPU rendering), with a gallery history of N
//! 512×512 images, while it opens a photo and generates 4 images × 25 steps.
//!
//!     cargo run --release --example bench_frames -- [MODELS_DIR] [GALLERY_IMAGES]
//!
//! Without MODELS_DIR it uses the tiny test models (tests/fixtures).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops at the first failure

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arc2face_studio::app::{JobAction, StudioApp};
use arc2face_studio::engine::{GenerationSpec, ImageMetadata};
use arc2face_studio::gallery::history::{Gallery, write_image};
use egui_kittest::Harness;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = tempfile::tempdir()?;
    let models = match args.next() {
        Some(path) if path != "-" => PathBuf::from(path),
        _ => common::generation_and_face_models(dir.path()),
    };
    let history: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);

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

/// One frame, timed; then a pause like the display's, so the worker gets ahead as it would.
fn frame(harness: &mut Harness<'_, StudioApp>) -> Duration {
    let started = Instant::now();
    harness.step();
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(8));
    took
}

fn report(what: &str, frames: &[Duration]) {
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
