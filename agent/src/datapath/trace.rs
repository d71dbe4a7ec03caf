//! Running a frame through the real `port_from_vm` program (or
//! `underlay_in`) with BPF_PROG_TEST_RUN, to see what it would do with it.
//!
//! The test run's context names the port device (so the program finds the
//! port's records) and carries the trace mark in `skb->mark`; on seeing it,
//! the program writes its decision into the skb's control block, which the
//! kernel hands back in the output context, and counts nothing. Nothing is
//! sent: a redirect decided in a test run goes nowhere.

use std::{fmt, net::Ipv4Addr};

use alcor_ebpf_common::{DropReason, NextHop, Redirect, UnderlayDropReason, trace};
use std::os::fd::AsFd;

use aya::programs::{ProgramError, ProgramFd};

use super::{DatapathError, DatapathReader, bpf, entries::from_net_u32};

/// What `port_from_vm` does with a frame the VM sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Up to the host stack.
    Pass(PassReason),
    /// Dropped, and counted under this reason.
    Drop(DropReason),
    /// Delivered to a local port.
    Redirect {
        ifindex: u32,
        redirect: Redirect,
        /// Routed between subnets (MACs rewritten, TTL decremented).
        routed: bool,
    },
    /// Answered in place: the output frame goes back out of the same port.
    Answered(Answer),
    /// To an endpoint on another host: encapsulated in VXLAN (the output
    /// frame shows the outer headers) and sent out of the underlay device.
    Encapsulated {
        /// The remote host's underlay address.
        host: Ipv4Addr,
        vni: u32,
        /// The underlay device.
        underlay: u32,
        next_hop: NextHop,
        /// Routed between subnets first (inner MACs rewritten, TTL - 1).
        routed: bool,
    },
    /// To an endpoint on another host, too big for the underlay once
    /// encapsulated and with DF clear: handed to the agent's VXLAN device
    /// with a tunnel key, whose kernel path encapsulates it and fragments
    /// the outer packet (the output frame is the inner one).
    Fragmented {
        host: Ipv4Addr,
        /// The VXLAN device.
        device: u32,
        routed: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    /// The port has no record in the maps (not programmed yet): everything
    /// passes untouched.
    NotProgrammed,
    /// DHCP, for the agent's responder.
    Dhcp,
}

// The words of a verdict's parts, shared by its `Display` (logs, tests)
// and the control socket's explanation (`agentctl trace`).

impl PassReason {
    /// Where the frame goes, and why.
    pub fn words(self) -> &'static str {
        match self {
            Self::NotProgrammed => {
                "to the host stack, unfiltered: the port has no record in the datapath yet (not \
                 programmed)"
            }
            Self::Dhcp => "to the host stack: DHCP, for the agent's DHCP responder",
        }
    }
}

/// How a frame reaches a local port's VM.
pub fn delivery_words(redirect: Redirect) -> &'static str {
    match redirect {
        Redirect::Peer => "into its VM's namespace (redirect to peer)",
        Redirect::Egress => "out of its device to the hypervisor (redirect to egress)",
    }
}

/// Who writes an encapsulated frame's outer MACs.
pub fn next_hop_words(next_hop: NextHop) -> &'static str {
    match next_hop {
        NextHop::Neighbor => {
            "the kernel resolves the next hop and its MAC (route and neighbour table)"
        }
        NextHop::Mac => "outer MACs written by the datapath",
        NextHop::VxlanDevice => "the kernel's VXLAN device writes the outer headers",
    }
}

/// What routing does to a frame, before it is delivered or encapsulated.
const ROUTED_WORDS: &str = "routed to another subnet (source MAC = that subnet's gateway, TTL - 1)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// ARP reply for the gateway or a known address.
    Arp,
    /// ICMP echo reply from the gateway.
    EchoReply,
    /// ICMP time exceeded from the gateway (the original is dropped and
    /// counted as `ttl-exceeded`).
    TimeExceeded,
    /// ICMP fragmentation needed from the gateway, with the port MTU (the
    /// original is dropped and counted as `frag-needed`).
    FragNeeded,
}

