//! The pose module: the built-in head rendered as the pose ControlNet's normal maps (training
//! style, FFHQ framing), the pose fit from five keypoints, the FLAME reader and skinning against
//! tests/fixtures/flame (tools/make_flame_fixture.py), and the roll rotation of finished images.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::PathBuf;

use arc2face_studio::pose::flame::FlameModel;
use arc2face_studio::pose::{
    FlameLandmarks, HeadModel, HeadPose, LIMITS, PRESETS, fit_pose, landmarks_2d, render_normals, render_posed, rotate_image,
    rotate_image_point, view,
};
use image::{Rgb, RgbImage};

fn flame_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flame")
}

fn expected() -> serde_json::Value {
    let path = flame_fixture().join("expected.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn head() -> HeadModel {
    HeadModel::builtin().unwrap()
}

fn pose(yaw: f64, pitch: f64) -> HeadPose {
    HeadPose { yaw, pitch, ..HeadPose::FRONTAL }
}

/// A pixel's colour back as the normal it encodes.
fn normal(pixel: &Rgb<u8>) -> [f64; 3] {
    pixel.0.map(|c| c as f64 / 255.0 * 2.0 - 1.0)
}

fn is_background(pixel: &Rgb<u8>) -> bool {
    pixel.0 == [127, 127, 127]
}

/// The mean normal over the non-background pixels of a box.
fn mean_normal(image: &RgbImage, x: std::ops::Range<u32>, y: std::ops::Range<u32>) -> ([f64; 3], usize) {
    let mut sum = [0.0; 3];
    let mut count = 0;
    for yy in y {
        for xx in x.clone() {
            let pixel = image.get_pixel(xx, yy);
            if !is_background(pixel) {
                let n = normal(pixel);
                for c in 0..3 {
                    sum[c] += n[c];
                }
                count += 1;
            }
        }
    }
    (sum.map(|s| s / count.max(1) as f64), count)
}

fn face_mean_normal(image: &RgbImage) -> [f64; 3] {
    let (w, h) = image.dimensions();
    mean_normal(image, 0..w, 0..h).0
}

/// The mean normal of the inner face (the box from the eyes to the mouth corners) at 256 px:
/// unlike the whole head's, it follows the face's direction whatever the head's shape.
fn inner_face_normal(head: &HeadModel, pose: &HeadPose) -> [f64; 3] {
    let posed = head.posed(pose.jaw, &[]);
    let v = view(&posed, pose, 256);
    let p = landmarks_2d(&posed, &v);
    let x0 = p.iter().map(|q| q[0]).fold(f32::INFINITY, f32::min) as u32;
    let x1 = p.iter().map(|q| q[0]).fold(0.0, f32::max) as u32;
    let y0 = p[0][1].min(p[1][1]) as u32;
    let y1 = p[3][1].max(p[4][1]) as u32;
    mean_normal(&render_posed(&posed, &v), x0..x1 + 1, y0..y1 + 1).0
}

#[test]
fn frontal_render_is_a_normal_map_in_the_training_style() {
    let head = head();
    let image = render_normals(&head, &HeadPose::FRONTAL, 512);
    assert_eq!(image.dimensions(), (512, 512));
    for (x, y) in [(0, 0), (511, 0), (0, 511), (511, 511), (5, 256), (506, 256)] {
        assert_eq!(image.get_pixel(x, y).0, [127, 127, 127], "background at ({x}, {y})");
    }
    // The brow ridge between the eyes (2.2 cm above the eyeballs' centres, the head frame's
    // origin) faces the camera: a patch there is about (0, 0, 1).
    let posed = head.posed(0.0, &[]);
    let v = view(&posed, &HeadPose::FRONTAL, 512);
    let [fx, fy] = v.project([0.0, 0.022, 0.0]);
    let (fx, fy) = (fx as u32, fy as u32);
    let (n, count) = mean_normal(&image, fx - 6..fx + 7, fy - 6..fy + 7);
    println!("glabella patch at ({fx}, {fy}): mean normal {n:.3?} over {count} px; pixel {:?}", image.get_pixel(fx, fy).0);
    assert_eq!(count, 169, "the patch is all head");
    assert!(n[0].abs() < 0.03 && n[1].abs() < 0.1 && n[2] > 0.98, "glabella normal {n:?}");
    let centre = image.get_pixel(fx, fy).0;
    assert!(centre[0].abs_diff(128) <= 4 && centre[1].abs_diff(128) <= 12 && centre[2] >= 252, "glabella pixel {centre:?}");
    // Left-right symmetry of the whole face: mean n_x about 0, and the head faces the camera.
    let mean = face_mean_normal(&image);
    println!("frontal mean normal {mean:.3?}");
    assert!(mean[0].abs() < 0.03 && mean[2] > 0.4, "frontal mean normal {mean:?}");
    // Determinism: the same input gives the same bytes.
    assert_eq!(image.as_raw(), render_normals(&head, &HeadPose::FRONTAL, 512).as_raw());
}

#[test]
fn yaw_and_pitch_turn_the_head_the_documented_way() {
    let head = head();
    let posed = head.posed(0.0, &[]);
    // The nose tip relative to the eyes' midpoint, in pixels.
    let nose = |p: &HeadPose| {
        let points = landmarks_2d(&posed, &view(&posed, p, 512));
        [points[2][0] - (points[0][0] + points[1][0]) / 2.0, points[2][1] - (points[0][1] + points[1][1]) / 2.0]
    };
    let front = nose(&HeadPose::FRONTAL);
    let (right, left) = (nose(&pose(30.0, 0.0)), nose(&pose(-30.0, 0.0)));
    let (up, down) = (nose(&pose(0.0, 20.0)), nose(&pose(0.0, -20.0)));
    println!("nose − eye midpoint: frontal {front:?}, yaw ±30 {right:?} {left:?}, pitch ±20 {up:?} {down:?}");
    assert!(front[0].abs() < 4.0, "the nose tip is about mid-way between the eyes");
    assert!(right[0] > front[0] + 15.0 && left[0] < front[0] - 15.0, "yaw > 0 moves the nose right");
    assert!(up[1] < front[1] - 5.0 && down[1] > front[1] + 5.0, "pitch > 0 moves the nose up");

    let n_right = inner_face_normal(&head, &pose(30.0, 0.0));
    let n_left = inner_face_normal(&head, &pose(-30.0, 0.0));
    let n_up = inner_face_normal(&head, &pose(0.0, 20.0));
    let n_front = inner_face_normal(&head, &HeadPose::FRONTAL);
    let n_down = inner_face_normal(&head, &pose(0.0, -20.0));
    println!("inner-face mean normals: yaw +30 {n_right:.3?} −30 {n_left:.3?}; pitch +20 {n_up:.3?} 0 {n_front:.3?} −20 {n_down:.3?}");
    assert!(n_right[0] > 0.08 && n_left[0] < -0.08 && n_front[0].abs() < 0.02, "turned right, the face's normals point right");
    assert!(n_up[1] > n_front[1] + 0.12 && n_down[1] < n_front[1] - 0.12, "looking up, the face's normals point up");
    // Roll is not rendered in 3-D.
    let rolled = HeadPose { roll: 15.0, ..HeadPose::FRONTAL };
    assert_eq!(render_normals(&head, &rolled, 128), render_normals(&head, &HeadPose::FRONTAL, 128));
}

#[test]
fn ffhq_framing_puts_eyes_and_mouth_where_ffhq_does() {
    let head = head();
    let posed = head.posed(0.0, &[]);
    let points = landmarks_2d(&posed, &view(&posed, &HeadPose::FRONTAL, 512));
    let mouth = [(points[3][0] + points[4][0]) / 2.0, (points[3][1] + points[4][1]) / 2.0];
    println!(
        "frontal at 512: eyes {:?} {:?}, nose {:?}, mouth corners {:?} {:?}, mouth centre {mouth:?}",
        points[0], points[1], points[2], points[3], points[4]
    );
    // FFHQ's rule for a frontal face: the crop is four eye distances wide (eyes 128 px apart at
    // 512) and centred 0.1 of the way from the eyes to the mouth; the mouth then lands where this
    // head's proportions put it.
    let near = |p: [f32; 2], x: f32, y: f32| (p[0] - x).abs() < 0.5 && (p[1] - y).abs() < 0.5;
    assert!(near(points[0], 192.0, 242.4), "image-left eye at {:?}", points[0]);
    assert!(near(points[1], 320.0, 242.4), "image-right eye at {:?}", points[1]);
    assert!(near(mouth, 256.0, 378.2), "mouth centre at {mouth:?}");

    // Scale and offset: scale 1.25 spreads the eyes 1.25×; offset (0.1, −0.05) moves them by
    // (51.2, −25.6) px.
    let moved = HeadPose { scale: 1.25, offset: [0.1, -0.05], ..HeadPose::FRONTAL };
    let p2 = landmarks_2d(&posed, &view(&posed, &moved, 512));
    let spread = (p2[1][0] - p2[0][0]) / (points[1][0] - points[0][0]);
    assert!((spread - 1.25).abs() < 1e-3, "scale 1.25 spreads the eyes {spread}×");
    let (cx, cy) = ((p2[0][0] + p2[1][0]) / 2.0, (p2[0][1] + p2[1][1]) / 2.0);
    // About the image centre the scale moves the eyes too: expected = centre + 1.25·(eyes − centre) + offset.
    let ex = 256.0 + 1.25 * ((points[0][0] + points[1][0]) / 2.0 - 256.0) + 51.2;
    let ey = 256.0 + 1.25 * (points[0][1] - 256.0) - 25.6;
    assert!((cx - ex).abs() < 0.01 && (cy - ey).abs() < 0.01, "eyes' midpoint at ({cx}, {cy}), expected ({ex}, {ey})");

    // Turned heads stay framed by the eyes and mouth (eyes above 246, the mouth about 384). As
    // in FFHQ, the crop turns with the eye-to-mouth line: the eye line tilts, the far eye lower
    // (turned right: the image-left eye is higher), by 2.2–2.3° at yaw ±30° and 4.7–4.9° at
    // ±60° (the mouth corners lie about 1 cm in front of the eyelids).
    for yaw in [-60.0, -30.0, 30.0, 60.0] {
        let p = landmarks_2d(&posed, &view(&posed, &pose(yaw, 0.0), 512));
        let tilt = ((p[1][1] - p[0][1]) as f64).atan2((p[1][0] - p[0][0]) as f64).to_degrees();
        let mouth = [(p[3][0] + p[4][0]) / 2.0, (p[3][1] + p[4][1]) / 2.0];
        println!("yaw {yaw}: eyes {:?} {:?} (line tilted {tilt:.1}°), mouth centre {mouth:?}", p[0], p[1]);
        assert!(p[0][1] < 246.0 && p[1][1] < 246.0 && (mouth[1] - 384.0).abs() < 2.0, "yaw {yaw}: {p:?}");
        assert!(tilt * yaw > 0.0 && tilt.abs() < 6.0, "yaw {yaw}: eye line tilted {tilt}°");
    }
}

#[test]
fn the_builtin_heads_eyes_are_its_eyelid_means() {
    let head = head();
    let outline = |name: &str| head.outlines().iter().find(|o| o.name == name).unwrap().vertices.clone();
    let (left, right) = (outline("eye_left"), outline("eye_right"));
    assert_eq!((left.len(), right.len()), (6, 6));
    // As posed: the eyelids move a little (0.15 mm at most) with the jaw.
    for jaw in [0.0, 1.0] {
        let posed = head.posed(jaw, &[]);
        let mean = |ids: &[u32]| {
            let sum = ids.iter().fold([0.0f64; 3], |acc, &i| {
                let v = posed.vertices[i as usize];
                [acc[0] + v[0] as f64, acc[1] + v[1] as f64, acc[2] + v[2] as f64]
            });
            sum.map(|c| c / ids.len() as f64)
        };
        for (eye, ids) in [(posed.landmarks[0], &left), (posed.landmarks[1], &right)] {
            let want = mean(ids);
            assert!((0..3).all(|c| (eye[c] as f64 - want[c]).abs() < 1e-7), "jaw {jaw}: eye {eye:?}, eyelid mean {want:?}");
        }
    }
    // In front of the head frame's origin (the eyeballs' midpoint), about 32.7 mm either side
    // of it, 13.6 mm forward and 1.6 mm down.
    let rest = head.posed(0.0, &[]).landmarks;
    let (l, r) = (rest[0], rest[1]);
    println!("eye landmarks {l:?} {r:?}");
    assert!(l[0] < -0.032 && r[0] > 0.032 && l[0] < r[0]);
    for eye in [l, r] {
        assert!((eye[2] - 0.0136).abs() < 0.0005 && (eye[1] + 0.0016).abs() < 0.0005, "{eye:?}");
    }
}

#[test]
fn an_open_jaw_opens_the_mouth_and_shows_back_faces() {
    let head = head();
    let closed = render_normals(&head, &HeadPose::FRONTAL, 512);
    let open = render_normals(&head, &HeadPose { jaw: 1.0, ..HeadPose::FRONTAL }, 512);
    let posed = head.posed(0.0, &[]);
    let p = landmarks_2d(&posed, &view(&posed, &HeadPose::FRONTAL, 512));
    // A box around the closed mouth, reaching down to the chin.
    let (x0, x1) = (p[3][0] as u32, p[4][0] as u32 + 1);
    let (y0, y1) = (p[3][1] as u32 - 15, p[3][1] as u32 + 40);
    let (mut changed, mut back_open, mut back_closed) = (0, 0, 0);
    for y in y0..y1 {
        for x in x0..x1 {
            let (a, b) = (closed.get_pixel(x, y), open.get_pixel(x, y));
            changed += (a != b) as usize;
            back_open += (!is_background(b) && b.0[2] < 127) as usize;
            back_closed += (!is_background(a) && a.0[2] < 127) as usize;
        }
    }
    let total = ((x1 - x0) * (y1 - y0)) as usize;
    println!("mouth box {}×{}: {changed} px changed; back faces (B < 127): open {back_open}, closed {back_closed}", x1 - x0, y1 - y0);
    assert!(changed > total / 3, "opening the jaw changes the mouth region ({changed} of {total})");
    // Closed, only the lip crease shows a few; open, the inside of the head shows through.
    assert!(back_open > 1000 && back_open > 10 * back_closed, "the inside of the open mouth shows back faces");
}

#[test]
fn fit_pose_recovers_rendered_poses() {
    let head = head();
    let posed = head.posed(0.0, &[]);
    let (mut max, mut sum, mut count) = ([0.0f64; 3], [0.0f64; 3], 0);
    for yaw in [-50.0, -25.0, 0.0, 25.0, 50.0] {
        for pitch in [-25.0, -12.5, 0.0, 12.5, 25.0] {
            for roll in [-15.0, 0.0, 15.0] {
                let truth = HeadPose { yaw, pitch, roll, ..HeadPose::FRONTAL };
                // The engine renders at roll 0 and turns the image: turn the points the same way.
                let points = landmarks_2d(&posed, &view(&posed, &truth, 512)).map(|p| rotate_image_point(p, roll, 512, 512));
                let fitted = fit_pose(&head, &points);
                let errors = [fitted.yaw - yaw, fitted.pitch - pitch, fitted.roll - roll].map(f64::abs);
                for i in 0..3 {
                    max[i] = max[i].max(errors[i]);
                    sum[i] += errors[i];
                }
                count += 1;
                assert!(errors.iter().all(|&e| e < 1e-3), "pose {truth:?} fitted as {fitted:?}");
                assert_eq!((fitted.jaw, fitted.scale, fitted.offset), (0.0, 1.0, [0.0, 0.0]));
            }
        }
    }
    let mean = sum.map(|s| s / count as f64);
    let sci = |v: [f64; 3]| v.map(|e| format!("{e:.1e}")).join(", ");
    println!("fit errors over {count} poses (yaw, pitch, roll): max [{}], mean [{}]", sci(max), sci(mean));

    // Keypoints off by up to ±1 px at 512 px (a detector's precision): within a degree or so.
    let mut seed = 12345u64;
    let mut noise = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
    };
    let (mut max, mut sum, mut count) = ([0.0f64; 3], [0.0f64; 3], 0);
    for yaw in [-50.0, -25.0, 0.0, 25.0, 50.0] {
        for pitch in [-25.0, -12.5, 0.0, 12.5, 25.0] {
            let truth = pose(yaw, pitch);
            let points = landmarks_2d(&posed, &view(&posed, &truth, 512)).map(|p| [p[0] + noise(), p[1] + noise()]);
            let fitted = fit_pose(&head, &points);
            let errors = [fitted.yaw - yaw, fitted.pitch - pitch, fitted.roll].map(f64::abs);
            for i in 0..3 {
                max[i] = max[i].max(errors[i]);
                sum[i] += errors[i];
            }
            count += 1;
        }
    }
    let mean = sum.map(|s| s / count as f64);
    println!("with ±1 px noise, {count} poses (yaw, pitch, roll): max {max:.2?}, mean {mean:.2?}");
    assert!(mean.iter().all(|&e| e < 0.6) && max.iter().all(|&e| e < 1.5), "noisy keypoints: mean errors {mean:?}, max {max:?}");

    // The same face in photo pixels (scaled, moved), and a face past the limits is clamped.
    let truth = pose(20.0, -10.0);
    let points = landmarks_2d(&posed, &view(&posed, &truth, 512)).map(|p| [p[0] * 3.1 + 700.0, p[1] * 3.1 + 40.0]);
    let fitted = fit_pose(&head, &points);
    assert!((fitted.yaw - 20.0).abs() < 1.0 && (fitted.pitch + 10.0).abs() < 1.0, "{fitted:?}");
    let far = landmarks_2d(&posed, &view(&posed, &pose(75.0, 0.0), 512));
    assert_eq!(fit_pose(&head, &far).yaw, LIMITS.yaw);
    assert_eq!(fit_pose(&head, &[[5.0, 5.0]; 5]), HeadPose::FRONTAL);
    assert_eq!(fit_pose(&head, &[[f32::NAN, 5.0]; 5]), HeadPose::FRONTAL);
}

