//! The pool's bookkeeping: which slots are ready, leased or being prepared,
//! who waits, and the background work that creates, resets, checks and
//! destroys slots.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use paddock_events::{DestroyCause, Emitter, EventKind, ResetOutcome};

use super::{PoolConfig, PoolStats, SlotBackend, SlotFailure};

/// The least time between two tries of a reset that met the backend away.
const OUTAGE_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A slot with its bookkeeping.
pub(super) struct Entry<S> {
    pub(super) slot: S,
    pub(super) index: u32,
    created: Instant,
    pub(super) uses: u32,
    /// The slot's events; the lease is set on it while it is out.
    pub(super) emitter: Emitter,
    /// When the current lease began.
    pub(super) leased_at: Option<Instant>,
}

impl<S> Entry<S> {
    /// Emits that the slot is destroyed, and why.
    pub(super) fn destroyed(&self, cause: DestroyCause, reason: Option<&'static str>) {
        self.emitter
            .emit(|| EventKind::SlotDestroyed { cause, reason });
    }
}

/// A slot on its way to an acquire. If the acquire is gone by the time it
/// arrives (its future dropped), dropping the delivery returns the slot.
pub(super) struct Delivery<B: SlotBackend> {
    pub(super) entry: Option<Entry<B::Slot>>,
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

pub(super) struct State<B: SlotBackend> {
    pub(super) ready: VecDeque<Entry<B::Slot>>,
    pub(super) waiters: VecDeque<oneshot::Sender<Delivery<B>>>,
    pub(super) leased: usize,
    preparing: usize,
    next_index: u32,
    pub(super) closed: bool,
    pub(super) last_failure: Option<SlotFailure>,
    created: u64,
    pub(super) destroyed: u64,
    failed_resets: u64,
    failed_checks: u64,
    expired: u64,
    worn_out: u64,
    outage_retries: u64,
    /// Slots an anomaly rule asked to recycle: destroyed at their next
    /// release instead of reset.
    pub(super) marked: std::collections::HashSet<u32>,
    /// The sizes in force: the configuration's, until `Pool::resize`.
    pub(super) min_ready: usize,
    pub(super) max_size: usize,
}

impl<B: SlotBackend> State<B> {
    /// Slots that exist or are being created: every slot is ready, leased
    /// or being prepared (created, reset or checked).
    pub(super) fn total(&self) -> usize {
        self.ready.len() + self.leased + self.preparing
    }

