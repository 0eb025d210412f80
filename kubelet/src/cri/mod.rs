//! CRI v1 client over the runtime's unix socket. The channel connects lazily, so a
//! kubelet started before its runtime keeps running (reporting NotReady) and picks the
//! runtime up as soon as the socket answers, as upstream does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{Image, ListImagesRequest, RuntimeCondition, StatusRequest, VersionRequest};
use tonic::transport::{Channel, Endpoint};

/// The CRI API version the kubelet asks for in Version (the value upstream sends).
const KUBE_RUNTIME_API_VERSION: &str = "0.1.0";
/// Version and Status are cheap; a runtime that takes longer is as good as down.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("invalid CRI endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    #[error("CRI call {call} failed: {status}")]
    Call {
        call: &'static str,
        #[source]
        status: Box<tonic::Status>,
    },
}

/// What the runtime says about itself in Version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
}

impl RuntimeVersion {
    /// `nodeInfo.containerRuntimeVersion`, e.g. `containerd://1.6.20`. Upstream parses
    /// the runtime's version and prints it back, so a distribution suffix such as
    /// Debian's `1.6.20~ds1` is reported as `1.6.20`; an unparsable version is not
    /// reported at all.
    pub fn node_info_string(&self) -> Option<String> {
        let version = normalize_version(&self.runtime_version)?;
        Some(format!("{}://{version}", self.runtime_name))
    }
}

/// A version as upstream's `ParseSemantic`, falling back to `ParseGeneric`, prints
/// it: an optional leading `v` dropped, numeric components without leading zeros, and
/// pre-release/build parts kept only for a well-formed x.y.z semantic version.
pub fn normalize_version(raw: &str) -> Option<String> {
    let s = raw.trim_start();
    let s = s.strip_prefix('v').unwrap_or(s);
    let numbers_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (numbers, extra) = s.split_at(numbers_end);
    // A trailing dot belongs to the "extra" part, as in upstream's regular expression.
    let (numbers, extra) = match numbers.strip_suffix('.') {
        Some(n) => (n, &s[n.len()..]),
        None => (numbers, extra),
    };
    let components: Vec<u64> = numbers
        .split('.')
        .map(|c| c.parse().ok())
        .collect::<Option<_>>()?;
    if components.len() < 2 || numbers.starts_with("0") && !numbers.starts_with("0.") {
        return None;
    }
    let joined = components
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".");
    let identifiers = |p: &str| {
        !p.is_empty()
            && p.split('.').all(|id| {
                !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
    };
    let semantic_extra = {
        let (pre, build) = match extra.split_once('+') {
            Some((pre, build)) => (pre, Some(build)),
            None => (extra, None),
        };
        let pre_ok = pre.is_empty() || pre.strip_prefix('-').is_some_and(identifiers);
        let build_ok = build.is_none_or(identifiers);
        pre_ok && build_ok
    };
    let zero_prefixed = numbers
        .split('.')
        .any(|c| c.len() > 1 && c.starts_with('0'));
    if components.len() == 3 && semantic_extra && !zero_prefixed {
        return Some(format!("{joined}{extra}"));
    }
    Some(joined)
}

/// The two conditions the kubelet requires from CRI Status (absent ones are `None`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeConditions {
    pub runtime_ready: Option<RuntimeCondition>,
    pub network_ready: Option<RuntimeCondition>,
}

#[derive(Clone)]
pub struct CriClient {
    socket: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    /// Upstream allows a separate image endpoint; every runtime we target serves both
    /// services on one socket, so both clients share the channel.
    images: ImageServiceClient<Channel>,
}

impl CriClient {
    /// A client for the runtime at `socket`; no connection is made until the first call.
    pub fn new(socket: &Path) -> Result<Self, CriError> {
        let path = socket.to_path_buf();
        // tonic needs a URI; the connector ignores it and dials the socket instead.
        let channel = Endpoint::try_from("http://[::1]:1")?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }));
        Ok(CriClient {
            socket: socket.to_path_buf(),
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The raw RuntimeService client, for the pod workers' calls.
    pub fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    /// The raw ImageService client.
    pub fn image_client(&self) -> ImageServiceClient<Channel> {
        self.images.clone()
    }

    pub async fn version(&self) -> Result<RuntimeVersion, CriError> {
        let mut req = tonic::Request::new(VersionRequest {
            version: KUBE_RUNTIME_API_VERSION.into(),
        });
        req.set_timeout(STATUS_TIMEOUT);
        let resp = self
            .runtime
            .clone()
            .version(req)
            .await
            .map_err(|status| CriError::Call {
                call: "Version",
                status: Box::new(status),
            })?
            .into_inner();
        Ok(RuntimeVersion {
            runtime_name: resp.runtime_name,
            runtime_version: resp.runtime_version,
            runtime_api_version: resp.runtime_api_version,
        })
    }

    /// Every image the runtime holds.
    pub async fn list_images(&self) -> Result<Vec<Image>, CriError> {
        let mut req = tonic::Request::new(ListImagesRequest { filter: None });
        req.set_timeout(STATUS_TIMEOUT);
        Ok(self
            .images
            .clone()
            .list_images(req)
            .await
            .map_err(|status| CriError::Call {
                call: "ListImages",
                status: Box::new(status),
            })?
            .into_inner()
            .images)
    }

    pub async fn status(&self) -> Result<RuntimeConditions, CriError> {
        let mut req = tonic::Request::new(StatusRequest { verbose: false });
        req.set_timeout(STATUS_TIMEOUT);
        let resp = self
            .runtime
            .clone()
            .status(req)
            .await
            .map_err(|status| CriError::Call {
                call: "Status",
                status: Box::new(status),
            })?
            .into_inner();
        let conditions = resp.status.map(|s| s.conditions).unwrap_or_default();
        let find = |t: &str| conditions.iter().find(|c| c.r#type == t).cloned();
        Ok(RuntimeConditions {
            runtime_ready: find("RuntimeReady"),
            network_ready: find("NetworkReady"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_print_as_upstream_reports_them() {
        assert_eq!(normalize_version("1.6.20~ds1").as_deref(), Some("1.6.20"));
        assert_eq!(normalize_version("v1.7.2").as_deref(), Some("1.7.2"));
        assert_eq!(
            normalize_version("1.7.0-rc.1").as_deref(),
            Some("1.7.0-rc.1")
        );
        assert_eq!(normalize_version("1.7.0+abc").as_deref(), Some("1.7.0+abc"));
        assert_eq!(normalize_version("0.1.0").as_deref(), Some("0.1.0"));
        assert_eq!(normalize_version("20.10").as_deref(), Some("20.10"));
        assert_eq!(normalize_version("1.2.3.4").as_deref(), Some("1.2.3.4"));
        assert_eq!(normalize_version("1.02.3").as_deref(), Some("1.2.3"));
        assert_eq!(normalize_version("garbage"), None);
        assert_eq!(normalize_version("1"), None);
        assert_eq!(normalize_version("01.2"), None);
        let v = RuntimeVersion {
            runtime_name: "containerd".into(),
            runtime_version: "1.6.20~ds1".into(),
            runtime_api_version: "v1".into(),
        };
        assert_eq!(v.node_info_string().as_deref(), Some("containerd://1.6.20"));
    }
}
