//! The pre-warmed pool: slots made ready ahead of demand, handed out as
//! [`Lease`]s, and reset to the golden state after every use.
//!
//! # A slot's life
//!
//! ```text
//!   create ──> ready ──acquire──> leased ──release/drop──> resetting ──> ready
//!     │          │                                             │
//!     │          └─health check fails──> destroyed <──reset fails, TTL or max uses
//!     └─fails──> (retried by the refill)        │
//!                                               └──> replaced by the refill
//! ```
//!
//! What a slot is and how it is made, reset, checked and destroyed is a
//! [`SlotBackend`]'s business: [`crate::VmBackend`] runs real VMs restored
//! from a golden image; the tests also run the pool on libvirt's test driver
//! with a backend that fails on command.
//!
//! # Rules
//!
//! - `acquire()` takes a ready slot at once when nobody waits before it;
//!   otherwise it queues (first come, first served) while the pool grows up
//!   to `max_size`, and fails with [`PoolError::AcquireTimeout`] at its
//!   timeout. A slot handed to an acquire that was dropped meanwhile goes to
//!   the next waiter or back to ready: dropping an acquire never loses one.
//! - Releasing (or dropping) a lease returns at once; the reset runs in the
//!   background and the slot becomes ready again. A slot whose reset or
//!   health check fails or times out is destroyed, and so is one past its TTL
//!   or its maximum number of uses; the refill replaces it.
//! - The refill keeps `min_ready` slots ready (or on their way) plus one per
//!   waiter, within `max_size`. At most `max_concurrent_prepares` creations
//!   and resets run at once.
//! - On start the backend removes what a crashed earlier process left behind;
//!   [`Pool::shutdown`] destroys every slot, and leases released after it are
//!   destroyed instead of reset. Dropping the last [`Pool`] handle without a
//!   shutdown does the same for the ready slots, synchronously.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot};
use tokio_util::task::TaskTracker;

/// Why a pool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No slot became free within the acquire timeout.
    #[error("No sandbox was free within {after:?}{}", last_error.as_deref().map(|e| format!(" (last slot failure: {e})")).unwrap_or_default())]
    AcquireTimeout {
        /// The acquire timeout.
        after: Duration,
        /// The most recent failure to make a slot, if any: why the pool
        /// could not grow.
        last_error: Option<String>,
    },
    /// The pool has been shut down.
    #[error("The pool is shut down")]
    Closed,
    /// A backend operation did not finish in time.
    #[error("Slot {operation} did not finish within {after:?}")]
    Timeout {
        /// The operation.
        operation: &'static str,
        /// Its time limit.
        after: Duration,
    },
    /// A sandbox operation failed.
    #[error("Sandbox operation failed")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// A libvirt call failed.
    #[error("Libvirt failed")]
    Libvirt(#[from] paddock_libvirt::LibvirtError),
    /// The agent failed.
    #[error("The agent failed")]
    Agent(#[from] paddock_agent_client::ClientError),
    /// The pool's network or filters could not be defined.
    #[error("Cannot set up the pool's network")]
    Network(#[from] paddock_libvirt::ApplyError),
    /// A disk image operation failed.
    #[error("Disk image operation failed")]
    Disk(#[from] paddock_libvirt::OverlayError),
    /// A file operation failed.
    #[error("Cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A slot was not what it must be (e.g. a reset guest that does not
    /// report a restored state), or a backend failed for its own reasons.
    #[error("Slot failure: {0}")]
    Slot(String),
    /// The pool's configuration is unusable.
    #[error("Invalid pool configuration: {0}")]
    Config(&'static str),
}

/// How slots are made, reset, checked and destroyed.
pub trait SlotBackend: Send + Sync + 'static {
    /// A slot: what a lease gives access to.
    type Slot: Send + Sync + 'static;

    /// Makes slot number `index` ready for use.
    fn create(&self, index: u32) -> impl Future<Output = Result<Self::Slot, PoolError>> + Send;

    /// Brings a used slot back to the golden state.
    fn reset(&self, slot: &mut Self::Slot) -> impl Future<Output = Result<(), PoolError>> + Send;

    /// Checks that a ready slot still works.
    fn check(&self, slot: &Self::Slot) -> impl Future<Output = Result<(), PoolError>> + Send;

    /// Destroys a slot and everything it had.
    fn destroy(&self, slot: Self::Slot) -> impl Future<Output = Result<(), PoolError>> + Send;

    /// Removes what an earlier process left behind; returns how many slots.
    fn recover(&self) -> impl Future<Output = Result<usize, PoolError>> + Send;

    /// Destroys a slot without async machinery, on the calling thread: for
    /// a pool whose last handle is dropped without a shutdown (a panic, an
    /// early return), when the runtime may be going away. Best effort.
    fn discard_blocking(&self, slot: Self::Slot);
}

/// How a pool behaves.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Slots kept ready (or on their way) when idle.
    pub min_ready: usize,
    /// The most slots the pool has at once, leased ones included.
    pub max_size: usize,
    /// The most creations and resets running at once.
    pub max_concurrent_prepares: usize,
    /// A slot older than this is destroyed at its next release.
    pub ttl: Option<Duration>,
    /// A slot used this many times is destroyed at its next release.
    pub max_uses: Option<u32>,
    /// How often ready slots are checked; `None` for never.
    pub health_check_interval: Option<Duration>,
    /// How long `acquire()` waits for a slot.
    pub acquire_timeout: Duration,
    /// The time limit of one creation.
    pub create_timeout: Duration,
    /// The time limit of one reset, check or destruction.
    pub operation_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_ready: 2,
            max_size: 4,
            max_concurrent_prepares: 2,
            ttl: None,
            max_uses: None,
            health_check_interval: Some(Duration::from_secs(30)),
            acquire_timeout: Duration::from_secs(60),
            create_timeout: Duration::from_secs(120),
            operation_timeout: Duration::from_secs(30),
        }
    }
}

