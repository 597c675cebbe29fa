//! The gauges of the lifecycle's state, computed by a callback at each scrape
//! rather than kept in step by hand.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{EnvState, L1};

/// The lifecycle's state, counted at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Environments per [`EnvState`] (indexed by it).
    pub states: [u64; EnvState::ALL.len()],
    /// Environments that count against `limits.max_running` (starting, ready,
    /// paused, or present in an unknown state).
    pub running: u64,
    /// Users with activity within [`ACTIVE_WINDOW`].
    pub active: u64,
    /// Registered users.
    pub users: u64,
    /// `limits.max_running`, when set.
    pub capacity: Option<u64>,
}

pub(super) type CensusFn = Box<dyn Fn() -> Option<Census> + Send + Sync>;

/// The environment gauges, computed from the lifecycle's state at each scrape.
pub(super) struct CensusCollector(pub(super) Arc<OnceLock<CensusFn>>);

impl std::fmt::Debug for CensusCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CensusCollector")
    }
}

impl Collector for CensusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(census) = self.0.get().and_then(|f| f()) else {
            return Ok(());
        };
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let by_state = Family::<L1, Gauge>::default();
        for (state, n) in EnvState::ALL.iter().zip(census.states) {
            by_state
                .get_or_create(&[("state", state.as_str())])
                .set(as_i64(n));
        }
        let m = encoder.encode_descriptor(
            "environments",
            "Environments by the state spawngate sees them in.",
            None,
            by_state.metric_type(),
        )?;
        by_state.encode(m)?;
        let mut gauge = |name: &str, help: &str, value: u64| {
            let g = Gauge::<i64>::default();
            g.set(as_i64(value));
            let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(m)
        };
        gauge(
            "running_environments",
            "Environments that count against limits.max_running (starting, ready or paused).",
            census.running,
        )?;
        gauge(
            "active_users",
            "Users with activity in the last 5 minutes.",
            census.active,
        )?;
        gauge("users", "Registered users.", census.users)?;
        if let Some(capacity) = census.capacity {
            gauge(
                "max_running_environments",
                "limits.max_running: most environments running at once.",
                capacity,
            )?;
        }
        Ok(())
    }
}
