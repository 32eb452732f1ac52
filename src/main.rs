use clap::Parser;

fn main() {
    hand_over_to_cuda_build();
    let cli = match arc2face_studio::cli::Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go out as clap writes them; a usage error as one line, like any error.
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            let text = error.render().to_string();
            eprintln!("{} (--help lists the options)", text.lines().next().unwrap_or("error: bad command line"));
            std::process::exit(2);
        }
    };
    if let Err(error) = arc2face_studio::cli::run(cli) {
        // One line: the reason and its causes.
        eprintln!("error: {}", format!("{error:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

/// The CPU build runs the CUDA build instead when one is installed beside it
/// (`arc2face-cuda`, made by scripts/build-cuda; the arc2face-studio-cuda package) and this
/// machine has an NVIDIA driver: a binary with CUDA links the CUDA libraries and cannot even
/// start without them, so there are two binaries and the choice is made here. The CUDA
/// libraries are looked for in `../lib/arc2face` first, where that package puts them.
/// `ARC2FACE_CPU=1` stays on the CPU build.
fn hand_over_to_cuda_build() {
    if cfg!(feature = "cuda") || std::env::var_os("ARC2FACE_CPU").is_some() {
        return;
    }
    let Some(exe_dir) = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.to_path_buf())) else { return };
    let cuda_build = exe_dir.join("arc2face-cuda");
    // SAFETY: loading the NVIDIA driver library runs only its initialisers, as any CUDA
    // program does; it is unloaded again at once.
    let driver = unsafe { libloading::Library::new("libcuda.so.1") };
    if !cuda_build.is_file() || driver.is_err() {
        return;
    }
    let mut library_path = vec![exe_dir.join("../lib/arc2face")];
    library_path.extend(std::env::var_os("LD_LIBRARY_PATH").iter().flat_map(std::env::split_paths));
    let Ok(library_path) = std::env::join_paths(library_path) else { return };
    let command = || {
        let mut command = std::process::Command::new(&cuda_build);
        command.env("LD_LIBRARY_PATH", &library_path);
        command
    };
    // It must start: the CUDA libraries it needs may be missing on this machine.
    if !command().arg("--version").output().is_ok_and(|o| o.status.success()) {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let error = command().args(std::env::args_os().skip(1)).exec();
        eprintln!("note: the CUDA build could not be started ({error}); running on the CPU");
    }
}
