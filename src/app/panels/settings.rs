//! The next job's settings, Generate and Cancel, and the queue.

use egui::{RichText, Ui};

use super::super::state::*;
use super::super::{Action, JobAction, ModelsAction};
use crate::engine::TRAINED_SIZE;

pub(super) fn settings(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    ui.heading("Settings");
    // The widgets edit a copy; a changed copy comes back as one action.
    let mut settings = state.settings.clone();
    let spec = &mut settings.spec;
    ui.add(egui::Slider::new(&mut spec.steps, 1..=100).text("Steps"));
    ui.add(egui::Slider::new(&mut spec.guidance, 1.0..=10.0).fixed_decimals(1).text("Guidance"));
    ui.add(egui::Slider::new(&mut spec.num_images, 1..=8).text("Images"));
    ui.horizontal(|ui| {
        let label = ui.label("Seed");
        ui.add(egui::DragValue::new(spec.seed.get_or_insert(0)).range(0..=u32::MAX as u64)).labelled_by(label.id);
        ui.checkbox(&mut settings.seed_locked, "Lock").on_hover_text("Keep this seed; otherwise each Generate draws a new one");
        if ui.button("New seed").on_hover_text("Draw a new random seed").clicked() {
            actions.push(JobAction::NewSeed.into());
        }
    });
    sampler_settings(ui, state, &mut settings, actions);
    let loras = if settings.spec.loras.is_empty() { "LoRAs".to_string() } else { format!("LoRAs ({})", settings.spec.loras.len()) };
    egui::CollapsingHeader::new(loras).id_salt("loras").show(ui, |ui| lora_settings(ui, &mut settings, actions));
    egui::CollapsingHeader::new("Image size and device").id_salt("runtime").show(ui, |ui| runtime_settings(ui, state, &mut settings));
    if settings != state.settings {
        actions.push(Action::UpdateSettings(Box::new(settings)));
    }
    ui.horizontal(|ui| {
        let can_generate = state.photo.as_ref().is_some_and(|p| p.selected_face.is_some());
        let generate = ui.add_enabled(can_generate, egui::Button::new(RichText::new("Generate").strong()));
        if generate.on_hover_text("Ctrl+Enter").clicked() {
            actions.push(JobAction::Generate.into());
        }
        let cancellable = state.running.as_ref().is_some_and(|r| !r.cancelling);
        if ui.add_enabled(cancellable, egui::Button::new("Cancel")).on_hover_text("Esc").clicked() {
            actions.push(JobAction::CancelRunning.into());
        }
    });
}

/// The sampler, and fast mode, which sets sampler, LoRA, steps and guidance together.
fn sampler_settings(ui: &mut Ui, state: &AppState, settings: &mut Settings, actions: &mut Vec<Action>) {
    use crate::diffusion::schedulers::Sampler;
    ui.horizontal(|ui| {
        let sampler = &mut settings.spec.sampler;
        egui::ComboBox::from_label("Sampler").selected_text(sampler.label()).show_ui(ui, |ui| {
            for choice in Sampler::ALL {
                ui.selectable_value(sampler, choice, choice.label());
            }
        });
        let mut fast = settings.spec.is_fast();
        let lcm_missing = state.models.is_missing(crate::models::LCM_LORA);
        let toggle = ui.add_enabled(!lcm_missing || fast, egui::Checkbox::new(&mut fast, "Fast"));
        let toggle = toggle
            .on_hover_text("LCM-LoRA: 4 steps without guidance instead of 25 with it, about 10× quicker; switch off to go back")
            .on_disabled_hover_text("Needs the LCM-LoRA (lcm_lora/pytorch_lora_weights.safetensors): get it in Models…");
        if toggle.changed() {
            settings.set_fast(fast);
        }
        if lcm_missing && ui.small_button("Get LCM-LoRA…").clicked() {
            actions.push(ModelsAction::ShowWindow(true).into());
        }
    });
}

/// The LoRAs merged into the UNet, each with its scale; more come from Add… or a dropped file.
fn lora_settings(ui: &mut Ui, settings: &mut Settings, actions: &mut Vec<Action>) {
    let mut removed = None;
    for (index, lora) in settings.spec.loras.iter_mut().enumerate() {
        ui.horizontal(|ui| {
            let name = std::path::Path::new(&lora.file).file_name().map_or(lora.file.clone(), |n| n.to_string_lossy().into_owned());
            ui.label(name).on_hover_text(&lora.file);
            ui.add(egui::Slider::new(&mut lora.scale, 0.0..=1.5).fixed_decimals(2).text("scale"));
            if ui.small_button("Remove").clicked() {
                removed = Some(index);
            }
        });
    }
    if let Some(index) = removed {
        settings.spec.loras.remove(index);
    }
    if ui
        .button("Add LoRA…")
        .on_hover_text("A .safetensors LoRA for Stable Diffusion 1.5 (kohya, diffusers or PEFT); or drop one on the window")
        .clicked()
    {
        actions.push(JobAction::BrowseLora.into());
    }
}

