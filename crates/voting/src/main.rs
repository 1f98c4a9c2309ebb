//! `voting`: parse the command line, set up logging, run one subcommand until it is done or a
//! signal stops it. Each subcommand's wiring lives in its module.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use voting::cli::Cli;
use voting_core::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let stop = CancellationToken::new();
    let result = shutdown::on_signal(stop.clone(), cli.command.run(stop.clone())).await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "exiting");
    }
    result
}
