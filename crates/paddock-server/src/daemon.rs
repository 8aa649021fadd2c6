//! The daemon's state: its pools, the leases it holds for callers, and the
//! leases that ended (so that a holder learns why).
//!
//! A lease is held in a [`LeaseEntry`] behind an async read-write lock.
//! Every request in a lease (exec, files) holds a read guard while it runs
//! and clones the slot's agent client only under it. Ending a lease (a
//! release, an operator's reset, a drain) first marks it ending and
//! revokes the client, so requests in flight fail at once and new ones are
//! refused, then takes the write guard, which waits for them to let go:
//! only then does the slot go back to its pool to be reset. A request can
//! therefore never reach a slot after its lease ended, even if the slot is
//! leased again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use paddock::agent::AgentClient;
use paddock::observe::Observability;
use paddock::observe::audit::Timestamp;
use paddock::{Paddock, VmLease, VmPool};
use tokio::sync::{OwnedRwLockReadGuard, RwLock as AsyncRwLock};

use crate::auth::{Caller, Tenants};
use crate::config::Config;
use crate::error::ApiError;
use crate::wire::{LeaseInfo, PoolStatus, SlotList, SlotStatus};

/// How often each pool's slots are sampled (CPU, memory, block and
/// network figures, one bulk libvirt call) into the metrics and the
/// anomaly detector's `cpu_pinned` rule.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// How many ended leases are remembered, to tell their holders why.
const ENDED_KEPT: usize = 4096;

/// One pool the daemon runs.
#[derive(Debug)]
pub struct PoolEntry {
    /// Its name.
    pub name: Arc<str>,
    /// The pool.
    pub pool: VmPool,
    draining: AtomicBool,
    /// Samples its slots' resources into the metrics and the detector.
    sampler: tokio::task::JoinHandle<()>,
}

/// A lease the daemon holds for a caller.
#[derive(Debug)]
pub struct LeaseEntry {
    /// Its id, as the API shows it (`l-<n>`).
    pub id: String,
    /// Its pool.
    pub pool: Arc<str>,
    /// Its slot's number.
    pub slot: u32,
    /// The tenant it was acquired for.
    pub tenant: Option<Arc<str>>,
    /// The slot's domain.
    pub domain: String,
    /// When it was acquired.
    pub acquired_at: Timestamp,
    lease: Arc<AsyncRwLock<Option<VmLease>>>,
    /// Why it is ending, once it is.
    ending: Mutex<Option<&'static str>>,
}

impl LeaseEntry {
    fn info(&self) -> LeaseInfo {
        LeaseInfo {
            id: self.id.clone(),
            pool: self.pool.to_string(),
            slot: self.slot,
            tenant: self.tenant.as_deref().map(str::to_owned),
            domain: self.domain.clone(),
            acquired_at: self.acquired_at.to_string(),
        }
    }

