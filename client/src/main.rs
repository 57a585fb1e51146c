//! `tributary`: the command-line client — topics, produce, consume, bench.
//!
//! Every failure ends as one line `error: <message>` on stderr and exit
//! status 1; the messages come from the library (and through it from the
//! broker) and already say what to do.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = cli::Cli::parse();
    init_tracing();
    if let Err(e) = cli::run(args).await {
        eprintln!("error: {}", tributary_client::error::one_line(&format!("{e:#}")));
        std::process::exit(1);
    }
}

/// Library warnings (say, a failed acks=0 request) go to stderr; `RUST_LOG`
/// turns on more.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
