use clap::Parser;

// The https proxy allocates and frees many small, short-lived objects per request
// (header maps, futures, tasks, buffers): glibc's malloc spent about a fifth of the
// proxy's user CPU on them (free-list consolidation, chunk unlinking).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