impl PoolConfig {
    /// Checks the sizes and timeouts make sense.
    ///
    /// # Errors
    /// [`PoolError::Config`] saying what does not.
    pub fn validate(&self) -> Result<(), PoolError> {
        if self.max_size == 0 {
            return Err(PoolError::Config("max_size must be at least 1"));
        }
        if self.min_ready > self.max_size {
            return Err(PoolError::Config("min_ready must not exceed max_size"));
        }
        if self.max_concurrent_prepares == 0 {
            return Err(PoolError::Config(
                "max_concurrent_prepares must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Counts of the pool's slots, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Slots that exist or are being created.
    pub total: usize,
    /// Slots ready to be acquired.
    pub ready: usize,
    /// Slots out on lease.
    pub leased: usize,
    /// Slots being created, reset or checked.
    pub preparing: usize,
    /// Acquires waiting for a slot.
    pub waiting: usize,
    /// Slots created since the pool started.
    pub created: u64,
    /// Slots destroyed since the pool started (failed, expired, shut down).
    pub destroyed: u64,
    /// Resets that failed.
    pub failed_resets: u64,
}

/// A slot with its bookkeeping.
struct Entry<S> {
    slot: S,
    index: u32,
    created: Instant,
    uses: u32,
}

/// A slot on its way to an acquire. If the acquire is gone by the time it
/// arrives (its future dropped), dropping the delivery returns the slot.
struct Delivery<B: SlotBackend> {
    entry: Option<Entry<B::Slot>>,
    pool: Weak<Inner<B>>,
}

impl<B: SlotBackend> Drop for Delivery<B> {
    fn drop(&mut self) {
        if let (Some(entry), Some(pool)) = (self.entry.take(), self.pool.upgrade()) {
            let mut state = pool.lock();
            state.leased -= 1;
            pool.offer(&mut state, entry);
        }
    }
}

struct State<B: SlotBackend> {
    ready: VecDeque<Entry<B::Slot>>,
    waiters: VecDeque<oneshot::Sender<Delivery<B>>>,
    leased: usize,
    preparing: usize,
    next_index: u32,
    closed: bool,
    last_error: Option<String>,
    created: u64,
    destroyed: u64,
    failed_resets: u64,
}

impl<B: SlotBackend> State<B> {
    /// Slots that exist or are being created: every slot is ready, leased
    /// or being prepared (created, reset or checked).
    fn total(&self) -> usize {
        self.ready.len() + self.leased + self.preparing
    }
}

struct Inner<B: SlotBackend> {
    backend: B,
    config: PoolConfig,
    state: Mutex<State<B>>,
    prepares: Semaphore,
    tasks: TaskTracker,
    runtime: tokio::runtime::Handle,
    me: Weak<Inner<B>>,
}

/// A pool of slots. Cheap to clone; every clone is the same pool.
///
/// Shut it down with [`Pool::shutdown`] (or `close` for VM pools). If the
/// last handle is dropped without that (a panic, an early return), the drop
/// closes the pool and destroys its ready slots on a helper thread that it
/// waits for; slots out on lease are destroyed when their lease ends. Slots
/// of a process that died are removed when a pool of the same name starts.
pub struct Pool<B: SlotBackend> {
    inner: Arc<Inner<B>>,
    /// Shared by the clones handed to users (not by the pool's own tasks):
    /// its drop is the drop of the last handle.
    _handle: Arc<LastHandle<B>>,
}

impl<B: SlotBackend> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            _handle: Arc::clone(&self._handle),
        }
    }
}

/// Abandons the pool when the last user handle goes.
struct LastHandle<B: SlotBackend>(Arc<Inner<B>>);

impl<B: SlotBackend> Drop for LastHandle<B> {
    fn drop(&mut self) {
        let ready = {
            let mut state = self.0.lock();
            if state.closed {
                return;
            }
            state.closed = true;
            state.waiters.clear();
            let ready = std::mem::take(&mut state.ready);
            state.destroyed += u64::try_from(ready.len()).unwrap_or(u64::MAX);
            ready
        };
        if ready.is_empty() {
            return;
        }
        let inner = Arc::clone(&self.0);
        // A thread of its own: the backend blocks, and this drop may run on
        // an async worker.
        let discard = std::thread::Builder::new()
            .name("paddock-pool-drop".into())
            .spawn(move || {
                for entry in ready {
                    inner.backend.discard_blocking(entry.slot);
                }
            });
        if let Ok(thread) = discard {
            let _ = thread.join();
        }
    }
}

impl<B: SlotBackend> std::fmt::Debug for Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<B: SlotBackend> Pool<B> {
    /// Starts a pool: the backend removes leftovers of an earlier process,
    /// then the refill starts making `min_ready` slots (in the background:
    /// this returns before they are ready; see [`Pool::wait_ready`]).
    ///
    /// # Errors
    /// An invalid configuration, or the backend's recovery fails.
    pub async fn start(backend: B, config: PoolConfig) -> Result<Self, PoolError> {
        config.validate()?;
        let recovered = backend.recover().await?;
        if recovered > 0 {
            tracing::info!(recovered, "removed slots an earlier process left behind");
        }
        let inner = Arc::new_cyclic(|me| Inner {
            prepares: Semaphore::new(config.max_concurrent_prepares),
            backend,
            config,
            state: Mutex::new(State {
                ready: VecDeque::new(),
                waiters: VecDeque::new(),
                leased: 0,
                preparing: 0,
                next_index: 0,
                closed: false,
                last_error: None,
                created: 0,
                destroyed: 0,
                failed_resets: 0,
            }),
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            me: me.clone(),
        });
        {
            let mut state = inner.lock();
            inner.refill(&mut state);
        }
        if let Some(interval) = inner.config.health_check_interval {
            let weak = Arc::downgrade(&inner);
            inner.tasks.spawn(health_checks(weak, interval));
        }
        Ok(Self {
            _handle: Arc::new(LastHandle(Arc::clone(&inner))),
            inner,
        })
    }