    pub(super) fn stats(&self, backend_available: bool) -> PoolStats {
        PoolStats {
            total: self.total(),
            ready: self.ready.len(),
            leased: self.leased,
            preparing: self.preparing,
            waiting: self.waiters.iter().filter(|w| !w.is_closed()).count(),
            created: self.created,
            destroyed: self.destroyed,
            failed_resets: self.failed_resets,
            failed_checks: self.failed_checks,
            expired: self.expired,
            worn_out: self.worn_out,
            outage_retries: self.outage_retries,
            backend_available,
        }
    }
}

pub(super) struct Inner<B: SlotBackend> {
    pub(super) backend: B,
    pub(super) config: PoolConfig,
    pub(super) acquire_limits: crate::limits::AcquireLimiter,
    state: Mutex<State<B>>,
    prepares: Semaphore,
    pub(super) tasks: TaskTracker,
    /// Cancelled by the shutdown: ends waits for the backend to come back.
    pub(super) closing: CancellationToken,
    runtime: tokio::runtime::Handle,
    me: Weak<Inner<B>>,
}

impl<B: SlotBackend> Inner<B> {
    /// A pool with no slots yet; the caller starts the refill. Must be
    /// called within a tokio runtime, whose handle the background work uses.
    pub(super) fn new(backend: B, config: PoolConfig) -> Arc<Self> {
        let (min_ready, max_size) = (config.min_ready, config.max_size);
        Arc::new_cyclic(|me| Self {
            prepares: Semaphore::new(config.max_concurrent_prepares),
            acquire_limits: crate::limits::AcquireLimiter::new(&config.limits),
            backend,
            config,
            state: Mutex::new(State {
                ready: VecDeque::new(),
                waiters: VecDeque::new(),
                leased: 0,
                preparing: 0,
                next_index: 0,
                closed: false,
                last_failure: None,
                created: 0,
                destroyed: 0,
                failed_resets: 0,
                failed_checks: 0,
                expired: 0,
                worn_out: 0,
                outage_retries: 0,
                marked: std::collections::HashSet::new(),
                min_ready,
                max_size,
            }),
            tasks: TaskTracker::new(),
            closing: CancellationToken::new(),
            runtime: tokio::runtime::Handle::current(),
            me: me.clone(),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State<B>> {
        // The state is consistent between statements; a panic elsewhere
        // does not make it unusable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A weak handle, for deliveries.
    pub(super) fn delivery(&self, entry: Entry<B::Slot>) -> Delivery<B> {
        Delivery {
            entry: Some(entry),
            pool: self.me.clone(),
        }
    }

    /// Hands `entry` to the first live waiter, or makes it ready.
    pub(super) fn offer(&self, state: &mut State<B>, entry: Entry<B::Slot>) {
        if state.closed {
            state.destroyed += 1;
            entry.destroyed(DestroyCause::Shutdown, None);
            self.spawn_destroy(entry);
            return;
        }
        // The pool was shrunk while this slot was made or reset: with it,
        // the pool would be over its size.
        if state.total() >= state.max_size {
            state.destroyed += 1;
            entry.destroyed(DestroyCause::Recycled, None);
            self.spawn_destroy(entry);
            return;
        }
        let mut entry = entry;
        while let Some(waiter) = state.waiters.pop_front() {
            state.leased += 1;
            match waiter.send(self.delivery(entry)) {
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
    pub(super) fn refill(&self, state: &mut State<B>) {
        if state.closed {
            return;
        }
        let waiting = state.waiters.iter().filter(|w| !w.is_closed()).count();
        let wanted = state.min_ready + waiting;
        let coming = state.ready.len() + state.preparing;
        let room = state.max_size.saturating_sub(state.total());
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
        // The semaphore is never closed, so a permit always comes.
        let permit = self.prepares.acquire().await.ok();
        let started = Instant::now();
        let result = limited(
            &self.backend,
            "creation",
            self.config.create_timeout,
            self.backend.create(index),
        )
        .await;
        drop(permit);
        let failure = {
            let mut state = self.lock();
            state.preparing -= 1;
            match result {
                Ok(slot) => {
                    state.created += 1;
                    let emitter = self
                        .backend
                        .slot_emitter(&slot)
                        .unwrap_or_else(|| self.config.events.for_slot(index, None));
                    emitter.emit(|| EventKind::SlotCreated {
                        duration: started.elapsed(),
                    });
                    let entry = Entry {
                        slot,
                        index,
                        created: Instant::now(),
                        uses: 0,
                        emitter,
                        leased_at: None,
                    };
                    self.offer(&mut state, entry);
                    None
                }
                Err(failure) => {
                    tracing::warn!(index, error = %error_chain(&failure), "slot creation failed");
                    self.config.events.emit_from(
                        |source| source.slot = Some(index),
                        || EventKind::SlotCreateFailed {
                            reason: failure.reason(),
                        },
                    );
                    let outage = matches!(failure, SlotFailure::Outage { .. });
                    state.last_failure = Some(failure);
                    Some(outage)
                }
            }
        };
        match failure {
            // Not at once: a backend that cannot create now (a missing
            // image) would otherwise be hammered.
            Some(false) => tokio::time::sleep(Duration::from_secs(1)).await,
            // Away: wait until it is back.
            Some(true) => self.until_available().await,
            None => {}
        }
        let mut state = self.lock();
        self.refill(&mut state);
    }

    /// Takes a slot back from a lease: reset it, or destroy it if it is
    /// worn out, in the background.
    pub(super) fn recycle(&self, mut entry: Entry<B::Slot>) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        entry.uses += 1;
        if let Some(leased_at) = entry.leased_at.take() {
            entry.emitter.emit(|| EventKind::LeaseReleased {
                held: leased_at.elapsed(),
            });
        }
        entry.emitter.set_lease(None);
        let worn_out = self.config.max_uses.is_some_and(|max| entry.uses >= max);
        let expired = self
            .config
            .ttl
            .is_some_and(|ttl| entry.created.elapsed() >= ttl);
        {
            let mut state = self.lock();
            state.leased -= 1;
            // A pool shrunk under its leases: this slot is one too many.
            let marked = state.marked.remove(&entry.index) || state.total() >= state.max_size;
            if state.closed || worn_out || expired || marked {
                let cause = if state.closed {
                    DestroyCause::Shutdown
                } else if marked {
                    DestroyCause::Recycled
                } else if worn_out {
                    DestroyCause::WornOut
                } else {
                    DestroyCause::Expired
                };
                state.destroyed += 1;
                state.worn_out += u64::from(!state.closed && worn_out);
                state.expired += u64::from(!state.closed && !worn_out && expired);
                self.refill(&mut state);
                drop(state);
                entry.destroyed(cause, None);
                self.spawn_destroy(entry);
                return;
            }
            state.preparing += 1;
        }
        let task = async move {
            let started = Instant::now();
            let result = loop {
                let permit = me.prepares.acquire().await.ok();
                let result = limited(
                    &me.backend,
                    "reset",
                    me.config.operation_timeout,
                    me.backend.reset(&mut entry.slot),
                )
                .await;
                drop(permit);
                match result {
                    // The backend was away, not the slot broken: keep the
                    // slot, and reset it again once the backend is back
                    // (unless the pool is closing).
                    Err(failure @ SlotFailure::Outage { .. }) if !me.closing.is_cancelled() => {
                        tracing::warn!(
                            index = entry.index,
                            error = %error_chain(&failure),
                            "slot reset met the backend away; retrying once it is back"
                        );
                        me.reset_finished(
                            &entry,
                            ResetOutcome::Outage,
                            Some(failure.reason()),
                            started,
                        );
                        {
                            let mut state = me.lock();
                            state.outage_retries += 1;
                            state.last_failure = Some(failure);
                        }
                        me.until_available().await;
                        // The backend's own probe may not have seen the
                        // outage yet: never retry in a tight loop.
                        tokio::time::sleep(OUTAGE_RETRY_PAUSE).await;
                    }
                    other => break other,
                }
            };
            match &result {
                Ok(()) => me.reset_finished(&entry, ResetOutcome::Ok, None, started),
                Err(failure) => me.reset_finished(
                    &entry,
                    ResetOutcome::Failed,
                    Some(failure.reason()),
                    started,
                ),
            }
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
        result: Result<(), SlotFailure>,
        what: Settle,
    ) -> Option<Entry<B::Slot>> {
        let mut state = self.lock();
        state.preparing -= 1;
        match result {
            Ok(()) => {
                self.offer(&mut state, entry);
                None
            }
            Err(failure) => {
                let error = error_chain(&failure);
                tracing::warn!(index = entry.index, %error, "slot {} failed; replacing it", what.name());
                let reason = failure.reason();
                match what {
                    Settle::Reset => {
                        state.failed_resets += 1;
                        entry.destroyed(DestroyCause::ResetFailed, Some(reason));
                    }
                    Settle::Check => {
                        state.failed_checks += 1;
                        entry
                            .emitter
                            .emit(|| EventKind::HealthCheckFailed { reason });
                        entry.destroyed(DestroyCause::CheckFailed, Some(reason));
                    }
                }
                state.last_failure = Some(failure);
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
    pub(super) async fn destroy_now(&self, entry: Entry<B::Slot>) {
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

    /// Emits the end of a reset, with the backend's strategy and phases.
    fn reset_finished(
        &self,
        entry: &Entry<B::Slot>,
        outcome: ResetOutcome,
        reason: Option<&'static str>,
        started: Instant,
    ) {
        entry.emitter.emit(|| {
            let (strategy, phases) = self.backend.reset_report(&entry.slot);
            EventKind::ResetFinished {
                strategy,
                outcome,
                reason,
                duration: started.elapsed(),
                phases,
            }
        });
    }

    /// Waits until the backend is available or the pool closes.
    async fn until_available(&self) {
        tokio::select! {
            () = self.backend.until_available() => {}
            () = self.closing.cancelled() => {}
        }
    }

    /// Destroys a ready slot (shutdown, failed check).
    pub(super) async fn destroy(&self, entry: Entry<B::Slot>) {
        self.lock().destroyed += 1;
        entry.destroyed(DestroyCause::Shutdown, None);
        self.destroy_now(entry).await;
    }
}

/// Checks every ready slot each `interval`, one at a time; a slot that
/// fails is destroyed and replaced.
/// Prunes the pool's keyed rate limiters (tenants, leases) every
/// [`crate::limits::PRUNE_INTERVAL`] until the pool shuts down.
pub(super) async fn prune_limits<B: SlotBackend>(pool: Weak<Inner<B>>) {
    let Some(closing) = pool.upgrade().map(|inner| inner.closing.clone()) else {
        return;
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(crate::limits::PRUNE_INTERVAL) => {}
            () = closing.cancelled() => return,
        }
        let Some(inner) = pool.upgrade() else {
            return;
        };
        inner.acquire_limits.prune();
        inner.backend.prune_limits();
    }
}

pub(super) async fn health_checks<B: SlotBackend>(pool: Weak<Inner<B>>, interval: Duration) {
    // A shutdown waits for this task: it must not sleep through one.
    let Some(closing) = pool.upgrade().map(|inner| inner.closing.clone()) else {
        return;
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = closing.cancelled() => return,
        }
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
                &inner.backend,
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

/// Runs a backend operation with a time limit, and says what a failure was.
async fn limited<T, B: SlotBackend>(
    backend: &B,
    operation: &'static str,
    after: Duration,
    work: impl Future<Output = Result<T, B::Error>>,
) -> Result<T, SlotFailure> {
    match tokio::time::timeout(after, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) if backend.is_outage(&err) => Err(SlotFailure::Outage {
            operation,
            source: Arc::new(err),
        }),
        Ok(Err(err)) => Err(SlotFailure::Backend {
            operation,
            reason: backend.failure_reason(&err),
            source: Arc::new(err),
        }),
        Err(_) => Err(SlotFailure::Timeout { operation, after }),
    }
}

/// An error and its sources, on one line.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
