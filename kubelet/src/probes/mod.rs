//! Container probes (liveness, readiness, startup) as upstream's prober runs them: one
//! prober task per container and probe kind ([`prober`]), owned by the pod's
//! [`PodProbes`] ([`manager`]), each publishing a [`Verdict`] the pod worker reads for
//! status (ready, started) and acts on (kills a container that failed liveness or
//! startup). Handlers ([`handler`]) are shared with lifecycle hooks.

pub mod exec;
mod grpc;
pub mod handler;
pub mod http;
mod manager;
mod prober;

use std::fmt;

pub use manager::{ContainerHealth, PodProbes, RunningContainer, Unhealthy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl fmt::Display for Kind {
    /// As upstream prints a probe type in events: `Liveness probe failed: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        })
    }
}

/// What one attempt of a probe found (upstream's probe.Result with its output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Counts as a success, reported as a `ProbeWarning` event (an HTTP redirect to
    /// another host, not followed).
    Warning(String),
    Failure(String),
    /// The probe could not be run at all (bad port, runtime error): reported, and
    /// the attempt does not count either way.
    Error(String),
}

/// A probe's standing verdict on the current container (upstream's results.Result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet (a startup probe before its first threshold).
    Unknown,
    Success,
    Failure,
}

impl Kind {
    /// What a new container starts with: not ready, alive, not yet started.
    fn initial(self) -> Verdict {
        match self {
            Kind::Readiness => Verdict::Failure,
            Kind::Liveness => Verdict::Success,
            Kind::Startup => Verdict::Unknown,
        }
    }
}
