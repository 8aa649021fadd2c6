//! The link to libvirtd, kept alive across libvirtd restarts.
//!
//! A libvirt connection dies with the daemon (a package upgrade restarts
//! it, an operator does, it crashes), and every handle taken through it
//! dies too. The link owns the current connection and a generation number
//! that grows with every new one:
//!
//! - A watchdog task asks the connection every [`ReconnectPolicy::probe`]
//!   whether it is alive (`virConnectIsAlive`: a closed socket shows at once,
//!   a hung daemon after libvirt's keepalive gives up). A call that fails with
//!   a dead connection's error wakes it at once.
//! - Once the connection is lost, the watchdog reconnects with capped
//!   exponential backoff until it succeeds, and publishes the link's
//!   [`ConnectionHealth`] all along.
//! - A call that failed on a dead connection and is safe to repeat waits
//!   for the new connection (up to [`ReconnectPolicy::call_wait`]) and runs
//!   again on it; one that is not safe to repeat returns its error, and the
//!   next call uses the new connection. A call that cannot get a connection
//!   in time fails with [`LibvirtError::Unreachable`].
//!
//! ```text
//!   Connected(g) ──call fails / probe: dead──> Lost ──reconnected──> Connected(g+1)
//!                                               │ ^
//!                                               └─┘ attempt failed: back off (≤ max_delay)
//! ```

use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use virt::connect::Connect;

use crate::error::LibvirtError;

/// Seconds between keepalive probes on a daemon connection.
pub const KEEPALIVE_INTERVAL_S: i32 = 5;

/// Unanswered keepalive probes after which libvirt closes the connection.
pub const KEEPALIVE_COUNT: u32 = 3;

/// How the link watches and heals its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// How often the watchdog asks whether the connection is alive.
    pub probe: Duration,
    /// The first wait after a failed reconnect attempt.
    pub first_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
    /// How long a call that is safe to repeat waits for a lost connection to
    /// come back before it fails with [`LibvirtError::Unreachable`].
    pub call_wait: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            probe: Duration::from_millis(500),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            call_wait: Duration::from_secs(10),
        }
    }
}

/// Whether the link has a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionHealth {
    /// Connected; `generation` counts the connections so far (1 for the
    /// first one).
    Connected {
        /// Which connection this is.
        generation: u64,
    },
    /// The connection was lost and has not come back yet.
    Lost {
        /// When the loss was noticed.
        since: Instant,
        /// Reconnect attempts that failed so far.
        attempts: u32,
        /// Why the last attempt (or the lost connection) failed.
        last_error: String,
    },
}

impl ConnectionHealth {
    /// Whether there is a connection.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }
}

/// Whether a call may run again on a new connection after the old one died
/// under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// Reading, or an operation whose second run ends where the first would
    /// have (define, destroy, load a snapshot, apply a network).
    Safe,
    /// An operation that may have happened although its answer was lost
    /// (start, restore, save, take a snapshot): the caller decides.
    Never,
}

/// The current connection and its generation.
struct Current {
    conn: Arc<Connect>,
    generation: u64,
}

/// What the [`crate::Libvirt`] handles share.
pub(crate) struct Link {
    uri: String,
    policy: ReconnectPolicy,
    current: RwLock<Current>,
    health: watch::Sender<ConnectionHealth>,
    /// Wakes the watchdog when a call saw the connection die.
    lost: Notify,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("uri", &self.uri)
            .field("health", &*self.health.borrow())
            .finish_non_exhaustive()
    }
}

/// Opens a connection to `uri` with keepalive (blocking).
fn connect(uri: &str) -> Result<Connect, virt::error::Error> {
    let conn = Connect::open(Some(uri))?;
    // In-process drivers (the test driver) have no keepalive and refuse.
    let _ = conn.set_keep_alive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT);
    Ok(conn)
}

impl Link {
    /// Connects to `uri` and starts the watchdog on the current runtime.
    pub(crate) async fn open(
        uri: &str,
        policy: ReconnectPolicy,
    ) -> Result<Arc<Self>, LibvirtError> {
        let owned = uri.to_owned();
        let conn =
            crate::error::blocking("connect to", uri.to_owned(), move || connect(&owned)).await?;
        let (health, _) = watch::channel(ConnectionHealth::Connected { generation: 1 });
        let link = Arc::new(Self {
            uri: uri.to_owned(),
            policy,
            current: RwLock::new(Current {
                conn: Arc::new(conn),
                generation: 1,
            }),
            health,
            lost: Notify::new(),
        });
        tokio::spawn(watchdog(Arc::downgrade(&link)));
        Ok(link)
    }

    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    pub(crate) fn policy(&self) -> ReconnectPolicy {
        self.policy
    }

    /// The connection calls use now, and its generation.
    pub(crate) fn current(&self) -> (Arc<Connect>, u64) {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (Arc::clone(&current.conn), current.generation)
    }

    pub(crate) fn health_changes(&self) -> watch::Receiver<ConnectionHealth> {
        self.health.subscribe()
    }

