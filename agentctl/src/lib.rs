//! `agentctl`: the operator's view of the agent on this node, read over the
//! agent's root-only control socket. A crate of its own, apart from the
//! agent's: it builds without the eBPF toolchain.

mod client;
mod error;
mod table;
mod view;

use std::{
    io::{self, Write},
    net::Ipv4Addr,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use alcor_proto::control::{
    GetCountersRequest, GetDhcpCountersRequest, GetDpTunnelsRequest, GetGoalStateRequest,
    GetStatusRequest, ListRequest, TraceProtocol, TraceRequest,
};
use alcor_types::{DEFAULT_CONTROL_SOCKET, Mac};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use self::{error::Error, view::Human};

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
        default_value = DEFAULT_CONTROL_SOCKET
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
    /// The eBPF datapath as the kernel holds it: ports, endpoints, routes,
    /// counters, neighbors on other hosts, tunnels
    #[command(subcommand)]
    Dp(DpCommand),
    /// Runs a packet a port's VM would send through the real datapath
    /// program (nothing is sent, nothing counted) and explains what happens
    /// to it. Exits 0 whatever the verdict.
    #[command(after_help = TRACE_EXAMPLES)]
    Trace(TraceArgs),
}

const TRACE_EXAMPLES: &str = "Examples:
  agentctl trace web-1 --dst 10.0.2.20                 ping across the router
  agentctl trace web-1 --dst 10.0.1.30                 to a VM on another host: the outer headers
  agentctl trace web-1 --dst 10.0.1.1 --proto arp      ARP for the gateway
  agentctl trace web-1 --dst 10.0.1.20 --proto tcp --dport 443 --src 10.9.9.9
                                                       would a forged source pass?
  agentctl trace web-1 --dst 10.0.1.30 --size 1500     a VM at MTU 1500: ICMP back?";

#[derive(Debug, Subcommand)]
enum DpCommand {
    /// Ports programmed in the datapath: VNI, MAC, address and subnet, how
    /// frames reach them, and what they may send from
    Ports,
    /// Addresses known in each VPC (ARP is answered and IPv4 delivered
    /// only for these) and where they live
    Endpoints,
    /// Pairs of subnets routed to each other: router and gateway
    Routes,
    /// Traffic of ready ports (encapsulated to and decapsulated from other
    /// hosts too) and their drops by reason (the table leaves out reasons
    /// that never happened)
    Counters {
        /// Only this port
        port_id: Option<String>,
    },
    /// Addresses that live on other hosts (reached through VXLAN): VNI,
    /// address, MAC and host
    Neighbors,
    /// This host's tunnel endpoint (underlay device, address, MTU, XDP
    /// mode, VXLAN device), the other hosts and how frames reach them, and
    /// the host's tunnel traffic and underlay drops by reason
    Tunnels,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    /// ICMP echo request (ping)
    Icmp,
    /// TCP SYN (needs --dport)
    Tcp,
    /// UDP datagram (needs --dport)
    Udp,
    /// ARP request for the destination
    Arp,
}

#[derive(Debug, Args)]
struct TraceArgs {
    /// The port whose VM sends the packet
    port_id: String,
    /// Destination IPv4 address
    #[arg(long, value_name = "IP")]
    dst: Ipv4Addr,
    /// What to send
    #[arg(long, value_enum, default_value_t = Proto::Icmp)]
    proto: Proto,
    /// Source address [default: the port's first fixed IP]
    #[arg(long, value_name = "IP")]
    src: Option<Ipv4Addr>,
    /// Source MAC [default: the port's MAC]
    #[arg(long, value_name = "MAC")]
    src_mac: Option<Mac>,
    /// Destination MAC [default: what the VM's ARP would resolve: the
    /// destination's in its subnet, the gateway's outside it]
    #[arg(long, value_name = "MAC")]
    dst_mac: Option<Mac>,
    /// TCP or UDP destination port
    #[arg(
        long,
        value_name = "N",
        required_if_eq_any([("proto", "tcp"), ("proto", "udp")]),
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    dport: Option<u16>,
    /// TCP or UDP source port [default: 49152]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    sport: Option<u16>,
    /// IP time to live [default: 64]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    ttl: Option<u8>,
    /// The IPv4 packet's length in bytes, headers included (the data is
    /// padded): e.g. 1500 to see what a VM at MTU 1500 meets [default: the
    /// protocol's usual]
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(28..))]
    size: Option<u16>,
    /// Send with the "don't fragment" bit clear [default: set, as Linux does]
    #[arg(long)]
    fragmentable: bool,
    /// Also print the frame sent and the frame out of the program as hex
    #[arg(long)]
    hex: bool,
}

impl TraceArgs {
    fn request(&self) -> TraceRequest {
        let protocol = match self.proto {
            Proto::Icmp => TraceProtocol::Icmp,
            Proto::Tcp => TraceProtocol::Tcp,
            Proto::Udp => TraceProtocol::Udp,
            Proto::Arp => TraceProtocol::Arp,
        };
        let text = |value: Option<String>| value.unwrap_or_default();
        TraceRequest {
            port_id: self.port_id.clone(),
            protocol: protocol as i32,
            dst_ip: self.dst.to_string(),
            src_ip: text(self.src.map(|ip| ip.to_string())),
            src_mac: text(self.src_mac.map(|mac| mac.to_string())),
            dst_mac: text(self.dst_mac.map(|mac| mac.to_string())),
            dst_port: self.dport.map_or(0, u32::from),
            src_port: self.sport.map_or(0, u32::from),
            ttl: self.ttl.map_or(0, u32::from),
            length: self.size.map_or(0, u32::from),
            fragmentable: self.fragmentable,
        }
    }
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
            format_sorted(cli, reply)
        }
        Command::Dp(DpCommand::Ports) => format(cli, client.list_dp_ports(ListRequest {}).await),
        Command::Dp(DpCommand::Endpoints) => {
            format(cli, client.list_dp_endpoints(ListRequest {}).await)
        }
        Command::Dp(DpCommand::Routes) => format(cli, client.list_dp_routes(ListRequest {}).await),
        Command::Dp(DpCommand::Counters { port_id }) => {
            let request = GetCountersRequest {
                port_id: port_id.clone().unwrap_or_default(),
            };
            format_sorted(cli, client.get_dp_counters(request).await)
        }
        Command::Dp(DpCommand::Neighbors) => {
            format(cli, client.list_dp_neighbors(ListRequest {}).await)
        }
        Command::Dp(DpCommand::Tunnels) => {
            format_sorted(cli, client.get_dp_tunnels(GetDpTunnelsRequest {}).await)
        }
        Command::Trace(args) => {
            let reply = client.trace(args.request()).await;
            if cli.json {
                format(cli, reply)
            } else {
                let reply = reply
                    .map_err(|status| Error::from_status(cli.socket.clone(), status))?
                    .into_inner();
                Ok(view::trace_text(&reply, args.hex))
            }
        }
    }
}

/// As [`format`], for replies with maps (counters by name): through a
/// `serde_json::Value`, whose objects keep their keys sorted, the JSON is
/// stable.
fn format_sorted<T: Serialize + Human>(
    cli: &Cli,
    reply: Result<tonic::Response<T>, tonic::Status>,
) -> Result<String, Error> {
    if !cli.json {
        return format(cli, reply);
    }
    let reply = reply
        .map_err(|status| Error::from_status(cli.socket.clone(), status))?
        .into_inner();
    let value = serde_json::to_value(&reply)?;
    Ok(serde_json::to_string_pretty(&value)? + "\n")
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
