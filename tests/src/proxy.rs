//! A loopback TCP proxy for fault tests: forwards to a target until `cut` is called, after which
//! every open connection is dropped and new ones are refused.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let cut_accept = cut.clone();
        tokio::spawn(async move {
            let mut stop = cut_accept.subscribe();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop.wait_for(|c| *c) => return,
                };
                let Ok((client, _)) = accepted else { return };
                let mut stop = cut_accept.subscribe();
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
        Proxy { addr, cut }
    }

    /// Drops every connection and stops accepting (the listener closes: connects are refused).
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }
}