    pub(crate) fn health(&self) -> ConnectionHealth {
        self.health.borrow().clone()
    }

    /// A call on connection `generation` failed as a dead connection does:
    /// mark the link lost (unless a newer connection exists) and wake the
    /// watchdog.
    pub(crate) fn report_dead(&self, generation: u64, error: &LibvirtError) {
        if self.current().1 != generation {
            return;
        }
        self.health.send_if_modified(|health| match health {
            ConnectionHealth::Connected { .. } => {
                *health = ConnectionHealth::Lost {
                    since: Instant::now(),
                    attempts: 0,
                    last_error: error_chain(error),
                };
                true
            }
            ConnectionHealth::Lost { .. } => false,
        });
        self.lost.notify_one();
    }

    /// Waits until a connection newer than `generation` is up, or `deadline`.
    pub(crate) async fn wait_newer(
        &self,
        generation: u64,
        deadline: Instant,
    ) -> Result<(), LibvirtError> {
        let mut health = self.health.subscribe();
        loop {
            if let ConnectionHealth::Connected { generation: now } = &*health.borrow_and_update() {
                if *now > generation {
                    return Ok(());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, health.changed()).await.is_err() {
                return Err(self.unreachable());
            }
        }
    }

    /// The error of a call that could not get a connection.
    pub(crate) fn unreachable(&self) -> LibvirtError {
        match self.health() {
            ConnectionHealth::Lost {
                since,
                attempts,
                last_error,
            } => LibvirtError::Unreachable {
                uri: self.uri.clone(),
                down_for: since.elapsed(),
                attempts,
                last_error,
            },
            ConnectionHealth::Connected { .. } => LibvirtError::Unreachable {
                uri: self.uri.clone(),
                down_for: Duration::ZERO,
                attempts: 0,
                last_error: "the connection came back after the wait".into(),
            },
        }
    }

    /// Installs a new connection and says so.
    fn install(&self, conn: Connect) {
        let old = {
            let mut current = self
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            current.generation += 1;
            let generation = current.generation;
            self.health
                .send_replace(ConnectionHealth::Connected { generation });
            std::mem::replace(&mut current.conn, Arc::new(conn))
        };
        // Freeing a connection to a dead daemon is an RPC that fails, and
        // the `virt` crate panics when a free fails: do it off the async
        // workers and contain the panic.
        tokio::task::spawn_blocking(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(old)));
        });
    }

    fn note_failed_attempt(&self, error: &virt::error::Error) {
        self.health.send_modify(|health| {
            if let ConnectionHealth::Lost {
                attempts,
                last_error,
                ..
            } = health
            {
                *attempts += 1;
                *last_error = error.to_string();
            }
        });
    }
}

/// Watches the link's connection and reconnects once it is lost, for as long
/// as the link lives.
async fn watchdog(link: Weak<Link>) {
    loop {
        // Held for one round (at most a probe interval), so a dropped link
        // ends the watchdog within that.
        let Some(strong) = link.upgrade() else { return };
        let lost = strong.lost.notified();
        let (conn, generation) = strong.current();
        let alive = tokio::task::spawn_blocking(move || conn.is_alive().unwrap_or(false))
            .await
            .unwrap_or(false);
        if alive && strong.health().is_connected() {
            // Until the next probe, or until a call reports a dead
            // connection.
            let _ = tokio::time::timeout(strong.policy.probe, lost).await;
            continue;
        }
        // Dead, or a call saw a dead connection's error although the
        // connection says it is alive (a transport error the daemon
        // survived): reconnect either way; it is cheap.
        let error = LibvirtError::Unreachable {
            uri: strong.uri.clone(),
            down_for: Duration::ZERO,
            attempts: 0,
            last_error: "the connection to libvirtd closed".into(),
        };
        strong.report_dead(generation, &error);
        drop(lost);
        drop(strong);
        reconnect(&link).await;
    }
}

/// Reconnects with capped exponential backoff until it succeeds or the link
/// is dropped.
async fn reconnect(link: &Weak<Link>) {
    let mut delay = None;
    loop {
        let Some(strong) = link.upgrade() else { return };
        let policy = strong.policy;
        let uri = strong.uri.clone();
        drop(strong);
        let attempt = tokio::task::spawn_blocking(move || connect(&uri)).await;
        let Some(strong) = link.upgrade() else { return };
        match attempt {
            Ok(Ok(conn)) => {
                tracing::info!(uri = strong.uri, "reconnected to libvirtd");
                strong.install(conn);
                return;
            }
            Ok(Err(error)) => {
                tracing::debug!(uri = strong.uri, %error, "libvirtd is still unreachable");
                strong.note_failed_attempt(&error);
            }
            // The blocking pool is going away with the runtime.
            Err(_) => return,
        }
        drop(strong);
        let next = delay.map_or(policy.first_delay, |d: Duration| {
            (d * 2).min(policy.max_delay)
        });
        delay = Some(next);
        tokio::time::sleep(next).await;
    }
}

/// An error and its sources, on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
