//! A minimal HTTP/1.1 client for the controller's API: one keep-alive
//! connection, requests one after the other, `Content-Length` bodies (what
//! the controller sends). Cheap enough that the benchmarks measure the
//! server, not the client.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

/// One keep-alive HTTP/1.1 connection.
pub struct Client {
    stream: BufReader<TcpStream>,
    listen: SocketAddr,
}

impl Client {
    /// Connects from this process's network namespace.
    pub async fn connect(listen: SocketAddr) -> anyhow::Result<Client> {
        Client::from_stream(TcpStream::connect(listen).await?, listen)
    }

    /// Connects from inside the network namespace `netns` (the socket
    /// belongs to the namespace it was made in; the client runs anywhere).
    pub async fn connect_in(netns: &str, listen: SocketAddr) -> anyhow::Result<Client> {
        let netns = netns.to_string();
        let stream = tokio::task::spawn_blocking(move || {
            alcor_tests::netns::enter(&netns, move || {
                std::net::TcpStream::connect_timeout(&listen, Duration::from_secs(5))
            })
        })
        .await???;
        stream.set_nonblocking(true)?;
        Client::from_stream(TcpStream::from_std(stream)?, listen)
    }

    fn from_stream(stream: TcpStream, listen: SocketAddr) -> anyhow::Result<Client> {
        stream.set_nodelay(true)?;
        Ok(Client {
            stream: BufReader::new(stream),
            listen,
        })
    }

    /// POSTs `body`; the status (the body is read and dropped).
    pub async fn post(&mut self, path: &str, body: &str) -> anyhow::Result<u16> {
        Ok(self.request("POST", path, Some(body)).await?.0)
    }

    /// `METHOD path` with a JSON `body`: the status and the JSON answer
    /// (`null` when there is no body).
    pub async fn json(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let body = body.map(serde_json::Value::to_string);
        let (status, answer) = self.request(method, path, body.as_deref()).await?;
        let value = if answer.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&answer).with_context(|| {
                format!(
                    "{method} {path} answered {status} with no JSON: {}",
                    String::from_utf8_lossy(&answer)
                )
            })?
        };
        Ok((status, value))
    }

    /// `METHOD path` with `body`: the status and the body's bytes.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let body = body.unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nX-Auth-Token: notused\r\nContent-Type: \
             application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.listen,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("no status in {line:?}"))?;
        let mut length = 0;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("the connection closed mid-response");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("{method} {path}: a chunked response, which this client does not read");
                }
            }
        }
        let mut answer = vec![0; length];
        self.stream.read_exact(&mut answer).await?;
        Ok((status, answer))
    }
}
