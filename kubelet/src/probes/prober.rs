//! One probe of one container as a task: waits for initialDelaySeconds after the
//! container started (and for the startup probe, unless it is one), probes every
//! periodSeconds, and turns attempts into a [`Verdict`] through the success and failure
//! thresholds, as upstream's prober worker.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, Probe};
use tokio::sync::{Notify, watch};

use super::handler::{self, Target};
use super::{Kind, Outcome, Verdict};
use crate::pods::events;

/// Consecutive results of one kind, and when they cross a threshold (upstream's
/// lastResult/resultRun).
#[derive(Debug, Default)]
pub struct Thresholds {
    last: Option<bool>,
    run: u32,
    success: u32,
    failure: u32,
}

impl Thresholds {
    pub fn of(probe: &Probe) -> Self {
        Thresholds {
            success: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure: probe.failure_threshold.unwrap_or(3).max(1) as u32,
            ..Default::default()
        }
    }

    /// Counts one attempt; returns the verdict once its threshold is reached (and on
    /// every further attempt of the same kind, as upstream sets it again).
    pub fn observe(&mut self, success: bool) -> Option<Verdict> {
        if self.last == Some(success) {
            self.run += 1;
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        match success {
            true if self.run >= self.success => Some(Verdict::Success),
            false if self.run >= self.failure => Some(Verdict::Failure),
            _ => None,
        }
    }
}

/// Everything one prober task needs.
pub struct Prober {
    pub kind: Kind,
    pub probe: Probe,
    pub target: Target,
    /// When the container started (CRI startedAt).
    pub started_at: SystemTime,
    /// The startup probe's verdict, for liveness and readiness probes of a container
    /// that has one: they wait for it to succeed.
    pub startup: Option<watch::Receiver<Verdict>>,
    pub verdict: watch::Sender<Verdict>,
    /// Wakes the pod worker when a verdict changes.
    pub notify: Arc<Notify>,
    pub client: kube::Client,
    pub pod: Arc<Pod>,
}

impl Prober {
    pub async fn run(mut self) {
        if let Some(startup) = self.startup.as_mut()
            && startup.wait_for(|v| *v == Verdict::Success).await.is_err()
        {
            return;
        }
        let delay =
            Duration::from_secs(self.probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        let since_start = SystemTime::now()
            .duration_since(self.started_at)
            .unwrap_or_default();
        tokio::time::sleep(delay.saturating_sub(since_start)).await;
        let period = Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64);
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut thresholds = Thresholds::of(&self.probe);
        loop {
            ticks.tick().await;
            let outcome = handler::run(&self.probe, &self.target).await;
            self.report(&outcome).await;
            let success = match outcome {
                Outcome::Success | Outcome::Warning(_) => true,
                Outcome::Failure(_) => false,
                // Upstream throws the attempt away.
                Outcome::Error(_) => continue,
            };
            let Some(verdict) = thresholds.observe(success) else {
                continue;
            };
            let changed = self.verdict.send_if_modified(|v| {
                let changed = *v != verdict;
                *v = verdict;
                changed
            });
            if changed {
                self.notify.notify_one();
            }
            match (self.kind, verdict) {
                // A started container is not probed for startup any more, and one
                // that failed liveness or startup is killed: nothing left to probe
                // until the next container, which gets a prober of its own.
                (Kind::Startup, Verdict::Success) => return,
                (Kind::Startup | Kind::Liveness, Verdict::Failure) => return,
                _ => {}
            }
        }
    }

    /// Upstream's events for an attempt: `Unhealthy` for a failure or an error,
    /// `ProbeWarning` for a warning.
    async fn report(&self, outcome: &Outcome) {
        let (reason, message) = match outcome {
            Outcome::Success => return,
            Outcome::Failure(out) => ("Unhealthy", format!("{} probe failed: {out}", self.kind)),
            Outcome::Error(e) => ("Unhealthy", format!("{} probe errored: {e}", self.kind)),
            Outcome::Warning(out) => (
                "ProbeWarning",
                format!("{} probe warning: {out}", self.kind),
            ),
        };
        tracing::debug!(container = %self.target.container.name, %message, "probe");
        let name = &self.target.container.name;
        events::container(&self.client, &self.pod, name, "Warning", reason, &message).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_count_consecutive_results() {
        let probe = Probe {
            success_threshold: Some(2),
            failure_threshold: Some(3),
            ..Default::default()
        };
        let mut t = Thresholds::of(&probe);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Verdict::Success));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a success breaks the failure run");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(Verdict::Failure));
        assert_eq!(t.observe(false), Some(Verdict::Failure));
        let mut defaults = Thresholds::of(&Probe::default());
        assert_eq!(defaults.observe(true), Some(Verdict::Success));
    }
}