/// Image size, device and precision, and what the loaded models run on.
fn runtime_settings(ui: &mut Ui, state: &AppState, settings: &mut Settings) {
    use crate::engine::{DeviceChoice, Precision, runtime::CUDA_BUILD};
    let spec = &mut settings.spec;
    egui::ComboBox::from_label("Size")
        .selected_text(spec.size.map_or(format!("Model's own ({TRAINED_SIZE})"), |s| format!("{s} × {s}")))
        .show_ui(ui, |ui| {
            ui.selectable_value(&mut spec.size, None, format!("Model's own ({TRAINED_SIZE})"));
            for side in [256, 384, 512, 640, 768, 1024] {
                ui.selectable_value(&mut spec.size, Some(side), format!("{side} × {side}"));
            }
        })
        .response
        .on_hover_text("Arc2Face was trained at 512 × 512: other sizes work, with less consistent faces");
    ui.horizontal(|ui| {
        egui::ComboBox::from_label("Device").selected_text(device_label(spec.runtime.device)).show_ui(ui, |ui| {
            ui.selectable_value(&mut spec.runtime.device, DeviceChoice::Auto, device_label(DeviceChoice::Auto));
            ui.selectable_value(&mut spec.runtime.device, DeviceChoice::Cpu, device_label(DeviceChoice::Cpu));
            ui.add_enabled_ui(CUDA_BUILD, |ui| {
                ui.selectable_value(&mut spec.runtime.device, DeviceChoice::Cuda(0), device_label(DeviceChoice::Cuda(0)))
                    .on_disabled_hover_text("This build has no CUDA support");
            });
        });
        egui::ComboBox::from_label("Precision").selected_text(precision_label(spec.runtime.precision)).show_ui(ui, |ui| {
            for precision in [Precision::Auto, Precision::F32, Precision::F16, Precision::Bf16] {
                ui.selectable_value(&mut spec.runtime.precision, precision, precision_label(precision));
            }
        });
    });
    match &state.runtime_in_use {
        Some(runtime) => ui.small(format!("Models loaded on {runtime}")),
        None => ui.small("Models load with the first generation"),
    };
}

fn device_label(device: crate::engine::DeviceChoice) -> String {
    use crate::engine::DeviceChoice;
    match device {
        DeviceChoice::Auto => "Auto".into(),
        DeviceChoice::Cpu => "CPU".into(),
        DeviceChoice::Cuda(n) => format!("CUDA {n}"),
    }
}

fn precision_label(precision: crate::engine::Precision) -> &'static str {
    use crate::engine::Precision;
    match precision {
        Precision::Auto => "Auto",
        Precision::F32 => "f32",
        Precision::F16 => "f16 (half the memory)",
        Precision::Bf16 => "bf16 (GPU only)",
    }
}

pub(super) fn queue(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    if state.queue.is_empty() {
        return;
    }
    ui.label(format!("Queued ({})", state.queue.len()));
    for (position, job) in state.queue.iter().enumerate() {
        ui.horizontal(|ui| {
            if let Some(thumbnail) = state.pose.queue_thumbnails.get(&job.job_id) {
                ui.add(egui::Image::new(thumbnail).fit_to_exact_size(egui::Vec2::splat(24.0))).on_hover_text("The job's head pose");
            }
            let seed = job.spec.seed.map_or("—".to_string(), |s| s.to_string());
            ui.label(format!("{} image(s), {} steps, seed {seed}", job.spec.num_images, job.spec.steps));
            if position > 0 && ui.small_button("Up").on_hover_text("Run earlier").clicked() {
                actions.push(JobAction::MoveQueuedUp(job.job_id).into());
            }
            if position + 1 < state.queue.len() && ui.small_button("Down").on_hover_text("Run later").clicked() {
                actions.push(JobAction::MoveQueuedDown(job.job_id).into());
            }
            if ui.small_button("Remove").on_hover_text("Remove from the queue").clicked() {
                actions.push(JobAction::RemoveQueued(job.job_id).into());
            }
        });
    }
}
