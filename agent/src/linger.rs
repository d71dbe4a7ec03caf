//! Goal-state connections that close the way a peer expects when the
//! agent stops. Once hyper is done with a connection, the agent's side
//! sends its FIN first, then reads and drops what the controller still
//! sends (window updates for the last replies, a message already on its
//! way) until the controller closes too, for [`LINGER`] at most. Closed at
//! once with unread data, the kernel would answer with a reset, and a
//! reset makes the controller's kernel drop the replies it had received
//! but not yet read: the last replies of a stopping agent would be lost.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tasks::Tasks;

/// How long a closing connection waits for the controller to close its side.
const LINGER: Duration = Duration::from_secs(2);

pub struct Lingering {
    /// Taken only when the connection is dropped.
    stream: Option<TcpStream>,
    /// Where the lingering runs, so that a stopping agent waits for it.
    tasks: Tasks,
}

impl Lingering {
    pub fn new(stream: TcpStream, tasks: Tasks) -> Lingering {
        Lingering {
            stream: Some(stream),
            tasks,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("taken only on drop"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        self.tasks.spawn(async move {
            if stream.shutdown().await.is_err() {
                return;
            }
            let mut sink = [0u8; 16 * 1024];
            let drained = async { while matches!(stream.read(&mut sink).await, Ok(1..)) {} };
            let _ = tokio::time::timeout(LINGER, drained).await;
        });
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

impl Connected for Lingering {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match &self.stream {
            Some(stream) => stream.connect_info(),
            None => TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
        }
    }
}
