//! Where an end-to-end test runs: one standalone coordd, or a 3-member coordd ensemble
//! with the test's clients spread over the members. A test body is written once as
//! `async fn case(topo: Topology)` (or a plain `fn` for blocking tests) and instantiated
//! for both topologies with [`both_topologies!`]:
//!
//! ```ignore
//! async fn crud(topo: Topology) {
//!     let t = topo.start("crud", &["--tick-time-ms", "100"]);
//!     let c = connect(t.next_addr()).await; // member 0, 1, 2, 0, ... of the ensemble
//!     c.create(&t.p("/a"), ...)             // "/a", or "/crud/a" on a shared ensemble
//! }
//! both_topologies!(async crud);             // tests crud::standalone and crud::ensemble
//! ```
//!
//! `Topology::start` gives a standalone test a fresh server, as before, and an ensemble
//! test the binary's shared ensemble for those flags (started on first use, every case
//! under its own top-level znode `/<case>`: [`Target::p`]); a test that kills or
//! restarts servers, or that needs the whole tree or the servers' logs to itself, asks
//! for its own with [`Topology::start_own`]. Shared ensembles are killed and their
//! directories removed when the test binary exits (`atexit`: statics are never
//! dropped).
//!
//! `COORDD_ENSEMBLE_SLOW=1` runs the ensemble variants that [`both_topologies!`] marks
//! `slow` (skipped with a printed reason otherwise, to keep CI in its time budget).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use super::coordd::{Coordd, CoorddEnsemble};

/// How long a fresh ensemble may take to elect its first leader.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// Members of the ensemble topology.
pub const ENSEMBLE_MEMBERS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One standalone coordd.
    Standalone,
    /// A 3-member coordd ensemble; client `i` of a test talks to member `(o + i) % 3`.
    Ensemble,
}

/// The servers of one test case.
pub struct Target {
    servers: Servers,
    /// The case's top-level znode on a shared ensemble, "" on a server of its own.
    prefix: String,
    /// Member of the first client (varies from case to case on a shared ensemble, so
    /// that a case's first client is not always on the same member).
    offset: usize,
    next: AtomicUsize,
}

enum Servers {
    Standalone(Coordd),
    Shared(Arc<CoorddEnsemble>),
    Own(CoorddEnsemble),
}

/// Ensembles shared by the cases of this test binary, by their members' flags.
static SHARED: Mutex<Option<HashMap<Vec<String>, Arc<CoorddEnsemble>>>> = Mutex::new(None);
static AT_EXIT: Once = Once::new();

extern "C" fn kill_shared_ensembles() {
    // Tests are over; take the ensembles out and drop them (kill -9, remove dirs).
    let mut shared = match SHARED.try_lock() {
        Ok(g) => g,
        // A case that panicked while starting one: the map is still sound.
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    drop(shared.take());
}

fn shared_ensemble(args: &[&str]) -> Arc<CoorddEnsemble> {
    AT_EXIT.call_once(|| {
        // SAFETY: registers a plain function without arguments, as atexit expects.
        let rc = unsafe { libc::atexit(kill_shared_ensembles) };
        assert_eq!(rc, 0, "atexit");
    });
    let key: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    let map = shared.get_or_insert_with(HashMap::new);
    if let Some(e) = map.get(&key) {
        return e.clone();
    }
    let e = Arc::new(start_ensemble(args));
    map.insert(key, e.clone());
    e
}

/// Splits `--tick-time-ms N` off `args` (the ensemble support takes it apart).
fn start_ensemble(args: &[&str]) -> CoorddEnsemble {
    let mut tick = 100u32;
    let mut extra = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if *a == "--tick-time-ms" {
            tick = it
                .next()
                .expect("--tick-time-ms takes a value")
                .parse()
                .expect("--tick-time-ms N");
        } else {
            extra.push(*a);
        }
    }
    let e = CoorddEnsemble::start_with_tick_and(ENSEMBLE_MEMBERS, tick, &extra);
    wait_serving(&e);
    e
}

