//! This host's place in the underlay, set up once at start when
//! `--underlay-dev` is given: the device's ifindex, MAC and MTU and the
//! tunnel address (the [`UnderlaySpec`] the forwarding model carries),
//! `underlay_in` on the device's tc ingress, the XDP early drop as
//! `--underlay-xdp` says, and the agent's VXLAN device. Then, for as long
//! as the agent runs, the other hosts' MACs from the device's neighbour
//! table ([`neighbours`]).
//!
//! Everything is adopted across restarts: the tc filter and the pinned XDP
//! link get this agent's program swapped in place, the VXLAN device is kept
//! as it is, so a restart costs no packet.

pub mod neighbours;

use std::net::Ipv4Addr;

use netlink_packet_route::link::InfoKind;
use rtnetlink::Handle;

use crate::{
    config::{Config, UnderlayXdp},
    core::spec::UnderlaySpec,
    datapath::{Datapath, DatapathError, XdpMode},
    plumbing::{
        PlumbingError, link,
        vxlan::{self, VxlanOutcome},
    },
};

/// Bytes VXLAN adds to a frame: outer Ethernet, IPv4, UDP and VXLAN headers.
const VXLAN_OVERHEAD: u32 = alcor_ebpf_common::VXLAN_OVERHEAD;
/// The smallest underlay MTU: what leaves a VM the minimum IPv4 MTU (576).
const MIN_UNDERLAY_MTU: u32 = 576 + VXLAN_OVERHEAD;
/// Underlay MTU assumed when no underlay device is configured.
const DEFAULT_UNDERLAY_MTU: u32 = 1500;

#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    #[error("underlay device {0} does not exist (in the agent's network namespace)")]
    NoDevice(String),
    #[error(
        "underlay device {0} has no IPv4 address to be this host's tunnel endpoint; give one \
         with --underlay-ip"
    )]
    NoAddress(String),
    #[error("underlay device {0} has no Ethernet address")]
    NotEthernet(String),
    #[error("underlay device {device} has MTU {mtu}, less than the {MIN_UNDERLAY_MTU} VXLAN needs")]
    MtuTooSmall { device: String, mtu: u32 },
    #[error("reading underlay device {device}")]
    Netlink {
        device: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// `what` the datapath was doing: "attaching to underlay device eth1".
    #[error("{what}")]
    Datapath {
        what: String,
        #[source]
        source: DatapathError,
    },
    #[error("setting up the VXLAN device")]
    Vxlan(#[from] PlumbingError),
}

/// The underlay as the agent set it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    /// The underlay device's name.
    pub device: String,
    /// What the datapath's UNDERLAY map says.
    pub spec: UnderlaySpec,
    /// The XDP mode asked for; what runs is [`Datapath::xdp_mode`].
    pub xdp: UnderlayXdp,
    /// The agent's VXLAN device (its ifindex is the spec's).
    pub vxlan_device: String,
}

/// The MTU of the ports: the underlay's minus VXLAN's headers (1450
/// without an underlay device).
pub fn port_mtu(underlay: Option<&Underlay>) -> u32 {
    underlay.map_or(DEFAULT_UNDERLAY_MTU, |underlay| underlay.spec.mtu) - VXLAN_OVERHEAD
}

impl Underlay {
    /// Sets up the underlay `config` names, in this thread's network
    /// namespace; `None` without `--underlay-dev`, after removing what a
    /// previous run with an underlay left (its VXLAN device, its programs).
    pub async fn start(
        handle: &Handle,
        datapath: &mut Datapath,
        config: &Config,
    ) -> Result<Option<Underlay>, UnderlayError> {
        let Some(device) = config.underlay_dev.clone() else {
            release_previous(datapath, None)?;
            vxlan::remove_others(handle, None).await?;
            return Ok(None);
        };
        let mut spec = resolve(handle, &device, config.underlay_ip, config.underlay_xdp).await?;
        release_previous(datapath, Some(spec.ifindex))?;
        attach(datapath, &device, spec.ifindex, config.underlay_xdp)?;
        vxlan::remove_others(handle, Some(&config.vxlan_dev)).await?;
        let (vxlan_ifindex, outcome) = vxlan::ensure(handle, &config.vxlan_dev, spec.mtu).await?;
        let verb = match outcome {
            VxlanOutcome::Adopted => "adopted",
            VxlanOutcome::Updated => "updated",
            VxlanOutcome::Created => "created",
        };
        tracing::info!(
            device = config.vxlan_dev,
            ifindex = vxlan_ifindex,
            "VXLAN device {verb}"
        );
        datapath
            .attach_vxlan(vxlan_ifindex)
            .map_err(|source| UnderlayError::Datapath {
                what: format!(
                    "attaching the datapath to VXLAN device {}",
                    config.vxlan_dev
                ),
                source,
            })?;
        spec.vxlan_ifindex = vxlan_ifindex;
        Ok(Some(Underlay {
            device,
            spec,
            xdp: config.underlay_xdp,
            vxlan_device: config.vxlan_dev.clone(),
        }))
    }
}

