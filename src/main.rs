use clap::Parser;

fn main() {
    let cli = arc2face_studio::cli::Cli::parse();
    if let Err(error) = arc2face_studio::cli::run(cli) {
        // One line: the reason and its causes.
        eprintln!("error: {}", format!("{error:#}").replace('\n', " "));
        std::process::exit(1);
    }
}
