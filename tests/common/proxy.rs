//! A TCP forwarder that a test can cut: the one link between two nodes
//! goes through it, so that a partition is a real cut of the connections
//! (open ones are dropped, new ones closed at once) and not a paused process.

use std::net::SocketAddr;

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// Forwards connections to one address until cut.
pub struct Proxy {
    /// Where to dial instead of the target.
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Proxy {
    /// A forwarder to `target` on a free loopback port.
    pub async fn to(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *watch.borrow() {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(forward(inbound, target, watch.clone()));
            }
        });
        Self { addr, cut }
    }

    /// Its URL, for a node's peer list.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

async fn forward(mut inbound: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}
