//! A facial expression as the Expression Adapter takes it: 55 FLAME values — 50 expression
//! coefficients, 2 eyelid closures, 3 jaw rotations — with the clamps the adapter was trained
//! with applied whatever the source (RECIPE.md, "Expression Adapter").

use serde::{Deserialize, Serialize};

/// The number of FLAME expression coefficients.
pub const COEFFICIENTS: usize = 50;
/// The length of the adapter's input vector.
pub const VALUES: usize = 55;
/// The jaw's sideways and roll rotations are limited to ±this (radians).
pub const JAW_SIDE_LIMIT: f32 = 0.2;

/// An expression, by its named parts. In JSON, omitted fields are neutral:
/// `{"expression": [c0, c1, …], "eyelids": [a, b], "jaw_open": 0.2, "jaw_sideways": 0.0, "jaw_roll": 0.0}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Expression {
    /// FLAME's expression coefficients, the leading ones first (up to 50; missing ones are 0).
    pub expression: Vec<f32>,
    /// How closed each eyelid is, 0 (open) to 1, in the order of the adapter's vector.
    pub eyelids: [f32; 2],
    /// The jaw's opening rotation (radians, ≥ 0).
    pub jaw_open: f32,
    /// The jaw's sideways rotation (radians, within ±0.2).
    pub jaw_sideways: f32,
    /// The jaw's roll (radians, within ±0.2).
    pub jaw_roll: f32,
}

impl Default for Expression {
    fn default() -> Self {
        Self { expression: vec![0.0; COEFFICIENTS], eyelids: [0.0; 2], jaw_open: 0.0, jaw_sideways: 0.0, jaw_roll: 0.0 }
    }
}

impl Expression {
    /// From the adapter's 55-value layout (a `.npy` file): 50 coefficients, 2 eyelids, 3 jaw.
    pub fn from_values(values: &[f32]) -> Result<Self, String> {
        if values.len() != VALUES {
            return Err(format!("an expression has {VALUES} values (50 expression, 2 eyelids, 3 jaw), got {}", values.len()));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err("the expression holds values that are not finite".into());
        }
        Ok(Self {
            expression: values[..COEFFICIENTS].to_vec(),
            eyelids: [values[50], values[51]],
            jaw_open: values[52],
            jaw_sideways: values[53],
            jaw_roll: values[54],
        })
    }

    /// Refuses what the adapter cannot take: more than 50 coefficients, values not finite.
    pub fn check(&self) -> Result<(), String> {
        if self.expression.len() > COEFFICIENTS {
            return Err(format!("at most {COEFFICIENTS} expression coefficients, got {}", self.expression.len()));
        }
        let all = self.expression.iter().chain(&self.eyelids).chain([&self.jaw_open, &self.jaw_sideways, &self.jaw_roll]);
        if all.into_iter().any(|v| !v.is_finite()) {
            return Err("the expression holds values that are not finite".into());
        }
        Ok(())
    }

    /// The adapter's input: the 55 values with the training clamps applied (eyelids to [0, 1],
    /// jaw opening ≥ 0, jaw sideways and roll to ±0.2).
    pub fn values(&self) -> [f32; VALUES] {
        let mut values = [0.0; VALUES];
        for (value, coefficient) in values.iter_mut().zip(&self.expression) {
            *value = *coefficient;
        }
        values[50] = self.eyelids[0].clamp(0.0, 1.0);
        values[51] = self.eyelids[1].clamp(0.0, 1.0);
        values[52] = self.jaw_open.max(0.0);
        values[53] = self.jaw_sideways.clamp(-JAW_SIDE_LIMIT, JAW_SIDE_LIMIT);
        values[54] = self.jaw_roll.clamp(-JAW_SIDE_LIMIT, JAW_SIDE_LIMIT);
        values
    }

    /// This expression with the coefficients drawn anew (from `seed`) as real faces spread them:
    /// normal, with a wider spread for the leading ones, within ±3; jaw and eyelids kept.
    pub fn randomized(&self, seed: u64) -> Expression {
        let normals = crate::diffusion::noise::TorchGenerator::new(seed).randn(COEFFICIENTS).unwrap_or_default();
        let expression = normals.iter().enumerate().map(|(i, n)| (n * if i < 10 { 1.0 } else { 0.5 }).clamp(-3.0, 3.0)).collect();
        Expression { expression, ..self.clone() }
    }

    /// The expression `t` of the way from this one to `other` (0 is this one, 1 the other).
    pub fn lerp(&self, other: &Expression, t: f32) -> Expression {
        let (a, b) = (self.values(), other.values());
        let mut mixed = [0.0; VALUES];
        for (m, (x, y)) in mixed.iter_mut().zip(a.iter().zip(&b)) {
            *m = x + (y - x) * t;
        }
        Expression::from_values(&mixed).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_training_clamps_apply_whatever_the_source() {
        let mut values = [0.5f32; VALUES];
        (values[50], values[51], values[52], values[53], values[54]) = (1.5, -0.2, -0.3, 0.5, -0.9);
        let clamped = Expression::from_values(&values).unwrap().values();
        assert_eq!(&clamped[50..], &[1.0, 0.0, 0.0, 0.2, -0.2]);
        assert!(clamped[..50].iter().all(|&v| v == 0.5));
        let named: Expression = serde_json::from_str(r#"{"jaw_open": 0.25, "expression": [1.0, -2.0]}"#).unwrap();
        assert_eq!(&named.values()[..3], &[1.0, -2.0, 0.0]);
        assert_eq!(named.values()[52], 0.25);
        assert!(serde_json::from_str::<Expression>(r#"{"jaw": 1}"#).is_err(), "unknown names are refused");
    }
}
