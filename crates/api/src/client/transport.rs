//! How the client reaches fleetd: a [`Transport`] opens byte streams (a unix socket, TCP, or
//! any other, such as an SSH tunnel), which [`Connector`] hands to hyper's connection pool.

use hyper::http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream carrying HTTP/1.1 to fleetd.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub type BoxStream = Box<dyn Stream>;
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send>>;

/// Opens a new connection to fleetd. Connections are pooled and reused, so a costly transport
/// (an SSH session) is opened once for a run of requests.
pub trait Transport: Send + Sync + 'static {
    fn connect(&self) -> ConnectFuture;
}

/// A unix socket path.
pub struct UnixTransport(pub PathBuf);

impl Transport for UnixTransport {
    fn connect(&self) -> ConnectFuture {
        let path = self.0.clone();
        Box::pin(
            async move { Ok(Box::new(tokio::net::UnixStream::connect(path).await?) as BoxStream) },
        )
    }
}

/// A TCP `host:port`.
pub struct TcpTransport(pub String);

impl Transport for TcpTransport {
    fn connect(&self) -> ConnectFuture {
        let addr = self.0.clone();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// hyper's connector over a [`Transport`].
#[derive(Clone)]
pub(crate) struct Connector(pub(crate) Arc<dyn Transport>);

impl tower::Service<Uri> for Connector {
    type Response = Conn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let fut = self.0.connect();
        Box::pin(async move { Ok(Conn(TokioIo::new(fut.await?))) })
    }
}

/// A connection as hyper's pool wants it.
pub(crate) struct Conn(TokioIo<BoxStream>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