/// The outcome of [`Datapath::trace`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceResult {
    pub verdict: Verdict,
    /// The frame as the program left it: rewritten for a routed delivery,
    /// the answer for an answer, else as it came.
    pub output: Vec<u8>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pass(reason) => write!(f, "passed {}", reason.words()),
            Self::Drop(reason) => {
                write!(f, "dropped ({}): {}", reason.name(), reason.description())
            }
            Self::Redirect {
                ifindex,
                redirect,
                routed,
            } => {
                let how = delivery_words(*redirect);
                if *routed {
                    write!(f, "{ROUTED_WORDS} and delivered to port {ifindex}, {how}")
                } else {
                    write!(f, "delivered in the same subnet to port {ifindex}, {how}")
                }
            }
            Self::Answered(Answer::Arp) => write!(f, "answered in place: ARP reply"),
            Self::Answered(Answer::EchoReply) => {
                write!(f, "answered in place: ICMP echo reply from the gateway")
            }
            Self::Answered(Answer::TimeExceeded) => write!(
                f,
                "TTL exceeded: answered with ICMP time exceeded from the gateway, original \
                 dropped"
            ),
            Self::Answered(Answer::FragNeeded) => write!(
                f,
                "too big for the port MTU with DF set: answered with ICMP fragmentation needed \
                 from the gateway, original dropped"
            ),
            Self::Fragmented {
                host,
                device,
                routed,
            } => {
                let routed = if *routed { "routed, then " } else { "" };
                write!(
                    f,
                    "too big for the underlay with DF clear: {routed}handed to VXLAN device \
                     {device} for host {host}, which fragments the outer packet"
                )
            }
            Self::Encapsulated {
                host,
                vni,
                underlay,
                next_hop,
                routed,
            } => {
                let routed = if *routed {
                    format!("{ROUTED_WORDS}, then ")
                } else {
                    String::new()
                };
                write!(
                    f,
                    "{routed}encapsulated in VXLAN to host {host}, VNI {vni}, out of underlay \
                     device {underlay} ({})",
                    next_hop_words(*next_hop)
                )
            }
        }
    }
}

/// What `underlay_in` does with a frame from the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderlayVerdict {
    /// Not VXLAN for this host: to the host stack, untouched.
    Pass,
    /// A GSO packet for tap `ifindex`: to the host stack, for the agent's
    /// VXLAN device to decapsulate (it clears the tunnel GSO marks a tap
    /// refuses) and `vxlan_in` to deliver.
    ToVxlanDevice {
        ifindex: u32,
        vni: u32,
    },
    Drop(UnderlayDropReason),
    /// Decapsulated and delivered to a local port.
    Deliver {
        ifindex: u32,
        redirect: Redirect,
        vni: u32,
    },
}

impl fmt::Display for UnderlayVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pass => write!(f, "passed to the host stack: not VXLAN for this host"),
            Self::ToVxlanDevice { ifindex, vni } => write!(
                f,
                "a GSO packet (VNI {vni}) for tap port {ifindex}: passed to the VXLAN device to \
                 decapsulate, so that the tap takes it whole"
            ),
            Self::Drop(reason) => {
                write!(f, "dropped ({}): {}", reason.name(), reason.description())
            }
            Self::Deliver {
                ifindex,
                redirect,
                vni,
            } => {
                write!(
                    f,
                    "decapsulated (VNI {vni}) and delivered to port {ifindex}, {}",
                    delivery_words(*redirect)
                )
            }
        }
    }
}

/// The outcome of [`Datapath::trace_underlay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayTrace {
    pub verdict: UnderlayVerdict,
    /// The frame as the program left it: the inner frame if delivered.
    pub output: Vec<u8>,
}

