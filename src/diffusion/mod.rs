//! The diffusion models and the sampler, each usable and testable alone. They do no file I/O:
//! the engine reads the files and hands them weights and configs.

pub mod attention;
pub mod controlnet;
pub mod expression_adapter;
pub mod id_encoder;
pub mod lora;
pub mod noise;
pub mod ops;
pub mod preview;
pub mod reference_adapter;
pub mod resnet;
pub mod schedulers;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
