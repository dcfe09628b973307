//! A loopback TCP proxy for fault tests: forwards to a target until `cut` is called, after which
//! every open connection is dropped and new ones are closed at once, until `restore`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy (it stops with the test's runtime).
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    target: Arc<watch::Sender<SocketAddr>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let cut_accept = cut.clone();
        let (target, _) = watch::channel(target);
        let target = Arc::new(target);
        let target_accept = target.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *cut_accept.borrow() {
                    // Cut: the connection is closed at once.
                    drop(client);
                    continue;
                }
                let mut stop = cut_accept.subscribe();
                let target = *target_accept.borrow();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = stop.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy { addr, cut, target }
    }

    /// Drops every connection and closes new ones at once, until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards new connections to another target (a promoted standby).
    pub fn retarget(&self, target: SocketAddr) {
        self.target.send_replace(target);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}
