//! `GET /metrics` of one fleetd, by hand: the API client speaks only fleet's JSON resources.

use anyhow::{bail, Context, Result};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Sends `GET /metrics` over `stream` (a connection to a fleetd's API, unix or TCP) and returns
/// the body; `who` names the fleetd in errors.
pub async fn get<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, who: &str) -> Result<String> {
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n")
        .await
        .context("sending GET /metrics")?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut out))
        .await
        .with_context(|| format!("no answer to GET /metrics from {who}"))?
        .context("reading GET /metrics")?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {out}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics of {who}: {head}");
    }
    Ok(body.to_string())
}
