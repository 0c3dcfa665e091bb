//! A TCP proxy between a client and a server, for tests that must take the network
//! away: `freeze` stops forwarding in both directions while every socket stays open
//! (a hung network: the server hears no heartbeats, the client gets no replies), `cut`
//! closes every connection it carries (both sides see the close; new connections are
//! accepted again at once).
//!
//! A freeze also holds connections made while frozen: they are accepted, but nothing
//! passes until `thaw`. `refuse` keeps a client away without holding anything: new
//! connections are closed as soon as they are accepted.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    refusing: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accepted: Arc<AtomicUsize>,
    acceptor: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards every connection to `upstream`.
    /// Must be called inside a tokio runtime.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (frozen, _) = watch::channel(false);
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let refusing = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let frozen = frozen.clone();
            let refusing = refusing.clone();
            let conns = conns.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                while let Ok((down, _)) = listener.accept().await {
                    if refusing.load(Ordering::SeqCst) {
                        drop(down);
                        continue;
                    }
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let _ = down.set_nodelay(true);
                    let rx = frozen.subscribe();
                    let task = tokio::spawn(async move {
                        let Ok(up) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = up.set_nodelay(true);
                        let (dr, dw) = down.into_split();
                        let (ur, uw) = up.into_split();
                        // Whichever direction ends first ends the connection: dropping
                        // the other halves closes both sockets.
                        tokio::select! {
                            _ = pump(dr, uw, rx.clone()) => {}
                            _ = pump(ur, dw, rx) => {}
                        }
                    });
                    let mut conns = conns.lock().unwrap();
                    conns.retain(|h| !h.is_finished());
                    conns.push(task.abort_handle());
                }
            })
        };
        Proxy {
            addr,
            frozen,
            refusing,
            conns,
            accepted,
            acceptor,
        }
    }

    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    /// Stops forwarding: bytes stay unread in the sockets, which stay open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again, starting with whatever waited.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// While set, new connections are closed at once (existing ones are untouched).
    pub fn refuse(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }

    /// Closes every connection now (client and server side).
    pub fn cut(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Connections accepted (and not refused) so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

/// Copies `from` to `to`, never reading or writing while frozen.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A freeze that began while we waited in read holds these bytes too.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
