//! Prometheus metrics: what the layers record as things happen (counters,
//! histograms), plus gauges read from the lifecycle's state at scrape time, encoded
//! in Prometheus' text format for `GET /metrics`.
//!
//! Recording is cheap enough for forwardAuth's hot path: every labelled series is
//! resolved once, at construction, into a handle indexed by a small enum, so a
//! forwardAuth request pays three relaxed atomic adds: no label lookup, allocation
//! or lock. Label values come from fixed sets; no series names a user or a slug.
//!
//! This module names no other part of spawngate: the layers that record hold an
//! `Arc<Metrics>` given at construction, and the lifecycle hands in a callback
//! ([`Metrics::observe_environments`]) for the gauges of its state.

mod census;
mod histogram;
mod labels;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use census::Census;
use census::{CensusCollector, CensusFn};
pub use histogram::Histogram;
pub use labels::*;

/// `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Activity within this long makes a user count as active.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(300);

/// forwardAuth: from a 50 µs cache hit to a start held for up to 25 s.
const AUTH_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 25.0,
];
/// Starts: an unpause takes tens of ms, a slow image a minute or two.
const SPAWN_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];
/// Runtime (Docker API) calls.
const RUNTIME_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Rendering Traefik's configuration.
const RENDER_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

pub(crate) type L1 = [(&'static str, &'static str); 1];
type L2 = [(&'static str, &'static str); 2];

pub struct Metrics {
    registry: Registry,
    auth: Vec<Counter>,
    auth_duration: Histogram,
    spawn_duration: Vec<Histogram>,
    spawn_failures: Vec<Counter>,
    capacity_refusals: Counter,
    /// By `tier * CullReason::ALL.len() + reason`.
    culls: Vec<Counter>,
    provider_renders: Counter,
    provider_render_duration: Histogram,
    provider_bytes: Gauge,
    provider_requests: Counter,
    runtime_duration: Vec<Histogram>,
    runtime_errors: Vec<Counter>,
    login_attempts: Vec<Counter>,
    login_failures: Vec<Counter>,
    rate_limited: Vec<Counter>,
    census: Arc<OnceLock<CensusFn>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A counter per value of `values`, registered as one family labelled `label`.
fn counters<T: Copy>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[T],
    text: impl Fn(T) -> &'static str,
) -> Vec<Counter> {
    let family = Family::<L1, Counter>::default();
    let handles = values
        .iter()
        .map(|v| family.get_or_create_owned(&[(label, text(*v))]))
        .collect();
    registry.register(name, help, family);
    handles
}

