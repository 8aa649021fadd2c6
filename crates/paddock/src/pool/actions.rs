//! What the pool does when an anomaly rule fires for one of its slots
//! (the rule's configured action, carried by the alert event): recycle the
//! slot after its lease, end the lease now and recycle the slot, or refuse
//! the lease's tenant new leases for a while
//! ([`crate::RateLimits::tenant_throttle`]).

use std::sync::{Arc, Weak};

use paddock_events::{DestroyCause, Event, EventKind, Subscriber};

use super::SlotBackend;
use super::slots::Inner;

/// Acts on the alerts of one pool's slots. Holds the pool weakly: a pool
/// that is gone ignores its alerts.
pub(super) struct AlertActions<B: SlotBackend> {
    pub(super) pool: Arc<str>,
    pub(super) inner: Weak<Inner<B>>,
}

impl<B: SlotBackend> Subscriber for AlertActions<B> {
    fn on_event(&self, event: &Event) {
        let EventKind::Alert { action, .. } = &event.kind else {
            return;
        };
        if event.source.pool.as_deref() != Some(&*self.pool) {
            return;
        }
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        if *action == "throttle_tenant" {
            // A tenant-scoped alert names no slot; a lease's names both.
            if let Some(tenant) = &event.source.tenant {
                inner.acquire_limits.throttle(tenant);
            }
            return;
        }
        let Some(index) = event.source.slot else {
            return;
        };
        match *action {
            "recycle_slot" => inner.mark_for_recycling(index),
            "end_lease" => {
                inner.mark_for_recycling(index);
                let ending = Arc::clone(&inner);
                inner
                    .tasks
                    .spawn(async move { ending.backend.end_lease(index).await });
            }
            // `log` is done by the alert event itself.
            _ => {}
        }
    }
}

impl<B: SlotBackend> Inner<B> {
    /// Marks slot `index` to be destroyed (and replaced) at its next
    /// release; a ready slot is destroyed now.
    pub(super) fn mark_for_recycling(self: &Arc<Self>, index: u32) {
        let ready = {
            let mut state = self.lock();
            if let Some(position) = state.ready.iter().position(|e| e.index == index) {
                let entry = state.ready.remove(position);
                if let Some(entry) = &entry {
                    entry.destroyed(DestroyCause::Recycled, None);
                }
                state.destroyed += 1;
                self.refill(&mut state);
                entry
            } else {
                state.marked.insert(index);
                None
            }
        };
        if let Some(entry) = ready {
            let me = Arc::clone(self);
            self.tasks.spawn(async move { me.destroy_now(entry).await });
        }
    }
}