    /// Waits until `min_ready` slots are ready, or `timeout` passes.
    ///
    /// # Errors
    /// [`PoolError::AcquireTimeout`] (with the last slot failure) on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), PoolError> {
        let deadline = Instant::now() + timeout;
        loop {
            let (ready, last_error) = {
                let state = self.inner.lock();
                (state.ready.len(), state.last_error.clone())
            };
            if ready >= self.inner.config.min_ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PoolError::AcquireTimeout {
                    after: timeout,
                    last_error,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes a ready slot, waiting up to the acquire timeout for one.
    ///
    /// # Errors
    /// [`PoolError::AcquireTimeout`] or [`PoolError::Closed`].
    pub async fn acquire(&self) -> Result<Lease<B>, PoolError> {
        let timeout = self.inner.config.acquire_timeout;
        let receiver = {
            let mut state = self.inner.lock();
            if state.closed {
                return Err(PoolError::Closed);
            }
            state.waiters.retain(|waiter| !waiter.is_closed());
            if state.waiters.is_empty() {
                if let Some(entry) = state.ready.pop_front() {
                    state.leased += 1;
                    self.inner.refill(&mut state);
                    drop(state);
                    return Ok(self.lease(entry));
                }
            }
            let (sender, receiver) = oneshot::channel();
            state.waiters.push_back(sender);
            self.inner.refill(&mut state);
            receiver
        };
        let mut receiver = receiver;
        let delivered = match tokio::time::timeout(timeout, &mut receiver).await {
            Ok(Ok(delivery)) => delivery,
            Ok(Err(_)) => return Err(PoolError::Closed),
            Err(_) => {
                // A slot may have arrived just as the time ran out: take it.
                receiver.close();
                match receiver.try_recv() {
                    Ok(delivery) => delivery,
                    Err(_) => {
                        return Err(PoolError::AcquireTimeout {
                            after: timeout,
                            last_error: self.inner.lock().last_error.clone(),
                        });
                    }
                }
            }
        };
        let mut delivered = delivered;
        let entry = delivered.entry.take().ok_or(PoolError::Closed)?;
        Ok(self.lease(entry))
    }

    fn lease(&self, entry: Entry<B::Slot>) -> Lease<B> {
        Lease {
            entry: Some(entry),
            pool: Arc::clone(&self.inner),
        }
    }

    /// The pool's counters.
    #[must_use]
    pub fn stats(&self) -> PoolStats {
        let state = self.inner.lock();
        PoolStats {
            total: state.total(),
            ready: state.ready.len(),
            leased: state.leased,
            preparing: state.preparing,
            waiting: state.waiters.iter().filter(|w| !w.is_closed()).count(),
            created: state.created,
            destroyed: state.destroyed,
            failed_resets: state.failed_resets,
        }
    }

    /// The pool's configuration.
    #[must_use]
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// The backend.
    #[must_use]
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// Stops the pool: waiting acquires fail with [`PoolError::Closed`],
    /// ready slots are destroyed, creations and resets in flight end with
    /// their slot destroyed, and leases still out are destroyed when
    /// released. Returns once all of that but the outstanding leases is done.
    pub async fn shutdown(&self) {
        let ready = {
            let mut state = self.inner.lock();
            state.closed = true;
            state.waiters.clear();
            std::mem::take(&mut state.ready)
        };
        for entry in ready {
            self.inner.destroy(entry).await;
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl<B: SlotBackend> Inner<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // The state is consistent between statements; a panic elsewhere
        // does not make it unusable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands `entry` to the first live waiter, or makes it ready.
    fn offer(&self, state: &mut State<B>, entry: Entry<B::Slot>) {
        if state.closed {
            state.destroyed += 1;
            self.spawn_destroy(entry);
            return;
        }
        let mut entry = entry;
        while let Some(waiter) = state.waiters.pop_front() {
            state.leased += 1;
            let delivery = Delivery {
                entry: Some(entry),
                pool: self.me.clone(),
            };
            match waiter.send(delivery) {
                Ok(()) => return,
                Err(mut returned) => {
                    state.leased -= 1;
                    match returned.entry.take() {
                        Some(back) => entry = back,
                        None => return,
                    }
                }
            }
        }
        state.ready.push_back(entry);
    }

    /// Starts creations until `min_ready` plus the waiters are covered.
    fn refill(&self, state: &mut State<B>) {
        if state.closed {
            return;
        }
        let waiting = state.waiters.iter().filter(|w| !w.is_closed()).count();
        let wanted = self.config.min_ready + waiting;
        let coming = state.ready.len() + state.preparing;
        let room = self.config.max_size.saturating_sub(state.total());
        for _ in 0..wanted.saturating_sub(coming).min(room) {
            state.preparing += 1;
            let index = state.next_index;
            state.next_index = state.next_index.wrapping_add(1);
            if let Some(me) = self.me.upgrade() {
                self.tasks.spawn(async move { me.create(index).await });
            }
        }
    }

    async fn create(self: Arc<Self>, index: u32) {
        let result = match self.prepares.acquire().await {
            Ok(_permit) => {
                limited(
                    "creation",
                    self.config.create_timeout,
                    self.backend.create(index),
                )
                .await
            }
            Err(_) => Err(PoolError::Closed),
        };
        let failed = {
            let mut state = self.lock();
            state.preparing -= 1;
            match result {
                Ok(slot) => {
                    state.created += 1;
                    let entry = Entry {
                        slot,
                        index,
                        created: Instant::now(),
                        uses: 0,
                    };
                    self.offer(&mut state, entry);
                    false
                }
                Err(err) => {
                    tracing::warn!(index, error = %error_chain(&err), "slot creation failed");
                    state.last_error = Some(error_chain(&err));
                    true
                }
            }
        };
        if failed {
            // Not at once: a backend that cannot create now (a missing
            // image, a dead libvirtd) would otherwise be hammered.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut state = self.lock();
        self.refill(&mut state);
    }

    /// Takes a slot back from a lease: reset it, or destroy it if it is
    /// worn out, in the background.
    fn recycle(&self, mut entry: Entry<B::Slot>) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        entry.uses += 1;
        let worn_out = self.config.max_uses.is_some_and(|max| entry.uses >= max)
            || self
                .config
                .ttl
                .is_some_and(|ttl| entry.created.elapsed() >= ttl);
        {
            let mut state = self.lock();
            state.leased -= 1;
            if state.closed || worn_out {
                state.destroyed += 1;
                self.refill(&mut state);
                drop(state);
                self.spawn_destroy(entry);
                return;
            }
            state.preparing += 1;
        }
        let task = async move {
            let result = match me.prepares.acquire().await {
                Ok(_permit) => {
                    limited(
                        "reset",
                        me.config.operation_timeout,
                        me.backend.reset(&mut entry.slot),
                    )
                    .await
                }
                Err(_) => Err(PoolError::Closed),
            };
            let failed = me.settle(entry, result, Settle::Reset);
            if let Some(entry) = failed {
                me.destroy_now(entry).await;
            }
        };
        // Tracked even after `shutdown` closed the tracker: its wait then
        // covers this task too.
        self.tasks.spawn_on(task, &self.runtime);
    }

    /// Ends a reset or a health check: the slot goes to a waiter or ready,
    /// or, when `result` failed, is counted out and returned for
    /// destruction (and the refill replaces it).
    fn settle(
        &self,
        entry: Entry<B::Slot>,
        result: Result<(), PoolError>,
        what: Settle,
    ) -> Option<Entry<B::Slot>> {
        let mut state = self.lock();
        state.preparing -= 1;
        match result {
            Ok(()) => {
                self.offer(&mut state, entry);
                None
            }
            Err(err) => {
                let error = error_chain(&err);
                tracing::warn!(index = entry.index, %error, "slot {} failed; replacing it", what.name());
                if what == Settle::Reset {
                    state.failed_resets += 1;
                }
                state.last_error = Some(error);
                state.destroyed += 1;
                self.refill(&mut state);
                Some(entry)
            }
        }
    }

    fn spawn_destroy(&self, entry: Entry<B::Slot>) {
        if let Some(me) = self.me.upgrade() {
            self.tasks
                .spawn_on(async move { me.destroy_now(entry).await }, &self.runtime);
        }
    }

    /// Destroys a slot already taken out of the counts.
    async fn destroy_now(&self, entry: Entry<B::Slot>) {
        let index = entry.index;
        let result = tokio::time::timeout(
            self.config.operation_timeout,
            self.backend.destroy(entry.slot),
        )
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(index, error = %error_chain(&err), "slot destruction failed");
            }
            Err(_) => tracing::warn!(index, "slot destruction timed out"),
        }
    }

    /// Destroys a ready slot (shutdown, failed check).
    async fn destroy(&self, entry: Entry<B::Slot>) {
        {
            let mut state = self.lock();
            state.destroyed += 1;
        }
        self.destroy_now(entry).await;
    }
}

/// Checks every ready slot each `interval`, one at a time; a slot that
/// fails is destroyed and replaced.
async fn health_checks<B: SlotBackend>(pool: Weak<Inner<B>>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = pool.upgrade() else {
            return;
        };
        let count = inner.lock().ready.len();
        for _ in 0..count {
            let entry = {
                let mut state = inner.lock();
                if state.closed {
                    return;
                }
                match state.ready.pop_front() {
                    Some(entry) => {
                        state.preparing += 1;
                        entry
                    }
                    None => break,
                }
            };
            let result = limited(
                "health check",
                inner.config.operation_timeout,
                inner.backend.check(&entry.slot),
            )
            .await;
            let failed = inner.settle(entry, result, Settle::Check);
            if let Some(entry) = failed {
                inner.destroy_now(entry).await;
            }
        }
        if inner.lock().closed {
            return;
        }
    }
}

/// What [`Inner::settle`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Reset,
    Check,
}

impl Settle {
    fn name(self) -> &'static str {
        match self {
            Self::Reset => "reset",
            Self::Check => "health check",
        }
    }
}