/// Reads what the datapath needs of the underlay device `name`: ifindex,
/// MAC, MTU, and the tunnel address (`ip`, else the device's first IPv4
/// address).
pub async fn resolve(
    handle: &Handle,
    name: &str,
    ip: Option<Ipv4Addr>,
    xdp: UnderlayXdp,
) -> Result<UnderlaySpec, UnderlayError> {
    let netlink = |source| UnderlayError::Netlink {
        device: name.into(),
        source,
    };
    let found = link::by_name(handle, name)
        .await
        .map_err(netlink)?
        .ok_or_else(|| UnderlayError::NoDevice(name.into()))?;
    let mac = found
        .mac
        .ok_or_else(|| UnderlayError::NotEthernet(name.into()))?;
    if found.kind == Some(InfoKind::Veth) && xdp == UnderlayXdp::Native {
        // Measured (bench datapath): TCP between hosts at 0.24x the
        // kernel's with native XDP on a veth underlay, 1.03x without.
        tracing::warn!(
            device = name,
            "the underlay is a veth: native XDP on it makes its peer give up GSO/TSO and \
             costs most of the TCP throughput between hosts; consider --underlay-xdp off"
        );
    }
    let mtu = found.mtu.unwrap_or(0);
    if mtu < MIN_UNDERLAY_MTU {
        return Err(UnderlayError::MtuTooSmall {
            device: name.into(),
            mtu,
        });
    }
    let addresses = link::ipv4_addresses(handle, found.index)
        .await
        .map_err(netlink)?;
    let ip = match ip {
        Some(ip) => {
            if !addresses.contains(&ip) {
                // A routed underlay may put it on a loopback: allowed.
                tracing::warn!(
                    device = name,
                    %ip,
                    "--underlay-ip is not an address of the underlay device"
                );
            }
            ip
        }
        None => *addresses
            .first()
            .ok_or_else(|| UnderlayError::NoAddress(name.into()))?,
    };
    Ok(UnderlaySpec {
        ifindex: found.index,
        ip,
        mac,
        mtu,
        gateway_mac: None,
        // Known once the device is made.
        vxlan_ifindex: 0,
    })
}

/// Takes the programs off the device a previous run used as its underlay,
/// unless it is `current` (their attachments are then swapped in place).
fn release_previous(datapath: &mut Datapath, current: Option<u32>) -> Result<(), UnderlayError> {
    let previous = datapath
        .reader()
        .and_then(|reader| reader.underlay())
        .map_err(|source| UnderlayError::Datapath {
            what: "reading the underlay of the previous run".into(),
            source,
        })?;
    let Some(previous) = previous.filter(|previous| Some(previous.ifindex) != current) else {
        return Ok(());
    };
    tracing::info!(
        ifindex = previous.ifindex,
        "detaching the datapath from the previous underlay device"
    );
    let detached = datapath
        .detach_underlay(previous.ifindex)
        .and_then(|()| datapath.detach_xdp(previous.ifindex));
    detached.map_err(|source| UnderlayError::Datapath {
        what: format!(
            "detaching the datapath from device {}, the previous underlay",
            previous.ifindex
        ),
        source,
    })
}

/// Attaches `underlay_in` to the device's tc ingress and XDP as `xdp`
/// says. A driver refusing native XDP is not fatal: the agent runs without
/// it (tc drops the same frames, later) rather than fall back to generic
/// mode, which copies every packet.
fn attach(
    datapath: &mut Datapath,
    device: &str,
    ifindex: u32,
    xdp: UnderlayXdp,
) -> Result<(), UnderlayError> {
    let error = |source| UnderlayError::Datapath {
        what: format!("attaching the datapath to underlay device {device}"),
        source,
    };
    datapath.attach_underlay(ifindex).map_err(error)?;
    let mode = match xdp {
        UnderlayXdp::Native => XdpMode::Driver,
        UnderlayXdp::Generic => XdpMode::Skb,
        UnderlayXdp::Off => return datapath.detach_xdp(ifindex).map_err(error),
    };
    match datapath.attach_xdp(ifindex, mode) {
        Err(refused) if xdp == UnderlayXdp::Native => {
            let reason = crate::error::chain(&refused);
            tracing::warn!(
                device,
                %reason,
                "the driver refuses native XDP: running without the XDP early drop \
                 (--underlay-xdp generic would copy every packet; tc still drops what XDP would)"
            );
            Ok(())
        }
        attached => attached.map_err(error),
    }
}

/// The XDP mode as agentctl names it.
pub fn xdp_mode_name(mode: Option<XdpMode>) -> &'static str {
    match mode {
        Some(XdpMode::Driver) => "native",
        Some(XdpMode::Skb) => "generic",
        Some(XdpMode::Hardware) => "offload",
        Some(XdpMode::Default) => "default",
        None => "off",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_lose_the_vxlan_overhead() {
        assert_eq!(port_mtu(None), 1450);
        let underlay = Underlay {
            device: "eth1".into(),
            spec: UnderlaySpec {
                ifindex: 2,
                ip: Ipv4Addr::new(198, 18, 0, 1),
                mac: crate::core::model::Mac([2, 0, 0, 0, 0, 1]),
                mtu: 9000,
                gateway_mac: None,
                vxlan_ifindex: 3,
            },
            xdp: UnderlayXdp::Native,
            vxlan_device: "alcor-vxlan".into(),
        };
        assert_eq!(port_mtu(Some(&underlay)), 8950);
    }
}
