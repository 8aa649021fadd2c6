//! The detector: per-scope state, the observation dispatch, pruning and the
//! scope cap.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::config::{ConfigError, DetectorConfig};
use crate::rules::{CountConfig, CountWindow, CpuRun};
use crate::stats::{Baseline, Ring, Scorer, ms_to_secs, usize_from};
use crate::{Action, Alert, Observation, RuleId, Scope};

/// The anomaly detector. Feed it observations with [`observe`](Self::observe)
/// (or [`observe_each`](Self::observe_each) for several scopes), call
/// [`prune`](Self::prune) now and then. It is `Send` and synchronous: the
/// host wraps it in a `Mutex`.
///
/// Time is whatever monotonic clock the caller uses, as a [`Duration`] since
/// an arbitrary epoch, at millisecond resolution. Per scope, a timestamp
/// earlier than the latest one seen is taken as that latest one: the
/// observation still counts, windows and runs never see time go backwards.
pub struct Detector {
    config: DetectorConfig,
    scorers: Scorers,
    bucket_secs: f64,
    scopes: HashMap<Scope, ScopeState>,
    next_seq: u64,
    /// Reused by every median computation, so scoring allocates nothing once
    /// it has grown to the largest window.
    scratch: Vec<f64>,
}

impl fmt::Debug for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detector")
            .field("scopes", &self.scopes.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Scorers {
    exec_rate: Scorer,
    output_rate: Scorer,
    exec_duration: Scorer,
    reset_duration: Scorer,
    acquire_wait: Scorer,
}

/// Everything kept for one scope. Rings and count windows allocate as they
/// fill and never grow past their configured capacity.
#[derive(Debug)]
struct ScopeState {
    /// Creation order: the eviction tie-breaker.
    seq: u64,
    /// The latest timestamp seen (ms): the scope's clock.
    last_seen: u64,
    last_fired: [Option<u64>; RuleId::COUNT],
    rates: RateSeries,
    exec_durations: Ring,
    reset_durations: Ring,
    acquire_waits: Ring,
    exec_timeouts: CountWindow,
    protocol_errors: CountWindow,
    reset_failures: CountWindow,
    egress_denied: CountWindow,
    cpu: CpuRun,
}

impl ScopeState {
    fn new(seq: u64, config: &DetectorConfig) -> Self {
        let ring = |window: u32| Ring::new(usize_from(window));
        Self {
            seq,
            last_seen: 0,
            last_fired: [None; RuleId::COUNT],
            rates: RateSeries {
                bucket: None,
                execs: 0,
                bytes: 0,
                exec_history: ring(config.exec_rate_spike.window),
                byte_history: ring(config.output_rate_spike.window),
                exec_baseline: None,
                byte_baseline: None,
            },
            exec_durations: ring(config.exec_duration_outlier.window),
            reset_durations: ring(config.reset_duration_outlier.window),
            acquire_waits: ring(config.acquire_wait_outlier.window),
            exec_timeouts: CountWindow::default(),
            protocol_errors: CountWindow::default(),
            reset_failures: CountWindow::default(),
            egress_denied: CountWindow::default(),
            cpu: CpuRun::default(),
        }
    }

    fn retained(&self) -> usize {
        [
            self.rates.exec_history.len(),
            self.rates.byte_history.len(),
            self.exec_durations.len(),
            self.reset_durations.len(),
            self.acquire_waits.len(),
            self.exec_timeouts.len(),
            self.protocol_errors.len(),
            self.reset_failures.len(),
            self.egress_denied.len(),
        ]
        .into_iter()
        .sum()
    }
}

/// Exec count and output bytes per time bucket. Only buckets with at least
/// one exec are samples: the history describes the scope while it is active,
/// so the idle time between leases does not drag the median to zero and make
/// every burst look like a spike.
#[derive(Debug)]
struct RateSeries {
    /// The open bucket's index (`now / bucket_ms`).
    bucket: Option<u64>,
    execs: u64,
    bytes: u64,
    exec_history: Ring,
    byte_history: Ring,
    /// Cached baselines of the histories, which only change when a bucket
    /// closes: the open bucket is rescored on every exec for O(1).
    /// `None`: not computed since the last change.
    exec_baseline: Option<Option<Baseline>>,
    byte_baseline: Option<Option<Baseline>>,
}

impl RateSeries {
    /// Counts an exec in `bucket`, closing the open bucket (into the
    /// histories) when `bucket` is a later one.
    fn record(&mut self, bucket: u64, bytes: u64, bucket_secs: f64) {
        match self.bucket {
            Some(open) if bucket > open => {
                self.exec_history.push(u64_to_f64(self.execs) / bucket_secs);
                self.byte_history.push(u64_to_f64(self.bytes) / bucket_secs);
                self.exec_baseline = None;
                self.byte_baseline = None;
                self.execs = 0;
                self.bytes = 0;
                self.bucket = Some(bucket);
            }
            // Time is clamped per scope, so an earlier bucket cannot occur.
            Some(_) => {}
            None => self.bucket = Some(bucket),
        }
        self.execs = self.execs.saturating_add(1);
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

fn u64_to_f64(v: u64) -> f64 {
    // Precision loss above 2^53 only shifts a huge rate by a few units.
    #[allow(clippy::cast_precision_loss)]
    let v = v as f64;
    v
}

/// Milliseconds since the epoch, saturating (a `Duration` can exceed u64 ms).
fn millis(at: Duration) -> u64 {
    u64::try_from(at.as_millis()).unwrap_or(u64::MAX)
}

/// Where alerts for one observation in one scope go, and the cooldown state
/// that gates them.
struct Emitter<'a> {
    scope: &'a Scope,
    now: u64,
    cooldown_ms: u64,
    last_fired: &'a mut [Option<u64>; RuleId::COUNT],
    alerts: &'a mut Vec<Alert>,
}

impl Emitter<'_> {
    /// Whether `rule` fired for this scope less than a cooldown ago. Checked
    /// before scoring, so a rule in cooldown costs no median.
    fn cooling(&self, rule: RuleId) -> bool {
        self.last_fired[rule.index()]
            .is_some_and(|last| self.now.saturating_sub(last) < self.cooldown_ms)
    }

    fn fire(
        &mut self,
        rule: RuleId,
        value: f64,
        threshold: f64,
        action: Action,
        message: impl FnOnce() -> String,
    ) {
        if self.cooling(rule) {
            return;
        }
        self.last_fired[rule.index()] = Some(self.now);
        self.alerts.push(Alert {
            rule,
            scope: self.scope.clone(),
            at: Duration::from_millis(self.now),
            value,
            threshold,
            action,
            message: message(),
        });
    }

    fn count_rule(
        &mut self,
        rule: RuleId,
        window: &mut CountWindow,
        config: &CountConfig,
        what: &str,
    ) {
        if !config.enabled {
            return;
        }
        if let Some(count) = window.record(self.now, config.count, config.window_ms) {
            self.fire(
                rule,
                f64::from(count),
                f64::from(config.count),
                config.action,
                || format!("{count} {what} within {} s", ms_to_secs(config.window_ms)),
            );
        }
    }

    /// Scores `value` against `ring` and then adds it: the history is what
    /// came before the value.
    #[allow(clippy::too_many_arguments)]
    fn outlier_rule(
        &mut self,
        rule: RuleId,
        ring: &mut Ring,
        scorer: &Scorer,
        action: Action,
        scratch: &mut Vec<f64>,
        value: f64,
        what: &str,
    ) {
        if scorer.above_floor(value) && !self.cooling(rule) {
            if let Some(baseline) = scorer.cached_baseline(ring, scratch) {
                if let Some(outlier) = scorer.judge(baseline, value) {
                    self.fire(rule, value, outlier.level, action, || {
                        format!(
                            "{what} {value:.3} s vs median {:.3} s (z {:.1})",
                            baseline.median, outlier.z
                        )
                    });
                }
            }
        }
        ring.push(value);
    }

    /// Scores the open bucket's rate so far against the cached baseline. A
    /// partial bucket's rate only grows, so a spike is caught within the
    /// bucket it starts in, and a bucket cannot fire on a rate it did not
    /// reach.
    #[allow(clippy::too_many_arguments)]
    fn rate_rule(
        &mut self,
        rule: RuleId,
        history: &Ring,
        cache: &mut Option<Option<Baseline>>,
        scorer: &Scorer,
        action: Action,
        scratch: &mut Vec<f64>,
        rate: f64,
        unit: &str,
    ) {
        if !scorer.above_floor(rate) || self.cooling(rule) {
            return;
        }
        let baseline = *cache.get_or_insert_with(|| scorer.baseline(history, scratch));
        if let Some(baseline) = baseline {
            if let Some(outlier) = scorer.judge(baseline, rate) {
                self.fire(rule, rate, outlier.level, action, || {
                    format!(
                        "{rate:.1} {unit} vs median {:.1} {unit} (z {:.1})",
                        baseline.median, outlier.z
                    )
                });
            }
        }
    }
}

impl Detector {
    /// A detector with `config`, once it validates.
    pub fn new(config: DetectorConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let scorers = Scorers {
            exec_rate: config.exec_rate_spike.scorer(),
            output_rate: config.output_rate_spike.scorer(),
            exec_duration: config.exec_duration_outlier.scorer(),
            reset_duration: config.reset_duration_outlier.scorer(),
            acquire_wait: config.acquire_wait_outlier.scorer(),
        };
        Ok(Self {
            bucket_secs: ms_to_secs(config.bucket_ms),
            config,
            scorers,
            scopes: HashMap::new(),
            next_seq: 0,
            scratch: Vec::new(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Records `obs` for `scope` at `at` and returns the alerts it raised,
    /// usually none (an empty `Vec`, which does not allocate).
    pub fn observe(&mut self, scope: &Scope, at: Duration, obs: &Observation) -> Vec<Alert> {
        let mut alerts = Vec::new();
        self.observe_into(scope, at, obs, &mut alerts);
        alerts
    }

    /// Records `obs` for each of `scopes` (typically
    /// [`Scope::for_lease`]'s slot and tenant) and returns all their alerts.
    pub fn observe_each<'a>(
        &mut self,
        scopes: impl IntoIterator<Item = &'a Scope>,
        at: Duration,
        obs: &Observation,
    ) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for scope in scopes {
            self.observe_into(scope, at, obs, &mut alerts);
        }
        alerts
    }

    fn observe_into(
        &mut self,
        scope: &Scope,
        at: Duration,
        obs: &Observation,
        alerts: &mut Vec<Alert>,
    ) {
        self.ensure_scope(scope);
        let Self {
            config,
            scorers,
            bucket_secs,
            scopes,
            scratch,
            ..
        } = self;
        let Some(state) = scopes.get_mut(scope) else {
            return;
        };
        let now = millis(at).max(state.last_seen);
        state.last_seen = now;
        let mut emit = Emitter {
            scope,
            now,
            cooldown_ms: config.cooldown_ms,
            last_fired: &mut state.last_fired,
            alerts,
        };
        match *obs {
            Observation::ExecFinished {
                duration,
                output_bytes,
                timed_out,
            } => {
                if timed_out {
                    emit.count_rule(
                        RuleId::RepeatedExecTimeouts,
                        &mut state.exec_timeouts,
                        &config.repeated_exec_timeouts,
                        "exec timeouts",
                    );
                } else if config.exec_duration_outlier.enabled {
                    // A timed-out exec's duration is its timeout, not the
                    // guest's speed: it is counted above, not scored.
                    emit.outlier_rule(
                        RuleId::ExecDurationOutlier,
                        &mut state.exec_durations,
                        &scorers.exec_duration,
                        config.exec_duration_outlier.action,
                        scratch,
                        duration.as_secs_f64(),
                        "exec took",
                    );
                }
                let (exec_cfg, byte_cfg) = (&config.exec_rate_spike, &config.output_rate_spike);
                if exec_cfg.enabled || byte_cfg.enabled {
                    let rates = &mut state.rates;
                    rates.record(now / config.bucket_ms, output_bytes, *bucket_secs);
                    if exec_cfg.enabled {
                        emit.rate_rule(
                            RuleId::ExecRateSpike,
                            &rates.exec_history,
                            &mut rates.exec_baseline,
                            &scorers.exec_rate,
                            exec_cfg.action,
                            scratch,
                            u64_to_f64(rates.execs) / *bucket_secs,
                            "execs/s",
                        );
                    }
                    if byte_cfg.enabled {
                        emit.rate_rule(
                            RuleId::OutputRateSpike,
                            &rates.byte_history,
                            &mut rates.byte_baseline,
                            &scorers.output_rate,
                            byte_cfg.action,
                            scratch,
                            u64_to_f64(rates.bytes) / *bucket_secs,
                            "B/s",
                        );
                    }
                }
            }
            Observation::ResetFinished { duration, ok } => {
                if !ok {
                    emit.count_rule(
                        RuleId::ResetFailures,
                        &mut state.reset_failures,
                        &config.reset_failures,
                        "failed resets",
                    );
                }
                if config.reset_duration_outlier.enabled {
                    emit.outlier_rule(
                        RuleId::ResetDurationOutlier,
                        &mut state.reset_durations,
                        &scorers.reset_duration,
                        config.reset_duration_outlier.action,
                        scratch,
                        duration.as_secs_f64(),
                        "reset took",
                    );
                }
            }
            Observation::AcquireWait { wait } => {
                if config.acquire_wait_outlier.enabled {
                    emit.outlier_rule(
                        RuleId::AcquireWaitOutlier,
                        &mut state.acquire_waits,
                        &scorers.acquire_wait,
                        config.acquire_wait_outlier.action,
                        scratch,
                        wait.as_secs_f64(),
                        "acquire waited",
                    );
                }
            }
            Observation::ProtocolError { kind } => {
                // Protocol errors are rare: the allocation is off the hot path.
                let what = format!("agent protocol errors (last: {})", kind.as_str());
                emit.count_rule(
                    RuleId::AgentProtocolErrors,
                    &mut state.protocol_errors,
                    &config.agent_protocol_errors,
                    &what,
                );
            }
            Observation::CpuSample { utilization } => {
                let cfg = &config.cpu_pinned;
                // NaN and infinities are dropped: not a sample, so they
                // neither extend nor break a run (a long enough run of them
                // breaks it through max_gap_ms). Out-of-range finite values
                // are accounting jitter: clamped.
                if cfg.enabled && utilization.is_finite() {
                    let utilization = utilization.clamp(0.0, 1.0);
                    if let Some(length) = state.cpu.record(now, utilization, cfg) {
                        emit.fire(
                            RuleId::CpuPinned,
                            ms_to_secs(length),
                            ms_to_secs(cfg.duration_ms),
                            cfg.action,
                            || {
                                format!(
                                    "CPU at or above {:.0} % for {} s",
                                    cfg.utilization * 100.0,
                                    ms_to_secs(length)
                                )
                            },
                        );
                    }
                }
            }
            Observation::EgressDenied => emit.count_rule(
                RuleId::EgressDenied,
                &mut state.egress_denied,
                &config.egress_denied,
                "egress denials",
            ),
        }
    }

    /// Makes room for and creates `scope`'s state if it is new. At the cap,
    /// the scope whose latest observation is the oldest is evicted (ties:
    /// the one created first): an O(scopes) scan, paid only when a new scope
    /// arrives at the cap.
    fn ensure_scope(&mut self, scope: &Scope) {
        if self.scopes.contains_key(scope) {
            return;
        }
        if self.scopes.len() >= usize_from(self.config.max_scopes) {
            let victim = self
                .scopes
                .iter()
                .min_by_key(|(_, state)| (state.last_seen, state.seq))
                .map(|(key, _)| key.clone());
            if let Some(victim) = victim {
                self.scopes.remove(&victim);
            }
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.scopes
            .insert(scope.clone(), ScopeState::new(seq, &self.config));
    }

    /// Drops every scope whose latest observation is at least
    /// `idle_timeout_ms` before `now`. A `now` earlier than a scope's latest
    /// observation keeps it.
    pub fn prune(&mut self, now: Duration) {
        let now = millis(now);
        let idle = self.config.idle_timeout_ms;
        self.scopes
            .retain(|_, state| now.saturating_sub(state.last_seen) < idle);
    }

    /// How many scopes are tracked.
    pub fn scopes(&self) -> usize {
        self.scopes.len()
    }

    /// Whether `scope` is tracked.
    pub fn contains_scope(&self, scope: &Scope) -> bool {
        self.scopes.contains_key(scope)
    }

    /// How many values all scopes retain in their windows; at most
    /// `max_scopes ×` [`DetectorConfig::max_samples_per_scope`]. A gauge for
    /// the detector's memory.
    pub fn retained_samples(&self) -> usize {
        self.scopes.values().map(ScopeState::retained).sum()
    }
}
