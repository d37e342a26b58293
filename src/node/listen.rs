//! Where a node listens: TCP (with TLS when configured) in production, any
//! stream of connections in a simulation.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::{
    config::Config,
    error::{Error, Result},
    node::{
        listeners::{Listener, Listeners},
        seams::Seams,
        serve::serve_with,
    },
    security::{accept, TlsMaterial},
};

/// Binds `config.listen` (and `config.peer_listen`), with TLS when it is
/// configured, and runs the node until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let tls = TlsMaterial::load(&config.tls)?;
    let bind = |addr: SocketAddr| async move {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {addr}"), e))?;
        let bound = l
            .local_addr()
            .map_err(|e| Error::io("cannot read the bound address", e))?;
        Ok::<_, Error>((l, bound))
    };
    // Without tokens, a client must prove itself with a certificate.
    let client_tls = tls
        .as_ref()
        .map(|m| m.server_config(config.auth.tokens_file.is_none()))
        .transpose()?;
    let peer_tls = tls.as_ref().map(|m| m.server_config(true)).transpose()?;
    let (client, client_addr) = bind(config.listen).await?;
    let peer = match config.peer_listen {
        Some(a) => {
            let (l, addr) = bind(a).await?;
            Some(Listener {
                incoming: accept::incoming(l, peer_tls, "peer"),
                addr,
            })
        }
        None => None,
    };
    let listeners = Listeners {
        client: Listener {
            incoming: accept::incoming(client, client_tls, "client"),
            addr: client_addr,
        },
        peer,
    };
    serve_with(config, listeners, shutdown, Seams::production()).await
}

/// Runs the node on connections from `incoming` (a TCP listener in
/// production). `addr` is only logged.
pub async fn serve<I, IO, IE>(
    config: Config,
    incoming: I,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<()>
where
    I: Stream<Item = std::result::Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listeners = Listeners {
        client: Listener { incoming, addr },
        peer: None,
    };
    serve_with(config, listeners, shutdown, Seams::production()).await
}
