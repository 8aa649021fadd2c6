//! The pool's rules on the in-memory backend: what it asks of a backend,
//! in which order, and what it does when the backend fails or hangs. Time is
//! paused where the rules involve time limits, so these run in milliseconds.
//! `tests/pool_faults.rs` runs the same kind of pool on libvirt's test
//! driver.

use std::error::Error as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::test_backend::{Call, FakeBackend, Injected};
use super::{Pool, PoolConfig, PoolError, PoolStats, SlotFailure};

fn config(min_ready: usize, max_size: usize) -> PoolConfig {
    PoolConfig {
        min_ready,
        max_size,
        max_concurrent_prepares: 2,
        ttl: None,
        max_uses: None,
        health_check_interval: None,
        acquire_timeout: Duration::from_secs(5),
        create_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(2),
        ..PoolConfig::default()
    }
}

async fn started(config: PoolConfig) -> Pool<FakeBackend> {
    let min_ready = config.min_ready;
    let pool = Pool::start(FakeBackend::default(), config)
        .await
        .expect("valid configuration");
    settle(&pool, |s| s.ready == min_ready).await;
    pool
}

/// Waits (in the runtime's time, paused or not) up to 30 s until
/// `condition` holds.
async fn settle(pool: &Pool<FakeBackend>, condition: impl Fn(&PoolStats) -> bool) -> PoolStats {
    for _ in 0..3000 {
        let stats = pool.stats();
        if condition(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the pool did not settle: {:?}", pool.stats());
}

/// How often the pool destroyed (or discarded) each slot.
fn destructions(backend: &FakeBackend, index: u32) -> usize {
    backend
        .calls()
        .iter()
        .filter(|call| matches!(call, Call::Destroy(i) | Call::Discard(i) if *i == index))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_slot_is_reset_before_it_is_leased_again() {
    let pool = started(config(1, 1)).await;
    let lease = pool.acquire().await.expect("a ready slot");
    lease.dirty.store(true, Ordering::SeqCst);
    let index = lease.index();
    lease.release();
    let again = pool.acquire().await.expect("the same slot, reset");
    assert_eq!((again.index(), again.uses()), (index, 1));
    assert!(!again.dirty.load(Ordering::SeqCst), "the reset cleared it");
    assert_eq!(
        pool.backend().calls(),
        [Call::Create(index), Call::Reset(index)]
    );
    drop(again);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_destroys_each_slot_once_and_a_lease_out_at_its_release() {
    let pool = started(config(2, 3)).await;
    let lease = pool.acquire().await.expect("slot");
    let leased = lease.index();
    settle(&pool, |s| s.ready == 2 && s.leased == 1).await;
    pool.shutdown().await;
    assert_eq!(
        pool.backend().live().into_iter().collect::<Vec<_>>(),
        [leased]
    );
    drop(lease);
    settle(&pool, |s| s.total == 0).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let backend = pool.backend();
    assert!(backend.live().is_empty(), "{:?}", backend.calls());
    for index in 0..3 {
        assert_eq!(destructions(backend, index), 1, "{:?}", backend.calls());
    }
    assert!(
        !backend.calls().contains(&Call::Reset(leased)),
        "a lease released after the shutdown is destroyed, not reset"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_reset_is_cut_off_at_its_limit_and_the_slot_replaced() {
    let pool = started(config(1, 1)).await;
    pool.backend()
        .faults
        .hang_resets
        .store(true, Ordering::SeqCst);
    let first = pool.acquire().await.expect("slot").index();
    // Dropped: the reset starts and hangs until the operation timeout.
    let stats = settle(&pool, |s| s.failed_resets == 1).await;
    assert_eq!(stats.destroyed, 1, "{stats:?}");
    pool.backend()
        .faults
        .hang_resets
        .store(false, Ordering::SeqCst);
    let fresh = pool.acquire().await.expect("a replacement");
    assert_ne!(fresh.index(), first);
    assert_eq!(fresh.uses(), 0);
    assert_eq!(destructions(pool.backend(), first), 1);
    drop(fresh);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_acquire_that_times_out_carries_the_backends_error() {
    let mut cfg = config(0, 1);
    cfg.acquire_timeout = Duration::from_secs(3);
    let pool = started(cfg).await;
    pool.backend()
        .faults
        .creates
        .store(u32::MAX, Ordering::SeqCst);
    let err = pool.acquire().await.expect_err("no slot can be made");
    let PoolError::AcquireTimeout {
        after,
        last_failure:
            Some(SlotFailure::Backend {
                operation,
                reason: "injected",
                source,
            }),
    } = &err
    else {
        panic!("not a timeout with the creation's failure: {err:?}");
    };
    assert_eq!((*after, *operation), (Duration::from_secs(3), "creation"));
    assert!(source.downcast_ref::<Injected>().is_some(), "{source}");
    // The failure is the error's source, not part of its message.
    assert_eq!(err.to_string(), "No sandbox was free within 3s");
    assert!(err.source().is_some());
    // The refill retried, once a second rather than in a tight loop.
    let creations = pool
        .backend()
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Create(_)))
        .count();
    assert!((2..=4).contains(&creations), "{creations} creations in 3 s");
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_hanging_health_check_is_cut_off_and_kept_as_the_last_failure() {
    let mut cfg = config(1, 1);
    cfg.health_check_interval = Some(Duration::from_secs(10));
    let pool = started(cfg).await;
    let faults = &pool.backend().faults;
    faults.hang_checks.store(true, Ordering::SeqCst);
    // The replacement's creation hangs too, so the check's failure is the
    // last one when the wait below gives up.
    faults.hang_creates.store(true, Ordering::SeqCst);
    let stats = settle(&pool, |s| s.destroyed == 1).await;
    assert_eq!(stats.failed_resets, 0, "a check is not a reset: {stats:?}");
    let err = pool
        .wait_ready(Duration::from_millis(100))
        .await
        .expect_err("the replacement hangs");
    assert!(
        matches!(
            err,
            PoolError::AcquireTimeout {
                last_failure: Some(SlotFailure::Timeout {
                    operation: "health check",
                    after,
                }),
                ..
            } if after == Duration::from_secs(2)
        ),
        "{err:?}"
    );
    faults.hang_checks.store(false, Ordering::SeqCst);
    faults.hang_creates.store(false, Ordering::SeqCst);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_discards_the_ready_slots_before_it_returns() {
    let pool = started(config(2, 2)).await;
    let record = pool.backend().record();
    let clone = pool.clone();
    drop(pool);
    assert_eq!(record.live().len(), 2, "a clone still holds the pool");
    drop(clone);
    assert!(record.live().is_empty(), "{:?}", record.calls());
    let mut discarded: Vec<u32> = record
        .calls()
        .iter()
        .filter_map(|call| match call {
            Call::Discard(index) => Some(*index),
            _ => None,
        })
        .collect();
    discarded.sort_unstable();
    assert_eq!(discarded, [0, 1], "{:?}", record.calls());
}

#[tokio::test(start_paused = true)]
async fn a_reset_during_an_outage_keeps_the_slot_and_runs_again_once_the_backend_is_back() {
    let mut cfg = config(1, 1);
    cfg.acquire_timeout = Duration::from_secs(2);
    let pool = started(cfg).await;
    let lease = pool.acquire().await.expect("a ready slot");
    let index = lease.index();
    pool.backend().faults.outage.store(true, Ordering::SeqCst);
    drop(lease);
    let stats = settle(&pool, |s| s.outage_retries >= 1).await;
    assert!(!stats.backend_available, "{stats:?}");
    assert_eq!((stats.failed_resets, stats.destroyed), (0, 0), "{stats:?}");
    // An acquire that has to wait says the backend is away, with the
    // outage as its source.
    let err = pool
        .acquire()
        .await
        .expect_err("the only slot is resetting");
    assert!(
        matches!(
            err,
            PoolError::Unavailable {
                last_failure: Some(SlotFailure::Outage {
                    operation: "reset",
                    ..
                }),
                ..
            }
        ),
        "{err:?}"
    );
    pool.backend().faults.outage.store(false, Ordering::SeqCst);
    let again = pool.acquire().await.expect("the same slot, reset");
    assert_eq!((again.index(), again.uses()), (index, 1));
    assert_eq!(destructions(pool.backend(), index), 0);
    assert!(pool.stats().backend_available);
    drop(again);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn ready_slots_are_handed_out_while_the_backend_is_away() {
    let pool = started(config(2, 2)).await;
    pool.backend().faults.outage.store(true, Ordering::SeqCst);
    let first = pool.acquire().await.expect("a ready slot");
    let second = pool.acquire().await.expect("another ready slot");
    assert_ne!(first.index(), second.index());
    pool.backend().faults.outage.store(false, Ordering::SeqCst);
    drop((first, second));
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_ends_a_reset_waiting_for_the_backend() {
    let pool = started(config(1, 1)).await;
    pool.backend().faults.outage.store(true, Ordering::SeqCst);
    drop(pool.acquire().await.expect("slot"));
    settle(&pool, |s| s.outage_retries >= 1).await;
    // The backend never comes back; the shutdown still returns, and the
    // slot is destroyed rather than left.
    tokio::time::timeout(Duration::from_secs(60), pool.shutdown())
        .await
        .expect("the shutdown does not wait for the backend");
    assert!(
        pool.backend().live().is_empty(),
        "{:?}",
        pool.backend().calls()
    );
}

#[tokio::test]
async fn invalid_configurations_are_refused() {
    for (min_ready, max_size, prepares) in [(0, 0, 1), (3, 2, 1), (1, 1, 0)] {
        let mut cfg = config(min_ready, max_size);
        cfg.max_concurrent_prepares = prepares;
        let err = Pool::start(FakeBackend::default(), cfg)
            .await
            .expect_err("invalid");
        assert!(matches!(err, PoolError::Config(_)), "{err}");
    }
}

/// Keeps every event it is given.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<paddock_events::Event>>);

impl paddock_events::Subscriber for Recorder {
    fn on_event(&self, event: &paddock_events::Event) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event.clone());
    }
}

impl Recorder {
    fn take(&self) -> Vec<paddock_events::Event> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

#[tokio::test(start_paused = true)]
async fn the_pool_emits_what_happens_to_its_slots_and_leases() {
    use paddock_events::{AcquireOutcome, DestroyCause, EventHub, EventKind, ResetOutcome, Source};
    let hub = EventHub::new();
    let recorder = std::sync::Arc::new(Recorder::default());
    hub.subscribe(recorder.clone());
    let mut cfg = config(1, 1);
    cfg.acquire_timeout = Duration::from_millis(100);
    cfg.events = hub.emitter(Source {
        pool: Some("p".into()),
        ..Source::default()
    });
    let pool = started(cfg).await;
    let created = recorder.take();
    assert!(
        matches!(created.as_slice(), [e] if matches!(e.kind, EventKind::SlotCreated { .. })
            && e.source.slot == Some(0) && e.source.pool.as_deref() == Some("p")),
        "{created:?}"
    );

    let lease = pool.acquire_for("alice").await.expect("a ready slot");
    let id = lease.id();
    // The only slot is out: this one times out.
    assert!(pool.acquire().await.is_err());
    lease.release();
    settle(&pool, |s| s.ready == 1).await;
    let events = recorder.take();
    let kinds: Vec<_> = events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        kinds,
        ["acquire", "acquire", "lease_released", "reset_finished"],
        "{events:?}"
    );
    assert!(matches!(
        events[0].kind,
        EventKind::Acquire {
            outcome: AcquireOutcome::Ok,
            ..
        }
    ));
    assert_eq!(events[0].source.lease, Some(id));
    assert_eq!(events[0].source.tenant.as_deref(), Some("alice"));
    assert!(matches!(
        events[1].kind,
        EventKind::Acquire {
            outcome: AcquireOutcome::Timeout,
            wait,
        } if wait >= Duration::from_millis(100)
    ));
    assert_eq!(events[1].source.lease, None);
    // The release still carries the lease; the reset after it does not.
    assert_eq!(events[2].source.lease, Some(id));
    assert!(matches!(
        events[3].kind,
        EventKind::ResetFinished {
            outcome: ResetOutcome::Ok,
            strategy: "reset",
            ..
        }
    ));
    assert_eq!(events[3].source.lease, None);

    // A reset that fails: its slot is destroyed, with the reason.
    pool.backend().faults.resets.store(1, Ordering::SeqCst);
    drop(pool.acquire().await.expect("the slot"));
    settle(&pool, |s| s.failed_resets == 1 && s.ready == 1).await;
    let events = recorder.take();
    let destroyed = events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::SlotDestroyed { cause, reason } => Some((cause, reason)),
            _ => None,
        })
        .expect("a destruction");
    assert_eq!(destroyed.0, DestroyCause::ResetFailed);
    assert!(destroyed.1.is_some(), "{events:?}");
    assert!(events.iter().any(|e| matches!(
        e.kind,
        EventKind::ResetFinished {
            outcome: ResetOutcome::Failed,
            ..
        }
    )));
    assert!(
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::SlotCreated { .. }) && e.source.slot == Some(1))
    );
    pool.shutdown().await;
    let events = recorder.take();
    assert!(events.iter().any(|e| matches!(
        e.kind,
        EventKind::SlotDestroyed {
            cause: DestroyCause::Shutdown,
            ..
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn an_acquire_past_the_pools_rate_is_refused_with_its_retry_time_and_emitted() {
    use paddock_events::{AcquireOutcome, EventHub, EventKind, Source};
    let hub = EventHub::new();
    let recorder = std::sync::Arc::new(Recorder::default());
    hub.subscribe(recorder.clone());
    let mut cfg = config(2, 2);
    let one = std::num::NonZeroU32::MIN;
    cfg.limits.acquires = Some(crate::RateLimit {
        per_second: one,
        burst: one,
    });
    cfg.events = hub.emitter(Source::default());
    let pool = started(cfg).await;
    recorder.take();
    let lease = pool.acquire_for("bob").await.expect("the first passes");
    let err = pool
        .acquire_for("bob")
        .await
        .expect_err("the second is refused");
    match err {
        PoolError::RateLimited { limit, retry_after } => {
            assert_eq!(limit, "acquires");
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
        }
        other => panic!("{other:?}"),
    }
    let events = recorder.take();
    let last: Vec<_> = events.iter().rev().take(2).map(|e| &e.kind).collect();
    assert!(
        matches!(
            last[..],
            [
                EventKind::Acquire {
                    outcome: AcquireOutcome::RateLimited,
                    ..
                },
                EventKind::RateLimited {
                    limit: "acquires",
                    ..
                },
            ]
        ),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .rev()
            .take(2)
            .all(|e| e.source.tenant.as_deref() == Some("bob"))
    );
    drop(lease);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_alert_recycles_its_slot_after_the_lease_or_at_once_when_ready() {
    use paddock_events::{DestroyCause, EventHub, EventKind, Source};
    let hub = EventHub::new();
    let recorder = std::sync::Arc::new(Recorder::default());
    hub.subscribe(recorder.clone());
    let mut cfg = config(2, 2);
    cfg.events = hub.emitter(Source {
        pool: Some("a".into()),
        ..Source::default()
    });
    let pool = started(cfg).await;
    let alert = |slot: u32, pool: &str, action: &'static str| {
        hub.emit(
            Source {
                pool: Some(pool.into()),
                slot: Some(slot),
                ..Source::default()
            },
            EventKind::Alert {
                rule: "agent_protocol_errors",
                action,
                value: 1.0,
                threshold: 1.0,
                message: String::new(),
            },
        );
    };
    let lease = pool.acquire().await.expect("a slot");
    let leased = lease.index();
    let other = 1 - leased;
    alert(leased, "another-pool", "recycle_slot");
    alert(leased, "a", "log");
    alert(leased, "a", "recycle_slot");
    recorder.take();
    // Marked, not touched while leased; at its release it is destroyed,
    // not reset, and replaced.
    lease.release();
    let stats = settle(&pool, |s| s.ready == 2 && s.destroyed == 1).await;
    assert_eq!((stats.created, stats.failed_resets), (3, 0), "{stats:?}");
    assert!(!pool.backend().calls().contains(&Call::Reset(leased)));
    assert!(recorder.take().iter().any(|e| matches!(
        e.kind,
        EventKind::SlotDestroyed {
            cause: DestroyCause::Recycled,
            ..
        }
    ) && e.source.slot == Some(leased)));
    // A ready slot goes at once.
    alert(other, "a", "end_lease");
    let stats = settle(&pool, |s| s.ready == 2 && s.destroyed == 2).await;
    assert_eq!(stats.created, 4, "{stats:?}");
    assert_eq!(destructions(pool.backend(), other), 1);
    pool.shutdown().await;
    // After the shutdown, the pool no longer listens.
    assert_eq!(hub.subscribers(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_throttle_tenant_alert_refuses_the_tenants_acquires_for_the_configured_time() {
    use paddock_events::{EventHub, EventKind, Source};
    let hub = EventHub::new();
    let mut cfg = config(2, 2);
    cfg.limits.tenant_throttle = Duration::from_secs(30);
    cfg.events = hub.emitter(Source {
        pool: Some("a".into()),
        ..Source::default()
    });
    let pool = started(cfg).await;
    let lease = pool.acquire_for("mallory").await.expect("before any alert");
    // The alert of a lease names its tenant (and its slot).
    hub.emit(
        Source {
            pool: Some("a".into()),
            slot: Some(lease.index()),
            tenant: Some("mallory".into()),
            ..Source::default()
        },
        EventKind::Alert {
            rule: "exec_rate",
            action: "throttle_tenant",
            value: 1.0,
            threshold: 1.0,
            message: String::new(),
        },
    );
    match pool.acquire_for("mallory").await {
        Err(PoolError::RateLimited { limit, retry_after }) => {
            assert_eq!(limit, "tenant_throttled");
            assert!(retry_after > Duration::from_secs(29), "{retry_after:?}");
        }
        other => panic!("{other:?}"),
    }
    // Nobody else is throttled, and the throttled lease itself goes on.
    let other = pool.acquire_for("alice").await.expect("another tenant");
    drop(other);
    assert!(
        !pool
            .backend()
            .calls()
            .contains(&Call::Destroy(lease.index()))
    );
    drop(lease);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let again = pool
        .acquire_for("mallory")
        .await
        .expect("after the throttle");
    drop(again);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_resized_pool_grows_at_once_and_shrinks_ready_slots_then_leased_ones_at_release() {
    let pool = started(config(1, 2)).await;
    assert_eq!(pool.sizes(), (1, 2));
    assert!(matches!(pool.resize(3, 2), Err(PoolError::Config(_))));
    assert!(matches!(pool.resize(0, 0), Err(PoolError::Config(_))));
    pool.resize(3, 4).expect("grow");
    let stats = settle(&pool, |s| s.ready == 3).await;
    assert_eq!((stats.total, stats.created), (3, 3), "{stats:?}");
    pool.wait_ready(Duration::from_secs(1))
        .await
        .expect("three ready meets the new min_ready");
    let lease = pool.acquire().await.expect("a slot");
    // Down to one slot: the ready ones go now, the leased one at release.
    pool.resize(0, 1).expect("shrink");
    // (The creation under way when it shrank is destroyed once made.)
    let stats = settle(&pool, |s| s.ready == 0 && s.preparing == 0 && s.total == 1).await;
    assert_eq!((stats.leased, stats.destroyed), (1, 3), "{stats:?}");
    // Within the size, a released slot is reset as ever.
    lease.release();
    let stats = settle(&pool, |s| s.ready == 1).await;
    assert_eq!(stats.destroyed, 3, "{stats:?}");
    // Two leased, then shrunk to one: the first released is one too many
    // and is destroyed; the second is reset as ever.
    pool.resize(0, 2).expect("room for two");
    let first = pool.acquire().await.expect("a slot");
    let second = pool.acquire().await.expect("another slot");
    let destroyed_before = pool.stats().destroyed;
    pool.resize(0, 1).expect("shrink under two leases");
    let first_index = first.index();
    let resets = |pool: &Pool<FakeBackend>| {
        pool.backend()
            .calls()
            .iter()
            .filter(|c| **c == Call::Reset(first_index))
            .count()
    };
    let resets_before = resets(&pool);
    drop(first);
    let stats = settle(&pool, |s| s.destroyed == destroyed_before + 1).await;
    assert_eq!((stats.total, stats.leased), (1, 1), "{stats:?}");
    assert_eq!(resets(&pool), resets_before, "destroyed, not reset");
    drop(second);
    let stats = settle(&pool, |s| s.ready == 1).await;
    assert_eq!(stats.destroyed, destroyed_before + 1, "{stats:?}");
    assert_eq!(pool.sizes(), (0, 1));
    pool.shutdown().await;
}
