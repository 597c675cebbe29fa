//! Idle culling: pause, then stop, then remove containers nobody uses, and stop any
//! container past its maximum lifetime.
//!
//! Activity is the forwardAuth passes (an in-memory timestamp per user) and the
//! container's own network traffic, read from Docker's counters only for containers
//! that look idle by HTTP alone, so a long WebSocket that carries data keeps its
//! container alive. A paused container whose counters move (a client talking on an
//! open connection) is woken up.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Event, Lifecycle, Phase, Slot, env_of};
use crate::events::Subject;
use crate::metrics::{CullReason, CullTier};
use crate::store::Env;
use crate::time::unix_now;

/// Traffic below this many bytes between two looks is noise (ARP, keep-alive
/// probes), not a user.
const TRAFFIC_THRESHOLD: u64 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Pause,
    Stop,
    Remove,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Pause => "container.pause",
            Action::Stop => "container.stop",
            Action::Remove => "container.remove",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Stop => "stop",
            Action::Remove => "remove",
        }
    }

    fn tier(self) -> CullTier {
        match self {
            Action::Pause => CullTier::Pause,
            Action::Stop => CullTier::Stop,
            Action::Remove => CullTier::Remove,
        }
    }
}

/// What the culler will do next to an environment, and when, unless it is used
/// meanwhile (activity moves every idle tier back).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CullPlan {
    /// `pause`, `stop` or `remove`.
    pub action: &'static str,
    /// Unix seconds (already past when the culler's next look is due).
    pub at: i64,
    pub reason: &'static str,
}

/// The first tier [`decide`] will fire for an environment last active at `last`
/// and started at `started` (Unix seconds), with the same rules. Pure.
pub(super) fn plan(
    lc: &crate::config::LifecycleConfig,
    can_pause: bool,
    phase: &Phase,
    present: bool,
    last: i64,
    started: Option<i64>,
) -> Option<CullPlan> {
    let after = |limit: Option<Duration>, from: i64| limit.map(|l| from + l.as_secs() as i64);
    let live = matches!(phase, Phase::Ready | Phase::Paused);
    let candidates = [
        live.then(|| started.and_then(|s| after(lc.max_lifetime, s)))
            .flatten()
            .map(|at| (Action::Stop, at, "maximum lifetime reached")),
        (live || (matches!(phase, Phase::Stopped) && present))
            .then(|| after(lc.remove_after, last))
            .flatten()
            .map(|at| (Action::Remove, at, "idle")),
        live.then(|| after(lc.idle_timeout, last))
            .flatten()
            .map(|at| (Action::Stop, at, "idle")),
        (can_pause && matches!(phase, Phase::Ready))
            .then(|| after(lc.pause_after, last))
            .flatten()
            .map(|at| (Action::Pause, at, "idle")),
    ];
    candidates
        .into_iter()
        .flatten()
        .min_by_key(|(_, at, _)| *at)
        .map(|(action, at, reason)| CullPlan {
            action: action.verb(),
            at,
            reason,
        })
}

/// What to do with a container that has been idle `idle` seconds and running for
/// `age` seconds, given its phase. Pure, so the tiers are unit-tested directly.
/// Without `can_pause` (the runtime cannot), the pause tier is skipped.
pub(super) fn decide(
    lc: &crate::config::LifecycleConfig,
    can_pause: bool,
    phase: &Phase,
    present: bool,
    idle: i64,
    age: Option<i64>,
) -> Option<(Action, &'static str)> {
    let over =
        |limit: Option<Duration>, value: i64| limit.is_some_and(|l| value >= l.as_secs() as i64);
    let live = matches!(phase, Phase::Ready | Phase::Paused);
    if live && age.is_some_and(|a| over(lc.max_lifetime, a)) {
        return Some((Action::Stop, "maximum lifetime reached"));
    }
    if (live || (matches!(phase, Phase::Stopped) && present)) && over(lc.remove_after, idle) {
        return Some((Action::Remove, "idle"));
    }
    if live && over(lc.idle_timeout, idle) {
        return Some((Action::Stop, "idle"));
    }
    if can_pause && matches!(phase, Phase::Ready) && over(lc.pause_after, idle) {
        return Some((Action::Pause, "idle"));
    }
    None
}