/// Waits until the ensemble has one leader and every member takes client sessions (a
/// member reports its role in `srvr` up to a tick before it serves clients).
fn wait_serving(e: &CoorddEnsemble) {
    let all: Vec<usize> = (0..e.members.len()).collect();
    e.wait_leader(&all, FORM_TIMEOUT);
    for m in &e.members {
        super::coordd::wait_until(
            &format!("{} to take client sessions", m.addr),
            FORM_TIMEOUT,
            || match super::raw::RawConn::try_new_session(m.addr, 2000) {
                Some(c) => {
                    c.close_session();
                    true
                }
                None => false,
            },
        );
    }
}

impl Topology {
    /// The servers for case `case` with `args` for every server (`--tick-time-ms` too:
    /// the ensemble takes the same tick). Standalone: a fresh server. Ensemble: the
    /// shared ensemble for these flags, the case's nodes under `/<case>`.
    pub fn start(self, case: &str, args: &[&str]) -> Target {
        match self {
            Topology::Standalone => Target::new(Servers::Standalone(Coordd::start_with(args))),
            Topology::Ensemble => {
                let e = shared_ensemble(args);
                let mut t = Target::new(Servers::Shared(e));
                t.prefix = format!("/{case}");
                t.offset = case.bytes().map(usize::from).sum::<usize>() % ENSEMBLE_MEMBERS;
                create_node(t.addr(0), &t.prefix);
                t
            }
        }
    }

    /// Servers of the case's own (it kills, restarts or inspects them, or needs the
    /// whole tree): no prefix.
    pub fn start_own(self, args: &[&str]) -> Target {
        match self {
            Topology::Standalone => Target::new(Servers::Standalone(Coordd::start_with(args))),
            Topology::Ensemble => Target::new(Servers::Own(start_ensemble(args))),
        }
    }
}

impl Target {
    fn new(servers: Servers) -> Target {
        Target {
            servers,
            prefix: String::new(),
            offset: 0,
            next: AtomicUsize::new(0),
        }
    }

    pub fn topology(&self) -> Topology {
        match self.servers {
            Servers::Standalone(_) => Topology::Standalone,
            _ => Topology::Ensemble,
        }
    }

    pub fn is_ensemble(&self) -> bool {
        self.topology() == Topology::Ensemble
    }

    /// The processes: one, or every member.
    pub fn members(&self) -> Vec<&Coordd> {
        match &self.servers {
            Servers::Standalone(c) => vec![c],
            Servers::Shared(e) => e.members.iter().collect(),
            Servers::Own(e) => e.members.iter().collect(),
        }
    }

    fn members_mut(&mut self) -> Vec<&mut Coordd> {
        match &mut self.servers {
            Servers::Standalone(c) => vec![c],
            Servers::Shared(_) => panic!("a shared ensemble is not the case's to kill"),
            Servers::Own(e) => e.members.iter_mut().collect(),
        }
    }

    /// `path` under the case's prefix: "/a" -> "/<case>/a", "/" -> "/<case>".
    pub fn p(&self, path: &str) -> String {
        assert!(path.starts_with('/'), "absolute path expected: {path}");
        if self.prefix.is_empty() {
            path.to_string()
        } else if path == "/" {
            self.prefix.clone()
        } else {
            format!("{}{path}", self.prefix)
        }
    }

