//! Why the plumbing could not make a device as planned, with the kernel's
//! error (and its errno) kept as the source.

use std::path::PathBuf;

use super::VM_DEVICE;

#[derive(Debug, thiserror::Error)]
pub enum PlumbingError {
    /// A netlink request failed; `what` it was for: "creating veth p1".
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("network namespace {netns} ({}) cannot be opened", path.display())]
    Netns {
        netns: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A device of the name the agent wants, which it did not make: left
    /// alone. `hint`: what the operator can do.
    #[error("device {device} already exists and was not created by the agent{hint}")]
    NotOurs { device: String, hint: &'static str },
    /// EEXIST creating a port's veth pair.
    #[error("cannot create {device}: it exists, or namespace {netns} already has an {VM_DEVICE}")]
    Taken { device: String, netns: String },
    #[error("{device} vanished right after its creation")]
    Vanished { device: String },
    #[error("an unbound port has no device")]
    Unbound,
}

/// Maps a netlink error to a [`PlumbingError`] saying what was being done.
pub fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PlumbingError {
    move |source| PlumbingError::Netlink {
        what: what.into(),
        source,
    }
}
