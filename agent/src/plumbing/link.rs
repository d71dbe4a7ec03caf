//! Thin helpers over rtnetlink for the few link operations the agent needs
//! (port devices, the underlay device, the VXLAN device).

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    address::AddressAttribute,
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};
use rtnetlink::Handle;

use crate::model::Mac;

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
    match handle.link().del(index).execute().await {
        Err(error) if errno(&error) == Some(nix::libc::ENODEV) => Ok(()),
        other => other,
    }
}
