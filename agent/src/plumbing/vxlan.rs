//! The agent's VXLAN device: one per host, in external (collect_md) mode on
//! UDP 4789, up, with the underlay's MTU.
//!
//! It stays out of the receive path: `underlay_in` (tc ingress of the
//! underlay device) decapsulates VXLAN for the VNIs served here before the
//! kernel's UDP stack sees it, and the port programs encapsulate
//! themselves. The device is there for its UDP socket, which turns on the
//! kernel's VXLAN GRO for port 4789 on real NICs.
//!
//! Like port devices, it carries an alias that marks it as the agent's, so
//! that a restarted agent adopts it as it is (same ifindex) and never
//! touches a device of the same name made by somebody else.

use netlink_packet_route::link::{InfoKind, LinkAttribute};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVxlan};

use super::{
    Ipv6Settings, PlumbingError,
    error::netlink,
    link::{self, Link},
};

/// The alias of the agent's VXLAN device. Unlike port devices' aliases it
/// does not start with `alcor:`, so that it is never taken for a port's.
pub const VXLAN_ALIAS: &str = "alcor-vxlan-device";

/// The IANA VXLAN port, which the datapath sends to and accepts.
pub const VXLAN_PORT: u16 = alcor_ebpf_common::VXLAN_PORT;

/// What became of the device when the agent made it match its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VxlanOutcome {
    /// It was there, ours and right: kept as it was.
    Adopted,
    /// It was there and ours, right but for its MTU or state: changed in
    /// place.
    Updated,
    /// Made anew (none was there, or ours had other settings).
    Created,
}

/// Makes the VXLAN device `name` exist with MTU `mtu`, up, in external
/// mode on [`VXLAN_PORT`]; returns its ifindex and what was done. A device
/// of that name that is not the agent's is an error, left untouched.
pub async fn ensure(
    handle: &Handle,
    name: &str,
    mtu: u32,
) -> Result<(u32, VxlanOutcome), PlumbingError> {
    let found = link::by_name(handle, name)
        .await
        .map_err(netlink(format!("looking up {name}")))?;
    if let Some(found) = found {
        if !is_ours(&found) {
            return Err(PlumbingError::NotOurs {
                device: name.into(),
                hint: "; remove it or choose another name with --vxlan-dev",
            });
        }
        let right = found.kind == Some(InfoKind::Vxlan)
            && found
                .vxlan
                .is_some_and(|vxlan| vxlan.external && vxlan.port == Some(VXLAN_PORT));
        if right {
            if found.mtu == Some(mtu) && found.up {
                return Ok((found.index, VxlanOutcome::Adopted));
            }
            let fix = LinkUnspec::new_with_index(found.index)
                .mtu(mtu)
                .up()
                .build();
            handle
                .link()
                .set(fix)
                .execute()
                .await
                .map_err(netlink(format!(
                    "setting MTU {mtu} on {name} and bringing it up"
                )))?;
            return Ok((found.index, VxlanOutcome::Updated));
        }
        tracing::info!(
            device = name,
            "the VXLAN device has other settings: recreating it"
        );
        link::delete(handle, found.index)
            .await
            .map_err(netlink(format!("deleting {name}")))?;
    }
    create(handle, name, mtu)
        .await
        .map(|index| (index, VxlanOutcome::Created))
}

/// Whether a device is the agent's VXLAN device.
pub fn is_ours(found: &Link) -> bool {
    found.alias.as_deref() == Some(VXLAN_ALIAS)
}

/// Deletes the agent's VXLAN devices other than `keep` (all of them with
/// `None`): left by a run with another --vxlan-dev, or with an underlay
/// where there is none now.
pub async fn remove_others(handle: &Handle, keep: Option<&str>) -> Result<(), PlumbingError> {
    let links = link::all(handle).await.map_err(netlink("listing links"))?;
    for found in links
        .iter()
        .filter(|found| is_ours(found) && Some(found.name.as_str()) != keep)
    {
        tracing::info!(
            device = found.name,
            "deleting a VXLAN device the agent no longer uses"
        );
        link::delete(handle, found.index)
            .await
            .map_err(netlink(format!("deleting {}", found.name)))?;
    }
    Ok(())
}

async fn create(handle: &Handle, name: &str, mtu: u32) -> Result<u32, PlumbingError> {
    let device = LinkMessageBuilder::<LinkVxlan>::new(name)
        .collect_metadata(true)
        .port(VXLAN_PORT)
        .mtu(mtu)
        .build();
    handle
        .link()
        .add(device)
        .execute()
        .await
        .map_err(netlink(format!("creating VXLAN device {name}")))?;
    let created = link::by_name(handle, name)
        .await
        .map_err(netlink(format!("looking up {name}")))?
        .ok_or_else(|| PlumbingError::Vanished {
            device: format!("VXLAN device {name}"),
        })?;
    // It never sends anything of its own: no router solicitations, no MLD.
    Ipv6Settings::open().turn_off(name);
    // The kernel ignores an alias given at creation: set it with `up`.
    let finish = LinkUnspec::new_with_index(created.index)
        .append_extra_attribute(LinkAttribute::IfAlias(VXLAN_ALIAS.into()))
        .up()
        .build();
    if let Err(error) = handle.link().set(finish).execute().await {
        let _ = link::delete(handle, created.index).await;
        return Err(netlink(format!("bringing up VXLAN device {name}"))(error));
    }
    Ok(created.index)
}
