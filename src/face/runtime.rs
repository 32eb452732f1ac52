//! The one ONNX Runtime environment of the process. ort loads the library at run time
//! (`load-dynamic`), so the app builds and starts without it and says how to get it.
//!
//! Where the library is looked for, in order: `ORT_DYLIB_PATH`; next to the executable; the
//! packaged location relative to it (`../lib/arc2face/`, where the .deb puts it); the app's data
//! folder (`…/arc2face-studio/onnxruntime/`).

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

#[cfg(target_os = "windows")]
const LIBRARY_NAMES: [&str; 1] = ["onnxruntime.dll"];
#[cfg(target_os = "macos")]
const LIBRARY_NAMES: [&str; 2] = ["libonnxruntime.1.31.1.dylib", "libonnxruntime.dylib"];
#[cfg(not(any(target_os = "windows", target_os = "macos")))]
const LIBRARY_NAMES: [&str; 2] = ["libonnxruntime.so.1.31.1", "libonnxruntime.so"];

/// The loaded runtime: its environment and where the library came from.
pub struct Runtime {
    pub environment: Environment,
    pub library: PathBuf,
    /// The execution provider sessions ask for first ("CUDA" or "CPU").
    pub provider: &'static str,
}

/// The process's runtime, loaded on first use; the error says how to get the library. A failure
/// is not remembered: once the library is fetched, the next call loads it.
pub fn runtime() -> Result<&'static Runtime, String> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    static LOADING: Mutex<()> = Mutex::new(());
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let _one_at_a_time = LOADING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = load()?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// Where the app puts the library it fetches (`arc2face models download`, the Models window).
pub fn install_dir() -> Option<PathBuf> {
    crate::data_dir().map(|dir| dir.join("onnxruntime"))
}

fn candidates() -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        found.push(PathBuf::from(path));
    }
    let exe_dir = std::env::current_exe().ok().and_then(|exe| exe.parent().map(PathBuf::from));
    let dirs = [exe_dir.clone(), exe_dir.map(|dir| dir.join("../lib/arc2face")), install_dir()];
    for dir in dirs.into_iter().flatten() {
        found.extend(LIBRARY_NAMES.iter().map(|name| dir.join(name)));
    }
    found
}

/// Where the library is, without loading it; `None` when it is nowhere the app looks.
pub fn find_library() -> Option<PathBuf> {
    candidates().into_iter().find(|path| path.is_file())
}

/// What to tell a user who has no library.
pub fn not_found_message() -> String {
    format!(
        "ONNX Runtime {ONNXRUNTIME_VERSION} not found (needed for face analysis): `arc2face models download` or the \
         Models window fetches it into {}; or set ORT_DYLIB_PATH to the library",
        install_dir().map(|d| d.display().to_string()).unwrap_or_else(|| "the app's data folder".into())
    )
}

fn load() -> Result<Runtime, String> {
    let library = find_library().ok_or_else(not_found_message)?;
    let failed = |e: &dyn std::fmt::Display| format!("{}: cannot load ONNX Runtime: {e}", library.display());
    let builder = ort::init_from(&library).map_err(|e| failed(&e))?.with_name("arc2face");
    #[cfg(feature = "cuda")]
    let (builder, provider) = (builder.with_execution_providers([ort::ep::CUDA::default().build()]), "CUDA");
    #[cfg(not(feature = "cuda"))]
    let provider = "CPU";
    let environment = builder.build().map_err(|e| failed(&e))?;
    Ok(Runtime { environment, library, provider })
}