/// `struct __sk_buff` offsets (uapi/linux/bpf.h) of what a trace sets and
/// reads.
const SKB_MARK: usize = 8;
const SKB_IFINDEX: usize = 40;
const SKB_CB: usize = 48;
/// Larger than `struct __sk_buff` (192 bytes on 6.18); the kernel copies
/// what it has and wants the rest of the input zero.
const SKB_CTX_LEN: usize = 256;
/// The most a program grows a frame (an ICMP error's new headers), with
/// room to spare.
const GROWTH: usize = 256;

fn put_u32(buf: &mut [u8], offset: usize, value: u32) {
    buf[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}

fn get_u32(buf: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(buf[offset..offset + 4].try_into().expect("4 bytes"))
}

/// A test run of a tc program with the trace mark, on device `ifindex`:
/// its return code, the control block and the frame it left.
struct TcRun {
    return_value: u32,
    cb: [u32; 5],
    output: Vec<u8>,
}

impl DatapathReader {
    fn trace_run(
        &self,
        program: &ProgramFd,
        ifindex: u32,
        frame: &[u8],
    ) -> Result<TcRun, DatapathError> {
        if frame.len() < 14 {
            return Err(DatapathError::InvalidFrame(format!(
                "{} bytes is shorter than an Ethernet header",
                frame.len()
            )));
        }
        let mut ctx_in = [0u8; SKB_CTX_LEN];
        put_u32(&mut ctx_in, SKB_MARK, trace::MARK);
        put_u32(&mut ctx_in, SKB_IFINDEX, ifindex);
        let mut ctx_out = [0u8; SKB_CTX_LEN];
        let mut output = vec![0u8; frame.len() + GROWTH];
        let result = bpf::test_run(program.as_fd(), frame, &mut output, &ctx_in, &mut ctx_out)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ENODEV) => DatapathError::NoSuchDevice(ifindex),
                Some(libc::EINVAL) => DatapathError::InvalidFrame(
                    "the kernel refuses to run it (a header too short for its EtherType?)".into(),
                ),
                _ => DatapathError::Trace {
                    ifindex,
                    source: Box::new(ProgramError::IOError(source)),
                },
            })?;
        output.truncate(result.data_size_out as usize);
        Ok(TcRun {
            return_value: result.return_value,
            cb: std::array::from_fn(|i| get_u32(&ctx_out, SKB_CB + 4 * i)),
            output,
        })
    }

    /// Runs `frame` (Ethernet, as it would arrive on the underlay device
    /// `ifindex`) through `underlay_in` with the maps as they are, and
    /// reports what the program decided. Nothing is delivered and nothing
    /// counted.
    pub fn trace_underlay(
        &self,
        ifindex: u32,
        frame: &[u8],
    ) -> Result<UnderlayTrace, DatapathError> {
        let run = self.trace_run(&self.underlay_in, ifindex, frame)?;
        let verdict =
            underlay_verdict(run.cb, run.return_value).ok_or_else(|| DatapathError::Trace {
                ifindex,
                source: Box::new(ProgramError::IOError(std::io::Error::other(format!(
                    "the program returned {} without a readable decision ({:?})",
                    run.return_value, run.cb
                )))),
            })?;
        Ok(UnderlayTrace {
            verdict,
            output: run.output,
        })
    }

    /// Runs `frame` (Ethernet, as the VM would send it) through the
    /// `port_from_vm` program as if it arrived from the VM of port device
    /// `ifindex`, with the maps as they are, and reports what the program
    /// decided. Nothing is sent and nothing counted. The device is looked up
    /// in the calling thread's network namespace.
    pub fn trace(&self, ifindex: u32, frame: &[u8]) -> Result<TraceResult, DatapathError> {
        let TcRun {
            return_value,
            cb,
            output,
        } = self.trace_run(&self.port_from_vm, ifindex, frame)?;
        let verdict = verdict(cb, return_value, &output).ok_or_else(|| DatapathError::Trace {
            ifindex,
            source: Box::new(ProgramError::IOError(std::io::Error::other(format!(
                "the program returned {return_value} without a readable decision ({cb:?})"
            )))),
        })?;
        Ok(TraceResult { verdict, output })
    }
}

