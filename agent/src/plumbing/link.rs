//! Thin helpers over rtnetlink for the few link operations ports need.

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::Handle;

/// What the agent needs to know of a kernel link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub kind: Option<InfoKind>,
}

impl From<&LinkMessage> for Link {
    fn from(message: &LinkMessage) -> Self {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            alias: None,
            kind: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind.clone()),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        link
    }
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

/// The MTU of the link called `name`.
pub async fn mtu(handle: &Handle, name: &str) -> Result<Option<u32>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(message) => Ok(message.and_then(|m| {
            m.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
        })),
        Err(error) if errno(&error) == Some(nix::libc::ENODEV) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Deletes a link; one that is already gone is not an error.
pub async fn delete(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    match handle.link().del(index).execute().await {
        Err(error) if errno(&error) == Some(nix::libc::ENODEV) => Ok(()),
        other => other,
    }
}
