//! The upstream node stack (kubelet 1.20.2 + containerd 1.6 + runc + ptp/host-local)
//! from `hack/reference-node.sh`: what benchmarks compare our node against, and a
//! known-good node for tests of the control plane side.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;

use crate::control_plane::ControlPlane;
use crate::fixture::ScriptFixture;
use crate::registry::Registry;

pub struct ReferenceNode {
    fixture: ScriptFixture,
}

impl ReferenceNode {
    /// Joins `node` to `cp`, pulling through `registry` as mirror; returns once the
    /// Node is Ready.
    pub fn start(cp: &ControlPlane, registry: &Registry, node: &str) -> Result<Self> {
        let cp_dir = cp.dir().to_string_lossy().into_owned();
        let fixture = ScriptFixture::start(
            "reference-node.sh",
            &[
                "--control-plane",
                &cp_dir,
                "--node",
                node,
                "--registry",
                registry.addr(),
            ],
            Duration::from_secs(180),
        )?;
        Ok(ReferenceNode { fixture })
    }

    /// Only containerd (with its CRI plugin, CNI ptp/host-local and `registry` as
    /// mirror): a known-good CRI runtime for testing our kubelet.
    pub fn containerd_only(registry: &Registry) -> Result<Self> {
        let fixture = ScriptFixture::start(
            "reference-node.sh",
            &["--containerd-only", "--registry", registry.addr()],
            Duration::from_secs(60),
        )?;
        Ok(ReferenceNode { fixture })
    }

    pub fn name(&self) -> &str {
        self.fixture
            .get("NODE_NAME")
            .expect("published by the script")
    }

    /// The containerd CRI socket (`unix://` prefix not included).
    pub fn cri_socket(&self) -> &str {
        self.fixture
            .get("CONTAINERD_SOCK")
            .expect("published by the script")
    }

    /// A value the script published (e.g. `KUBELET_PID`).
    pub fn get(&self, key: &str) -> Result<&str> {
        self.fixture.get(key)
    }
}

/// One containerd (with its registry) shared by every test of a test binary; its
/// script tears it down when the test process exits. Returns the CRI socket path.
pub fn shared_containerd() -> &'static Path {
    static SHARED: OnceLock<(Registry, ReferenceNode)> = OnceLock::new();
    let (_, node) = SHARED.get_or_init(|| {
        let registry = Registry::start().expect("starting the registry");
        let node = ReferenceNode::containerd_only(&registry).expect("starting containerd");
        (registry, node)
    });
    Path::new(node.cri_socket())
}
