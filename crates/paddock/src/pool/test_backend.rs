//! An in-memory [`SlotBackend`] for the pool's unit tests: a slot is a
//! number, every call is recorded, and any operation fails or hangs on
//! command (fault injection without a hypervisor).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::SlotBackend;

/// A call the pool made, with the slot's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    Create(u32),
    Reset(u32),
    Check(u32),
    Destroy(u32),
    Discard(u32),
}

/// Failures to inject: each counter fails that many calls; a `hang_*` flag
/// makes every such call wait forever while it is set.
#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) creates: AtomicU32,
    pub(super) hang_creates: AtomicBool,
    pub(super) resets: AtomicU32,
    pub(super) hang_resets: AtomicBool,
    pub(super) hang_checks: AtomicBool,
    /// While set, the backend is away: creations and resets fail with
    /// [`Injected::Outage`] and [`SlotBackend::available`] says no.
    pub(super) outage: AtomicBool,
}

/// The error the fake returns when told to fail.
#[derive(Debug, thiserror::Error)]
pub(super) enum Injected {
    /// An operation told to fail.
    #[error("Injected {0} failure")]
    Failure(&'static str),
    /// The backend is "away" ([`Faults::outage`]).
    #[error("Injected outage")]
    Outage,
}

/// A slot of the fake backend.
#[derive(Debug)]
pub(super) struct FakeSlot {
    pub(super) index: u32,
    /// Stands in for guest state: set by a lease, cleared by a reset.
    pub(super) dirty: AtomicBool,
}

/// The fake backend.
#[derive(Debug, Default)]
pub(super) struct FakeBackend {
    pub(super) faults: Faults,
    record: Record,
}

/// What the fake saw, readable after the pool (and its backend) is gone.
#[derive(Debug, Default, Clone)]
pub(super) struct Record {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Slots created and not yet destroyed or discarded.
    live: Arc<Mutex<BTreeSet<u32>>>,
}

impl Record {
    /// Every call so far, in order.
    pub(super) fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    /// The slots that exist.
    pub(super) fn live(&self) -> BTreeSet<u32> {
        self.live.lock().expect("live").clone()
    }
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

async fn hang_while(flag: &AtomicBool) {
    if flag.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

impl FakeBackend {
    /// What the backend saw, shared: it outlives the pool.
    pub(super) fn record(&self) -> Record {
        self.record.clone()
    }

    /// Every call so far, in order.
    pub(super) fn calls(&self) -> Vec<Call> {
        self.record.calls()
    }

    /// The slots that exist.
    pub(super) fn live(&self) -> BTreeSet<u32> {
        self.record.live()
    }

    fn log(&self, call: Call) {
        self.record.calls.lock().expect("calls").push(call);
    }

    /// Forgets a slot; a second destruction shows in [`FakeBackend::calls`].
    fn remove(&self, index: u32) {
        self.record.live.lock().expect("live").remove(&index);
    }
}

impl SlotBackend for FakeBackend {
    type Slot = FakeSlot;
    type Error = Injected;

    async fn create(&self, index: u32) -> Result<FakeSlot, Injected> {
        self.log(Call::Create(index));
        hang_while(&self.faults.hang_creates).await;
        if self.faults.outage.load(Ordering::SeqCst) {
            return Err(Injected::Outage);
        }
        if take(&self.faults.creates) {
            return Err(Injected::Failure("creation"));
        }
        self.record.live.lock().expect("live").insert(index);
        Ok(FakeSlot {
            index,
            dirty: AtomicBool::new(false),
        })
    }

    async fn reset(&self, slot: &mut FakeSlot) -> Result<(), Injected> {
        self.log(Call::Reset(slot.index));
        hang_while(&self.faults.hang_resets).await;
        if self.faults.outage.load(Ordering::SeqCst) {
            return Err(Injected::Outage);
        }
        if take(&self.faults.resets) {
            return Err(Injected::Failure("reset"));
        }
        slot.dirty.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn check(&self, slot: &FakeSlot) -> Result<(), Injected> {
        self.log(Call::Check(slot.index));
        hang_while(&self.faults.hang_checks).await;
        Ok(())
    }

    async fn destroy(&self, slot: FakeSlot) -> Result<(), Injected> {
        self.log(Call::Destroy(slot.index));
        self.remove(slot.index);
        Ok(())
    }

    fn discard_blocking(&self, slot: FakeSlot) {
        self.log(Call::Discard(slot.index));
        self.remove(slot.index);
    }

    fn failure_reason(&self, _: &Injected) -> &'static str {
        "injected"
    }

    fn is_outage(&self, error: &Injected) -> bool {
        matches!(error, Injected::Outage)
    }

    fn available(&self) -> bool {
        !self.faults.outage.load(Ordering::SeqCst)
    }

    async fn until_available(&self) {
        while self.faults.outage.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
