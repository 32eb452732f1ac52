use clap::Parser;

fn main() {
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