    /// The client address of client `i` of the case: the standalone server, or member
    /// `(offset + i) % 3`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        let m = self.members();
        m[(self.offset + i) % m.len()].addr
    }

    /// The address for the case's next client (0, 1, 2, ...): see [`Target::addr`].
    pub fn next_addr(&self) -> SocketAddr {
        self.addr(self.next.fetch_add(1, Ordering::SeqCst))
    }

    /// Every server's address, starting with the one of client `i` (comma separated).
    pub fn servers_from(&self, i: usize) -> String {
        let n = self.members().len();
        (0..n)
            .map(|k| self.addr(i + k).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The server process listening on `addr`.
    pub fn member_at(&self, addr: SocketAddr) -> &Coordd {
        self.members()
            .into_iter()
            .find(|m| m.addr == addr)
            .unwrap_or_else(|| panic!("no server on {addr}"))
    }

    /// The `Mode:` every server must report in `srvr`: "standalone", or exactly one
    /// "leader" and the rest "follower" (in the order of [`Target::members`]).
    pub fn modes(&self) -> Vec<String> {
        self.members()
            .iter()
            .map(|m| {
                let out = super::coordd::four_letter(m.addr, "srvr").unwrap_or_default();
                out.lines()
                    .find_map(|l| l.strip_prefix("Mode: "))
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    /// kill -9 of every server, then all start again on their ports and data
    /// directories (an ensemble: once it has a leader again). Blocking.
    pub fn kill9_and_restart_all(&mut self) {
        for m in self.members_mut() {
            m.kill9();
        }
        for m in self.members_mut() {
            m.restart();
        }
        self.wait_ready();
    }

    /// SIGTERM to every server; their exit statuses.
    pub fn terminate_all(&mut self) -> Vec<Option<std::process::ExitStatus>> {
        self.members_mut()
            .into_iter()
            .map(|m| m.terminate())
            .collect()
    }

    fn wait_ready(&self) {
        match &self.servers {
            Servers::Standalone(_) => {}
            Servers::Shared(e) => wait_serving(e),
            Servers::Own(e) => wait_serving(e),
        }
    }

    /// Every server's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (i, m) in self.members().iter().enumerate() {
            s.push_str(&format!(
                "\n===== coordd {} ({}) log =====\n{}\n",
                i + 1,
                m.addr,
                m.log()
            ));
        }
        s
    }
}

/// Creates a persistent node with a throwaway session (the case's prefix).
fn create_node(addr: SocketAddr, path: &str) {
    use coordd_proto::{Acl, CreateRequest, OpCode, Request};
    let mut c = super::raw::RawConn::new_session(addr, 2000);
    let (r, _) = c.call(&Request::Create {
        op: OpCode::Create,
        req: CreateRequest {
            path: path.into(),
            data: Vec::new(),
            acl: Acl::open_unsafe(),
            flags: 0,
        },
        ttl: 0,
    });
    assert_eq!(r.header.err, 0, "create {path} on {addr}");
    c.close_session();
}

/// Whether the ensemble variants marked slow run (`COORDD_ENSEMBLE_SLOW=1`).
pub fn slow_ensemble_enabled(case: &str) -> bool {
    if std::env::var("COORDD_ENSEMBLE_SLOW").is_ok_and(|v| v == "1") {
        return true;
    }
    eprintln!("SKIP {case}::ensemble: slow; COORDD_ENSEMBLE_SLOW=1 runs it");
    false
}

/// Instantiates a case for both topologies: `both_topologies!(async name)` makes
/// `name::standalone` and `name::ensemble` (`#[tokio::test]`) calling
/// `name(Topology::Standalone)` / `name(Topology::Ensemble)`;
/// `both_topologies!(async(flavor = "multi_thread", worker_threads = 2) name)` passes
/// arguments to `tokio::test`; `both_topologies!(sync name)` makes `#[test]`s. A
/// trailing `slow` runs the ensemble variant only with `COORDD_ENSEMBLE_SLOW=1`.
#[macro_export]
macro_rules! both_topologies {
    (async $case:ident $($slow:ident)?) => {
        $crate::both_topologies!(async() $case $($slow)?);
    };
    (async($($targs:tt)*) $case:ident $($slow:ident)?) => {
        mod $case {
            use $crate::support::target::Topology;
            #[tokio::test($($targs)*)]
            async fn standalone() {
                super::$case(Topology::Standalone).await
            }
            #[tokio::test($($targs)*)]
            async fn ensemble() {
                if $crate::both_topologies!(@run $case $($slow)?) {
                    super::$case(Topology::Ensemble).await
                }
            }
        }
    };
    (sync $case:ident $($slow:ident)?) => {
        mod $case {
            use $crate::support::target::Topology;
            #[test]
            fn standalone() {
                super::$case(Topology::Standalone)
            }
            #[test]
            fn ensemble() {
                if $crate::both_topologies!(@run $case $($slow)?) {
                    super::$case(Topology::Ensemble)
                }
            }
        }
    };
    (@run $case:ident) => {
        true
    };
    (@run $case:ident slow) => {
        $crate::support::target::slow_ensemble_enabled(stringify!($case))
    };
}
