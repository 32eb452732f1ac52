//! The Expression panel: the Expression Adapter's target set directly — jaw, eyelids, the
//! leading FLAME coefficients — with presets that need no FLAME basis, Randomise and Reset.

use egui::Ui;

use super::super::state::*;
use super::super::{Action, JobAction, ModelsAction};
use crate::engine::ExpressionSpec;
use crate::expression::{COEFFICIENTS, Expression, JAW_SIDE_LIMIT};

/// The coefficients shown as sliders before "More".
const LEADING: usize = 10;
/// Sliders span what real faces use: FLAME's expression coefficients rarely leave ±3.
const COEFFICIENT_RANGE: f32 = 3.0;

/// Presets built from the jaw and eyelids alone, which mean the same in every FLAME basis.
fn presets() -> [(&'static str, Expression); 7] {
    let with =
        |eyelids: [f32; 2], jaw_open: f32, jaw_sideways: f32| Expression { eyelids, jaw_open, jaw_sideways, ..Expression::default() };
    [
        ("Neutral", Expression::default()),
        ("Mouth open", with([0.0, 0.0], 0.35, 0.0)),
        ("Eyes closed", with([1.0, 1.0], 0.0, 0.0)),
        ("Wink left", with([1.0, 0.0], 0.0, 0.0)),
        ("Wink right", with([0.0, 1.0], 0.0, 0.0)),
        ("Jaw left", with([0.0, 0.0], 0.05, -JAW_SIDE_LIMIT)),
        ("Jaw right", with([0.0, 0.0], 0.05, JAW_SIDE_LIMIT)),
    ]
}

pub(super) fn expression(ui: &mut Ui, state: &AppState, settings: &mut Settings, actions: &mut Vec<Action>) {
    let adapter_missing = state.models.is_missing(crate::models::EXPRESSION_ADAPTER);
    ui.horizontal(|ui| {
        ui.checkbox(&mut settings.use_expression, "Use this expression")
            .on_hover_text("The Expression Adapter steers the face toward these FLAME values");
        if adapter_missing
            && ui.small_button("Get the adapter…").on_hover_text("exp_adapter/exp_adapter.bin is not in the models folder").clicked()
        {
            actions.push(ModelsAction::ShowWindow(true).into());
        }
    });
    let target = settings.spec.expression.get_or_insert_with(ExpressionSpec::default);
    ui.add(egui::Slider::new(&mut target.scale, 0.0..=1.5).fixed_decimals(2).text("Strength"));
    ui.horizontal_wrapped(|ui| {
        for (name, preset) in presets() {
            if ui.small_button(name).clicked() {
                target.expression = preset;
            }
        }
    });
    let expression = &mut target.expression;
    ui.add(egui::Slider::new(&mut expression.jaw_open, 0.0..=0.5).fixed_decimals(2).text("Jaw open"));
    ui.add(egui::Slider::new(&mut expression.jaw_sideways, -JAW_SIDE_LIMIT..=JAW_SIDE_LIMIT).fixed_decimals(2).text("Jaw sideways"));
    eyelids(ui, expression, &mut settings.eyelids_linked);
    expression.expression.resize(COEFFICIENTS, 0.0);
    ui.label("Expression coefficients")
        .on_hover_text("FLAME's expression basis: the coefficients have no names; the first ones move the face the most.");
    for (i, value) in expression.expression.iter_mut().take(LEADING).enumerate() {
        ui.add(egui::Slider::new(value, -COEFFICIENT_RANGE..=COEFFICIENT_RANGE).fixed_decimals(2).text(format!("{}", i + 1)));
    }
    egui::CollapsingHeader::new(format!("More ({} to {COEFFICIENTS})", LEADING + 1)).id_salt("more coefficients").show(ui, |ui| {
        for (i, value) in expression.expression.iter_mut().enumerate().skip(LEADING) {
            ui.add(egui::Slider::new(value, -COEFFICIENT_RANGE..=COEFFICIENT_RANGE).fixed_decimals(2).text(format!("{}", i + 1)));
        }
    });
    ui.horizontal(|ui| {
        if ui.button("Randomise").on_hover_text("Coefficients as real faces spread them; jaw and eyelids kept").clicked() {
            actions.push(JobAction::RandomExpression.into());
        }
        if ui.button("Reset").clicked() {
            *expression = Expression::default();
        }
    });
    super::sweep_row(ui, state, SweepKind::Expression, actions);
}

/// Both eyelids on one slider while linked, each on its own otherwise.
fn eyelids(ui: &mut Ui, expression: &mut Expression, linked: &mut bool) {
    ui.horizontal(|ui| {
        if *linked {
            let mut both = expression.eyelids[0];
            if ui.add(egui::Slider::new(&mut both, 0.0..=1.0).fixed_decimals(2).text("Eyelids")).changed() {
                expression.eyelids = [both; 2];
            }
        } else {
            ui.add(egui::Slider::new(&mut expression.eyelids[0], 0.0..=1.0).fixed_decimals(2).text("Left"));
            ui.add(egui::Slider::new(&mut expression.eyelids[1], 0.0..=1.0).fixed_decimals(2).text("Right"));
        }
        ui.checkbox(linked, "Linked");
    });
}
