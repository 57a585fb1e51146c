//! A TCP proxy on loopback that a test switches off and on: the network
//! partition of a replicated-cluster test, without touching the host's
//! network (no iptables, no root, nothing left behind when a test dies).
//!
//! Every directed link between two brokers runs through its own [`Proxy`]
//! (broker `i` is told to reach broker `j` at the proxy's address), so a test
//! can cut `i -> j` while `j -> i` and the clients' direct connections still
//! work. [`Proxy::cut`] closes the connections it carries and then treats new
//! ones as a partitioned network would:
//!
//! * [`CutMode::Blackhole`]: accepted, never answered, never forwarded — the
//!   peer's requests hang until its own timeouts fire (a dropped cable).
//! * [`CutMode::Refuse`]: reset at once — the peer fails fast (a host whose
//!   port is closed).
//!
//! [`Proxy::heal`] forwards new connections again (held black-holed ones are
//! closed, so their owners reconnect).
//!
//! Plain threads rather than tokio: the proxy must keep working whatever the
//! test's runtime does (blocking calls, a current-thread runtime, a test that
//! is winding down), and a few dozen loopback connections cost nothing.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// How long connecting to the target may take before the client's
/// connection is closed (loopback answers at once unless the target is gone).
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a cut link does with connections opened while it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Accept and hold them without reading or answering.
    Blackhole,
    /// Accept and reset them at once (RST), as close to "connection
    /// refused" as a port that keeps listening can get.
    Refuse,
}

/// A forwarding proxy from a loopback port of its own to `target`; see the
/// module docs. Dropping it closes every connection and stops its threads.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
    stop: AtomicBool,
    accepted: AtomicU64,
    forwarded_bytes: AtomicU64,
}

#[derive(Default)]
struct State {
    cut: Option<CutMode>,
    next_id: u64,
    /// Both ends of every forwarded connection (clones, for shutdown).
    live: HashMap<u64, Vec<TcpStream>>,
    /// Connections accepted while black-holed.
    held: Vec<TcpStream>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking copier thread must not take the proxy down with it:
        // the state is a set of sockets, valid whatever was interrupted.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Proxy {
    /// Listens on an OS-chosen loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a proxy port")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            forwarded_bytes: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{}", addr.port()))
                .spawn(move || accept_loop(listener, shared))
                .context("starting the proxy thread")?
        };
        Ok(Proxy { addr, shared, acceptor: Some(acceptor) })
    }

    /// Where to connect to reach the target through this proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Closes the connections it carries; new ones are held or reset
    /// (`mode`) until [`heal`](Self::heal).
    pub fn cut(&self, mode: CutMode) {
        let mut state = self.shared.state();
        state.cut = Some(mode);
        for (_, ends) in state.live.drain() {
            for end in ends {
                let _ = end.shutdown(Shutdown::Both);
            }
        }
    }

    /// Forwards new connections again; black-holed ones are closed so their
    /// owners notice and reconnect.
    pub fn heal(&self) {
        let mut state = self.shared.state();
        state.cut = None;
        for held in state.held.drain(..) {
            let _ = held.shutdown(Shutdown::Both);
        }
    }

    pub fn is_cut(&self) -> bool {
        self.shared.state().cut.is_some()
    }

    /// Connections accepted so far (forwarded or not): shows a link is
    /// really used, so cutting it is a real partition.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far, both directions.
    pub fn bytes_forwarded(&self) -> u64 {
        self.shared.forwarded_bytes.load(Ordering::Relaxed)
    }

    /// Forwarded connections open right now.
    pub fn live_connections(&self) -> usize {
        self.shared.state().live.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut(CutMode::Refuse);
        self.heal();
        // Wake the blocking accept so the thread sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = conn.set_nodelay(true);
        let id = {
            let mut state = shared.state();
            match state.cut {
                Some(CutMode::Blackhole) => {
                    state.held.push(conn);
                    continue;
                }
                Some(CutMode::Refuse) => {
                    reset(conn);
                    continue;
                }
                None => {}
            }
            let Ok(client_end) = conn.try_clone() else { continue };
            let id = state.next_id;
            state.next_id += 1;
            state.live.insert(id, vec![client_end]);
            id
        };
        let shared = shared.clone();
        // Connecting upstream happens off the accept thread so one slow
        // target cannot stall the link's other connections.
        let _ =
            std::thread::Builder::new().name("proxy-conn".into()).spawn(move || forward(id, conn, shared));
    }
}

