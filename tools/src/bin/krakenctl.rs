//! `krakenctl`: inspect and operate a kraken cluster over QUIC (see the `kraken_tools`
//! crate docs for the commands and exit codes).

use std::process::ExitCode;

use clap::Parser;
use kraken_tools::{Cli, exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("krakenctl: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let result = runtime.block_on(kraken_tools::run(cli));
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("krakenctl: {}", e.one_line());
            ExitCode::from(e.exit_code())
        }
    }
}
