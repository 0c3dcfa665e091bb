//! Fault injection for an ensemble of real coordd processes (issue 5's nemesis).
//!
//! [`PeerMesh`]: one TCP proxy in front of each member's peer port. The `--ensemble` list
//! names the proxies and every member listens behind its own proxy (`--peer-listen-addr`),
//! so every peer connection passes through the proxy of the member it reaches. Each proxy
//! reads the connection's handshake (the first frame, coordd-raft's `Hello`) to learn
//! which member is calling, so it knows both ends of every connection and can partition
//! the ensemble into sides: bytes between members on different sides stop (a black hole:
//! sockets stay open, held bytes arrive after the heal, as TCP retransmits them) or the
//! connections are closed and new ones closed at once (a refusing host).
//!
//! [`NemesisEnsemble`]: a [`CoorddEnsemble`] whose members talk through a [`PeerMesh`],
//! with SIGSTOP / SIGCONT, kill -9 and restart of one member. Processes are killed and
//! proxies stopped on drop.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use super::coordd::{four_letter, Coordd, CoorddEnsemble};

/// coordd-raft's handshake magic (`tcp::wire::MAGIC`): the first bytes of a `Hello`.
const PEER_MAGIC: [u8; 4] = *b"CDRP";
/// coordd-raft's `HANDSHAKE_FRAME_BYTES_MAX`: a longer first frame is not a `Hello`.
const HELLO_FRAME_BYTES_MAX: usize = 4 << 10;
/// How long a proxy waits for a new connection's handshake frame.
const HELLO_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the proxy's connect to the member behind it.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Proxy copy buffer.
const PUMP_BUFFER_BYTES: usize = 64 << 10;

/// What a partition does to the connections that cross it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Nothing passes, every socket stays open; what was held is delivered after the
    /// heal. Callers see timeouts.
    BlackHole,
    /// Crossing connections are closed now and new ones as soon as their handshake is
    /// read. Callers see closed connections at once.
    Refuse,
}

#[derive(Clone, Debug)]
struct Rules {
    /// Member index -> side; members on different sides do not hear each other.
    side: Vec<u8>,
    mode: CutMode,
}

impl Rules {
    fn blocked(&self, from: Option<usize>, to: usize) -> bool {
        match from {
            Some(from) => self.side.get(from) != self.side.get(to),
            // Not a coordd peer we could identify: never held (counted, see
            // `PeerMesh::unidentified`).
            None => false,
        }
    }
}

/// A connection through the mesh: its ends (member indexes) and its task.
struct Carried {
    /// The calling member, once its handshake was read (`usize::MAX` until then or if
    /// it could not be read).
    from: Arc<AtomicUsize>,
    to: usize,
    task: AbortHandle,
}

const FROM_UNKNOWN: usize = usize::MAX;

/// The proxies in front of every member's peer port.
pub struct PeerMesh {
    /// Member `i`'s address in `--ensemble`: its proxy, on 127.0.0.`i+1`.
    pub listed: Vec<SocketAddr>,
    /// Where member `i` listens (`--peer-listen-addr`), behind its proxy.
    pub behind: Vec<SocketAddr>,
    rules: watch::Sender<Rules>,
    conns: Arc<Mutex<Vec<Carried>>>,
    unidentified: Arc<AtomicUsize>,
    identified: Arc<AtomicUsize>,
    acceptors: Vec<JoinHandle<()>>,
}

/// Member `i`'s loopback address, 127.0.0.`i+1`.
pub fn member_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, u8::try_from(i + 1).expect("a small ensemble"))
}

pub use super::ports::free_addr;

impl PeerMesh {
    /// Starts one proxy per member (`n` members) on 127.0.0.`i+1`; the members must
    /// listen on `behind[i]`. Must be called inside a tokio runtime.
    pub async fn start(n: usize) -> PeerMesh {
        let (rules, _) = watch::channel(Rules {
            side: vec![0; n],
            mode: CutMode::BlackHole,
        });
        let conns: Arc<Mutex<Vec<Carried>>> = Arc::default();
        let unidentified = Arc::new(AtomicUsize::new(0));
        let identified = Arc::new(AtomicUsize::new(0));
        let mut listed = Vec::new();
        let mut behind = Vec::new();
        let mut acceptors = Vec::new();
        for to in 0..n {
            let listener = TcpListener::bind((member_ip(to), 0))
                .await
                .expect("bind a peer proxy");
            listed.push(listener.local_addr().expect("proxy address"));
            let upstream = free_addr(member_ip(to));
            behind.push(upstream);
            let rules = rules.clone();
            let conns = conns.clone();
            let unidentified = unidentified.clone();
            let identified = identified.clone();
            acceptors.push(tokio::spawn(async move {
                while let Ok((down, _)) = listener.accept().await {
                    let _ = down.set_nodelay(true);
                    let from = Arc::new(AtomicUsize::new(FROM_UNKNOWN));
                    let task = tokio::spawn(carry(
                        down,
                        to,
                        upstream,
                        rules.subscribe(),
                        from.clone(),
                        unidentified.clone(),
                        identified.clone(),
                    ));
                    let mut conns = conns.lock().unwrap();
                    conns.retain(|c| !c.task.is_finished());
                    conns.push(Carried {
                        from,
                        to,
                        task: task.abort_handle(),
                    });
                }
            }));
        }
        PeerMesh {
            listed,
            behind,
            rules,
            conns,
            unidentified,
            identified,
            acceptors,
        }
    }

