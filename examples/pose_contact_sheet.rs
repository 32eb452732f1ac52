//! Renders a contact sheet of the pose ControlNet's conditioning images and times the renderer.
//!
//!     cargo run --release --example pose_contact_sheet -- [--cell PX] OUT.png [FLAME.pkl [--landmarks SPEC]]
//!
//! One block per head (the built-in ICT head; beside it the FLAME model if given), cells of 256 px
//! (`--cell`; assets/pose_contact_sheet.png uses 180 to stay small):
//! rows pitch +30, 0, −30 × columns yaw −60, −30, 0, 30, 60, a sixth column with that row's
//! frontal pose rolled +15° (the finished image turned, as the engine does), and a last row with
//! jaw 0, 0.5, 1 at yaw 0 and then at yaw 30. No text: read it by position.
//!
//! `--landmarks R0..R1,L0..L1,NOSE,MOUTH,MOUTH` names the landmark vertices of a FLAME-layout file
//! that is not FLAME's 5023-vertex topology (image-left eyeball first), e.g. for the test fixture:
//! `tests/fixtures/flame/generic_model.pkl --landmarks 81..93,69..81,18,23,22`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // an example stops at the first failure

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, anyhow};
use arc2face_studio::pose::flame::FlameModel;
use arc2face_studio::pose::{FlameLandmarks, HeadModel, HeadPose, render_normals, render_normals_rolled, render_posed, view};
use image::{Rgb, RgbImage};

const GAP: u32 = 6;
const COLUMNS: u32 = 6;
const ROWS: u32 = 4;
const YAWS: [f64; 5] = [-60.0, -30.0, 0.0, 30.0, 60.0];
const PITCHES: [f64; 3] = [30.0, 0.0, -30.0];

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: pose_contact_sheet [--cell PX] OUT.png [FLAME.pkl [--landmarks R0..R1,L0..L1,NOSE,MOUTH,MOUTH]]";
    let mut cell: u32 = 256;
    if args.first().map(String::as_str) == Some("--cell") {
        cell = args.get(1).ok_or_else(|| anyhow!(usage))?.parse()?;
        args.drain(..2);
    }
    let out = args.first().ok_or_else(|| anyhow!(usage))?;
    let mut heads = vec![HeadModel::builtin().map_err(|e| anyhow!(e))?];
    if let Some(flame) = args.get(1) {
        let head = match args.get(2).map(String::as_str) {
            Some("--landmarks") => {
                let spec = args.get(3).ok_or_else(|| anyhow!(usage))?;
                let model = FlameModel::read(Path::new(flame)).map_err(|e| anyhow!(e))?;
                HeadModel::from_flame(model, &parse_landmarks(spec)?).map_err(|e| anyhow!(e))?
            }
            Some(_) => return Err(anyhow!(usage)),
            None => HeadModel::from_flame_file(Path::new(flame)).map_err(|e| anyhow!(e))?,
        };
        heads.push(head);
    }

    let block_w = COLUMNS * cell + (COLUMNS - 1) * GAP;
    let block_h = ROWS * cell + (ROWS - 1) * GAP;
    let width = heads.len() as u32 * block_w + (heads.len() as u32 + 1) * 3 * GAP;
    let height = block_h + 6 * GAP;
    let mut sheet = RgbImage::from_pixel(width, height, Rgb([32, 32, 32]));
    for (b, head) in heads.iter().enumerate() {
        let left = 3 * GAP + b as u32 * (block_w + 3 * GAP);
        let top = 3 * GAP;
        let mut place = |col: u32, row: u32, image: &RgbImage| {
            image::imageops::replace(&mut sheet, image, (left + col * (cell + GAP)) as i64, (top + row * (cell + GAP)) as i64);
        };
        for (row, &pitch) in PITCHES.iter().enumerate() {
            for (col, &yaw) in YAWS.iter().enumerate() {
                place(col as u32, row as u32, &render_normals(head, &HeadPose { yaw, pitch, ..HeadPose::FRONTAL }, cell as usize));
            }
            let rolled = HeadPose { pitch, roll: 15.0, ..HeadPose::FRONTAL };
            place(5, row as u32, &render_normals_rolled(head, &rolled, cell as usize));
        }
        for (i, (yaw, jaw)) in [0.0, 30.0].iter().flat_map(|&yaw| [0.0, 0.5, 1.0].map(|jaw| (yaw, jaw))).enumerate() {
            place(i as u32, 3, &render_normals(head, &HeadPose { yaw, jaw, ..HeadPose::FRONTAL }, cell as usize));
        }
    }
    let file = std::fs::File::create(out).with_context(|| out.clone())?;
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        std::io::BufWriter::new(file),
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    );
    sheet.write_with_encoder(encoder)?;
    println!("wrote {out} ({width}×{height})");

    for head in &heads {
        println!("{} ({} vertices, {} triangles), 512×512, median of 20:", head.source(), head.vertices().len(), head.triangles().len());
        for pose in [HeadPose::FRONTAL, HeadPose { yaw: 35.0, pitch: 10.0, jaw: 0.5, ..HeadPose::FRONTAL }] {
            let full = median_ms(|| drop(render_normals(head, &pose, 512)));
            let posed = head.posed(pose.jaw, &[]);
            let pose_only = median_ms(|| drop(head.posed(pose.jaw, &[])));
            let raster = median_ms(|| drop(render_posed(&posed, &view(&posed, &pose, 512))));
            println!(
                "  yaw {:>3} pitch {:>3} jaw {:.1}: render_normals {full:6.2} ms (posing + normals {pose_only:5.2} ms, view + raster {raster:5.2} ms)",
                pose.yaw, pose.pitch, pose.jaw
            );
        }
    }
    Ok(())
}

fn median_ms(mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[9] + times[10]) / 2.0
}

/// `R0..R1,L0..L1,NOSE,MOUTH,MOUTH`.
fn parse_landmarks(spec: &str) -> anyhow::Result<FlameLandmarks> {
    let parts: Vec<&str> = spec.split(',').collect();
    let [right, left, nose, m0, m1] = parts[..] else {
        return Err(anyhow!("--landmarks: expected R0..R1,L0..L1,NOSE,MOUTH,MOUTH, got {spec:?}"));
    };
    let range = |s: &str| -> anyhow::Result<std::ops::Range<usize>> {
        let (a, b) = s.split_once("..").ok_or_else(|| anyhow!("--landmarks: {s:?} is not a range A..B"))?;
        Ok(a.parse()?..b.parse()?)
    };
    Ok(FlameLandmarks { eyeballs: [range(right)?, range(left)?], nose_tip: nose.parse()?, mouth_corners: [m0.parse()?, m1.parse()?] })
}
