//! What the kubelet believes about its container runtime, updated from CRI Status and
//! turned into the errors that make the Node NotReady. The rules and messages follow
//! upstream's runtimeState: a runtime that never answered "may not have completed yet",
//! one whose last good answer is older than 30 s "is down".

use std::time::{Duration, Instant};

use k8s_cri::v1::RuntimeCondition;

use crate::cri::RuntimeConditions;

/// How long a healthy runtime answer counts (upstream's maxWaitForContainerRuntime).
pub const RUNTIME_SYNC_THRESHOLD: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
pub struct RuntimeState {
    /// When CRI Status last said RuntimeReady=true; `None` until it first does.
    last_runtime_sync: Option<Instant>,
    runtime_error: Option<String>,
    network_error: Option<String>,
}

impl RuntimeState {
    /// Records a successful CRI Status answer. A failed call records nothing, so the
    /// last answer ages until the runtime counts as down.
    pub fn observe(&mut self, conditions: &RuntimeConditions, now: Instant) {
        self.network_error = match &conditions.network_ready {
            Some(c) if c.status => None,
            other => Some(format!(
                "container runtime network not ready: {}",
                describe(other.as_ref())
            )),
        };
        match &conditions.runtime_ready {
            Some(c) if c.status => {
                self.runtime_error = None;
                self.last_runtime_sync = Some(now);
            }
            other => {
                self.runtime_error = Some(format!(
                    "container runtime not ready: {}",
                    describe(other.as_ref())
                ))
            }
        }
    }

    /// Why the node is not ready, in upstream's order (runtime, then network); empty
    /// when it is ready.
    pub fn errors(&self, now: Instant) -> Vec<String> {
        let mut errs = Vec::new();
        match self.last_runtime_sync {
            None => errs.push("container runtime status check may not have completed yet".into()),
            Some(t) if now.duration_since(t) > RUNTIME_SYNC_THRESHOLD => {
                errs.push("container runtime is down".into())
            }
            Some(_) => {}
        }
        errs.extend(self.runtime_error.clone());
        errs.extend(self.network_error.clone());
        // Upstream aggregates errors as a set: a repeated message appears once.
        let mut seen = std::collections::HashSet::new();
        errs.retain(|e| seen.insert(e.clone()));
        errs
    }
}

/// A runtime condition as upstream prints it (`%v` of kubecontainer.RuntimeCondition).
fn describe(c: Option<&RuntimeCondition>) -> String {
    match c {
        Some(c) => format!(
            "{}={} reason:{} message:{}",
            c.r#type, c.status, c.reason, c.message
        ),
        None => "<nil>".into(),
    }
}

/// Upstream's aggregate error text: one error as is, several as `[a, b]`.
pub fn aggregate_message(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(t: &str, status: bool, reason: &str, message: &str) -> Option<RuntimeCondition> {
        Some(RuntimeCondition {
            r#type: t.into(),
            status,
            reason: reason.into(),
            message: message.into(),
        })
    }

    #[test]
    fn ready_only_when_both_conditions_hold() {
        let t0 = Instant::now();
        let mut s = RuntimeState::default();
        assert_eq!(
            s.errors(t0),
            ["container runtime status check may not have completed yet"]
        );
        s.observe(
            &RuntimeConditions {
                runtime_ready: cond("RuntimeReady", true, "", ""),
                network_ready: cond(
                    "NetworkReady",
                    false,
                    "NetworkPluginNotReady",
                    "cni plugin not initialized",
                ),
            },
            t0,
        );
        assert_eq!(
            s.errors(t0),
            [
                "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:cni plugin not initialized"
            ]
        );
        s.observe(
            &RuntimeConditions {
                runtime_ready: cond("RuntimeReady", true, "", ""),
                network_ready: cond("NetworkReady", true, "", ""),
            },
            t0,
        );
        assert!(s.errors(t0).is_empty());
        let later = t0 + RUNTIME_SYNC_THRESHOLD + Duration::from_secs(1);
        assert_eq!(s.errors(later), ["container runtime is down"]);
    }

    #[test]
    fn missing_conditions_print_as_nil() {
        let t0 = Instant::now();
        let mut s = RuntimeState::default();
        s.observe(&RuntimeConditions::default(), t0);
        let errs = s.errors(t0);
        assert_eq!(errs.len(), 3);
        assert_eq!(errs[1], "container runtime not ready: <nil>");
        assert_eq!(
            aggregate_message(&errs[1..]),
            "[container runtime not ready: <nil>, container runtime network not ready: <nil>]"
        );
    }
}
