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
/// (`arc2face-cuda`, made by scripts/build-cuda) and this machine has an NVIDIA driver: a
/// binary with CUDA links the CUDA libraries and cannot even start without them, so the package
/// carries both and picks here. `ARC2FACE_CPU=1` stays on the CPU build.
fn hand_over_to_cuda_build() {
    if cfg!(feature = "cuda") || std::env::var_os("ARC2FACE_CPU").is_some() {
        return;
    }
    let Some(cuda_build) = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join("arc2face-cuda"))) else { return };
    // SAFETY: loading the NVIDIA driver library runs only its initialisers, as any CUDA
    // program does; it is unloaded again at once.
    let driver = unsafe { libloading::Library::new("libcuda.so.1") };
    if !cuda_build.is_file() || driver.is_err() {
        return;
    }
    // It must start: the CUDA libraries it needs may be missing on this machine.
    let starts = std::process::Command::new(&cuda_build).arg("--version").output().is_ok_and(|o| o.status.success());
    if !starts {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let error = std::process::Command::new(&cuda_build).args(std::env::args_os().skip(1)).exec();
        eprintln!("note: the CUDA build could not be started ({error}); running on the CPU");
    }
}