    /// The `--ensemble` value: member `i+1` at its proxy.
    pub fn ensemble_list(&self) -> String {
        self.listed
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Splits the members into sides (`side[i]` of member `i`); members on different
    /// sides stop hearing each other, as `mode` says.
    pub fn partition(&self, side: Vec<u8>, mode: CutMode) {
        let rules = Rules { side, mode };
        self.rules.send_replace(rules.clone());
        if mode == CutMode::Refuse {
            for c in self.conns.lock().unwrap().iter() {
                let from = c.from.load(Ordering::SeqCst);
                if from != FROM_UNKNOWN && rules.blocked(Some(from), c.to) {
                    c.task.abort();
                }
            }
        }
    }

    /// Cuts member `i` off from all the others.
    pub fn isolate(&self, i: usize, mode: CutMode) {
        let n = self.listed.len();
        self.partition((0..n).map(|j| u8::from(j == i)).collect(), mode);
    }

    /// Everyone hears everyone again (held bytes flow on).
    pub fn heal(&self) {
        let n = self.listed.len();
        self.partition(vec![0; n], CutMode::BlackHole);
    }

    /// Connections whose caller the proxy could not identify (not a coordd `Hello`):
    /// partitions do not hold them, so a test should see none.
    pub fn unidentified(&self) -> usize {
        self.unidentified.load(Ordering::SeqCst)
    }

    /// Connections whose caller was identified.
    pub fn identified(&self) -> usize {
        self.identified.load(Ordering::SeqCst)
    }
}

impl Drop for PeerMesh {
    fn drop(&mut self) {
        for a in &self.acceptors {
            a.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.task.abort();
        }
    }
}

/// One connection through a member's proxy: read the caller's handshake, then copy both
/// ways while the rules let the two members hear each other.
async fn carry(
    mut down: TcpStream,
    to: usize,
    upstream: SocketAddr,
    rules: watch::Receiver<Rules>,
    from_slot: Arc<AtomicUsize>,
    unidentified: Arc<AtomicUsize>,
    identified: Arc<AtomicUsize>,
) {
    let Ok(Ok(hello)) = tokio::time::timeout(HELLO_READ_TIMEOUT, read_first_frame(&mut down)).await
    else {
        return;
    };
    let from = hello_sender(&hello[4..]).and_then(|id| usize::try_from(id).ok()?.checked_sub(1));
    match from {
        Some(f) => {
            from_slot.store(f, Ordering::SeqCst);
            identified.fetch_add(1, Ordering::SeqCst);
        }
        None => {
            unidentified.fetch_add(1, Ordering::SeqCst);
        }
    }
    {
        let r = rules.borrow();
        if r.mode == CutMode::Refuse && r.blocked(from, to) {
            return;
        }
    }
    let Ok(Ok(up)) =
        tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await
    else {
        return;
    };
    let _ = up.set_nodelay(true);
    let (dr, dw) = down.into_split();
    let (ur, uw) = up.into_split();
    let gate = Gate { rules, from, to };
    // Whichever direction ends first ends the connection.
    tokio::select! {
        _ = pump(dr, uw, hello, gate.clone()) => {}
        _ = pump(ur, dw, Vec::new(), gate) => {}
    }
}

/// Reads one frame (4-byte big-endian length + body) and returns it whole, length
/// included; refuses a length over the handshake limit.
async fn read_first_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > HELLO_FRAME_BYTES_MAX {
        return Err(std::io::Error::other("first frame too long for a Hello"));
    }
    let mut frame = vec![0u8; 4 + n];
    frame[..4].copy_from_slice(&len);
    s.read_exact(&mut frame[4..]).await?;
    Ok(frame)
}

/// The sender's member id from a postcard-encoded coordd-raft `Hello` { magic: [u8; 4],
/// protocol_version: u32, cluster_name: String, from: u64, to: u64, channel }: fixed
/// bytes, then varints (a string is a varint length and its bytes).
pub fn hello_sender(body: &[u8]) -> Option<u64> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut b = body;
    if b.get(..4)? != PEER_MAGIC {
        return None;
    }
    b = &b[4..];
    let _version = varint(&mut b)?;
    let name_len = usize::try_from(varint(&mut b)?).ok()?;
    b = b.get(name_len..)?;
    varint(&mut b)
}

/// Whether bytes may pass between the two ends of one connection now.
#[derive(Clone)]
struct Gate {
    rules: watch::Receiver<Rules>,
    from: Option<usize>,
    to: usize,
}

impl Gate {
    /// Waits until the two ends hear each other; false if the mesh is gone.
    async fn open(&mut self) -> bool {
        let (from, to) = (self.from, self.to);
        self.rules.wait_for(|r| !r.blocked(from, to)).await.is_ok()
    }
}

