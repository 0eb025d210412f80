//! Pulls an image into the store: resolve the reference through mirrors, fetch the
//! manifest (choosing linux/amd64 from an index), the config and every layer, verify
//! each against its digest, unpack layers once per DiffID, then record the image.
//! Nothing becomes visible in the store unless all of it checked out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use thiserror::Error;

use super::reference::{Digest, Reference, ReferenceError};
use super::registry::{Credentials, Endpoint, Mirrors, RegistryClient, RegistryError};
use super::store::{ImageRecord, ImageStore, RuntimeConfig};
use super::unpack::{Compression, UnpackError, unpack_layer};

#[derive(Debug, Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("pulling {image}: {}", attempts.join("; "))]
    Unreachable {
        image: String,
        attempts: Vec<String>,
    },
    #[error("{what} of {image}: registry sent content with digest {actual}, expected {expected}")]
    DigestMismatch {
        image: String,
        what: String,
        expected: String,
        actual: Digest,
    },
    #[error("{image}: {0}", image = .1)]
    Registry(RegistryError, String),
    #[error("{image}: invalid {what}: {why}")]
    Invalid {
        image: String,
        what: &'static str,
        why: String,
    },
    #[error("{image}: no linux/amd64 image in the index")]
    NoPlatform { image: String },
    #[error("{image}: layer {layer}: {source}")]
    Unpack {
        image: String,
        layer: Digest,
        source: UnpackError,
    },
    #[error("{image}: {source}")]
    Io {
        image: String,
        source: std::io::Error,
    },
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