#[test]
fn head_pose_defaults_limits_presets_and_lerp() {
    let parsed: HeadPose = serde_json::from_str(r#"{"yaw": 12.5}"#).unwrap();
    assert_eq!(parsed, HeadPose { yaw: 12.5, ..HeadPose::FRONTAL });
    assert_eq!(serde_json::from_str::<HeadPose>("{}").unwrap(), HeadPose::default());
    let json = serde_json::to_string(&HeadPose::FRONTAL).unwrap();
    assert_eq!(serde_json::from_str::<HeadPose>(&json).unwrap(), HeadPose::FRONTAL);

    let wild = HeadPose { yaw: 90.0, pitch: -45.0, roll: 30.0, jaw: 1.5, scale: 0.1, offset: [0.5, f64::NAN] };
    assert_eq!(wild.clamped(), HeadPose { yaw: 60.0, pitch: -30.0, roll: 20.0, jaw: 1.0, scale: 0.7, offset: [0.2, 0.0] });
    assert_eq!(HeadPose::FRONTAL.clamped(), HeadPose::FRONTAL);

    let a = HeadPose::FRONTAL;
    let b = HeadPose { yaw: 40.0, pitch: -20.0, jaw: 1.0, scale: 1.2, offset: [0.1, 0.0], ..a };
    assert_eq!(a.lerp(&b, 0.0), a);
    assert_eq!(a.lerp(&b, 1.0), b);
    assert_eq!(a.lerp(&b, 0.5), HeadPose { yaw: 20.0, pitch: -10.0, jaw: 0.5, scale: 1.1, offset: [0.05, 0.0], ..a });

    assert_eq!(PRESETS[0].1, HeadPose::FRONTAL);
    for (name, preset) in PRESETS {
        assert_eq!(preset.clamped(), preset, "{name} is within the limits");
    }
    let yaws: Vec<f64> = PRESETS.iter().map(|(_, p)| p.yaw).collect();
    assert_eq!(yaws, [0.0, -35.0, 35.0, -60.0, 60.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn rotate_image_turns_counter_clockwise_and_covers_the_frame() {
    let image = RgbImage::from_fn(64, 64, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, 200]));
    assert_eq!(rotate_image(&image, 0.0), image, "roll 0 is the identity");

    // A marked top-right corner goes to the top-left at +90° (counter-clockwise), to the
    // bottom-right at −90°.
    let mut marked = RgbImage::from_pixel(64, 64, Rgb([10, 10, 10]));
    marked.put_pixel(63, 0, Rgb([250, 0, 0]));
    let ccw = rotate_image(&marked, 90.0);
    assert_eq!(ccw.get_pixel(0, 0).0, [250, 0, 0]);
    assert_eq!(ccw.pixels().filter(|p| p.0 == [250, 0, 0]).count(), 1);
    assert_eq!(rotate_image(&marked, -90.0).get_pixel(63, 63).0, [250, 0, 0]);
    let corner = rotate_image_point([63.5, 0.5], 90.0, 64, 64);
    assert!((corner[0] - 0.5).abs() < 1e-4 && (corner[1] - 0.5).abs() < 1e-4, "{corner:?}");

    // At 20° nothing of the frame is left empty (the source has no black anywhere).
    let white = RgbImage::from_pixel(100, 100, Rgb([255, 255, 255]));
    let turned = rotate_image(&white, 20.0);
    assert!(turned.pixels().all(|p| p.0 == [255, 255, 255]), "no empty corner at 20°");
    // And the content turned: the gradient's direction follows the rotation.
    let turned = rotate_image(&image, 20.0);
    let at = |x: u32, y: u32| turned.get_pixel(x, y).0;
    // Counter-clockwise: the right side rises, so along the middle row the right shows rows of
    // the source from further down (more green), and down the middle column the top shows
    // columns from further right (more red).
    assert!(at(50, 32)[1] > at(14, 32)[1] + 20, "{:?} {:?}", at(14, 32), at(50, 32));
    assert!(at(32, 14)[0] > at(32, 50)[0] + 20, "{:?} {:?}", at(32, 14), at(32, 50));
    // Points map like pixels: the marked corner at 20° lands where rotate_image_point says.
    let p = rotate_image_point([32.5, 10.5], 20.0, 64, 64);
    let mut dot = RgbImage::from_pixel(64, 64, Rgb([0, 0, 0]));
    dot.put_pixel(32, 10, Rgb([255, 255, 255]));
    let turned = rotate_image(&dot, 20.0);
    let brightest = turned.enumerate_pixels().max_by_key(|(_, _, px)| px.0[0]).map(|(x, y, _)| (x, y)).unwrap();
    assert!((brightest.0 as f32 + 0.5 - p[0]).abs() <= 1.0 && (brightest.1 as f32 + 0.5 - p[1]).abs() <= 1.0, "{brightest:?} vs {p:?}");
}

#[test]
fn flame_fixture_loads_and_skins_like_the_reference() {
    let expected = expected();
    let model = FlameModel::read(&flame_fixture().join("generic_model.pkl")).unwrap();
    let count = |key: &str| expected[key].as_u64().unwrap() as usize;
    assert_eq!(model.num_vertices(), count("num_vertices"));
    assert_eq!(model.faces().len(), count("num_faces"));
    assert_eq!(model.num_joints(), count("num_joints"));
    assert_eq!(model.num_shape(), count("num_shape"));
    assert_eq!(model.num_expression(), count("num_expression"));
    assert_eq!(model.num_pose_correctives(), count("num_pose_correctives"));
    assert_eq!(model.j_regressor_nnz(), count("J_regressor_nnz"));
    let parents: Vec<Option<usize>> =
        expected["parents"].as_array().unwrap().iter().map(|p| usize::try_from(p.as_i64().unwrap()).ok()).collect();
    assert_eq!(model.parents(), parents.as_slice());

    let floats = |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    let samples = &expected["samples"];
    assert_eq!(model.template()[..3], floats(&samples["v_template[0]"])[..]);
    let faces = model.faces();
    assert_eq!(faces[0].map(|i| i as f64).to_vec(), floats(&samples["f[0]"]));
    assert_eq!(faces[faces.len() - 1].map(|i| i as f64).to_vec(), floats(&samples["f[last]"]));
    let k = 400;
    let sd = model.shapedirs();
    assert_eq!([sd[0], sd[k], sd[2 * k]].to_vec(), floats(&samples["shapedirs[0,:,0]"]));
    assert_eq!([sd[300], sd[k + 300], sd[2 * k + 300]].to_vec(), floats(&samples["shapedirs[0,:,300]"]));
    assert_eq!(model.posedirs()[2 * 36 + 35], samples["posedirs[0,2,35]"].as_f64().unwrap());
    let sums = &expected["sums"];
    for (name, values) in [
        ("v_template", model.template()),
        ("shapedirs", model.shapedirs()),
        ("posedirs", model.posedirs()),
        ("weights", model.weights()),
        ("J_regressor", model.j_regressor()),
    ] {
        let sum: f64 = values.iter().sum();
        assert!((sum - sums[name].as_f64().unwrap()).abs() < 1e-9, "sum of {name}: {sum}");
    }

    let tolerance = 1e-9;
    let mut worst: f64 = 0.0;
    for case in expected["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let pose: Vec<[f64; 3]> = floats(&case["pose"]).chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
        let skinned = model.lbs(&floats(&case["shape"]), &floats(&case["expression"]), &pose);
        let check = |label: &str, got: &[f64; 3], want: &serde_json::Value, worst: &mut f64| {
            let want = floats(want);
            for c in 0..3 {
                let error = (got[c] - want[c]).abs();
                *worst = worst.max(error);
                assert!(error < tolerance, "{name}: {label} is {got:?}, expected {want:?}");
            }
        };
        for (j, want) in case["joints_rest"].as_array().unwrap().iter().enumerate() {
            check(&format!("rest joint {j}"), &skinned.joints_rest[j], want, &mut worst);
        }
        for (j, want) in case["joints_posed"].as_array().unwrap().iter().enumerate() {
            check(&format!("posed joint {j}"), &skinned.joints_posed[j], want, &mut worst);
        }
        let indices = case["vertex_indices"].as_array().unwrap();
        for (i, want) in indices.iter().zip(case["vertices"].as_array().unwrap()) {
            let i = i.as_u64().unwrap() as usize;
            check(&format!("vertex {i}"), &skinned.vertices[i], want, &mut worst);
        }
    }
    println!("FLAME LBS: largest error against expected.json {worst:.3e}");
}

/// The fixture's landmark picks: eyeballs from expected.json, the nose tip it names, and the two
/// mouth-corner vertices of its coarse skin (22 and 23, at (∓0.023, −0.070, 0.020)).
fn fixture_landmarks() -> FlameLandmarks {
    let expected = expected();
    let range = |side: &str| {
        let r = expected["eyeball_vertices"][side].as_array().unwrap();
        r[0].as_u64().unwrap() as usize..r[1].as_u64().unwrap() as usize
    };
    let nose_tip = expected["vertex_picks"]["nose_tip"].as_u64().unwrap() as usize;
    FlameLandmarks { eyeballs: [range("right"), range("left")], nose_tip, mouth_corners: [23, 22] }
}

#[test]
fn a_flame_head_renders_with_its_jaw_and_expressions() {
    let path = flame_fixture().join("generic_model.pkl");
    let error = HeadModel::from_flame_file(&path).unwrap_err();
    assert!(error.contains("generic_model.pkl") && error.contains("93 vertices"), "{error}");

    let model = FlameModel::read(&path).unwrap();
    let head = HeadModel::from_flame(model.clone(), &fixture_landmarks()).unwrap();
    assert_eq!(head.source(), "FLAME");
    assert!(head.flame().is_some());
    let rest = head.posed(0.0, &[]);
    // Re-centred on the eyeballs, whose centres are a FLAME head's eye landmarks: (∓0.031, 0, 0).
    let [left, right] = [rest.landmarks[0], rest.landmarks[1]];
    assert!(left[0] < -0.03 && right[0] > 0.03, "{left:?} {right:?}");
    assert!((left[0] + right[0]).abs() < 1e-6 && left[1].abs() < 1e-6 && left[2].abs() < 1e-6);
    assert!(rest.landmarks[3][0] < rest.landmarks[4][0], "mouth corners image-left first");

    // jaw 1 = the jaw joint turned 0.35 rad: the chin goes down and back, as the LBS says.
    let chin = expected()["vertex_picks"]["chin"].as_u64().unwrap() as usize;
    let open = head.posed(1.0, &[]);
    let lbs = model.lbs(&[], &[], &[[0.0; 3], [0.0; 3], [0.35, 0.0, 0.0]]);
    let shift = [0, 1, 2].map(|c| open.vertices[chin][c] as f64 - lbs.vertices[chin][c]);
    let rest_shift = [0, 1, 2].map(|c| rest.vertices[chin][c] as f64 - model.template()[3 * chin + c]);
    assert!((0..3).all(|c| (shift[c] - rest_shift[c]).abs() < 1e-6), "the same re-centring for every pose");
    assert!(open.vertices[chin][1] < rest.vertices[chin][1] - 0.002 && open.vertices[chin][2] < rest.vertices[chin][2]);
    let smiling = head.posed(0.0, &[1.0, -0.5, 0.25]);
    assert_ne!(smiling.vertices, rest.vertices, "expressions move the FLAME mesh");

    let frontal = render_normals(&head, &HeadPose::FRONTAL, 256);
    let faces = frontal.pixels().filter(|p| !is_background(p)).count();
    assert!(faces > 256 * 256 / 4, "the FLAME head fills the frame ({faces} px)");
    let n = inner_face_normal(&head, &pose(30.0, 0.0));
    assert!(n[0] > 0.08, "turned right: {n:?}");
    assert_ne!(render_posed(&open, &view(&open, &HeadPose::FRONTAL, 256)), frontal);
}

#[test]
fn bad_flame_files_are_refused_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(flame_fixture().join("generic_model.pkl")).unwrap();

    let truncated = dir.path().join("truncated.pkl");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let error = HeadModel::from_flame_file(&truncated).unwrap_err();
    assert!(error.starts_with("truncated.pkl: ") && error.contains("ends early"), "{error}");

    // {'a': 1} as Python 2 pickles it.
    let other = dir.path().join("other.pkl");
    std::fs::write(&other, b"\x80\x02}q\x00U\x01aK\x01s.").unwrap();
    let error = HeadModel::from_flame_file(&other).unwrap_err();
    assert!(error.starts_with("other.pkl: not a FLAME model") && error.contains("v_template") && error.contains("keys: a"), "{error}");

    // A list at the top level.
    std::fs::write(&other, b"\x80\x02]q\x00K\x01a.").unwrap();
    let error = HeadModel::from_flame_file(&other).unwrap_err();
    assert!(error.contains("not a FLAME model") && error.contains("list"), "{error}");

    let text = dir.path().join("text.pkl");
    std::fs::write(&text, b"(dp0\nS'a'\np1\nI1\ns.").unwrap();
    let error = HeadModel::from_flame_file(&text).unwrap_err();
    assert!(error.contains("not a pickle of protocol 2 or later"), "{error}");

    // Protocol 2 with an opcode these files never use (a persistent id).
    std::fs::write(&other, b"\x80\x02U\x01aQ.").unwrap();
    let error = HeadModel::from_flame_file(&other).unwrap_err();
    assert!(error.contains("BINPERSID") && error.contains("not supported"), "{error}");

    let missing = dir.path().join("missing.pkl");
    assert!(HeadModel::from_flame_file(&missing).unwrap_err().starts_with("missing.pkl: "));
}

/// Writes pickles the way Python 3 + numpy ≥ 1.16 do at protocol 5 (`_frombuffer` arrays with
/// in-band `bytearray` buffers, `STACK_GLOBAL`, `MEMOIZE`, `FRAME`), the style of "FLAME 2023 Open".
struct Py3Pickle {
    out: Vec<u8>,
    memo: u32,
}

impl Py3Pickle {
    fn new() -> Self {
        // PROTO 5, then one FRAME (length hint; a reader may ignore it).
        let mut out = vec![0x80, 5, 0x95];
        out.extend_from_slice(&0u64.to_le_bytes());
        Py3Pickle { out, memo: 0 }
    }
    fn str(&mut self, s: &str) {
        self.out.push(0x8c);
        self.out.push(s.len() as u8);
        self.out.extend_from_slice(s.as_bytes());
    }
    fn memoize(&mut self) -> u32 {
        self.out.push(0x94);
        self.memo += 1;
        self.memo - 1
    }
    fn global(&mut self, module: &str, name: &str) {
        self.str(module);
        self.str(name);
        self.out.push(0x93);
    }
    fn int(&mut self, v: i32) {
        self.out.push(b'J');
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    /// numpy.dtype(code, False, True) with state (3, order, None, None, None, −1, −1, 0).
    fn dtype(&mut self, code: &str, order: &str) {
        self.global("numpy", "dtype");
        self.str(code);
        self.out.extend_from_slice(&[0x89, 0x88, 0x87, b'R']);
        self.out.push(b'(');
        self.int(3);
        self.str(order);
        self.out.extend_from_slice(b"NNN");
        self.int(-1);
        self.int(-1);
        self.int(0);
        self.out.extend_from_slice(b"tb");
    }
    /// _frombuffer(bytearray(raw), dtype, shape, order).
    fn array(&mut self, raw: &[u8], code: &str, shape: &[usize], order: &str) {
        self.global("numpy._core.numeric", "_frombuffer");
        self.out.push(b'(');
        self.out.push(0x96);
        self.out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
        self.out.extend_from_slice(raw);
        self.dtype(code, if code.starts_with('u') && code.ends_with('1') { "|" } else { "<" });
        self.out.push(b'(');
        for &d in shape {
            self.int(d as i32);
        }
        self.out.push(b't');
        self.str(order);
        self.out.extend_from_slice(b"tR");
    }
    fn f8(&mut self, values: &[f64], shape: &[usize]) {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.array(&raw, "f8", shape, "C");
    }
}

#[test]
fn python3_frombuffer_pickles_load_too() {
    // A 4-vertex "FLAME" with every vertex on the root joint: posing the root turns the mesh
    // rigidly about joint 0.
    let n = 4;
    let template = [0.0, 0.0, 0.1, 0.05, 0.0, 0.0, -0.05, 0.0, 0.0, 0.0, 0.1, 0.0];
    let mut p = Py3Pickle::new();
    p.out.push(b'}');
    p.memoize();
    p.out.push(b'(');
    p.str("v_template");
    // Column-major (order 'F'): the reader must transpose.
    let fortran: Vec<u8> = (0..3).flat_map(|c| (0..n).map(move |v| template[3 * v + c])).flat_map(|x: f64| x.to_le_bytes()).collect();
    p.array(&fortran, "f8", &[n, 3], "F");
    p.str("f");
    let faces: Vec<u8> = [0u32, 1, 3, 0, 3, 2].iter().flat_map(|i| i.to_le_bytes()).collect();
    p.array(&faces, "u4", &[2, 3], "C");
    p.str("shapedirs");
    let mut shapedirs = vec![0.0; n * 3 * 400];
    shapedirs[2 * 400 + 300] = 0.01; // expression 0 pushes vertex 0 forward
    p.f8(&shapedirs, &[n, 3, 400]);
    p.str("posedirs");
    p.f8(&vec![0.0; n * 3 * 36], &[n, 3, 36]);
    p.str("weights");
    let weights: Vec<f64> = (0..n).flat_map(|_| [1.0, 0.0, 0.0, 0.0, 0.0]).collect();
    p.f8(&weights, &[n, 5]);
    p.str("kintree_table");
    let kintree: Vec<u8> = [-1i64, 0, 1, 1, 1, 0, 1, 2, 3, 4].iter().flat_map(|i| i.to_le_bytes()).collect();
    p.array(&kintree, "i8", &[2, 5], "C");
    p.str("J_regressor");
    // scipy.sparse._csc.csc_matrix: every joint at vertex 3 (0, 0.1, 0).
    p.global("scipy.sparse._csc", "csc_matrix");
    p.out.extend_from_slice(&[b')', 0x81, b'}']);
    p.out.push(b'(');
    p.str("_shape");
    p.int(5);
    p.int(n as i32);
    p.out.push(0x86);
    p.str("data");
    p.f8(&[1.0; 5], &[5]);
    p.str("indices");
    let rows: Vec<u8> = (0..5i32).flat_map(|i| i.to_le_bytes()).collect();
    p.array(&rows, "i4", &[5], "C");
    p.str("indptr");
    let indptr: Vec<u8> = [0i32, 0, 0, 0, 5].iter().flat_map(|i| i.to_le_bytes()).collect();
    p.array(&indptr, "i4", &[5], "C");
    p.str("maxprint");
    p.int(50);
    p.out.extend_from_slice(b"ub");
    p.out.extend_from_slice(b"u.");

    let model = FlameModel::from_bytes(&p.out).unwrap();
    assert_eq!((model.num_vertices(), model.faces().len(), model.num_joints(), model.num_expression()), (4, 2, 5, 100));
    assert_eq!(model.template(), template.as_slice());
    assert_eq!(model.j_regressor_nnz(), 5);
    let rest = model.lbs(&[], &[], &[]);
    assert_eq!(rest.joints_rest[0], [0.0, 0.1, 0.0]);
    assert_eq!(rest.vertices[0], [0.0, 0.0, 0.1]);
    let expr = model.lbs(&[], &[1.0], &[]);
    assert!((expr.vertices[0][2] - 0.11).abs() < 1e-12);
    // The root turned 90° about +y: (x, z) → (z, −x) about the joint (0, 0.1, 0).
    let turned = model.lbs(&[], &[], &[[0.0, std::f64::consts::FRAC_PI_2, 0.0]]);
    let want = [[0.1, 0.0, 0.0], [0.0, 0.0, -0.05], [0.0, 0.0, 0.05], [0.0, 0.1, 0.0]];
    for (got, want) in turned.vertices.iter().zip(want) {
        assert!((0..3).all(|c| (got[c] - want[c]).abs() < 1e-12), "{got:?} vs {want:?}");
    }
    // Cut anywhere, it is refused as truncated, never read as something else.
    for cut in [3, 40, p.out.len() / 2, p.out.len() - 1] {
        let error = FlameModel::from_bytes(&p.out[..cut]).unwrap_err();
        assert!(error.contains("ends early"), "cut at {cut}: {error}");
    }
}
