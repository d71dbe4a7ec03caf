//! `agentctl`: the operator's view of the agent on this node, read over the
//! agent's root-only control socket.

mod client;
mod error;
mod table;
mod view;

use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use alcor_proto::control::{
    GetCountersRequest, GetDhcpCountersRequest, GetGoalStateRequest, GetStatusRequest, ListRequest,
};
use clap::{Parser, Subcommand};
use serde::Serialize;

use self::{error::Error, view::Human};
use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "agentctl",
    version,
    about = "Shows what the alcor-agent of this node holds and does (needs root)"
)]
pub struct Cli {
    /// The agent's control socket
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "ALCOR_AGENT_SOCKET",
        default_value = Config::DEFAULT_CONTROL_SOCKET
    )]
    socket: PathBuf,

    /// Print the agent's reply as JSON instead of a table
    #[arg(long, global = true)]
    json: bool,

    /// Give up when the agent has not answered after this many seconds
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Version, configuration and resource counts of the agent
    Status,
    /// Ports of this host: phase, device, MAC and addresses
    Ports,
    /// VPCs the agent serves
    Vpcs,
    /// Subnets the agent serves
    Subnets,
    /// Ports of other hosts that VMs here can reach
    Neighbors,
    /// The desired state the agent holds: a summary, or in full with --json
    Goalstate,
    /// Datapath counters of ready ports (RX: sent by the VM, TX: sent to the VM)
    Counters {
        /// Only this port
        port_id: Option<String>,
    },
    /// DHCP leases of the VMs on this host: port, MAC, address, state, expiry
    Leases,
    /// DHCP responder counters: messages received and sent by type, drops by
    /// reason (the table leaves out reasons that never happened)
    Dhcp,
}

/// Runs one command: 0 when it worked, 1 when it did not (the reason is
/// printed on stderr).
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("agentctl: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = Duration::from_secs(cli.timeout);
    let output = runtime.block_on(async {
        tokio::time::timeout(timeout, execute(&cli))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    socket: cli.socket.clone(),
                    timeout,
                })
            })
    });
    match output.and_then(|text| print(&text).map_err(Error::Output)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("agentctl: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Asks the agent and formats its reply.
async fn execute(cli: &Cli) -> Result<String, Error> {
    let mut client = client::connect(&cli.socket).await?;
    match &cli.command {
        Command::Status => format(cli, client.get_status(GetStatusRequest {}).await),
        Command::Ports => format(cli, client.list_ports(ListRequest {}).await),
        Command::Vpcs => format(cli, client.list_vpcs(ListRequest {}).await),
        Command::Subnets => format(cli, client.list_subnets(ListRequest {}).await),
        Command::Neighbors => format(cli, client.list_neighbors(ListRequest {}).await),
        Command::Goalstate => format(cli, client.get_goal_state(GetGoalStateRequest {}).await),
        Command::Counters { port_id } => {
            let request = GetCountersRequest {
                port_id: port_id.clone().unwrap_or_default(),
            };
            format(cli, client.get_counters(request).await)
        }
        Command::Leases => format(cli, client.list_leases(ListRequest {}).await),
        Command::Dhcp => {
            let reply = client.get_dhcp_counters(GetDhcpCountersRequest {}).await;
            if cli.json {
                // The counters are maps: through a `serde_json::Value`, whose
                // objects keep their keys sorted, the output is stable.
                let reply = reply
                    .map_err(|status| Error::from_status(cli.socket.clone(), status))?
                    .into_inner();
                let value = serde_json::to_value(&reply)?;
                Ok(serde_json::to_string_pretty(&value)? + "\n")
            } else {
                format(cli, reply)
            }
        }
    }
}

/// The reply as a table, or as pretty JSON with the message's field names.
fn format<T: Serialize + Human>(
    cli: &Cli,
    reply: Result<tonic::Response<T>, tonic::Status>,
) -> Result<String, Error> {
    let reply = reply
        .map_err(|status| Error::from_status(cli.socket.clone(), status))?
        .into_inner();
    if cli.json {
        Ok(serde_json::to_string_pretty(&reply)? + "\n")
    } else {
        Ok(reply.human())
    }
}

/// Writes to stdout; a reader that went away (`agentctl ports | head`) is
/// not an error.
fn print(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
}