pub struct Puller {
    client: RegistryClient,
    mirrors: Mirrors,
    store: Arc<ImageStore>,
    /// One download/unpack per layer at a time, whatever the number of pulls.
    inflight: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl Puller {
    pub fn new(store: Arc<ImageStore>, mirrors: Mirrors) -> Self {
        Puller {
            client: RegistryClient::new(),
            mirrors,
            store,
            inflight: Mutex::default(),
        }
    }

    pub fn store(&self) -> &Arc<ImageStore> {
        &self.store
    }

    pub async fn pull(&self, image: &str, creds: &Credentials) -> Result<ImageRecord, PullError> {
        let reference = Reference::parse(image)?;
        let mut attempts = vec![];
        for ep in self.mirrors.endpoints(&reference.registry) {
            match self.pull_from(&ep, &reference, creds).await {
                Ok(rec) => return Ok(rec),
                // Only "could not reach it" moves on to the next endpoint: a registry
                // that answered with bad content or refused credentials is an answer.
                Err(PullError::Registry(RegistryError::Transport { url, source }, _)) => {
                    attempts.push(format!("{url}: {source}"));
                }
                Err(PullError::Registry(RegistryError::Status { url, status, .. }, _))
                    if status.as_u16() == 404 || status.is_server_error() =>
                {
                    attempts.push(format!("{url}: {status}"));
                }
                Err(e) => return Err(e),
            }
        }
        Err(PullError::Unreachable {
            image: reference.to_string(),
            attempts,
        })
    }

    async fn pull_from(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        creds: &Credentials,
    ) -> Result<ImageRecord, PullError> {
        let image = reference.to_string();
        let reg = |e| PullError::Registry(e, image.clone());
        let fetched = self
            .client
            .manifest(ep, reference, reference.manifest_selector(), creds)
            .await
            .map_err(reg)?;
        // RepoDigests name what the user asked for: the index when there is one.
        let manifest_digest = Digest::of(&fetched.body);
        let expected = match (&reference.digest, &fetched.claimed_digest) {
            (Some(d), _) => Some(d.as_str().to_string()),
            (None, Some(claimed)) => Some(claimed.clone()),
            (None, None) => None,
        };
        self.check(&image, "manifest", expected.as_deref(), &manifest_digest)?;
        let mut body = fetched.body;
        let mut doc: Value = self.json(&image, "manifest", &body)?;
        let media_type = doc["mediaType"]
            .as_str()
            .map(str::to_string)
            .unwrap_or(fetched.media_type);
        if INDEX_TYPES.contains(&media_type.as_str()) || doc.get("manifests").is_some() {
            let chosen = choose_platform(&doc).ok_or_else(|| PullError::NoPlatform {
                image: image.clone(),
            })?;
            let d = Digest::parse(&chosen).map_err(|e| PullError::Invalid {
                image: image.clone(),
                what: "index",
                why: e.to_string(),
            })?;
            let m = self
                .client
                .manifest(ep, reference, d.as_str(), creds)
                .await
                .map_err(reg)?;
            self.check(
                &image,
                "platform manifest",
                Some(d.as_str()),
                &Digest::of(&m.body),
            )?;
            body = m.body;
            doc = self.json(&image, "manifest", &body)?;
        }

        let config_desc = descriptor(&doc["config"]).ok_or_else(|| PullError::Invalid {
            image: image.clone(),
            what: "manifest",
            why: "no config descriptor".into(),
        })?;
        let config_bytes = self
            .blob(ep, reference, &config_desc.0, creds, &image)
            .await?;
        let config: Value = self.json(&image, "image config", &config_bytes)?;
        let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str())
                    .filter_map(|d| Digest::parse(d).ok())
                    .collect()
            })
            .unwrap_or_default();
        let layers: Vec<(Digest, u64, String)> = doc["layers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| {
                        let (d, size) = descriptor(l)?;
                        Some((d, size, l["mediaType"].as_str().unwrap_or("").to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if layers.len() != diff_ids.len() {
            return Err(PullError::Invalid {
                image,
                what: "image",
                why: format!(
                    "{} layers but {} DiffIDs in the config",
                    layers.len(),
                    diff_ids.len()
                ),
            });
        }
        let mut size = config_desc.1;
        for ((digest, layer_size, media_type), diff_id) in layers.iter().zip(&diff_ids) {
            size += layer_size;
            self.ensure_layer(ep, reference, creds, &image, digest, media_type, diff_id)
                .await?;
        }

        let c = &config["config"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let rec = ImageRecord {
            id: config_desc.0.clone(),
            repo_tags: reference.tagged().into_iter().collect(),
            repo_digests: vec![format!("{}@{manifest_digest}", reference.name())],
            size,
            layers: diff_ids,
            config: RuntimeConfig {
                user: c["User"].as_str().unwrap_or("").to_string(),
                env: strings(&c["Env"]),
                entrypoint: strings(&c["Entrypoint"]),
                cmd: strings(&c["Cmd"]),
                working_dir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
                stop_signal: c["StopSignal"].as_str().unwrap_or("").to_string(),
                volumes: c["Volumes"]
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default(),
            },
            pinned: false,
        };
        // Keep the config blob: ImageStatus(verbose) and CreateContainer may read it.
        let config_path = self.store.blob_path(&rec.id);
        if !config_path.exists() {
            let tmp = self.store.temp_path("config");
            std::fs::write(&tmp, &config_bytes)
                .and_then(|_| std::fs::rename(&tmp, &config_path))
                .map_err(|source| PullError::Io {
                    image: image.clone(),
                    source,
                })?;
        }
        self.store
            .commit(rec)
            .map_err(|source| PullError::Io { image, source })
    }

    #[allow(clippy::too_many_arguments)]
    async fn ensure_layer(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        creds: &Credentials,
        image: &str,
        digest: &Digest,
        media_type: &str,
        diff_id: &Digest,
    ) -> Result<(), PullError> {
        let lock = self
            .inflight
            .lock()
            .unwrap()
            .entry(diff_id.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let dest = self.store.layer_dir(diff_id);
        if dest.exists() {
            return Ok(());
        }
        let unpack_err = |source| PullError::Unpack {
            image: image.to_string(),
            layer: digest.clone(),
            source,
        };
        let compression = Compression::from_media_type(media_type).map_err(unpack_err)?;
        let blob = self.store.temp_path("layer-blob");
        let result = async {
            let actual = self
                .client
                .blob_to_file(ep, reference, digest, creds, &blob)
                .await
                .map_err(|e| PullError::Registry(e, image.to_string()))?;
            self.check(
                image,
                &format!("layer {digest}"),
                Some(digest.as_str()),
                &actual,
            )?;
            let work = self.store.temp_path("layer");
            let (blob2, work2, diff_id2) = (blob.clone(), work.clone(), diff_id.clone());
            let unpacked = tokio::task::spawn_blocking(move || {
                std::fs::create_dir(&work2)?;
                let f = std::io::BufReader::new(std::fs::File::open(&blob2)?);
                unpack_layer(f, compression, &work2, &diff_id2)
            })
            .await
            .expect("unpack task panicked");
            match unpacked {
                Ok(_) => std::fs::rename(&work, &dest).map_err(|source| PullError::Io {
                    image: image.to_string(),
                    source,
                }),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&work);
                    Err(unpack_err(e))
                }
            }
        }
        .await;
        let _ = std::fs::remove_file(&blob);
        result
    }

    async fn blob(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        digest: &Digest,
        creds: &Credentials,
        image: &str,
    ) -> Result<Vec<u8>, PullError> {
        let tmp = self.store.temp_path("blob");
        let actual = self
            .client
            .blob_to_file(ep, reference, digest, creds, &tmp)
            .await
            .map_err(|e| PullError::Registry(e, image.to_string()));
        let data = std::fs::read(&tmp);
        let _ = std::fs::remove_file(&tmp);
        self.check(image, "config", Some(digest.as_str()), &actual?)?;
        data.map_err(|source| PullError::Io {
            image: image.to_string(),
            source,
        })
    }

    fn check(
        &self,
        image: &str,
        what: &str,
        expected: Option<&str>,
        actual: &Digest,
    ) -> Result<(), PullError> {
        match expected {
            Some(e) if e != actual.as_str() => Err(PullError::DigestMismatch {
                image: image.to_string(),
                what: what.to_string(),
                expected: e.to_string(),
                actual: actual.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn json(&self, image: &str, what: &'static str, data: &[u8]) -> Result<Value, PullError> {
        serde_json::from_slice(data).map_err(|e| PullError::Invalid {
            image: image.to_string(),
            what,
            why: e.to_string(),
        })
    }
}

fn descriptor(v: &Value) -> Option<(Digest, u64)> {
    Some((
        Digest::parse(v["digest"].as_str()?).ok()?,
        v["size"].as_u64()?,
    ))
}

/// The linux/amd64 entry of an index (variant ignored: amd64 has none in practice).
fn choose_platform(index: &Value) -> Option<String> {
    index["manifests"].as_array()?.iter().find_map(|m| {
        let p = &m["platform"];
        (p["os"] == "linux" && p["architecture"] == "amd64")
            .then(|| m["digest"].as_str().map(str::to_string))
            .flatten()
    })
}
