//! Why a command failed, worded for an operator rather than in gRPC terms.

use std::{io, path::PathBuf, time::Duration};

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens on the socket: the agent is stopped, or crashed and
    /// left its socket file behind.
    #[error(
        "cannot reach alcor-agent at {}: {reason} (is the agent running? see systemctl status alcor-agent)",
        .socket.display()
    )]
    NotRunning {
        socket: PathBuf,
        reason: &'static str,
    },

    /// The socket is root-only.
    #[error(
        "cannot reach alcor-agent at {}: permission denied (agentctl needs root: try sudo)",
        .socket.display()
    )]
    PermissionDenied { socket: PathBuf },

    #[error("cannot reach alcor-agent at {}: {reason}", .socket.display())]
    Unreachable { socket: PathBuf, reason: String },

    #[error("lost the connection to alcor-agent at {}: {reason}", .socket.display())]
    ConnectionLost { socket: PathBuf, reason: String },

    #[error(
        "alcor-agent at {} did not answer within {} s (see journalctl -u alcor-agent)",
        .socket.display(),
        .timeout.as_secs()
    )]
    Timeout { socket: PathBuf, timeout: Duration },

    /// The agent answered with an error, e.g. an unknown port.
    #[error("alcor-agent: {0}")]
    Agent(String),

    #[error("printing JSON: {0}")]
    Json(#[from] serde_json::Error),

    #[error("writing the output: {0}")]
    Output(io::Error),
}

impl Error {
    /// Connecting failed with `error`; the I/O error under the transport's
    /// wrapping tells what the operator should check.
    pub fn connecting(socket: PathBuf, error: &(dyn std::error::Error + 'static)) -> Error {
        let cause = io_cause(error);
        match cause.map(io::Error::kind) {
            Some(io::ErrorKind::NotFound) => Error::NotRunning {
                socket,
                reason: "no such file",
            },
            Some(io::ErrorKind::ConnectionRefused) => Error::NotRunning {
                socket,
                reason: "connection refused",
            },
            Some(io::ErrorKind::PermissionDenied) => Error::PermissionDenied { socket },
            _ => Error::Unreachable {
                socket,
                reason: cause.map_or_else(|| innermost(error).to_string(), io::Error::to_string),
            },
        }
    }

    /// A call failed: the agent said no, or the connection broke under it.
    pub fn from_status(socket: PathBuf, status: Status) -> Error {
        let reason = if status.message().is_empty() {
            status.code().description().to_string()
        } else {
            status.message().to_string()
        };
        match status.code() {
            // The agent itself never answers Unavailable; tonic does when
            // the connection drops, e.g. the agent exited mid-call.
            Code::Unavailable => Error::ConnectionLost { socket, reason },
            _ => Error::Agent(reason),
        }
    }
}

/// The deepest I/O error in the chain: the one the system call returned.
fn io_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    std::iter::successors(Some(error), |e| e.source())
        .filter_map(|e| e.downcast_ref())
        .last()
}

fn innermost<'a>(error: &'a (dyn std::error::Error + 'static)) -> &'a dyn std::error::Error {
    std::iter::successors(Some(error), |e| e.source())
        .last()
        .unwrap_or(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> PathBuf {
        PathBuf::from("/run/alcor/agent.sock")
    }

    #[test]
    fn a_missing_socket_says_the_agent_may_not_run() {
        let cause = io::Error::from(io::ErrorKind::NotFound);
        let error = Error::connecting(socket(), &cause);
        assert_eq!(
            error.to_string(),
            "cannot reach alcor-agent at /run/alcor/agent.sock: no such file \
             (is the agent running? see systemctl status alcor-agent)"
        );
    }

    #[test]
    fn permission_denied_says_root_is_needed() {
        let cause = io::Error::from(io::ErrorKind::PermissionDenied);
        let error = Error::connecting(socket(), &cause);
        assert!(error.to_string().contains("needs root"), "{error}");
    }

    #[test]
    fn an_agent_error_shows_its_message() {
        let error = Error::from_status(socket(), Status::not_found("no ready port p9"));
        assert_eq!(error.to_string(), "alcor-agent: no ready port p9");
    }
}
