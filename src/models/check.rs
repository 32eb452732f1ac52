//! Is the models folder right? `status` is cheap (names and sizes, the known traps); `verify`
//! opens every file the way its loader would, and compares it with the checksum recorded when
//! it was downloaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::hub::{self, Checksum};
use super::{ALL_FILES, DETECTOR, ENCODER_WEIGHTS, EXPRESSION_ADAPTER, ModelFile, ModelsDir, RECOGNIZER, onnx};

/// The state of one file of the models folder.
#[derive(Debug, Clone, PartialEq)]
pub enum FileState {
    Present {
        size: u64,
    },
    /// Not there; `found_instead` names a known look-alike that is (a nested folder, a wrong model).
    Missing {
        found_instead: Option<String>,
        partial: Option<u64>,
    },
    Wrong {
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct FileStatus {
    pub file: ModelFile,
    pub path: PathBuf,
    pub state: FileState,
}

impl FileStatus {
    /// One line for people: state, size, and what to do.
    pub fn describe(&self) -> String {
        match &self.state {
            FileState::Present { size } => format!("present ({})", human_bytes(*size)),
            FileState::Missing { found_instead: Some(hint), .. } => format!("missing: {hint}"),
            FileState::Missing { partial: Some(bytes), .. } => format!("missing ({} downloaded, resumable)", human_bytes(*bytes)),
            FileState::Missing { .. } => "missing".to_string(),
            FileState::Wrong { reason } => format!("wrong: {reason}"),
        }
    }
}

/// Where a file's partial download is kept until it is complete and verified.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Every file of the folder: present (with its size), missing, or wrong by its size.
pub fn status(models: &ModelsDir) -> Vec<FileStatus> {
    let recorded = Checksums::read(models);
    ALL_FILES.iter().map(|&file| FileStatus { file, path: models.path(file), state: file_state(models, file, &recorded) }).collect()
}

/// One file's state by its name and size alone.
pub fn file_state(models: &ModelsDir, file: ModelFile, recorded: &Checksums) -> FileState {
    let path = models.path(file);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => match recorded.get(file) {
            Some(record) if record.size != meta.len() => FileState::Wrong {
                reason: format!("{} but the download was {}: truncated or replaced", human_bytes(meta.len()), human_bytes(record.size)),
            },
            _ => FileState::Present { size: meta.len() },
        },
        Ok(_) => FileState::Wrong { reason: "not a file".into() },
        Err(_) => FileState::Missing {
            found_instead: look_alike(models, file),
            partial: std::fs::metadata(partial_path(&path)).ok().map(|m| m.len()),
        },
    }
}

/// The traps of the Python setup: insightface's own recognizer in place of Arc2Face's, and the
/// antelopev2 zip unpacked into a folder of the same name.
fn look_alike(models: &ModelsDir, file: ModelFile) -> Option<String> {
    let root = models.root();
    if file == RECOGNIZER {
        let glint = [root.join("glintr100.onnx"), root.join("antelopev2/glintr100.onnx")].into_iter().find(|p| p.is_file());
        if let Some(glint) = glint {
            return Some(format!(
                "found {} instead; that is insightface's recognizer and gives the wrong identity: Arc2Face needs its own arcface.onnx (FoivosPar/Arc2Face)",
                glint.display()
            ));
        }
    }
    nested_copy(models, file).map(|nested| {
        format!(
            "found in a nested folder, {}; move it up to {} (`arc2face models download` does)",
            nested.display(),
            models.path(file).display()
        )
    })
}

/// The file where unpacking insightface's antelopev2.zip inside `antelopev2/` puts it.
pub fn nested_copy(models: &ModelsDir, file: ModelFile) -> Option<PathBuf> {
    let nested = models.root().join("antelopev2").join(file.relative_path);
    (file.relative_path.starts_with("antelopev2/") && nested.is_file()).then_some(nested)
}

/// `status`, then each present file opened as its loader would and checked against its
/// recorded checksum. `on_file` is called before each file is read (hashing takes a while).
pub fn verify(models: &ModelsDir, mut on_file: impl FnMut(&ModelFile)) -> Vec<FileStatus> {
    let recorded = Checksums::read(models);
    let mut statuses = status(models);
    for status in &mut statuses {
        if !matches!(status.state, FileState::Present { .. }) {
            continue;
        }
        on_file(&status.file);
        let checked = check_structure(status.file, &status.path).and_then(|()| match recorded.get(status.file) {
            Some(record) => check_checksum(&status.path, &record.checksum),
            None => Ok(()),
        });
        if let Err(reason) = checked {
            status.state = FileState::Wrong { reason };
        }
    }
    statuses
}

fn check_checksum(path: &Path, expected: &Checksum) -> Result<(), String> {
    let actual = hub::checksum_of(path, expected).map_err(|e| e.to_string())?;
    if &actual == expected {
        Ok(())
    } else {
        Err(format!("checksum {} differs from the one recorded at download, {}: corrupt or replaced", actual.hex(), expected.hex()))
    }
}

/// Opens a file the way its loader will, without loading the weights.
pub fn check_structure(file: ModelFile, path: &Path) -> Result<(), String> {
    let name = file.relative_path;
    if name.ends_with(".json") {
        let value: serde_json::Value = super::read_json(path).map_err(|e| e.to_string())?;
        return if value.is_object() { Ok(()) } else { Err("not a JSON object".into()) };
    }
    if name.ends_with(".safetensors") {
        return check_safetensors(path);
    }
    if file == ENCODER_WEIGHTS {
        let tensors = pickle_tensor_names(path, None)?;
        return match tensors.iter().find(|name| !name.starts_with("text_model.")) {
            None if !tensors.is_empty() => Ok(()),
            None => Err("no tensors in the pickle".into()),
            Some(other) => Err(format!("unexpected tensor {other:?}: expected a CLIPTextModel state dict (text_model.*)")),
        };
    }
    if file == EXPRESSION_ADAPTER {
        for key in ["image_proj", "ip_adapter"] {
            if pickle_tensor_names(path, Some(key))?.is_empty() {
                return Err(format!("no {key} tensors in the pickle"));
            }
        }
        return Ok(());
    }
    if file == DETECTOR || file == RECOGNIZER {
        return check_onnx(file, path);
    }
    Ok(())
}

/// The header must be readable, and the file must end where its last tensor does.
fn check_safetensors(path: &Path) -> Result<(), String> {
    super::weights::SafetensorsFile::open(path).map(|_| ())
}

fn pickle_tensor_names(path: &Path, key: Option<&str>) -> Result<Vec<String>, String> {
    let infos = candle_core::pickle::read_pth_tensor_info(path, false, key)
        .map_err(|e| format!("not a readable torch pickle (truncated?): {}", e.to_string().lines().next().unwrap_or_default()))?;
    Ok(infos.into_iter().map(|info| info.name).collect())
}

/// The detector has one image input and 9 outputs (scores, boxes, keypoints at 3 strides); the
/// recognizer one 112×112 input and one output.
fn check_onnx(file: ModelFile, path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (inputs, outputs) = onnx::graph_signature(&bytes).map_err(|e| format!("not a readable ONNX model ({e})"))?;
    if inputs.len() != 1 {
        return Err(format!("{} inputs; expected 1 image input", inputs.len()));
    }
    if file == DETECTOR {
        return match outputs.len() {
            9 => Ok(()),
            6 => Err("a detector without keypoints (6 outputs); Arc2Face needs scrfd_10g_bnkps with 9".into()),
            n => Err(format!("{n} outputs; expected SCRFD's 9")),
        };
    }
    let dims = &inputs[0].dims;
    if dims.len() != 4 || dims[2..] != [Some(112), Some(112)] || outputs.len() != 1 {
        return Err(format!("input {dims:?} and {} outputs; expected a 112×112 ArcFace recognizer with one output", outputs.len()));
    }
    Ok(())
}

/// The size and checksum of each file as downloaded, kept in `checksums.json` in the folder.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Checksums(BTreeMap<String, Recorded>);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    pub size: u64,
    pub checksum: Checksum,
}

impl Checksums {
    pub const FILE_NAME: &str = "checksums.json";

    /// The recorded checksums; none when the file is missing or unreadable (verification then
    /// relies on the structural checks).
    pub fn read(models: &ModelsDir) -> Self {
        std::fs::read(models.root().join(Self::FILE_NAME)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    }

    pub fn get(&self, file: ModelFile) -> Option<&Recorded> {
        self.0.get(file.relative_path)
    }

    /// Adds one file's record, rewriting the file atomically.
    pub fn record(models: &ModelsDir, file: ModelFile, recorded: Recorded) -> std::io::Result<()> {
        let mut all = Self::read(models);
        all.0.insert(file.relative_path.to_string(), recorded);
        let path = models.root().join(Self::FILE_NAME);
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(&all).map_err(std::io::Error::other)?)?;
        std::fs::rename(&temporary, &path)
    }
}

/// Sizes as people read them: 1.4 GB, 492 MB, 16.9 MB, 612 B.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let decimals = if value < 100.0 { 1 } else { 0 };
    format!("{value:.decimals$} {}", UNITS[unit])
}
