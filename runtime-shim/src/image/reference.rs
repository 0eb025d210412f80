//! Image references as users write them (`busybox`, `nginx:1.25`,
//! `registry.k8s.io/pause:3.10`, `repo@sha256:...`), normalised the way Docker and
//! containerd do, so that `busybox` and `docker.io/library/busybox:latest` are one image.

use std::fmt;

use thiserror::Error;

pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("invalid image reference {0:?}: {1}")]
    Invalid(String, &'static str),
}

/// A normalised reference: registry host, repository path, and a tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// A content digest, `sha256:<64 hex>` (the only algorithm registries use in practice).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl TryFrom<String> for Digest {
    type Error = ReferenceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let hex = s.strip_prefix("sha256:").ok_or(ReferenceError::Invalid(
            s.into(),
            "digest must start with sha256:",
        ))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::Invalid(
                s.into(),
                "digest must be 64 lowercase hex characters",
            ));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::{Digest as _, Sha256};
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(data))))
    }

    pub fn from_sha256_hex(hex: &str) -> Self {
        Digest(format!("sha256:{hex}"))
    }

    /// The 64 hex characters, for file names.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Reference {
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let bad = |why| ReferenceError::Invalid(input.to_string(), why);
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d)?)),
            None => (s, None),
        };
        // A tag is what follows the last ':' after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag
            && (t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
        {
            return Err(bad("invalid tag"));
        }
        // The first component is a registry host if it looks like one (docker's rule).
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    })
            })
        {
            return Err(bad(
                "repository must be lowercase [a-z0-9._-] path components",
            ));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository` (what RepoTags and RepoDigests are built from).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, if there is a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// What to ask the registry for: the digest when known (immutable), else the tag.
    pub fn manifest_selector(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.as_str(),
            (None, Some(t)) => t,
            (None, None) => "latest",
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_short_names_are_normalised() {
        assert_eq!(r("busybox").to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r("nginx:1.25").to_string(), "docker.io/library/nginx:1.25");
        assert_eq!(r("user/app").to_string(), "docker.io/user/app:latest");
        assert_eq!(
            r("docker.io/library/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn hosts_ports_and_digests() {
        let x = r("registry.k8s.io/pause:3.10");
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str()),
            ("registry.k8s.io", "pause")
        );
        let x = r("localhost:5000/a/b");
        assert_eq!(x.registry, "localhost:5000");
        assert_eq!(x.tag.as_deref(), Some("latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let x = r(&format!("gcr.io/x/y@{d}"));
        assert_eq!(x.tag, None);
        assert_eq!(x.manifest_selector(), d);
        let x = r(&format!("gcr.io/x/y:all@{d}"));
        assert_eq!(x.tag.as_deref(), Some("all"));
        assert_eq!(x.to_string(), format!("gcr.io/x/y:all@{d}"));
    }

    #[test]
    fn invalid_references_are_rejected() {
        assert_eq!(Reference::parse(""), Err(ReferenceError::Empty));
        assert!(Reference::parse("UPPER/case").is_err());
        assert!(Reference::parse("busybox:").is_err());
        assert!(Reference::parse("busybox@sha256:abc").is_err());
        assert!(Reference::parse("a//b").is_err());
    }
}
