//! An IMDSv2 client: what the instance metadata service says about this instance and
//! its network interfaces. A session token is fetched with
//! `PUT /latest/api/token` (`X-aws-ec2-metadata-token-ttl-seconds`) and sent with every
//! GET (`X-aws-ec2-metadata-token`), as on instances that require IMDSv2.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::error_chain;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ipnet::Ipv4Net;

/// Where IMDS is on every EC2 instance.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// The session token lifetime we ask for; refreshed a minute before it ends.
const TOKEN_TTL: Duration = Duration::from_secs(21600);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// IMDS is throttled per instance; a few tries with a short back-off ride that out.
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("invalid IMDS endpoint {0:?}: expected http://HOST[:PORT]")]
    Endpoint(String),
    #[error("IMDS {path}: {why}")]
    Request { path: String, why: String },
    #[error("IMDS {path}: HTTP {status}: {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
    #[error("IMDS has no {path}")]
    Missing { path: String },
    #[error("IMDS {path}: {value:?} is not {what}")]
    Invalid {
        path: String,
        value: String,
        what: &'static str,
    },
}

/// The instance, as IMDS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMetadata {
    pub instance_id: String,
    pub instance_type: String,
    pub availability_zone: String,
    pub region: String,
    /// The primary ENI's MAC (lower case, colon-separated).
    pub mac: String,
}

/// One attached network interface, from `network/interfaces/macs/<mac>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceMetadata {
    pub mac: String,
    pub interface_id: String,
    pub device_number: u32,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// The interface's primary address first, then its secondary ones.
    pub local_ipv4s: Vec<Ipv4Addr>,
}

pub struct Imds {
    base: String,
    client: Client<HttpConnector, Empty<&'static [u8]>>,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl Imds {
    /// A client for `endpoint` (`http://HOST[:PORT]`, no path).
    pub fn new(endpoint: &str) -> Result<Imds, ImdsError> {
        let base = endpoint.trim_end_matches('/').to_string();
        let ok = base
            .strip_prefix("http://")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
        if !ok || base.parse::<http::Uri>().is_err() {
            return Err(ImdsError::Endpoint(endpoint.to_string()));
        }
        Ok(Imds {
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
            token: tokio::sync::Mutex::new(None),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        header: (&str, &str),
    ) -> Result<(StatusCode, String), String> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}/{path}", self.base))
            .header(header.0, header.1)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }

    async fn token(&self, refresh: bool) -> Result<String, ImdsError> {
        let mut token = self.token.lock().await;
        if !refresh
            && let Some((t, expires)) = token.as_ref()
            && Instant::now() + Duration::from_secs(60) < *expires
        {
            return Ok(t.clone());
        }
        let path = "latest/api/token";
        let ttl = TOKEN_TTL.as_secs().to_string();
        let (status, body) = self
            .send(
                Method::PUT,
                path,
                ("X-aws-ec2-metadata-token-ttl-seconds", ttl.as_str()),
            )
            .await
            .map_err(|why| ImdsError::Request {
                path: path.into(),
                why,
            })?;
        if status != StatusCode::OK {
            return Err(ImdsError::Status {
                path: path.into(),
                status: status.as_u16(),
                body,
            });
        }
        *token = Some((body.clone(), Instant::now() + TOKEN_TTL));
        Ok(body)
    }

