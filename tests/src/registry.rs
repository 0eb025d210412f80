//! A local OCI registry (Debian's docker-registry) holding the offline test images,
//! from `hack/registry.sh`.

use std::time::Duration;

use anyhow::Result;

use crate::fixture::ScriptFixture;

pub struct Registry {
    fixture: ScriptFixture,
}

impl Registry {
    /// An anonymous registry with every test image.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// A registry that requires HTTP basic auth with this user and password.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Result<Self> {
        Self::start_with(&["--htpasswd", &format!("{user}:{password}")])
    }

    fn start_with(args: &[&str]) -> Result<Self> {
        let fixture = ScriptFixture::start("registry.sh", args, Duration::from_secs(60))?;
        Ok(Registry { fixture })
    }

    /// The registry's private dir (its storage is `dir/storage`).
    pub fn dir(&self) -> &std::path::Path {
        self.fixture.dir()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        self.fixture
            .get("REGISTRY")
            .expect("published by the script")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        self.fixture
            .get("REGISTRY_URL")
            .expect("published by the script")
    }

    /// `HOST=URL` pairs, one per upstream registry the test images stand in for, in
    /// runtime-shim's `--registry-mirror` syntax.
    pub fn mirrors(&self) -> Vec<String> {
        self.fixture
            .get("MIRRORS")
            .expect("published by the script")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// `--registry-mirror HOST=URL` for every mirror.
    pub fn mirror_args(&self) -> Vec<String> {
        self.mirrors()
            .into_iter()
            .flat_map(|m| ["--registry-mirror".to_string(), m])
            .collect()
    }
}