/// The VNI in the VXLAN header of an encapsulated frame (outer Ethernet,
/// IPv4 without options, UDP, VXLAN).
fn vxlan_vni(frame: &[u8]) -> Option<u32> {
    let vni = frame.get(46..49)?;
    Some(u32::from_be_bytes([0, vni[0], vni[1], vni[2]]))
}

/// The verdict `underlay_in`'s trace record and return code stand for.
fn underlay_verdict(cb: [u32; 5], return_value: u32) -> Option<UnderlayVerdict> {
    let [action, detail, target, extra, magic] = cb;
    if magic != trace::MAGIC {
        return None;
    }
    let (verdict, expected) = match action {
        trace::ACTION_PASS if detail == trace::PASS_VXLAN_DEVICE => (
            UnderlayVerdict::ToVxlanDevice {
                ifindex: target,
                vni: extra,
            },
            0,
        ),
        trace::ACTION_PASS => (UnderlayVerdict::Pass, 0),
        trace::ACTION_DROP => (
            UnderlayVerdict::Drop(UnderlayDropReason::from_u32(detail)?),
            2,
        ),
        trace::ACTION_REDIRECT => (
            UnderlayVerdict::Deliver {
                ifindex: target,
                redirect: Redirect::from_u8(u8::try_from(detail).ok()?)?,
                vni: extra,
            },
            7,
        ),
        _ => return None,
    };
    (return_value == expected).then_some(verdict)
}

/// The verdict a program's trace record (`cb`), return code and output
/// frame stand for.
fn verdict(cb: [u32; 5], return_value: u32, output: &[u8]) -> Option<Verdict> {
    let [action, detail, target, extra, magic] = cb;
    if magic != trace::MAGIC {
        return None;
    }
    let verdict = match action {
        trace::ACTION_PASS => Verdict::Pass(match detail {
            trace::PASS_NOT_PROGRAMMED => PassReason::NotProgrammed,
            trace::PASS_DHCP => PassReason::Dhcp,
            _ => return None,
        }),
        trace::ACTION_DROP => Verdict::Drop(DropReason::from_u32(detail)?),
        trace::ACTION_REDIRECT => Verdict::Redirect {
            ifindex: target,
            redirect: Redirect::from_u8(u8::try_from(detail & 0xff).ok()?)?,
            routed: detail & trace::REDIRECT_ROUTED != 0,
        },
        trace::ACTION_ANSWER => Verdict::Answered(match detail {
            trace::ANSWER_ARP => Answer::Arp,
            trace::ANSWER_ECHO => Answer::EchoReply,
            trace::ANSWER_TIME_EXCEEDED => Answer::TimeExceeded,
            trace::ANSWER_FRAG_NEEDED => Answer::FragNeeded,
            _ => return None,
        }),
        trace::ACTION_ENCAP => {
            let host = from_net_u32(extra);
            let routed = detail & trace::REDIRECT_ROUTED != 0;
            match NextHop::from_u8(u8::try_from(detail & 0xff).ok()?)? {
                NextHop::VxlanDevice => Verdict::Fragmented {
                    host,
                    device: target,
                    routed,
                },
                next_hop => Verdict::Encapsulated {
                    host,
                    vni: vxlan_vni(output)?,
                    underlay: target,
                    next_hop,
                    routed,
                },
            }
        }
        _ => return None,
    };
    // The record and the return code must agree: tc's OK, SHOT, REDIRECT.
    let expected = match verdict {
        Verdict::Pass(_) => 0,
        Verdict::Drop(_) => 2,
        Verdict::Redirect { .. }
        | Verdict::Answered(_)
        | Verdict::Encapsulated { .. }
        | Verdict::Fragmented { .. } => 7,
    };
    (return_value == expected).then_some(verdict)
}