impl Lifecycle {
    /// How often the culler looks: a quarter of the shortest tier, within 0.5–30 s.
    fn cull_interval(&self) -> Option<Duration> {
        let first = self.config.lifecycle.first_tier()?;
        Some((first / 4).clamp(Duration::from_millis(500), Duration::from_secs(30)))
    }

    /// What the culler will do next to `user`'s environment, and when; `None`
    /// when no tier applies (or the environment was never seen active).
    pub fn cull_plan(&self, env: &Env) -> Option<CullPlan> {
        let slot = self.slot(env.slug());
        let last = slot.last_activity.load(Ordering::Relaxed);
        if last == 0 {
            return None;
        }
        let started = slot.started.load(Ordering::Relaxed);
        plan(
            &self.config.lifecycle,
            self.runtime.capabilities().pause,
            &slot.phase.get(),
            slot.present.load(Ordering::Relaxed),
            last,
            (started > 0).then_some(started),
        )
    }

    /// Runs the culler until shutdown begins. Does nothing if no tier is set.
    pub(super) async fn run_culler(self: Arc<Self>) {
        let Some(every) = self.cull_interval() else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.cull_once().await,
                _ = self.tasks.cancelled() => return,
            }
        }
    }

    /// One pass over all containers.
    pub async fn cull_once(self: &Arc<Self>) {
        if self.store.is_shared() {
            // Containers other replicas started are culled here too: learn them.
            if let Err(e) = self.resync().await {
                tracing::warn!(error = %e, "cannot list containers before culling");
            }
        }
        let directory = self.store.snapshot();
        let now = unix_now();
        let lc = &self.config.lifecycle;
        let can = self.runtime.capabilities();
        let watch_traffic_after = lc
            .first_tier()
            .map(|d| d.as_secs() as i64 / 2)
            .unwrap_or(i64::MAX);
        for (id, slot) in self.all_slots() {
            // Shutting down: nothing new is stopped (the next start culls it).
            if self.tasks.is_cancelled() {
                return;
            }
            let Some(env) = directory.environment(&id) else {
                continue;
            };
            self.persist_activity(&env, &slot).await;
            if self.store.is_shared() {
                self.merge_recorded_activity(&env, &slot);
            }
            let phase = slot.phase.get();
            let last = slot.last_activity.load(Ordering::Relaxed);
            if last == 0 {
                // Never seen active (nor started by us): no idle clock to judge by.
                continue;
            }
            let idle = now - last;
            if can.network_counters
                && matches!(phase, Phase::Ready | Phase::Paused)
                && idle >= watch_traffic_after
                && self.saw_traffic(&env, &slot).await
            {
                slot.touch();
                if matches!(phase, Phase::Paused) {
                    tracing::info!(user = %env.owner().name, slug = %env.slug(), container = %self.container_name(&env), "traffic to a paused container: waking it");
                    self.prewarm(&env);
                }
                continue;
            }
            let started = slot.started.load(Ordering::Relaxed);
            let age = (started > 0).then(|| now - started);
            let present = slot.present.load(Ordering::Relaxed);
            if let Some((action, reason)) = decide(lc, can.pause, &phase, present, idle, age) {
                let this = self.clone();
                self.tasks
                    .spawn(async move { this.apply(&env, &slot, action, reason, last).await });
            }
        }
    }

    /// Whether the container's network counters moved since the last look.
    async fn saw_traffic(&self, env: &Env, slot: &Slot) -> bool {
        match self.runtime.network_bytes(&env_of(env)).await {
            Ok(Some(bytes)) => {
                let before = slot.net_bytes.swap(bytes, Ordering::Relaxed);
                before != u64::MAX && bytes.saturating_sub(before) >= TRAFFIC_THRESHOLD
            }
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(user = %env.owner().name, error = %e, "cannot read network counters");
                false
            }
        }
    }

    /// Writes the in-memory activity timestamp to the store when it moved.
    async fn persist_activity(&self, env: &Env, slot: &Slot) {
        let last = slot.last_activity.load(Ordering::Relaxed);
        if last > 0
            && slot.persisted_activity.swap(last, Ordering::Relaxed) != last
            && let Err(e) = self.store.note_activity(&env.record_key(), last).await
        {
            tracing::warn!(error = %e, "cannot persist activity");
        }
    }

    /// Another replica's users count too: the latest activity any replica
    /// recorded moves this one's idle clock (never back).
    fn merge_recorded_activity(&self, env: &Env, slot: &Slot) {
        if let Ok(Some(record)) = self.store.container_record(&env.record_key())
            && let Some(at) = record.last_activity
        {
            slot.last_activity.fetch_max(at, Ordering::Relaxed);
            slot.persisted_activity.fetch_max(at, Ordering::Relaxed);
        }
    }

    /// On a shared store, every replica records its users' activity four times
    /// as often as the leader's culler looks (one write per tick), so the
    /// culler judges by all of it, a quarter of its interval late at most.
    pub(super) async fn record_activity(self: Arc<Self>) {
        let Some(every) = self.cull_interval() else {
            return;
        };
        let every = (every / 4).max(Duration::from_millis(250));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.tasks.cancelled() => return,
            }
            let directory = self.store.snapshot();
            let mut noted = Vec::new();
            for (slug, slot) in self.all_slots() {
                let last = slot.last_activity.load(Ordering::Relaxed);
                if let Some(env) = directory.environment(&slug)
                    && last > 0
                    && slot.persisted_activity.swap(last, Ordering::Relaxed) != last
                {
                    noted.push((env.record_key(), last));
                }
            }
            if let Err(e) = self.store.note_activities(&noted).await {
                tracing::warn!(error = %e, "cannot record activity");
            }
        }
    }

    async fn apply(
        &self,
        env: &Env,
        slot: &Slot,
        action: Action,
        reason: &'static str,
        judged_activity: i64,
    ) {
        // Claim the transition first; if a request got there first (the phase
        // moved, or there was activity since the decision), do nothing.
        if slot.last_activity.load(Ordering::Relaxed) != judged_activity && reason == "idle" {
            return;
        }
        let event = match action {
            Action::Pause => Event::CullPause,
            Action::Stop => Event::CullStop,
            Action::Remove => Event::CullRemove,
        };
        if !slot.phase.apply(event) {
            return;
        }
        let _ops = slot.ops.lock().await;
        // Re-check under the lock: a request may have resumed it meanwhile.
        let still = match action {
            Action::Pause => matches!(*slot.phase.borrow(), Phase::Paused),
            Action::Stop | Action::Remove => matches!(*slot.phase.borrow(), Phase::Stopped),
        };
        if !still {
            return;
        }
        let id = env_of(env);
        let user = env.owner();
        let began = std::time::Instant::now();
        let result = match action {
            Action::Pause => self.runtime.pause(&id).await,
            Action::Stop => self.runtime.stop(&id, self.profile(env).stop_timeout).await,
            Action::Remove => self.runtime.remove(&id, false).await,
        };
        match result {
            Ok(()) => {
                if action == Action::Remove {
                    slot.present.store(false, Ordering::Relaxed);
                }
                slot.net_bytes.store(u64::MAX, Ordering::Relaxed);
                self.store.audit(
                    "system",
                    action.name(),
                    &env.audit_name(),
                    Some(reason.to_owned()),
                );
                self.events.publish(
                    "container.culled",
                    Subject {
                        user: &user.name,
                        slug: Some(env.slug().as_str()),
                    },
                    Some(action.verb()),
                    Some(reason.to_owned()),
                );
                let why = match reason {
                    "idle" => CullReason::Idle,
                    _ => CullReason::MaxLifetime,
                };
                self.metrics.culled(action.tier(), why);
                tracing::info!(user = %user.name, slug = %env.slug(), container = %self.runtime.name(&id), action = action.name(), reason, ms = began.elapsed().as_millis() as u64, "container culled");
            }
            Err(e) => {
                tracing::warn!(user = %user.name, slug = %env.slug(), container = %self.runtime.name(&id), action = action.name(), ms = began.elapsed().as_millis() as u64, error = %e, "cull action failed");
                // Unknown: the next request or look finds out the real state.
                slot.phase.apply(Event::Lost);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LifecycleConfig;

    fn cfg(pause: u64, stop: u64, remove: u64, lifetime: u64) -> LifecycleConfig {
        let d = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        LifecycleConfig {
            pause_after: d(pause),
            idle_timeout: d(stop),
            remove_after: d(remove),
            max_lifetime: d(lifetime),
            start_on_login: true,
            precreate: true,
            keep_volume_on_delete: false,
        }
    }

    #[test]
    fn tiers_apply_in_order() {
        let c = cfg(10, 60, 600, 0);
        assert_eq!(decide(&c, true, &Phase::Ready, true, 5, Some(5)), None);
        assert_eq!(
            decide(&c, true, &Phase::Ready, true, 10, None).map(|a| a.0),
            Some(Action::Pause)
        );
        assert_eq!(
            decide(&c, true, &Phase::Paused, true, 30, None),
            None,
            "already paused"
        );
        assert_eq!(
            decide(&c, true, &Phase::Paused, true, 60, None).map(|a| a.0),
            Some(Action::Stop)
        );
        assert_eq!(decide(&c, true, &Phase::Stopped, true, 100, None), None);
        assert_eq!(
            decide(&c, true, &Phase::Stopped, true, 600, None).map(|a| a.0),
            Some(Action::Remove)
        );
        assert_eq!(
            decide(&c, true, &Phase::Stopped, false, 900, None),
            None,
            "already removed"
        );
        assert_eq!(
            decide(&c, true, &Phase::Starting, true, 900, None),
            None,
            "never while starting"
        );
    }

    #[test]
    fn without_pause_the_stop_tier_is_next() {
        let c = cfg(10, 60, 600, 0);
        assert_eq!(decide(&c, false, &Phase::Ready, true, 30, None), None);
        assert_eq!(
            decide(&c, false, &Phase::Ready, true, 60, None).map(|a| a.0),
            Some(Action::Stop)
        );
    }

    #[test]
    fn max_lifetime_stops_busy_containers() {
        let c = cfg(0, 0, 0, 3600);
        assert_eq!(decide(&c, true, &Phase::Ready, true, 0, Some(3599)), None);
        assert_eq!(
            decide(&c, true, &Phase::Ready, true, 0, Some(3600)),
            Some((Action::Stop, "maximum lifetime reached"))
        );
        assert_eq!(
            decide(&c, true, &Phase::Ready, true, 0, None),
            None,
            "age unknown"
        );
    }

    #[test]
    fn the_plan_names_the_first_tier_that_will_fire() {
        let c = cfg(10, 60, 600, 0);
        let p = |can_pause, phase: &Phase, started| plan(&c, can_pause, phase, true, 1000, started);
        assert_eq!(
            p(true, &Phase::Ready, None),
            Some(CullPlan {
                action: "pause",
                at: 1010,
                reason: "idle"
            })
        );
        assert_eq!(p(false, &Phase::Ready, None).unwrap().at, 1060);
        assert_eq!(p(true, &Phase::Paused, None).unwrap().action, "stop");
        assert_eq!(p(true, &Phase::Stopped, None).unwrap().action, "remove");
        assert_eq!(p(true, &Phase::Starting, None), None);
        let lifetime = cfg(0, 60, 0, 30);
        let early = plan(&lifetime, true, &Phase::Ready, true, 1000, Some(990)).unwrap();
        assert_eq!((early.action, early.at), ("stop", 1020));
        assert_eq!(
            plan(&cfg(0, 0, 0, 0), true, &Phase::Ready, true, 1000, Some(1)),
            None
        );
    }

    #[test]
    fn disabled_tiers_never_fire() {
        let c = cfg(0, 0, 0, 0);
        assert_eq!(
            decide(
                &c,
                true,
                &Phase::Ready,
                true,
                i64::MAX / 2,
                Some(i64::MAX / 2)
            ),
            None
        );
    }
}
