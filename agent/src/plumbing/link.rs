//! Thin helpers over rtnetlink for the few link operations the agent needs
//! (port devices, the underlay device, the VXLAN device).

use std::{hash::BuildHasher, net::Ipv4Addr};

use futures::{StreamExt, TryStreamExt, stream};
use netlink_packet_route::{
    AddressFamily,
    address::AddressAttribute,
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};
use rtnetlink::{Handle, LinkUnspec};

use crate::core::model::Mac;

/// What the agent needs to know of a kernel link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub kind: Option<InfoKind>,
    pub mtu: Option<u32>,
    /// Its hardware address, if it is an Ethernet one.
    pub mac: Option<Mac>,
    pub up: bool,
    /// A VXLAN device's settings.
    pub vxlan: Option<VxlanSettings>,
}

/// The settings of a VXLAN device that the agent cares about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VxlanSettings {
    /// External (collect_md) mode: the VNI and remote come with each packet.
    pub external: bool,
    /// Its UDP port.
    pub port: Option<u16>,
}

impl From<&LinkMessage> for Link {
    fn from(message: &LinkMessage) -> Self {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            alias: None,
            kind: None,
            mtu: None,
            mac: None,
            up: message.header.flags.contains(LinkFlags::Up),
            vxlan: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::Address(address) => {
                    link.mac = <[u8; 6]>::try_from(address.as_slice()).ok().map(Mac)
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind.clone()),
                            LinkInfo::Data(InfoData::Vxlan(settings)) => {
                                link.vxlan = Some(vxlan_settings(settings))
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn vxlan_settings(infos: &[InfoVxlan]) -> VxlanSettings {
    let mut settings = VxlanSettings::default();
    for info in infos {
        match info {
            InfoVxlan::CollectMetadata(external) => settings.external = *external,
            InfoVxlan::Port(port) => settings.port = Some(*port),
            _ => {}
        }
    }
    settings
}

/// The errno of a netlink error, if it is one.
pub fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(-message.raw_code()),
        _ => None,
    }
}

/// The link called `name`, or `None` if there is none.
pub async fn by_name(handle: &Handle, name: &str) -> Result<Option<Link>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(message) => Ok(message.as_ref().map(Link::from)),
        Err(error) if errno(&error) == Some(nix::libc::ENODEV) => Ok(None),
        Err(error) => Err(error),
    }
}

pub async fn all(handle: &Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    handle
        .link()
        .get()
        .execute()
        .map_ok(|message| Link::from(&message))
        .try_collect()
        .await
}

/// The IPv4 addresses of link `index`, in the order the kernel lists them
/// (primary addresses first).
pub async fn ipv4_addresses(
    handle: &Handle,
    index: u32,
) -> Result<Vec<Ipv4Addr>, rtnetlink::Error> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await?;
    Ok(messages
        .iter()
        .filter(|message| {
            message.header.family == AddressFamily::Inet && message.header.index == index
        })
        .filter_map(|message| {
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
            // peer's on a point-to-point link).
            let address = |local| {
                message
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        AddressAttribute::Local(std::net::IpAddr::V4(ip)) if local => Some(*ip),
                        AddressAttribute::Address(std::net::IpAddr::V4(ip)) if !local => Some(*ip),
                        _ => None,
                    })
            };
            address(true).or_else(|| address(false))
        })
        .collect())
}

/// Deletes a link; one that is already gone is not an error.
pub async fn delete(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    gone_is_ok(handle.link().del(index).execute().await)
}

/// Deletes links (those already gone are not an error); the results come in
/// the order of `indexes`.
///
/// Several go in one request: they are put in a device group of their own
/// for the occasion (`concurrency` requests at a time), then the group is
/// deleted. A delete waits for RCU grace periods under the rtnl lock,
/// stalling every netlink user of the host meanwhile; a group delete waits
/// once for all its devices (150 veths here: 3 s one by one, 60 ms as a
/// group). Any device that did not go with the group is deleted alone.
pub async fn delete_all(
    handle: &Handle,
    indexes: &[u32],
    concurrency: usize,
) -> Vec<Result<(), rtnetlink::Error>> {
    if let [index] = indexes {
        return vec![delete(handle, *index).await];
    }
    let group = scratch_group();
    let grouping: Vec<_> = indexes
        .iter()
        .map(|&index| {
            let message = LinkUnspec::new_with_index(index)
                .append_extra_attribute(LinkAttribute::Group(group))
                .build();
            handle.link().set(message).execute()
        })
        .collect();
    let grouped: Vec<_> = stream::iter(grouping)
        .buffered(concurrency)
        .map(gone_is_ok)
        .collect()
        .await;
    let group_deleted = if grouped.iter().any(Result::is_ok) {
        let mut request = handle.link().del(0);
        request
            .message_mut()
            .attributes
            .push(LinkAttribute::Group(group));
        // ENODEV: no device left in the group, they all went meanwhile.
        gone_is_ok(request.execute().await).is_ok()
    } else {
        false
    };
    let mut results = Vec::with_capacity(indexes.len());
    for (&index, grouped) in indexes.iter().zip(grouped) {
        results.push(match grouped {
            Ok(()) if group_deleted => Ok(()),
            _ => delete(handle, index).await,
        });
    }
    results
}

/// A device group no one else uses: random, in the upper half of the
/// range (administrators number theirs from 1). A device of somebody else's
/// in it would be deleted with ours.
fn scratch_group() -> u32 {
    let random = std::hash::RandomState::new().hash_one(std::time::SystemTime::now());
    (random as u32) | 0x8000_0000
}

/// An operation on a link that is already gone did what it was for.
fn gone_is_ok(result: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match result {
        Err(error) if errno(&error) == Some(nix::libc::ENODEV) => Ok(()),
        other => other,
    }
}
