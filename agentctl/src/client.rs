//! The connection to the agent's control socket.

use std::path::Path;

use alcor_proto::control::agent_control_client::AgentControlClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tower::service_fn;

use super::error::Error;

/// Connects to the control service on `socket`.
pub async fn connect(socket: &Path) -> Result<AgentControlClient<Channel>, Error> {
    let path = socket.to_path_buf();
    // The URI is required by the endpoint but unused: the connector below
    // decides where to connect.
    let channel = Endpoint::from_static("http://agent.sock")
        .connect_with_connector(service_fn(move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|error| Error::connecting(socket.to_path_buf(), &error))?;
    // A node's whole goal state can exceed tonic's 4 MiB default.
    Ok(AgentControlClient::new(channel).max_decoding_message_size(usize::MAX))
}