    /// GET `/latest/meta-data/<path>`; `None` on 404. Retries transport errors and 5xx,
    /// and fetches a new token once when the old one is refused.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let full = format!("latest/meta-data/{path}");
        let mut refresh = false;
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            // The token request fails like any other (IMDS not up yet at boot).
            let token = match self.token(refresh).await {
                Ok(t) => t,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            refresh = false;
            match self
                .send(
                    Method::GET,
                    &full,
                    ("X-aws-ec2-metadata-token", token.as_str()),
                )
                .await
            {
                Ok((StatusCode::OK, body)) => return Ok(Some(body)),
                Ok((StatusCode::NOT_FOUND, _)) => return Ok(None),
                Ok((StatusCode::UNAUTHORIZED, body)) => {
                    refresh = true;
                    last = Some(ImdsError::Status {
                        path: full.clone(),
                        status: 401,
                        body,
                    });
                }
                Ok((status, body)) if status.is_server_error() => {
                    last = Some(ImdsError::Status {
                        path: full.clone(),
                        status: status.as_u16(),
                        body,
                    })
                }
                Ok((status, body)) => {
                    return Err(ImdsError::Status {
                        path: full,
                        status: status.as_u16(),
                        body,
                    });
                }
                Err(why) => {
                    last = Some(ImdsError::Request {
                        path: full.clone(),
                        why,
                    })
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// [`Imds::get`] of a value that must exist, trimmed.
    pub async fn require(&self, path: &str) -> Result<String, ImdsError> {
        match self.get(path).await? {
            Some(v) => Ok(v.trim().to_string()),
            None => Err(ImdsError::Missing {
                path: path.to_string(),
            }),
        }
    }

    pub async fn instance(&self) -> Result<InstanceMetadata, ImdsError> {
        let availability_zone = self.require("placement/availability-zone").await?;
        // Older IMDS versions lack placement/region; the zone name is the region + a letter.
        let region = match self.get("placement/region").await? {
            Some(r) if !r.trim().is_empty() => r.trim().to_string(),
            _ => availability_zone
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .to_string(),
        };
        Ok(InstanceMetadata {
            instance_id: self.require("instance-id").await?,
            instance_type: self.require("instance-type").await?,
            availability_zone,
            region,
            mac: self.require("mac").await?.to_ascii_lowercase(),
        })
    }

    /// The MACs of the attached interfaces (`network/interfaces/macs/`).
    pub async fn macs(&self) -> Result<Vec<String>, ImdsError> {
        let list = self.require("network/interfaces/macs/").await?;
        Ok(list
            .lines()
            .map(|l| l.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// One interface by MAC; `None` if IMDS does not (or no longer) list it.
    pub async fn interface(&self, mac: &str) -> Result<Option<InterfaceMetadata>, ImdsError> {
        let base = format!("network/interfaces/macs/{mac}");
        let Some(interface_id) = self.get(&format!("{base}/interface-id")).await? else {
            return Ok(None);
        };
        let field = |name: &str| format!("{base}/{name}");
        let device = self.require(&field("device-number")).await?;
        let device_number = device.parse().map_err(|_| ImdsError::Invalid {
            path: field("device-number"),
            value: device.clone(),
            what: "a device number",
        })?;
        let subnet = self.require(&field("subnet-ipv4-cidr-block")).await?;
        let subnet_cidr = parse_net(&field("subnet-ipv4-cidr-block"), &subnet)?;
        let vpc_cidrs = self
            .require(&field("vpc-ipv4-cidr-blocks"))
            .await?
            .lines()
            .map(|l| parse_net(&field("vpc-ipv4-cidr-blocks"), l.trim()))
            .collect::<Result<_, _>>()?;
        let local_ipv4s = self
            .require(&field("local-ipv4s"))
            .await?
            .lines()
            .map(|l| {
                l.trim().parse().map_err(|_| ImdsError::Invalid {
                    path: field("local-ipv4s"),
                    value: l.to_string(),
                    what: "an IPv4 address",
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(InterfaceMetadata {
            mac: mac.to_ascii_lowercase(),
            interface_id: interface_id.trim().to_string(),
            device_number,
            subnet_id: self.require(&field("subnet-id")).await?,
            subnet_cidr,
            vpc_cidrs,
            local_ipv4s,
        }))
    }
}

fn parse_net(path: &str, value: &str) -> Result<Ipv4Net, ImdsError> {
    value.parse().map_err(|_| ImdsError::Invalid {
        path: path.to_string(),
        value: value.to_string(),
        what: "an IPv4 CIDR",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_plain_http_hosts() {
        assert!(Imds::new("http://169.254.169.254").is_ok());
        assert!(Imds::new("http://127.0.0.1:8080/").is_ok());
        for bad in ["169.254.169.254", "https://x", "http://", "http://x/latest"] {
            assert!(
                matches!(Imds::new(bad), Err(ImdsError::Endpoint(_))),
                "{bad}"
            );
        }
    }
}
