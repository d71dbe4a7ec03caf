//! agentctl: the operator's CLI for the alcor-agent of this node.

use alcor_agentctl::{Cli, run};
use clap::Parser;

fn main() -> std::process::ExitCode {
    run(Cli::parse())
}
