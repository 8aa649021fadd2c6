//! The key statistics and rules are kept under.

use std::fmt;

/// What an observation is attributed to: a pool, optionally narrowed to one
/// slot and/or one tenant. Every scope has its own statistics, rule windows
/// and cooldowns; scopes never influence each other.
///
/// The detector does not fan out by itself: the host feeds an observation to
/// every scope it belongs to, usually the lease's slot scope and tenant scope
/// (see [`Scope::for_lease`] and [`Detector::observe_each`]). An exec in slot
/// 3 of pool `ci` for tenant `alice` is observed under `ci/slot 3` (is this
/// guest misbehaving?) and `ci/tenant alice` (is this tenant misbehaving,
/// whichever slot it lands on?).
///
/// [`Detector::observe_each`]: crate::Detector::observe_each
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// The pool's name.
    pub pool: String,
    /// The slot's index in the pool, for per-slot (per-guest) scopes.
    pub slot: Option<u32>,
    /// The tenant, for per-tenant scopes.
    pub tenant: Option<String>,
}

impl Scope {
    /// A whole pool.
    pub fn pool(pool: impl Into<String>) -> Self {
        Self {
            pool: pool.into(),
            slot: None,
            tenant: None,
        }
    }

    /// One slot (one guest) of a pool.
    pub fn slot(pool: impl Into<String>, slot: u32) -> Self {
        Self {
            pool: pool.into(),
            slot: Some(slot),
            tenant: None,
        }
    }

    /// One tenant's use of a pool, across slots.
    pub fn tenant(pool: impl Into<String>, tenant: impl Into<String>) -> Self {
        Self {
            pool: pool.into(),
            slot: None,
            tenant: Some(tenant.into()),
        }
    }

    /// The two scopes a lease's observations go to: its slot, then its
    /// tenant. Build them once per lease; they are cloned only when a scope
    /// is first seen.
    pub fn for_lease(pool: &str, slot: u32, tenant: &str) -> [Self; 2] {
        [Self::slot(pool, slot), Self::tenant(pool, tenant)]
    }
}

impl fmt::Display for Scope {
    /// `pool`, `pool/slot 3`, `pool/tenant alice` or `pool/slot 3/tenant alice`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pool)?;
        if let Some(slot) = self.slot {
            write!(f, "/slot {slot}")?;
        }
        if let Some(tenant) = &self.tenant {
            write!(f, "/tenant {tenant}")?;
        }
        Ok(())
    }
}