/// Copies `first` and then `from` to `to`, never writing while the gate is shut.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, first: Vec<u8>, mut gate: Gate) {
    if !first.is_empty() && (!gate.open().await || to.write_all(&first).await.is_err()) {
        return;
    }
    let mut buf = vec![0u8; PUMP_BUFFER_BYTES];
    loop {
        if !gate.open().await {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A cut that began while we waited in read holds these bytes too.
        if !gate.open().await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Sends `signal` ("STOP", "CONT", ...) to a process.
pub fn signal(pid: u32, signal: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{signal} {pid} failed");
}

/// A coordd ensemble on 127.0.0.1..n whose peer traffic goes through a [`PeerMesh`].
/// Fields drop in order: the processes first (kill -9, which also ends stopped ones),
/// then the proxies.
pub struct NemesisEnsemble {
    pub coordd: CoorddEnsemble,
    pub mesh: PeerMesh,
    /// Members stopped with SIGSTOP and not yet continued.
    stopped: Vec<bool>,
}

impl NemesisEnsemble {
    /// Starts `n` members with `args` (beyond the id, ensemble and addresses). Must be
    /// called inside a multi-thread tokio runtime: members start on a blocking thread
    /// while the mesh runs on the runtime.
    pub async fn start(n: usize, args: &[&str]) -> NemesisEnsemble {
        let mesh = PeerMesh::start(n).await;
        let list = mesh.ensemble_list();
        let behind = mesh.behind.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let members = tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|i| {
                    let mut a = args.clone();
                    a.extend([
                        "--id".to_string(),
                        (i + 1).to_string(),
                        "--ensemble".to_string(),
                        list.clone(),
                        "--peer-listen-addr".to_string(),
                        behind[i].to_string(),
                    ]);
                    Coordd::start_at(
                        tempfile::tempdir().expect("temp dir"),
                        free_addr(member_ip(i)),
                        &a,
                    )
                })
                .collect::<Vec<_>>()
        })
        .await
        .expect("members started");
        NemesisEnsemble {
            coordd: CoorddEnsemble::from_members(members),
            mesh,
            stopped: vec![false; n],
        }
    }

    pub fn len(&self) -> usize {
        self.coordd.members.len()
    }

    /// Member `i`'s client address.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.coordd.members[i].addr
    }

    /// SIGSTOP: the process stops answering anyone, its sockets stay open.
    pub fn pause(&mut self, i: usize) {
        let pid = self.coordd.members[i].pid().expect("member running");
        signal(pid, "STOP");
        self.stopped[i] = true;
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self, i: usize) {
        let pid = self.coordd.members[i].pid().expect("member running");
        signal(pid, "CONT");
        self.stopped[i] = false;
    }

    /// kill -9.
    pub fn kill9(&mut self, i: usize) {
        self.coordd.members[i].kill9();
        self.stopped[i] = false;
    }

    /// Starts a killed member again on its addresses and data directory; returns once it
    /// answers `ruok`. Blocking.
    pub fn restart(&mut self, i: usize) {
        self.coordd.members[i].restart();
    }

    /// The member that reports itself leader once the others among `alive` follow it.
    /// Blocking.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let all: Vec<usize> = (0..self.len()).collect();
        self.coordd.wait_leader(&all, timeout)
    }

    /// The `Mode:` of member `i` (None if it does not answer). Blocking.
    pub fn mode(&self, i: usize) -> Option<String> {
        self.coordd.mode(i)
    }

    /// The current leadership as the members report it: the member whose `mntr` says
    /// `leader`, and its Raft term (`zk_raft_term`). None while no member leads (or none
    /// answers); if two claim it (an old leader that has not heard of the new one yet),
    /// the one in the later term. A new term is a new leadership even when the same
    /// member wins it again. Blocking.
    pub fn leadership(&self) -> Option<(usize, u64)> {
        (0..self.len())
            .filter_map(|i| {
                let out = four_letter(self.client_addr(i), "mntr")?;
                let value = |key: &str| {
                    out.lines()
                        .find_map(|l| l.strip_prefix(key)?.strip_prefix('\t'))
                        .map(str::trim)
                };
                if value("zk_server_state")? != "leader" {
                    return None;
                }
                Some((i, value("zk_raft_term")?.parse::<u64>().ok()?))
            })
            .max_by_key(|(_, term)| *term)
    }

    /// Copies every member's `coordd.log` into `dir` as `member-<id>.log`.
    pub fn save_logs(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (i, m) in self.coordd.members.iter().enumerate() {
            std::fs::write(dir.join(format!("member-{}.log", i + 1)), m.log())?;
        }
        Ok(())
    }
}

impl Drop for NemesisEnsemble {
    fn drop(&mut self) {
        // SIGKILL ends stopped processes too, but a continued one exits the same way
        // and leaves no zombie behind either way (Coordd::kill9 waits for it).
        for (i, stopped) in self.stopped.iter().enumerate() {
            if *stopped {
                if let Some(pid) = self.coordd.members[i].pid() {
                    let _ = std::process::Command::new("kill")
                        .arg("-CONT")
                        .arg(pid.to_string())
                        .status();
                }
            }
        }
    }
}
