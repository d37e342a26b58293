//! Accepting connections on a listener, plain or TLS, so that sockets that
//! never speak cannot keep real clients and peers out.
//!
//! A connection is *pending* from `accept()` until it has finished its TLS
//! handshake (if TLS is on) and sent the 24-byte HTTP/2 preface, within
//! [`PENDING_TIMEOUT`]. At most [`MAX_PENDING`] are pending per listener; a
//! connection beyond them ends the oldest one still pending. A client that
//! does speak gets through in milliseconds, long before that many newer
//! connections arrive, so a stranger holding hundreds of silent sockets,
//! reopened as they are dropped, only ever evicts its own.
//!
//! Once through, a connection holds one of [`MAX_CONNECTIONS`] slots until
//! it closes; at the cap, new connections are closed at once and the first
//! refusal of each burst is logged. hyper's HTTP/2 keep-alive (set in
//! `node::services`) closes established connections whose peer stops
//! answering pings.
//!
//! The handshake runs here rather than in tonic so that a refused one is
//! logged with the listener, the remote address and rustls's reason, and so
//! that the verified client certificate reaches every request ([`ConnInfo`]).

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::AbortHandle,
};
use tokio_rustls::{
    rustls::{pki_types::CertificateDer, ServerConfig},
    server::TlsStream,
    TlsAcceptor,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// How long a connection may take to finish its handshake and send the
/// HTTP/2 preface.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections pending at once per listener.
pub const MAX_PENDING: usize = 256;
/// Established connections per listener.
pub const MAX_CONNECTIONS: usize = 4096;
/// Accepted connections not yet taken by the server.
const ACCEPTED_QUEUE: usize = 64;
/// The HTTP/2 connection preface, which every client sends first.
const PREFACE_LEN: usize = 24;

/// What tonic learns about a connection: left in every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The remote address.
    pub remote: Option<SocketAddr>,
    /// The client certificate the handshake verified against the CA.
    pub client_cert: Option<Arc<CertificateDer<'static>>>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection on either listener, plain or TLS, whose preface has been
/// read (and is replayed to the server first).
pub struct Conn {
    io: Io,
    preface: [u8; PREFACE_LEN],
    /// Preface bytes already replayed.
    replayed: usize,
    _slot: Slot,
}

/// One of a listener's connection slots, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match &self.io {
            Io::Plain(s) => ConnInfo {
                remote: s.peer_addr().ok(),
                client_cert: None,
            },
            Io::Tls(s) => {
                let (tcp, session) = s.get_ref();
                ConnInfo {
                    remote: tcp.peer_addr().ok(),
                    client_cert: session
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Arc::new(c.clone().into_owned())),
                }
            }
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.replayed < PREFACE_LEN {
            let rest = &this.preface[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The connections `listener` accepts, after a TLS handshake when `tls` is
/// set and the HTTP/2 preface. A failed handshake is logged (which
/// listener, from where, why) and the connection dropped. Accepting stops
/// when the server drops the stream.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    what: &'static str,
) -> ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let pending = Arc::new(Mutex::new(Pending::default()));
    let open = Arc::new(AtomicUsize::new(0));
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::spawn(async move {
        let mut refusing = false;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = take_slot(&open) else {
                if !refusing {
                    tracing::warn!(
                        listener = what, %remote,
                        "{MAX_CONNECTIONS} connections open: refusing new ones until some close"
                    );
                }
                refusing = true;
                continue;
            };
            refusing = false;
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            let acceptor = acceptor.clone();
            // Held while the task is spawned and listed, so that it cannot
            // finish (and unlist itself) before it is listed.
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            let evicted = (p.running.len() >= MAX_PENDING)
                .then(|| p.running.pop_front())
                .flatten();
            let id = p.next;
            p.next += 1;
            let mine = Arc::clone(&pending);
            let task = tokio::spawn(async move {
                let _listed = Unlist(mine, id);
                match tokio::time::timeout(PENDING_TIMEOUT, establish(tcp, acceptor, slot)).await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(
                        listener = what, %remote, error = %e,
                        "connection refused before its first request"
                    ),
                    Err(_) => tracing::debug!(
                        listener = what, %remote,
                        "no handshake and preface within {PENDING_TIMEOUT:?}: closed"
                    ),
                }
            });
            p.running.push_back((id, task.abort_handle()));
            drop(p);
            // Outside the lock: the evicted task takes it to unlist itself.
            if let Some((_, oldest)) = evicted {
                oldest.abort();
                tracing::debug!(
                    listener = what,
                    "pending slots full: the oldest pending connection was closed"
                );
            }
        }
    });
    ReceiverStream::new(rx)
}

fn take_slot(open: &Arc<AtomicUsize>) -> Option<Slot> {
    open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < MAX_CONNECTIONS).then_some(n + 1)
    })
    .ok()
    .map(|_| Slot(Arc::clone(open)))
}

/// The TLS handshake, if any, then the preface.
async fn establish(
    tcp: TcpStream,
    acceptor: Option<TlsAcceptor>,
    slot: Slot,
) -> std::io::Result<Conn> {
    let mut io = match acceptor {
        Some(a) => Io::Tls(Box::new(a.accept(tcp).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("TLS handshake refused: {e}"))
        })?)),
        None => Io::Plain(tcp),
    };
    let mut preface = [0u8; PREFACE_LEN];
    io.read_exact(&mut preface).await?;
    Ok(Conn {
        io,
        preface,
        replayed: 0,
        _slot: slot,
    })
}

/// The connections pending on one listener, oldest first.
#[derive(Default)]
struct Pending {
    next: u64,
    running: std::collections::VecDeque<(u64, AbortHandle)>,
}

/// Takes a connection off the pending list when its task ends, however it
/// ends.
struct Unlist(Arc<Mutex<Pending>>, u64);

impl Drop for Unlist {
    fn drop(&mut self) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = p.running.iter().position(|(id, _)| *id == self.1) {
            p.running.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_preface_is_replayed_before_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conns = incoming(listener, None, "test");
        let mut client = TcpStream::connect(addr).await.unwrap();
        let sent: Vec<u8> = (0..40u8).collect();
        client.write_all(&sent).await.unwrap();
        let mut conn = tokio_stream::StreamExt::next(&mut conns)
            .await
            .unwrap()
            .unwrap();
        let mut got = vec![0u8; 40];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(got, sent);
        assert!(conn.connect_info().remote.is_some());
    }

    #[test]
    fn slots_run_out_at_the_cap_and_come_back_when_dropped() {
        let open = Arc::new(AtomicUsize::new(MAX_CONNECTIONS - 1));
        let last = take_slot(&open).expect("one left");
        assert!(take_slot(&open).is_none());
        drop(last);
        assert!(take_slot(&open).is_some());
    }
}
