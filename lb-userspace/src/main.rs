use clap::Parser;

// The https proxy allocates and frees many small, short-lived objects per request
// (header maps, futures, tasks, buffers): glibc's malloc spent about a fifth of the
// proxy's user CPU on them (free-list consolidation, chunk unlinking).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = match xlb::cli::Cli::try_parse() {
        Ok(cli) => cli,
        // A usage error under `--json` is a JSON error like any other (exit 2).
        Err(e) if e.use_stderr() && std::env::args().any(|a| a == "--json") => {
            let msg = e.to_string();
            let e = xlb::cli::exit::fail(xlb::cli::exit::Exit::Usage, msg.trim_end());
            return std::process::ExitCode::from(xlb::cli::exit::report(&e, true));
        }
        Err(e) => e.exit(),
    };
    if !cli.command.serves() {
        // A client writing into a closed pipe (`xlb fw list | head -1`) ends quietly,
        // as other tools do, instead of panicking on the write.
        // SAFETY: restoring the default disposition of SIGPIPE before any thread runs.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        // Any other failed write of the output (a full disk, /dev/full) is an error
        // said in one line and exit status 1, not a panic's report and 101.
        std::panic::set_hook(Box::new(|info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            // std's print macros, and clap_complete's writer, on a failed write.
            if msg.starts_with("failed printing to std") || msg.starts_with("failed to write") {
                eprintln!("xlb: cannot write the output: {msg}");
                std::process::exit(1);
            }
            eprintln!("{info}");
        }));
    }
    let json = cli.json;
    match xlb::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => std::process::ExitCode::from(xlb::cli::exit::report(&e, json)),
    }
}