/// Connects to the target and copies both ways until either side closes or
/// the link is cut.
fn forward(id: u64, client: TcpStream, shared: Arc<Shared>) {
    let upstream = match TcpStream::connect_timeout(&shared.target, UPSTREAM_CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(_) => {
            // The target is down: the client sees its connection reset, as
            // it would connecting directly. (The clone in `live` goes
            // first: the reset happens when the last descriptor closes.)
            shared.state().live.remove(&id);
            reset(client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let clones = (client.try_clone(), upstream.try_clone(), upstream.try_clone());
    let (Ok(client_w), Ok(upstream_r), Ok(upstream_end)) = clones else {
        close(id, &client, &upstream, &shared);
        return;
    };
    {
        let mut state = shared.state();
        // Cut while we were connecting: the connection is already gone.
        let Some(ends) = state.live.get_mut(&id) else {
            drop(state);
            close(id, &client, &upstream, &shared);
            return;
        };
        ends.push(upstream_end);
    }
    let back = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("proxy-copy".into())
            .spawn(move || copy(&upstream_r, &client_w, &shared.forwarded_bytes))
            .ok()
    };
    copy(&client, &upstream, &shared.forwarded_bytes);
    // Either direction ending ends the connection: HTTP/2 never half-closes
    // usefully, and a lingering half would keep a cut link half alive.
    close(id, &client, &upstream, &shared);
    if let Some(back) = back {
        let _ = back.join();
    }
}

/// Copies until EOF or an error on either socket.
fn copy(mut from: &TcpStream, mut to: &TcpStream, forwarded: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
        forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn close(id: u64, client: &TcpStream, upstream: &TcpStream, shared: &Shared) {
    shared.state().live.remove(&id);
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
}

/// Closes with a reset rather than a FIN (SO_LINGER 0), so the peer fails at
/// once instead of reading an orderly end of stream. The reset is sent when
/// the last descriptor of the socket closes, so `conn` must be the last one.
fn reset(conn: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket we own, with a correctly sized value;
    // failing only means the close below is an orderly one.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    /// An echo server on loopback that counts the connections it accepted.
    struct Echo {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
    }

    fn echo() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Echo { addr, accepted }
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    }

    /// Sends `msg` and reads the echo; Err with what happened instead.
    fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    /// The connection is over: EOF or a reset/abort, not a timeout.
    fn is_closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "{what}: not within 5 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn forwards_both_ways_and_counts() {
        let server = echo();
        let proxy = Proxy::start(server.addr).unwrap();
        assert_eq!(proxy.target(), server.addr);
        let mut a = connect(proxy.addr());
        let mut b = connect(proxy.addr());
        assert_eq!(round_trip(&mut a, b"hello").unwrap(), b"hello");
        assert_eq!(round_trip(&mut b, b"world!").unwrap(), b"world!");
        let big = vec![7u8; 300_000];
        let mut got = vec![0u8; big.len()];
        let mut writer = a.try_clone().unwrap();
        let sent = big.clone();
        let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        a.read_exact(&mut got).unwrap();
        t.join().unwrap();
        assert!(got == big, "large payload corrupted");
        assert_eq!(proxy.connections_accepted(), 2);
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(proxy.live_connections(), 2);
        // Counted after each write, so the last count may trail the read.
        wait_until("every byte counted", || proxy.bytes_forwarded() == 2 * (5 + 6 + 300_000));
        // A client that hangs up frees its connection on the proxy.
        drop(b);
        wait_until("closed connection released", || proxy.live_connections() == 1);
    }

    #[test]
    fn refuse_closes_live_connections_and_resets_new_ones_until_healed() {
        let server = echo();
        let proxy = Proxy::start(server.addr).unwrap();
        let mut live = connect(proxy.addr());
        assert_eq!(round_trip(&mut live, b"x").unwrap(), b"x");
        proxy.cut(CutMode::Refuse);
        assert!(proxy.is_cut());
        assert!(is_closed(&mut live), "a live connection survived the cut");
        assert_eq!(proxy.live_connections(), 0);
        let mut new = connect(proxy.addr());
        let started = Instant::now();
        assert!(round_trip(&mut new, b"y").is_err(), "forwarded while cut");
        assert!(started.elapsed() < Duration::from_millis(400), "refused connection hung");
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1, "the target saw a connection while cut");
        proxy.heal();
        assert!(!proxy.is_cut());
        let mut again = connect(proxy.addr());
        assert_eq!(round_trip(&mut again, b"z").unwrap(), b"z");
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn blackhole_holds_new_connections_silently_until_healed() {
        let server = echo();
        let proxy = Proxy::start(server.addr).unwrap();
        let mut live = connect(proxy.addr());
        assert_eq!(round_trip(&mut live, b"x").unwrap(), b"x");
        proxy.cut(CutMode::Blackhole);
        assert!(is_closed(&mut live), "a live connection survived the cut");
        let mut held = connect(proxy.addr());
        held.write_all(b"anyone?").unwrap();
        let mut buf = [0u8; 8];
        let err = held.read(&mut buf).expect_err("a black-holed connection answered");
        assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err:?}");
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1, "the target saw a connection while cut");
        proxy.heal();
        // The held connection is closed so its owner reconnects...
        held.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert!(is_closed(&mut held), "a held connection outlived the heal");
        // ...and new connections are forwarded again.
        let mut again = connect(proxy.addr());
        assert_eq!(round_trip(&mut again, b"z").unwrap(), b"z");
    }

    #[test]
    fn a_dead_target_resets_the_client() {
        let gone = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = gone.local_addr().unwrap();
        drop(gone);
        let proxy = Proxy::start(addr).unwrap();
        let mut s = connect(proxy.addr());
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        assert!(is_closed(&mut s), "the client of a dead target was left hanging");
        wait_until("connection released", || proxy.live_connections() == 0);
    }

    #[test]
    fn drop_closes_connections_and_the_port() {
        let server = echo();
        let proxy = Proxy::start(server.addr).unwrap();
        let addr = proxy.addr();
        let mut live = connect(addr);
        assert_eq!(round_trip(&mut live, b"x").unwrap(), b"x");
        drop(proxy);
        assert!(is_closed(&mut live), "a connection outlived its proxy");
        assert!(TcpStream::connect(addr).is_err(), "the proxy port still accepts");
    }
}
