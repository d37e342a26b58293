//! turmoil's simulated TCP, adapted to tonic: a connector for peer and
//! client channels, and an incoming stream for the server.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{
    server::{Connected, TcpConnectInfo},
    Channel, Endpoint, Uri,
};
use turmoil::net::{TcpListener, TcpStream};

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

/// A lazily connecting channel to `url` over the simulated network.
pub fn channel(url: &str) -> meshkv::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| meshkv::Error::Config(format!("peer url {url:?}: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(1))
        .http2_keep_alive_interval(std::time::Duration::from_secs(2))
        .keep_alive_timeout(std::time::Duration::from_secs(2))
        .keep_alive_while_idle(true);
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(|uri: Uri| {
            Box::pin(async move {
                let authority = uri
                    .authority()
                    .ok_or_else(|| std::io::Error::other("no authority"))?
                    .to_string();
                Ok(TokioIo::new(TcpStream::connect(authority).await?))
            }) as Connecting
        })),
    )
}

/// Accepted connections of a simulated listener, as tonic's server wants them.
pub fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<Accepted>> {
    futures_util::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| Accepted(s));
        Some((next, l))
    })
}

/// One accepted simulated connection.
pub struct Accepted(TcpStream);

impl Connected for Accepted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        TcpConnectInfo {
            local_addr: self.0.local_addr().ok(),
            remote_addr: self.0.peer_addr().ok(),
        }
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
