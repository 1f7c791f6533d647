use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = xlb::cli::Cli::parse();
    match xlb::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
