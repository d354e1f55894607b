//! `airlock python`: make the managed Python environment ahead of time.

use std::process::ExitCode;

use super::PythonArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    python: PythonArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let interpreter = args.python.interpreter().await?;
    println!("{}", interpreter.display());
    Ok(ExitCode::SUCCESS)
}