fn histograms<T: Copy>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[T],
    text: impl Fn(T) -> &'static str,
    bounds: &'static [f64],
) -> Vec<Histogram> {
    let family = Family::<L1, Histogram, _>::new_with_constructor(move || Histogram::new(bounds));
    let handles = values
        .iter()
        .map(|v| family.get_or_create_owned(&[(label, text(*v))]))
        .collect();
    registry.register(name, help, family);
    handles
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("spawngate");
        let auth = counters(
            &mut r,
            "auth_requests",
            "forwardAuth decisions, by outcome",
            "outcome",
            AuthOutcome::ALL,
            AuthOutcome::as_str,
        );
        let auth_duration = Histogram::new(AUTH_BUCKETS);
        r.register(
            "auth_duration_seconds",
            "Time to answer a forwardAuth request (a start held within it included)",
            auth_duration.clone(),
        );
        let spawn_duration = histograms(
            &mut r,
            "spawn_duration_seconds",
            "Time from a start's request until the app answered, by how it was made ready",
            "kind",
            SpawnKind::ALL,
            SpawnKind::as_str,
            SPAWN_BUCKETS,
        );
        let spawn_failures = counters(
            &mut r,
            "spawn_failures",
            "Starts that failed (or were refused at capacity), by reason",
            "reason",
            SpawnFailure::ALL,
            SpawnFailure::as_str,
        );
        let capacity_refusals = Counter::default();
        r.register(
            "capacity_refusals",
            "Starts refused because limits.max_running was reached",
            capacity_refusals.clone(),
        );
        let cull_family = Family::<L2, Counter>::default();
        let culls = CullTier::ALL
            .iter()
            .flat_map(|t| CullReason::ALL.iter().map(move |r| (*t, *r)))
            .map(|(t, r)| {
                cull_family.get_or_create_owned(&[("tier", t.as_str()), ("reason", r.as_str())])
            })
            .collect();
        r.register(
            "culls",
            "Containers paused, stopped or removed by the culler (or to make room), by tier and reason",
            cull_family,
        );
        let provider_renders = Counter::default();
        r.register(
            "provider_renders",
            "Times Traefik's dynamic configuration was rendered (once per change of users)",
            provider_renders.clone(),
        );
        let provider_render_duration = Histogram::new(RENDER_BUCKETS);
        r.register(
            "provider_render_duration_seconds",
            "Time to render Traefik's dynamic configuration",
            provider_render_duration.clone(),
        );
        let provider_bytes = Gauge::default();
        r.register(
            "provider_config_bytes",
            "Size of the current Traefik dynamic configuration document",
            provider_bytes.clone(),
        );
        let provider_requests = Counter::default();
        r.register(
            "provider_requests",
            "Polls of /traefik/config answered with the configuration",
            provider_requests.clone(),
        );
        // The event stream runs until it breaks: it has no duration to export.
        let timed =
            Family::<L1, Histogram, _>::new_with_constructor(|| Histogram::new(RUNTIME_BUCKETS));
        let runtime_duration = RuntimeOp::ALL
            .iter()
            .map(|op| match op {
                RuntimeOp::Events => Histogram::new(RUNTIME_BUCKETS),
                op => timed.get_or_create_owned(&[("operation", op.as_str())]),
            })
            .collect();
        r.register(
            "runtime_operation_duration_seconds",
            "Container runtime (Docker API) operations, by operation",
            timed,
        );
        let runtime_errors = counters(
            &mut r,
            "runtime_operation_errors",
            "Container runtime (Docker API) operations that failed, by operation",
            "operation",
            RuntimeOp::ALL,
            RuntimeOp::as_str,
        );
        let login_attempts = counters(
            &mut r,
            "login_attempts",
            "Sign-in attempts, by method (token and jwt: forwardAuth requests presenting one)",
            "method",
            LoginMethod::ALL,
            LoginMethod::as_str,
        );
        let login_failures = counters(
            &mut r,
            "login_failures",
            "Sign-in attempts that failed, by method",
            "method",
            LoginMethod::ALL,
            LoginMethod::as_str,
        );
        let rate_limited = counters(
            &mut r,
            "rate_limited",
            "Sign-in requests refused by a rate limit, by limit",
            "limit",
            RateLimit::ALL,
            RateLimit::as_str,
        );
        r.register(
            "build",
            "spawngate's version and the git commit it was built from",
            Info::new([
                ("version", env!("CARGO_PKG_VERSION")),
                (
                    "commit",
                    option_env!("SPAWNGATE_GIT_COMMIT").unwrap_or("unknown"),
                ),
            ]),
        );
        let started = Gauge::<i64>::default();
        started.set(crate::time::unix_now());
        r.register(
            "start_time_seconds",
            "When this spawngate process started (Unix seconds)",
            started,
        );
        let census = Arc::new(OnceLock::new());
        r.register_collector(Box::new(CensusCollector(census.clone())));
        Metrics {
            registry: r,
            auth,
            auth_duration,
            spawn_duration,
            spawn_failures,
            capacity_refusals,
            culls,
            provider_renders,
            provider_render_duration,
            provider_bytes,
            provider_requests,
            runtime_duration,
            runtime_errors,
            login_attempts,
            login_failures,
            rate_limited,
            census,
        }
    }

    /// Every metric in Prometheus' text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Sets where the environment gauges come from (the first call wins). The
    /// callback runs at every scrape; `None` leaves the gauges out.
    pub fn observe_environments(
        &self,
        census: impl Fn() -> Option<Census> + Send + Sync + 'static,
    ) {
        let _ = self.census.set(Box::new(census));
    }

    /// One forwardAuth answer (`outcome` as in its log line).
    pub fn auth(&self, outcome: &str, took: Duration) {
        if let Some(c) = self.auth.get(AuthOutcome::parse(outcome) as usize) {
            c.inc();
        }
        self.auth_duration.observe(took);
    }

    pub fn spawned(&self, kind: SpawnKind, took: Duration) {
        if let Some(h) = self.spawn_duration.get(kind as usize) {
            h.observe(took);
        }
    }

    pub fn spawn_failed(&self, reason: SpawnFailure) {
        if let Some(c) = self.spawn_failures.get(reason as usize) {
            c.inc();
        }
    }

    /// A start refused at capacity (also a spawn failure of reason `capacity`).
    pub fn capacity_refused(&self) {
        self.capacity_refusals.inc();
        self.spawn_failed(SpawnFailure::Capacity);
    }

    pub fn culled(&self, tier: CullTier, reason: CullReason) {
        let i = tier as usize * CullReason::ALL.len() + reason as usize;
        if let Some(c) = self.culls.get(i) {
            c.inc();
        }
    }

    /// Traefik's configuration was rendered: `bytes` long, in `took`.
    pub fn provider_rendered(&self, bytes: usize, took: Duration) {
        self.provider_renders.inc();
        self.provider_render_duration.observe(took);
        self.provider_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn provider_polled(&self) {
        self.provider_requests.inc();
    }

    pub fn runtime_call(&self, op: RuntimeOp, took: Option<Duration>, ok: bool) {
        if let (Some(h), Some(took)) = (self.runtime_duration.get(op as usize), took) {
            h.observe(took);
        }
        if !ok && let Some(c) = self.runtime_errors.get(op as usize) {
            c.inc();
        }
    }

    /// A sign-in attempt by `method` and whether it succeeded.
    pub fn login(&self, method: LoginMethod, ok: bool) {
        if let Some(c) = self.login_attempts.get(method as usize) {
            c.inc();
        }
        if !ok && let Some(c) = self.login_failures.get(method as usize) {
            c.inc();
        }
    }

    pub fn rate_limited(&self, limit: RateLimit) {
        if let Some(c) = self.rate_limited.get(limit as usize) {
            c.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_with_its_fixed_labels() {
        let m = Metrics::new();
        m.auth("allow", Duration::from_micros(80));
        m.auth("no_session", Duration::from_micros(120));
        m.auth("something new", Duration::from_millis(2));
        m.spawned(SpawnKind::Create, Duration::from_millis(700));
        m.spawn_failed(SpawnFailure::AppExited);
        m.capacity_refused();
        m.culled(CullTier::Stop, CullReason::Capacity);
        m.provider_rendered(1234, Duration::from_micros(300));
        m.runtime_call(RuntimeOp::Inspect, Some(Duration::from_millis(3)), false);
        m.login(LoginMethod::Password, false);
        m.rate_limited(RateLimit::Email);
        let text = m.encode();
        for line in [
            "spawngate_auth_requests_total{outcome=\"allow\"} 1",
            "spawngate_auth_requests_total{outcome=\"no_session\"} 1",
            "spawngate_auth_requests_total{outcome=\"other\"} 1",
            "spawngate_auth_requests_total{outcome=\"forbidden\"} 0",
            "spawngate_auth_duration_seconds_bucket{le=\"0.0001\"} 1",
            "spawngate_auth_duration_seconds_bucket{le=\"0.00025\"} 2",
            "spawngate_auth_duration_seconds_bucket{le=\"+Inf\"} 3",
            "spawngate_auth_duration_seconds_count 3",
            "spawngate_spawn_duration_seconds_count{kind=\"create\"} 1",
            "spawngate_spawn_duration_seconds_count{kind=\"unpause\"} 0",
            "spawngate_spawn_failures_total{reason=\"app_exited\"} 1",
            "spawngate_spawn_failures_total{reason=\"capacity\"} 1",
            "spawngate_capacity_refusals_total 1",
            "spawngate_provider_renders_total 1",
            "spawngate_provider_config_bytes 1234",
            "spawngate_runtime_operation_errors_total{operation=\"inspect\"} 1",
            "spawngate_runtime_operation_duration_seconds_count{operation=\"inspect\"} 1",
            "spawngate_login_attempts_total{method=\"password\"} 1",
            "spawngate_login_failures_total{method=\"password\"} 1",
            "spawngate_login_failures_total{method=\"oidc\"} 0",
            "spawngate_rate_limited_total{limit=\"email\"} 1",
            "# TYPE spawngate_auth_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains(
                "spawngate_runtime_operation_duration_seconds_count{operation=\"events\"}"
            ),
            "the event stream has no duration"
        );
        let culls = "spawngate_culls_total{";
        assert!(
            text.lines().any(|l| l.starts_with(culls)
                && l.contains("tier=\"stop\"")
                && l.contains("reason=\"capacity\"")
                && l.ends_with(" 1")),
            "{text}"
        );
        let build = text
            .lines()
            .find(|l| l.starts_with("spawngate_build_info{"))
            .unwrap_or_else(|| panic!("no build info in\n{text}"));
        assert!(
            build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
            "{build}"
        );
    }

    #[test]
    fn environment_gauges_are_read_at_scrape_time() {
        let m = Metrics::new();
        assert!(
            !m.encode().contains("spawngate_environments"),
            "no source yet"
        );
        let ready = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let seen = ready.clone();
        m.observe_environments(move || {
            let mut c = Census {
                running: 4,
                active: 2,
                users: 9,
                capacity: Some(10),
                ..Census::default()
            };
            c.states[EnvState::Ready as usize] = seen.load(std::sync::atomic::Ordering::Relaxed);
            Some(c)
        });
        let text = m.encode();
        for line in [
            "spawngate_environments{state=\"ready\"} 1",
            "spawngate_environments{state=\"paused\"} 0",
            "spawngate_running_environments 4",
            "spawngate_active_users 2",
            "spawngate_users 9",
            "spawngate_max_running_environments 10",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        ready.store(3, std::sync::atomic::Ordering::Relaxed);
        assert!(
            m.encode()
                .contains("spawngate_environments{state=\"ready\"} 3")
        );
    }

    /// Labels come from fixed sets only: whatever users do, no series names one.
    #[test]
    fn no_label_can_carry_a_user() {
        let m = Metrics::new();
        for outcome in ["allow", "alice", "u-3f9a1c0b2d4e", "../x"] {
            m.auth(outcome, Duration::from_micros(10));
        }
        let allowed: Vec<&str> = [
            AuthOutcome::ALL
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
            SpawnKind::ALL.iter().map(|v| v.as_str()).collect(),
            SpawnFailure::ALL.iter().map(|v| v.as_str()).collect(),
            CullTier::ALL.iter().map(|v| v.as_str()).collect(),
            CullReason::ALL.iter().map(|v| v.as_str()).collect(),
            RuntimeOp::ALL.iter().map(|v| v.as_str()).collect(),
            LoginMethod::ALL.iter().map(|v| v.as_str()).collect(),
            RateLimit::ALL.iter().map(|v| v.as_str()).collect(),
            EnvState::ALL.iter().map(|v| v.as_str()).collect(),
        ]
        .concat();
        let text = m.encode();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((_, labels)) = line.split_once('{') else {
                continue;
            };
            let labels = labels.split('}').next().unwrap_or_default();
            for pair in labels.split(',') {
                let (key, value) = pair.split_once('=').unwrap();
                let value = value.trim_matches('"');
                match key {
                    "le" | "version" | "commit" => {}
                    _ => assert!(allowed.contains(&value), "{key}={value:?} in {line}"),
                }
            }
        }
        assert!(
            !text.contains("alice") && !text.contains("3f9a1c"),
            "{text}"
        );
    }

    /// Every outcome forwardAuth decides has its own series (a new one would be
    /// counted as `other`).
    #[test]
    fn forward_auth_outcomes_are_all_known() {
        let source = include_str!("../http/forward_auth.rs");
        let mut found = 0;
        for piece in source.split("decided(").skip(1) {
            let piece = piece.trim_start();
            let Some(rest) = piece.strip_prefix('"') else {
                continue;
            };
            let name = rest.split('"').next().unwrap_or_default();
            assert_ne!(AuthOutcome::parse(name), AuthOutcome::Other, "{name}");
            found += 1;
        }
        assert!(found >= 5, "found only {found} outcomes");
    }
}
