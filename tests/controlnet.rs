//! The pose ControlNet against diffusers (reference/features, written by
//! tools/make_feature_fixtures.py, with every weight of the tiny ControlNet random, its zero
//! convolutions included): its residuals for one call, and whole generations through
//! `StableDiffusionControlNetPipeline` at two scales, without guidance, and with a start/end
//! window.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;

use arc2face_studio::diffusion::controlnet::{ControlNet, ControlNetConfig};
use arc2face_studio::diffusion::unet::{Conditioning, UNet, UNetConfig};
use arc2face_studio::engine::{GenerationSpec, HeadMesh, Job, PoseSpec, PoseTarget, Sweep};
use arc2face_studio::models::{self, load_safetensors};
use arc2face_studio::pose::{HeadModel, HeadPose, render_normals, rotate_image};

fn control_image() -> image::RgbImage {
    image::open(fixture().join("reference/features/control.png")).unwrap().to_rgb8()
}

#[test]
fn controlnet_residuals_and_the_unet_with_them_match_diffusers() {
    let models = models_dir();
    let config: ControlNetConfig = models::read_json(&models.join("controlnet/config.json")).unwrap();
    let vb = load_safetensors(&models.join("controlnet/diffusion_pytorch_model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let controlnet = ControlNet::new(vb, &config).unwrap();
    let sample = reference("unet_sample.npy");
    let context = reference("unet_encoder_hidden_states.npy");
    let pixels: Vec<f32> = control_image().as_raw().iter().map(|&p| p as f32 / 255.0).collect();
    let image = Tensor::from_vec(pixels, (32, 32, 3), &Device::Cpu).unwrap().permute((2, 0, 1)).unwrap().unsqueeze(0).unwrap();
    let image = image.repeat((2, 1, 1, 1)).unwrap();
    let residuals = controlnet.forward(&sample, 500.0, &Conditioning::context(&context), &image, 1.0).unwrap();
    assert_eq!(residuals.down.len(), 9);
    for (i, residual) in residuals.down.iter().enumerate() {
        assert_close(&format!("down residual {i}"), residual, &feature_reference(&format!("controlnet_down_{i}.npy")), 1e-5);
    }
    assert_close("mid residual", &residuals.mid, &feature_reference("controlnet_mid.npy"), 1e-5);

    let unet_config: UNetConfig = models::read_json(&models.join("arc2face/config.json")).unwrap();
    let vb = load_safetensors(&models.join("arc2face/diffusion_pytorch_model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let unet = UNet::new(vb, &unet_config).unwrap();
    let out = unet.forward(&sample, 500.0, &Conditioning { control: Some(&residuals), ..Conditioning::context(&context) }).unwrap();
    assert_close("UNet with the residuals", &out, &feature_reference("controlnet_unet_out.npy"), 1e-5);
}

fn posed(scale: f64, start: f64, end: f64) -> PoseSpec {
    PoseSpec { target: PoseTarget::Image { file: "control.png".into() }, controlnet_scale: scale, control_start: start, control_end: end }
}

fn run(case: &str, steps: usize, guidance: f64, pose: PoseSpec, from_noise: bool) {
    let seed = (!from_noise).then_some(42);
    let spec = GenerationSpec { num_images: 2, steps, guidance, size: Some(32), seed, pose: Some(pose), ..Default::default() };
    let initial_latents = from_noise.then(|| reference("gen_noise.npy"));
    let job =
        Job { initial_latents, pose_image: Some(control_image()), ..Job::new(spec, reference("id_embedding.npy").to_vec1().unwrap()) };
    let (latents, images) = run_job(DType::F32, &job);
    let (expected_latents, expected_images) =
        (feature_reference(&format!("gen_{case}_latents.npy")), feature_reference(&format!("gen_{case}_images.npy")));
    check_generation(case, &latents, &images, &expected_latents, &expected_images, 1e-4);
}

#[test]
fn pose_generations_match_diffusers_controlnet_pipeline() {
    run("control_s1", 5, 3.0, posed(1.0, 0.0, 1.0), true);
    run("control_s05", 5, 3.0, posed(0.5, 0.0, 1.0), true);
    run("control_nocfg", 5, 1.0, posed(1.0, 0.0, 1.0), true);
    run("control_window", 5, 3.0, posed(1.0, 0.2, 0.8), true);
    run("control_seed", 4, 3.0, posed(1.0, 0.0, 1.0), false);
}

/// The window of steps as diffusers computes it: 5 steps between 0.2 and 0.8 run the middle three.
#[test]
fn the_control_window_follows_diffusers() {
    let pose = posed(1.0, 0.2, 0.8);
    let active: Vec<bool> = (0..5).map(|i| pose.active_at(i, 5)).collect();
    assert_eq!(active, [false, true, true, true, false]);
}

/// A head pose is rendered into the conditioning image: the same generation as with that render
/// given as a pose image, bit for bit.
#[test]
fn a_head_pose_generates_as_its_render_given_as_an_image() {
    let head = HeadModel::builtin().unwrap();
    let pose = HeadPose { yaw: 25.0, pitch: -10.0, jaw: 0.6, ..HeadPose::FRONTAL };
    let job = |target: PoseTarget, pose_image: Option<image::RgbImage>| {
        let pose = PoseSpec { target, ..PoseSpec::default() };
        let spec = GenerationSpec { num_images: 1, steps: 3, size: Some(32), seed: Some(3), pose: Some(pose), ..Default::default() };
        Job { pose_image, ..Job::new(spec, reference("id_embedding.npy").to_vec1().unwrap()) }
    };
    let (from_head, head_images) = run_job(DType::F32, &job(PoseTarget::Head { pose, mesh: HeadMesh::Builtin }, None));
    let render = render_normals(&head, &pose, 32);
    let (from_image, images) = run_job(DType::F32, &job(PoseTarget::Image { file: "render.png".into() }, Some(render)));
    assert_eq!(to_f32_vec(&from_head), to_f32_vec(&from_image));
    assert_eq!(head_images, images);

    // A frontal head steers differently: the render reaches the ControlNet.
    let (frontal, _) = run_job(DType::F32, &job(PoseTarget::Head { pose: HeadPose::FRONTAL, mesh: HeadMesh::Builtin }, None));
    assert!(relative_max_error(&frontal, &from_head) > 1e-3, "another pose, other latents");
}

/// Roll never reaches the ControlNet (it was trained on roll-free, FFHQ-aligned faces): the
/// latents stay those of roll 0 and the finished image is turned.
#[test]
fn roll_turns_the_finished_image() {
    let job = |roll: f64| {
        let pose = HeadPose { yaw: -15.0, roll, ..HeadPose::FRONTAL };
        let pose = PoseSpec { target: PoseTarget::Head { pose, mesh: HeadMesh::Builtin }, ..PoseSpec::default() };
        let spec = GenerationSpec { num_images: 1, steps: 2, size: Some(32), seed: Some(9), pose: Some(pose), ..Default::default() };
        Job::new(spec, reference("id_embedding.npy").to_vec1().unwrap())
    };
    let (upright_latents, upright) = run_job(DType::F32, &job(0.0));
    let (tilted_latents, tilted) = run_job(DType::F32, &job(12.0));
    assert_eq!(to_f32_vec(&upright_latents), to_f32_vec(&tilted_latents));
    let upright = image::RgbImage::from_raw(32, 32, upright[0].clone()).unwrap();
    assert_eq!(tilted[0], rotate_image(&upright, 12.0).into_raw());
    assert_ne!(tilted[0], upright.into_raw());
}

/// A pose sweep: one seed, the head going from the sweep's start to the spec's pose.
#[test]
fn a_pose_sweep_moves_the_head_from_its_start_to_the_pose() {
    let to = HeadPose { yaw: 40.0, jaw: 1.0, ..HeadPose::FRONTAL };
    let from = HeadPose { yaw: -40.0, ..HeadPose::FRONTAL };
    let spec = GenerationSpec {
        num_images: 3,
        seed: Some(4),
        pose: Some(PoseSpec { target: PoseTarget::Head { pose: to, mesh: HeadMesh::Builtin }, ..PoseSpec::default() }),
        sweep: Some(Sweep::Pose { from }),
        ..Default::default()
    };
    let poses: Vec<(f64, f64, Option<u64>)> = (0..3)
        .map(|i| match spec.image(i).pose.unwrap().target {
            PoseTarget::Head { pose, .. } => (pose.yaw, pose.jaw, spec.image(i).seed),
            PoseTarget::Image { .. } => unreachable!(),
        })
        .collect();
    assert_eq!(poses, [(-40.0, 0.0, Some(4)), (0.0, 0.5, Some(4)), (40.0, 1.0, Some(4))]);
}

/// A FLAME file that is not FLAME's topology is refused by name when a job asks for it.
#[test]
fn a_flame_file_of_another_topology_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let models = common::generation_and_face_models(dir.path());
    std::fs::create_dir_all(models.join("flame")).unwrap();
    let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flame/generic_model.pkl");
    std::fs::copy(fixture, models.join("flame/generic_model.pkl")).unwrap();
    let models = arc2face_studio::models::ModelsDir::new(&models);
    let mesh = HeadMesh::preferred(&models);
    assert_eq!(mesh, HeadMesh::Flame { file: "flame/generic_model.pkl".into() });
    let error = arc2face_studio::engine::load_head(&models, &mesh).unwrap_err().to_string();
    assert!(error.contains("generic_model.pkl") && error.contains("5023"), "{error}");
}
