//! The Arc2Face Reference Adapter, which keeps a photo's look (background, lighting, clothes)
//! in the images made from it. Once per job the UNet runs over the photo's latents at timestep 0
//! with its LoRA off, and every transformer block records what its self-attention saw: the
//! bank. While denoising, each self-attention also attends to its bank entry (keys and values
//! from both, queries from the image; under guidance only the conditional half), and the
//! adapter's LoRA counts at its scale. The LoRA stays beside the UNet's weights (see
//! [`super::lora::LoraSidePath`]), so that one UNet serves both passes.

use std::cell::RefCell;

use candle_core::{Result, Tensor};

/// What each transformer block's self-attention saw in a reference pass, one row, by block in
/// execution order (down blocks, mid block, up blocks).
pub struct ReferenceBank {
    entries: Vec<Tensor>,
}

impl ReferenceBank {
    /// A bank of these entries `(1, tokens, channels)`, by block in execution order.
    pub fn from_entries(entries: Vec<Tensor>) -> Self {
        Self { entries }
    }

    /// Block `index`'s entry `(rows, tokens, channels)`: the one recorded row for each row of
    /// the batch (the reference image is the same for every row).
    pub fn entry(&self, index: usize, rows: usize) -> Result<Tensor> {
        let Some(entry) = self.entries.get(index) else {
            candle_core::bail!("the reference bank has {} entries, block {index} asks for one", self.entries.len());
        };
        entry.repeat((rows, 1, 1))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Gathers a bank during a reference pass.
pub struct BankRecorder {
    entries: RefCell<Vec<Option<Tensor>>>,
}

impl BankRecorder {
    pub fn new(blocks: usize) -> Self {
        Self { entries: RefCell::new(vec![None; blocks]) }
    }

    /// Block `index` saw `normed` `(1, tokens, channels)`.
    pub fn record(&self, index: usize, normed: &Tensor) {
        if let Some(slot) = self.entries.borrow_mut().get_mut(index) {
            *slot = Some(normed.clone());
        }
    }

    /// The bank, once every block has recorded its entry.
    pub fn finish(self) -> Result<ReferenceBank> {
        let entries = self.entries.into_inner();
        let (recorded, blocks) = (entries.iter().filter(|e| e.is_some()).count(), entries.len());
        match entries.into_iter().collect::<Option<Vec<_>>>() {
            Some(entries) => Ok(ReferenceBank { entries }),
            None => candle_core::bail!("the reference pass reached {recorded} of {blocks} transformer blocks"),
        }
    }
}

/// The Reference Adapter's part in one UNet call.
#[derive(Clone, Copy)]
pub enum ReferenceCall<'a> {
    /// The reference pass: each block records its self-attention's input; LoRA side paths off.
    Record(&'a BankRecorder),
    /// Denoising: each block's self-attention also attends to its bank entry (the conditional
    /// half only when `guided`), and LoRA side paths count at `lora_scale`.
    Attend { bank: &'a ReferenceBank, lora_scale: f64, guided: bool },
}

impl ReferenceCall<'_> {
    /// How much side-path LoRAs count in this call.
    pub fn lora_strength(&self) -> f64 {
        match self {
            ReferenceCall::Record(_) => 0.0,
            ReferenceCall::Attend { lora_scale, .. } => *lora_scale,
        }
    }
}
