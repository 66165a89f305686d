//! Every open connection, so that none can hold its place for nothing: a connection is
//! closed once it has been idle (no request in flight) for `idle_timeout`, once it has gone
//! `handshake_timeout` without an authenticated request while tokens are required, and, when
//! the server is at `max_connections` and a new client connects, if it is the one idle the
//! longest (unauthenticated ones first; a connection whose requests all wait for their
//! client to send a body counts as idle). A new client finds the server full only when
//! every connection is busy; it is then closed at once rather than left in the kernel's
//! queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The open connections.
pub struct Conns {
    cap: usize,
    epoch: Instant,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
}

/// One open connection's state.
pub struct Conn {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Requests in flight that wait for their client to send their body.
    awaiting: AtomicUsize,
    /// Milliseconds from the epoch to the last request's start or end.
    last_active: AtomicU64,
    authenticated: AtomicBool,
    /// Set once the connection is told to close.
    closing: AtomicBool,
    close: Notify,
}

/// A connection's place among the open ones, given back when dropped.
pub struct Place {
    conns: Arc<Conns>,
    id: u64,
    pub conn: Arc<Conn>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.conns
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Conns {
    pub fn new(cap: usize) -> Arc<Conns> {
        Arc::new(Conns {
            cap,
            epoch: Instant::now(),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// A place for a new connection (`authenticated` when no token is required), making
    /// room at the cap by closing the connection idle the longest; `None` when every
    /// connection is busy.
    pub fn admit(self: &Arc<Self>, authenticated: bool) -> Option<Place> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let staying = open
            .values()
            .filter(|c| !c.closing.load(Ordering::Acquire))
            .count();
        if staying >= self.cap {
            let victim = open
                .values()
                .filter(|c| !c.closing.load(Ordering::Acquire) && c.waits_on_client())
                .min_by_key(|c| {
                    (
                        c.authenticated.load(Ordering::Acquire),
                        c.last_active.load(Ordering::Acquire),
                    )
                })?;
            victim.close_now();
            crate::metrics::connection_closed("evicted");
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            epoch: self.epoch,
            in_flight: AtomicUsize::new(0),
            awaiting: AtomicUsize::new(0),
            last_active: AtomicU64::new(0),
            authenticated: AtomicBool::new(authenticated),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        });
        conn.touch();
        open.insert(id, Arc::clone(&conn));
        Some(Place {
            conns: Arc::clone(self),
            id,
            conn,
        })
    }
}

/// A request in flight on a connection; the connection is not idle while it lives.
pub struct Busy(Arc<Conn>);

/// A request whose body is still to come from its client.
pub struct Awaiting(Arc<Conn>);

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.0.touch();
        self.0.awaiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Conn {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_active.store(self.now(), Ordering::Release);
    }

    fn close_now(&self) {
        self.closing.store(true, Ordering::Release);
        self.close.notify_one();
    }

    /// A request starts.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Busy(Arc::clone(self))
    }

    /// A request in flight waits for its client to send its body.
    pub fn awaiting(self: &Arc<Self>) -> Awaiting {
        self.awaiting.fetch_add(1, Ordering::AcqRel);
        Awaiting(Arc::clone(self))
    }

    /// True when the server does nothing for this connection: every request in flight (if
    /// any) waits for its client. Such a connection may be closed without losing work.
    pub fn waits_on_client(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) <= self.awaiting.load(Ordering::Acquire)
    }

    /// The connection has made a request with a valid token.
    pub fn authenticate(&self) {
        self.authenticated.store(true, Ordering::Release);
    }

    /// Resolves when the connection should close: it was told to (to make room), it has been
    /// idle for `idle`, or it is still unauthenticated at `unauthenticated_until`.
    pub async fn closed(&self, idle: Duration, unauthenticated_until: Instant) {
        loop {
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            let busy = self.in_flight.load(Ordering::Acquire) > 0;
            let authenticated = self.authenticated.load(Ordering::Acquire);
            let now = Instant::now();
            if !authenticated && now >= unauthenticated_until {
                self.closing.store(true, Ordering::Release);
                crate::metrics::connection_closed("unauthenticated");
                return;
            }
            let quiet = Duration::from_millis(
                self.now()
                    .saturating_sub(self.last_active.load(Ordering::Acquire)),
            );
            if !busy && quiet >= idle {
                self.closing.store(true, Ordering::Release);
                crate::metrics::connection_closed("idle");
                return;
            }
            let mut wake = now + idle.saturating_sub(quiet);
            if busy {
                wake = now + idle;
            }
            if !authenticated {
                wake = wake.min(unauthenticated_until);
            }
            tokio::select! {
                () = self.close.notified() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}