    fn ending(&self) -> Option<&'static str> {
        *self.ending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A lease that ended: its id, its tenant, and why.
type Ended = (String, Option<Arc<str>>, &'static str);

/// A request's hold on a lease: the slot's agent client, valid while the
/// hold lives.
#[derive(Debug)]
pub struct Hold {
    /// The lease.
    pub entry: Arc<LeaseEntry>,
    /// The slot's agent client.
    pub client: AgentClient,
    _guard: OwnedRwLockReadGuard<Option<VmLease>>,
    _in_flight: InFlight,
}

impl Hold {
    /// The error for a request that failed in this lease: `lease_ended`
    /// if the lease ended meanwhile (that is why it failed), else `err`.
    #[must_use]
    pub fn explain(&self, err: ApiError) -> ApiError {
        match self.entry.ending() {
            Some(why) => ApiError::lease_ended(why),
            None => err,
        }
    }
}

/// Counts a request in flight until dropped.
#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The daemon.
#[derive(Debug)]
pub struct Daemon {
    /// The library's entry point.
    pub paddock: Paddock,
    /// Metrics, audit log, anomaly detection.
    pub observability: Observability,
    /// The configuration it runs.
    pub config: Config,
    /// The tenants (replaced by a reload).
    tenants: RwLock<Tenants>,
    pools: RwLock<BTreeMap<String, Arc<PoolEntry>>>,
    leases: Mutex<HashMap<String, Arc<LeaseEntry>>>,
    /// Ended leases, oldest first.
    ended: Mutex<VecDeque<Ended>>,
    draining: AtomicBool,
    in_flight: Arc<AtomicUsize>,
}

impl Daemon {
    /// A daemon with no pool yet.
    #[must_use]
    pub fn new(paddock: Paddock, observability: Observability, config: Config) -> Self {
        let tenants = Tenants::new(&config.tenants);
        Self {
            paddock,
            observability,
            config,
            tenants: RwLock::new(tenants),
            pools: RwLock::new(BTreeMap::new()),
            leases: Mutex::new(HashMap::new()),
            ended: Mutex::new(VecDeque::new()),
            draining: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Starts serving `pool` under its name, with its slots' resources
    /// sampled every [`SAMPLE_INTERVAL`]. Must be called within a tokio
    /// runtime.
    pub fn add_pool(&self, pool: VmPool) {
        let name: Arc<str> = pool.backend().spec().name.as_str().into();
        let sampler = self
            .observability
            .spawn_sampler(pool.clone(), SAMPLE_INTERVAL);
        let entry = Arc::new(PoolEntry {
            name: Arc::clone(&name),
            pool,
            draining: AtomicBool::new(false),
            sampler,
        });
        self.pools
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), entry);
    }

    /// The tenant whose bearer token is in `authorization`; see
    /// [`Tenants::authenticate`].
    ///
    /// # Errors
    /// [`crate::auth::AuthError`].
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<Caller, crate::auth::AuthError> {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .authenticate(authorization)
    }

    /// Applies what of `new` can change while the daemon runs: the tenants
    /// (tokens, rights, request rates), the pools' sizes and rate limits.
    /// Returns one
    /// line per change made and per change that needs a restart.
    #[must_use]
    pub fn reload(&self, new: &Config) -> Vec<String> {
        let mut report = Vec::new();
        *self.tenants.write().unwrap_or_else(PoisonError::into_inner) = Tenants::new(&new.tenants);
        report.push(format!("tenants: {} now", new.tenants.len()));
        let running = self.pools();
        for declared in &new.pools {
            let name = &declared.spec.name;
            let Some(entry) = running.iter().find(|e| &*e.name == name.as_str()) else {
                report.push(format!("pool {name}: new in the file; a restart starts it"));
                continue;
            };
            let sizes = (declared.config.min_ready, declared.config.max_size);
            if entry.pool.sizes() != sizes {
                match entry.pool.resize(sizes.0, sizes.1) {
                    Ok(()) => report.push(format!(
                        "pool {name}: min_ready {}, max_size {}",
                        sizes.0, sizes.1
                    )),
                    Err(err) => report.push(format!("pool {name}: not resized: {err}")),
                }
            }
            let running_spec = entry.pool.backend().spec();
            let spec = &declared.spec;
            let same_vms = running_spec.memory_mib == spec.memory_mib
                && running_spec.vcpus == spec.vcpus
                && running_spec.tuning == spec.tuning
                && running_spec.warmup == spec.warmup
                && running_spec.rewarm == spec.rewarm
                && running_spec.reset == spec.reset;
            if entry.pool.limits() != declared.config.limits {
                entry.pool.set_limits(declared.config.limits);
                report.push(format!("pool {name}: rate limits"));
            }
            // The policy file is read again on every reload, changed or
            // not: editing the file and sending SIGHUP applies it.
            let policy = declared.config.policy.clone();
            report.push(format!(
                "pool {name}: policy {}",
                policy.as_ref().map_or("none", |p| p.name())
            ));
            entry.pool.set_policy(policy);
            let config = entry.pool.config();
            let same_rest = config.ttl == declared.config.ttl
                && config.max_uses == declared.config.max_uses
                && config.acquire_timeout == declared.config.acquire_timeout;
            if !same_vms || !same_rest {
                report.push(format!(
                    "pool {name}: its VMs or timeouts changed; a restart applies them"
                ));
            }
        }
        for entry in &running {
            if !new.pools.iter().any(|p| p.spec.name == *entry.name) {
                report.push(format!(
                    "pool {}: gone from the file; drain it or restart to remove it",
                    entry.name
                ));
            }
        }
        report
    }

    /// The pool named `name`.
    ///
    /// # Errors
    /// `404 pool_not_found`.
    pub fn pool(&self, name: &str) -> Result<Arc<PoolEntry>, ApiError> {
        self.pools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found("pool_not_found", format!("No pool `{name}`")))
    }

    /// Every pool, by name.
    #[must_use]
    pub fn pools(&self) -> Vec<Arc<PoolEntry>> {
        self.pools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Whether the daemon is draining.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A pool's state for the API.
    #[must_use]
    pub fn pool_status(entry: &PoolEntry) -> PoolStatus {
        let stats = entry.pool.stats();
        let (min_ready, max_size) = entry.pool.sizes();
        PoolStatus {
            name: entry.name.to_string(),
            ready: stats.ready,
            leased: stats.leased,
            preparing: stats.preparing,
            total: stats.total,
            min_ready,
            max_size,
            reset: reset_name(entry.pool.backend().spec().reset).to_owned(),
            backend_available: stats.backend_available,
            draining: entry.draining.load(Ordering::SeqCst),
            golden_id: entry.pool.backend().golden().id.id.clone(),
            policy: entry.pool.policy().map(|policy| policy.name().to_owned()),
        }
    }

    /// A pool's ready and leased slots; leases and tenants only where
    /// `caller` may see them.
    ///
    /// # Errors
    /// `404 pool_not_found`.
    pub fn slots(&self, caller: &Caller, pool: &str) -> Result<SlotList, ApiError> {
        let entry = self.pool(pool)?;
        let domain = |index: u32| paddock::vm::backend::slot_name(pool, index);
        let mut slots: Vec<SlotStatus> = entry
            .pool
            .ready_slots()
            .into_iter()
            .map(|index| SlotStatus {
                index,
                state: "ready".into(),
                lease: None,
                tenant: None,
                domain: domain(index),
            })
            .collect();
        let leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        for lease in leases.values().filter(|l| &*l.pool == pool) {
            let visible = caller.owns(lease.tenant.as_deref());
            slots.push(SlotStatus {
                index: lease.slot,
                state: "leased".into(),
                lease: visible.then(|| lease.id.clone()),
                tenant: visible
                    .then(|| lease.tenant.as_deref().map(str::to_owned))
                    .flatten(),
                domain: lease.domain.clone(),
            });
        }
        drop(leases);
        slots.sort_by_key(|s| s.index);
        let stats = entry.pool.stats();
        Ok(SlotList {
            preparing: stats.preparing,
            slots,
        })
    }

    /// The leases `caller` may see.
    #[must_use]
    pub fn leases(&self, caller: &Caller) -> Vec<LeaseInfo> {
        let mut leases: Vec<LeaseInfo> = self
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|l| caller.owns(l.tenant.as_deref()))
            .map(|l| l.info())
            .collect();
        leases.sort_by(|a, b| (&a.pool, a.slot).cmp(&(&b.pool, b.slot)));
        leases
    }

    /// Acquires a lease on `pool` for `caller`, waiting at most `wait`.
    ///
    /// # Errors
    /// `409 draining`, `503 unavailable`, `429 rate_limited`, `404
    /// pool_not_found`.
    pub async fn acquire(
        &self,
        caller: &Caller,
        pool: &str,
        wait: Option<Duration>,
    ) -> Result<LeaseInfo, ApiError> {
        let entry = self.pool(pool)?;
        if self.is_draining() || entry.draining.load(Ordering::SeqCst) {
            return Err(draining(pool));
        }
        let limit = entry.pool.config().acquire_timeout;
        let wait = wait.map_or(limit, |w| w.min(limit));
        let acquired = match caller.tenant() {
            Some(tenant) => tokio::time::timeout(wait, entry.pool.acquire_for(tenant)).await,
            None => tokio::time::timeout(wait, entry.pool.acquire()).await,
        };
        let lease = match acquired {
            Ok(lease) => lease?,
            Err(_) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!(
                        "No slot of `{pool}` was ready within {} ms",
                        wait.as_millis()
                    ),
                ));
            }
        };
        let lease_entry = Arc::new(LeaseEntry {
            id: format!("l-{}", lease.id().0),
            pool: Arc::clone(&entry.name),
            slot: lease.index(),
            tenant: caller.tenant().map(Arc::from),
            domain: lease.name().to_owned(),
            acquired_at: Timestamp::now(),
            lease: Arc::new(AsyncRwLock::new(Some(lease))),
            ending: Mutex::new(None),
        });
        let info = lease_entry.info();
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(info.id.clone(), lease_entry);
        // A drain that began while this acquire waited ends it at once.
        if self.is_draining() || entry.draining.load(Ordering::SeqCst) {
            self.end_and_release(&info.id, "daemon_draining").await;
            return Err(draining(pool));
        }
        Ok(info)
    }

    /// The lease `id` if `caller` may use it.
    ///
    /// # Errors
    /// `404 lease_not_found` (also for another tenant's lease), or `409
    /// lease_ended` with the reason for one of the caller's that ended.
    pub fn lease(&self, caller: &Caller, id: &str) -> Result<Arc<LeaseEntry>, ApiError> {
        let found = self
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        match found {
            Some(entry) if caller.owns(entry.tenant.as_deref()) => Ok(entry),
            Some(_) => Err(lease_not_found(id)),
            None => {
                let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
                match ended.iter().find(|(ended_id, _, _)| ended_id == id) {
                    Some((_, tenant, why)) if caller.owns(tenant.as_deref()) => {
                        Err(ApiError::lease_ended(why))
                    }
                    _ => Err(lease_not_found(id)),
                }
            }
        }
    }

    /// A hold on lease `id` for one request of `caller`.
    ///
    /// # Errors
    /// As [`Daemon::lease`], or `409 lease_ended` once it is ending.
    pub async fn hold(&self, caller: &Caller, id: &str) -> Result<Hold, ApiError> {
        let entry = self.lease(caller, id)?;
        let guard = Arc::clone(&entry.lease).read_owned().await;
        if let Some(why) = entry.ending() {
            return Err(ApiError::lease_ended(why));
        }
        let Some(lease) = guard.as_ref() else {
            return Err(ApiError::lease_ended("released"));
        };
        let client = lease.client().clone();
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Ok(Hold {
            entry,
            client,
            _guard: guard,
            _in_flight: InFlight(Arc::clone(&self.in_flight)),
        })
    }

    /// Ends lease `id` (requests in it fail; see the module docs) and
    /// gives its slot back to be reset. `false` if there is no such lease.
    pub async fn end_and_release(&self, id: &str, why: &'static str) -> bool {
        match self.end(id, why).await {
            Some(lease) => {
                lease.release();
                true
            }
            None => false,
        }
    }

    /// Ends lease `id` and returns its slot's lease, for the caller to
    /// release: see the module docs.
    async fn end(&self, id: &str, why: &'static str) -> Option<VmLease> {
        let entry = self
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()?;
        {
            let mut ending = entry.ending.lock().unwrap_or_else(PoisonError::into_inner);
            if ending.is_some() {
                // Someone else is ending it.
                return None;
            }
            *ending = Some(why);
        }
        let client = entry
            .lease
            .read()
            .await
            .as_ref()
            .map(|lease| lease.client().clone());
        if let Some(client) = client {
            client.revoke().await;
        }
        let lease = entry.lease.write().await.take();
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        if ended.len() >= ENDED_KEPT {
            ended.pop_front();
        }
        ended.push_back((id.to_owned(), entry.tenant.clone(), why));
        lease
    }

    /// The lease on slot `index` of `pool`, if the daemon holds one.
    fn lease_on(&self, pool: &str, index: u32) -> Option<String> {
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .find(|l| &*l.pool == pool && l.slot == index)
            .map(|l| l.id.clone())
    }

    /// Resets slot `index` of `pool` now; a leased slot's lease ends
    /// (`reset_by_operator`).
    ///
    /// # Errors
    /// `404 pool_not_found` or `slot_not_found` (also for a slot being
    /// prepared).
    pub async fn reset_slot(&self, pool: &str, index: u32) -> Result<(), ApiError> {
        let entry = self.pool(pool)?;
        if let Some(id) = self.lease_on(pool, index) {
            self.end_and_release(&id, "reset_by_operator").await;
            return Ok(());
        }
        if entry.pool.reset_slot(index) {
            Ok(())
        } else {
            Err(slot_not_found(pool, index))
        }
    }

    /// Destroys slot `index` of `pool` and makes a new one; a leased slot's
    /// lease ends (`recycled_by_operator`).
    ///
    /// # Errors
    /// `404 pool_not_found` or `slot_not_found`.
    pub async fn recycle_slot(&self, pool: &str, index: u32) -> Result<(), ApiError> {
        let entry = self.pool(pool)?;
        let lease = self.lease_on(pool, index);
        if lease.is_none() && !entry.pool.ready_slots().contains(&index) {
            return Err(slot_not_found(pool, index));
        }
        entry.pool.recycle_slot(index);
        if let Some(id) = lease {
            self.end_and_release(&id, "recycled_by_operator").await;
        }
        Ok(())
    }

    /// Rebuilds `pool`'s golden and replaces its slots one by one while it
    /// serves ([`VmPool::rebuild_golden`]).
    ///
    /// # Errors
    /// `404 pool_not_found`, `400` for an image that does not load, or why
    /// the rebuild failed.
    pub async fn rebuild_golden(
        &self,
        pool: &str,
        request: &crate::wire::GoldenRequest,
    ) -> Result<crate::wire::GoldenResult, ApiError> {
        let entry = self.pool(pool)?;
        let image = match &request.image {
            Some(path) => Some(
                paddock::GuestImage::load(std::path::Path::new(path))
                    .map_err(|err| ApiError::bad_request(format!("The image {path}: {err}")))?,
            ),
            None => None,
        };
        let within = Duration::from_secs(request.within_s.unwrap_or(600));
        let done = entry
            .pool
            .rebuild_golden(image, request.warmup.clone(), within)
            .await?;
        Ok(crate::wire::GoldenResult {
            golden_id: done.golden_id,
            replaced: done.replaced,
            leased_left: done.leased_left,
        })
    }

    /// Drains `pool`: no new leases, its leases end (`pool_drained`), its
    /// slots and files are removed, and it leaves the daemon's list.
    ///
    /// # Errors
    /// `404 pool_not_found`; a removal that failed.
    pub async fn drain_pool(&self, pool: &str) -> Result<(), ApiError> {
        let entry = self.pool(pool)?;
        entry.draining.store(true, Ordering::SeqCst);
        entry.sampler.abort();
        let ids: Vec<String> = self
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|l| &*l.pool == pool)
            .map(|l| l.id.clone())
            .collect();
        for id in ids {
            self.end_and_release(&id, "pool_drained").await;
        }
        entry.pool.shutdown().await;
        let closed = entry.pool.close().await;
        self.pools
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(pool);
        closed.map_err(ApiError::from)
    }

    /// Drains the daemon: no new leases; requests in flight get up to
    /// `grace` to finish; then every lease ends and every pool is drained.
    /// Returns the pools whose removal failed, with why.
    pub async fn drain(&self, grace: Duration) -> Vec<(String, String)> {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        while self.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut failures = Vec::new();
        for entry in self.pools() {
            if let Err(err) = self.drain_pool(&entry.name).await {
                failures.push((entry.name.to_string(), err.message));
            }
        }
        failures
    }
}

fn draining(pool: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "draining",
        format!("`{pool}` (or the daemon) is draining: no new leases"),
    )
}

fn lease_not_found(id: &str) -> ApiError {
    ApiError::not_found("lease_not_found", format!("No lease `{id}`"))
}

fn slot_not_found(pool: &str, index: u32) -> ApiError {
    ApiError::not_found(
        "slot_not_found",
        format!("`{pool}` has no ready or leased slot {index} (it may be being prepared)"),
    )
}

/// The configuration's name of a reset strategy.
#[must_use]
pub fn reset_name(strategy: paddock::ResetStrategy) -> &'static str {
    match strategy {
        paddock::ResetStrategy::InPlace => "in_place",
        paddock::ResetStrategy::Restore => "restore",
        paddock::ResetStrategy::Revert => "revert",
    }
}
