//! What users hold: the [`Pool`] handle and the [`Lease`] of a slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paddock_events::{AcquireOutcome, DestroyCause, EventKind, LeaseId};
use tokio::sync::oneshot;

use super::slots::{Entry, Inner, health_checks, prune_limits};
use super::{PoolConfig, PoolError, PoolStats, SlotBackend, SlotFailure};

/// Lease ids, unique in the process.
static NEXT_LEASE: AtomicU64 = AtomicU64::new(1);

/// A pool of slots. Cheap to clone; every clone is the same pool.
///
/// Shut it down with [`Pool::shutdown`] (or `close` for VM pools). If the
/// last handle is dropped without that (a panic, an early return), the drop
/// closes the pool and destroys its ready slots on a helper thread that it
/// waits for; slots out on lease are destroyed when their lease ends.
pub struct Pool<B: SlotBackend> {
    inner: Arc<Inner<B>>,
    /// The subscriber that acts on this pool's alerts, while subscribed.
    actions: Option<Arc<dyn paddock_events::Subscriber>>,
    /// The pool's slot counts for a metrics scrape ([`Pool::gauge`]).
    gauge: Arc<dyn paddock_metrics::PoolGauge>,
    /// Shared by the clones handed to users (not by the pool's own tasks):
    /// its drop is the drop of the last handle.
    _handle: Arc<LastHandle<B>>,
}