/// Runs a backend operation with a time limit.
async fn limited<T>(
    operation: &'static str,
    after: Duration,
    work: impl Future<Output = Result<T, PoolError>>,
) -> Result<T, PoolError> {
    tokio::time::timeout(after, work)
        .await
        .unwrap_or(Err(PoolError::Timeout { operation, after }))
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

/// A slot on loan. Dereferences to the backend's slot (for VMs: the
/// sandbox with its agent client). Releasing or dropping it sends the slot
/// back to be reset in the background.
pub struct Lease<B: SlotBackend> {
    entry: Option<Entry<B::Slot>>,
    pool: Arc<Inner<B>>,
}

impl<B: SlotBackend> std::fmt::Debug for Lease<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("slot", &self.entry.as_ref().map(|e| e.index))
            .finish()
    }
}

impl<B: SlotBackend> Lease<B> {
    /// The slot's number in its pool.
    #[must_use]
    pub fn index(&self) -> u32 {
        self.entry.as_ref().map_or(0, |e| e.index)
    }

    /// How many leases this slot served before this one.
    #[must_use]
    pub fn uses(&self) -> u32 {
        self.entry.as_ref().map_or(0, |e| e.uses)
    }

    /// Gives the slot back; it is reset in the background. Returns at once.
    pub fn release(mut self) {
        if let Some(entry) = self.entry.take() {
            self.pool.recycle(entry);
        }
    }
}

impl<B: SlotBackend> std::ops::Deref for Lease<B> {
    type Target = B::Slot;

    fn deref(&self) -> &B::Slot {
        match &self.entry {
            Some(entry) => &entry.slot,
            // Only `release` and `drop` take the entry, and both consume
            // the lease.
            None => unreachable!("a lease holds its slot until it is released"),
        }
    }
}

impl<B: SlotBackend> Drop for Lease<B> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.pool.recycle(entry);
        }
    }
}