impl<B: SlotBackend> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            actions: self.actions.clone(),
            gauge: Arc::clone(&self.gauge),
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
            self.0.closing.cancel();
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
                    entry.destroyed(DestroyCause::Shutdown, None);
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
    /// Starts a pool on `backend`: the refill starts making `min_ready`
    /// slots in the background, so this returns before they are ready
    /// ([`Pool::wait_ready`] waits for them). Must be called within a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`PoolError::Config`] for an invalid configuration.
    pub async fn start(backend: B, config: PoolConfig) -> Result<Self, PoolError> {
        config.validate()?;
        backend.set_policy(config.policy.clone());
        let inner = Inner::new(backend, config);
        {
            let mut state = inner.lock();
            inner.refill(&mut state);
        }
        if let Some(interval) = inner.config.health_check_interval {
            let weak = Arc::downgrade(&inner);
            inner.tasks.spawn(health_checks(weak, interval));
        }
        inner.tasks.spawn(prune_limits(Arc::downgrade(&inner)));
        let events = &inner.config.events;
        let actions = match (events.hub(), events.source().pool) {
            (Some(hub), Some(pool)) => {
                let actions: Arc<dyn paddock_events::Subscriber> =
                    Arc::new(super::actions::AlertActions {
                        pool,
                        inner: Arc::downgrade(&inner),
                    });
                hub.subscribe(Arc::clone(&actions));
                Some(actions)
            }
            _ => None,
        };
        let gauge = Arc::new(Gauge {
            name: events.source().pool.unwrap_or_default().to_string(),
            inner: Arc::downgrade(&inner),
        });
        Ok(Self {
            _handle: Arc::new(LastHandle(Arc::clone(&inner))),
            actions,
            gauge,
            inner,
        })
    }

    /// Waits until `min_ready` slots are ready, or `timeout` passes.
    ///
    /// # Errors
    /// [`PoolError::AcquireTimeout`] (with the last slot failure) on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), PoolError> {
        // The runtime's clock, like the sleep below (and paused in tests).
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (ready, min_ready, last_failure) = {
                let state = self.inner.lock();
                (
                    state.ready.len(),
                    state.min_ready,
                    state.last_failure.clone(),
                )
            };
            if ready >= min_ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(if self.inner.backend.available() {
                    PoolError::AcquireTimeout {
                        after: timeout,
                        last_failure,
                    }
                } else {
                    PoolError::Unavailable {
                        after: timeout,
                        last_failure,
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes a ready slot, waiting up to the acquire timeout for one.
    ///
    /// # Errors
    /// [`PoolError::AcquireTimeout`], [`PoolError::Unavailable`] or
    /// [`PoolError::Closed`].
    pub async fn acquire(&self) -> Result<Lease<B>, PoolError> {
        self.acquire_as(None).await
    }

    /// [`Pool::acquire`] for `tenant`: the lease's events (and so its
    /// audit records and anomaly scopes) carry the tenant's name.
    ///
    /// # Errors
    /// As [`Pool::acquire`].
    pub async fn acquire_for(&self, tenant: &str) -> Result<Lease<B>, PoolError> {
        self.acquire_as(Some(tenant.into())).await
    }

    async fn acquire_as(&self, tenant: Option<Arc<str>>) -> Result<Lease<B>, PoolError> {
        // The runtime's clock, like the acquire timeout's.
        let started = tokio::time::Instant::now();
        if let Err((limit, retry_after)) = self.inner.acquire_limits.check(tenant.as_ref()) {
            let events = &self.inner.config.events;
            let tenant_of = |source: &mut paddock_events::Source| source.tenant.clone_from(&tenant);
            events.emit_from(tenant_of, || EventKind::RateLimited { limit, retry_after });
            events.emit_from(tenant_of, || EventKind::Acquire {
                outcome: AcquireOutcome::RateLimited,
                wait: Duration::ZERO,
            });
            return Err(PoolError::RateLimited { limit, retry_after });
        }
        match self.take().await {
            Ok(mut entry) => {
                let id = LeaseId(NEXT_LEASE.fetch_add(1, Ordering::Relaxed));
                entry.emitter.set_lease(Some((id, tenant)));
                entry.emitter.emit(|| EventKind::Acquire {
                    outcome: AcquireOutcome::Ok,
                    wait: started.elapsed(),
                });
                entry.leased_at = Some(Instant::now());
                Ok(Lease {
                    id,
                    entry: Some(entry),
                    pool: Arc::clone(&self.inner),
                })
            }
            Err(err) => {
                let outcome = match &err {
                    PoolError::AcquireTimeout { .. } => AcquireOutcome::Timeout,
                    PoolError::Unavailable { .. } => AcquireOutcome::Unavailable,
                    PoolError::Closed | PoolError::Config(_) => AcquireOutcome::Closed,
                    PoolError::RateLimited { .. } => AcquireOutcome::RateLimited,
                };
                self.inner.config.events.emit_from(
                    |source| source.tenant = tenant,
                    || EventKind::Acquire {
                        outcome,
                        wait: started.elapsed(),
                    },
                );
                Err(err)
            }
        }
    }

    /// Takes a slot's entry: a ready one, or the next one made or reset.
    async fn take(&self) -> Result<Entry<B::Slot>, PoolError> {
        let timeout = self.inner.config.acquire_timeout;
        let mut receiver = {
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
                    return Ok(entry);
                }
            }
            let (sender, receiver) = oneshot::channel();
            state.waiters.push_back(sender);
            self.inner.refill(&mut state);
            receiver
        };
        let mut delivered = match tokio::time::timeout(timeout, &mut receiver).await {
            Ok(Ok(delivery)) => delivery,
            Ok(Err(_)) => return Err(PoolError::Closed),
            Err(_) => {
                // A slot may have arrived just as the time ran out: take it.
                receiver.close();
                match receiver.try_recv() {
                    Ok(delivery) => delivery,
                    Err(_) => {
                        let last_failure = self.inner.lock().last_failure.clone();
                        return Err(if self.inner.backend.available() {
                            PoolError::AcquireTimeout {
                                after: timeout,
                                last_failure,
                            }
                        } else {
                            PoolError::Unavailable {
                                after: timeout,
                                last_failure,
                            }
                        });
                    }
                }
            }
        };
        delivered.entry.take().ok_or(PoolError::Closed)
    }

    /// The pool's slot counts, read at every scrape by the metrics it is
    /// given to ([`paddock_metrics::Metrics::watch_pool`], which holds it
    /// weakly: the pool's series go with the pool). Its `pool` label is the
    /// pool's events' source name (empty without one).
    #[must_use]
    pub fn gauge(&self) -> Arc<dyn paddock_metrics::PoolGauge> {
        Arc::clone(&self.gauge)
    }

    /// The pool's counters.
    #[must_use]
    pub fn stats(&self) -> PoolStats {
        let available = self.inner.backend.available();
        self.inner.lock().stats(available)
    }

    /// The sizes in force: `(min_ready, max_size)`, the configuration's
    /// until [`Pool::resize`].
    #[must_use]
    pub fn sizes(&self) -> (usize, usize) {
        let state = self.inner.lock();
        (state.min_ready, state.max_size)
    }

    /// Changes the pool's sizes while it serves. Growing starts creations at
    /// once; shrinking destroys ready slots (oldest last) until the pool is
    /// within `max_size`, and a leased slot past it is destroyed at its
    /// release instead of reset (cause `recycled`).
    ///
    /// # Errors
    /// [`PoolError::Config`] for `max_size` 0 or `min_ready > max_size`.
    pub fn resize(&self, min_ready: usize, max_size: usize) -> Result<(), PoolError> {
        if max_size == 0 {
            return Err(PoolError::Config("max_size must be at least 1"));
        }
        if min_ready > max_size {
            return Err(PoolError::Config("min_ready must not exceed max_size"));
        }
        let excess = {
            let mut state = self.inner.lock();
            state.min_ready = min_ready;
            state.max_size = max_size;
            let mut excess = Vec::new();
            while state.total() > max_size {
                let Some(entry) = state.ready.pop_back() else {
                    break;
                };
                entry.destroyed(DestroyCause::Recycled, None);
                state.destroyed += 1;
                excess.push(entry);
            }
            // Leased slots past the size go at their release (`recycle`).
            self.inner.refill(&mut state);
            excess
        };
        for entry in excess {
            let inner = Arc::clone(&self.inner);
            self.inner
                .tasks
                .spawn(async move { inner.destroy_now(entry).await });
        }
        Ok(())
    }

    /// The rate limits in force: the configuration's, until
    /// [`Pool::set_limits`].
    #[must_use]
    pub fn limits(&self) -> crate::RateLimits {
        self.inner.acquire_limits.limits()
    }

    /// Applies `limits` while the pool serves: the acquire limits and the
    /// backend's per-lease ones. Their counts start afresh; a throttled
    /// tenant stays throttled.
    pub fn set_limits(&self, limits: crate::RateLimits) {
        self.inner.acquire_limits.set_limits(&limits);
        self.inner.backend.set_lease_limits(&limits);
    }

    /// The request policy in force: the configuration's
    /// ([`PoolConfig::policy`]), until [`Pool::set_policy`].
    #[must_use]
    pub fn policy(&self) -> Option<Arc<paddock_policy::Policy>> {
        self.inner.backend.policy()
    }

    /// Checks every lease's requests against `policy` from now on, leases
    /// already out included (`None`: no policy).
    pub fn set_policy(&self, policy: Option<Arc<paddock_policy::Policy>>) {
        self.inner.backend.set_policy(policy);
    }

    /// The numbers of the slots that are ready now, oldest first (the
    /// next acquire takes the first).
    #[must_use]
    pub fn ready_slots(&self) -> Vec<u32> {
        self.inner.lock().ready.iter().map(|e| e.index).collect()
    }

    /// Resets ready slot `index` now, as if it had been leased and
    /// released (it counts as a use); `false` if no ready slot has that
    /// number. A leased slot is reset when its lease is released: end the
    /// lease to reset it now.
    pub fn reset_slot(&self, index: u32) -> bool {
        let entry = {
            let mut state = self.inner.lock();
            let Some(position) = state.ready.iter().position(|e| e.index == index) else {
                return false;
            };
            let entry = state.ready.remove(position);
            if entry.is_some() {
                state.leased += 1;
            }
            entry
        };
        if let Some(entry) = entry {
            self.inner.recycle(entry);
        }
        true
    }

    /// Destroys slot `index` and makes a new one: a ready slot at once, a
    /// leased one at its release (instead of its reset). What an anomaly
    /// rule's `recycle_slot` does.
    pub fn recycle_slot(&self, index: u32) {
        self.inner.mark_for_recycling(index);
    }

    /// The most recent failure to make or keep a slot (creation, reset or
    /// health check), with its reason ([`SlotFailure::reason`]).
    #[must_use]
    pub fn last_failure(&self) -> Option<SlotFailure> {
        self.inner.lock().last_failure.clone()
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
        if let (Some(hub), Some(actions)) = (self.inner.config.events.hub(), &self.actions) {
            hub.unsubscribe(actions);
        }
        self.inner.closing.cancel();
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

/// A pool's counts as its metrics see them.
struct Gauge<B: SlotBackend> {
    name: String,
    inner: std::sync::Weak<Inner<B>>,
}

impl<B: SlotBackend> paddock_metrics::PoolGauge for Gauge<B> {
    fn name(&self) -> &str {
        &self.name
    }

    fn counts(&self) -> paddock_metrics::SlotCounts {
        let Some(inner) = self.inner.upgrade() else {
            return paddock_metrics::SlotCounts::default();
        };
        let available = inner.backend.available();
        let stats = inner.lock().stats(available);
        paddock_metrics::SlotCounts {
            ready: stats.ready,
            leased: stats.leased,
            preparing: stats.preparing,
            waiting: stats.waiting,
            total: stats.total,
            backend_available: stats.backend_available,
        }
    }
}

/// A slot on loan. Dereferences to the backend's slot (for VMs: the
/// sandbox with its agent client). Releasing or dropping it sends the slot
/// back to be reset in the background.
pub struct Lease<B: SlotBackend> {
    id: LeaseId,
    entry: Option<Entry<B::Slot>>,
    pool: Arc<Inner<B>>,
}

impl<B: SlotBackend> std::fmt::Debug for Lease<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("slot", &self.entry.as_ref().map(|e| e.index))
            .finish()
    }
}

impl<B: SlotBackend> Lease<B> {
    /// The lease's identity (unique in this process), which its events
    /// carry.
    #[must_use]
    pub fn id(&self) -> LeaseId {
        self.id
    }

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
