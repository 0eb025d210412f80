//! The EC2 calls ipamd makes, behind [`Ec2`] so the reconcile logic does not depend on
//! the SDK; [`SdkEc2`] implements it with `aws-sdk-ec2`, rate-limited by a token bucket
//! (EC2 throttles per account, and every node of a cluster shares that budget).

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::time::Instant;

use aws_config::BehaviorVersion;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, NetworkInterface, NetworkInterfaceAttachmentChanges, ResourceType, Tag,
    TagSpecification,
};

/// EC2's error code when a subnet has no free aligned /28 left for a prefix.
pub const INSUFFICIENT_CIDR_BLOCKS: &str = "InsufficientCidrBlocks";

/// One ENI, as DescribeNetworkInterfaces reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eni {
    pub id: String,
    /// Lower case, colon-separated.
    pub mac: String,
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    pub primary_ip: Ipv4Addr,
    /// Every private IPv4 address but the primary.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Delegated IPv4 prefixes (/28s).
    pub prefixes: Vec<Ipv4Net>,
    pub attachment: Option<EniAttachment>,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniAttachment {
    pub id: String,
    pub instance_id: String,
    pub device_index: u32,
    /// attaching, attached, detaching, detached.
    pub status: String,
}

/// What a new ENI looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEni {
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    pub description: String,
    pub tags: Vec<(String, String)>,
    /// Secondary IPs or /28 prefixes to create it with (EC2 takes one kind per call).
    pub secondary_ips: u32,
    pub prefixes: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("EC2 {op}: {message}")]
pub struct Ec2Error {
    pub op: &'static str,
    /// EC2's error code (e.g. `InsufficientCidrBlocks`), when EC2 answered with one.
    pub code: Option<String>,
    pub message: String,
}

impl Ec2Error {
    /// An answer that made no sense to us (no EC2 error code).
    fn bad_answer(op: &'static str, message: impl Into<String>) -> Ec2Error {
        Ec2Error {
            op,
            code: None,
            message: message.into(),
        }
    }

    /// EC2 has no free /28 in the subnet for a prefix.
    pub fn is_insufficient_cidr_blocks(&self) -> bool {
        self.code.as_deref() == Some(INSUFFICIENT_CIDR_BLOCKS)
    }
}

/// The EC2 API as ipamd uses it.
pub trait Ec2: Send + Sync + 'static {
    /// Every ENI attached to `instance_id` (`attachment.instance-id` filter).
    fn attached_enis(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Vec<Eni>, Ec2Error>> + Send;
    /// Unattached ENIs carrying tag `key`=`value` (ours, left behind by a crash).
    fn detached_enis_tagged(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<Eni>, Ec2Error>> + Send;
    fn create_eni(&self, eni: &NewEni) -> impl Future<Output = Result<Eni, Ec2Error>> + Send;
    /// Attaches with DeleteOnTermination, so the ENI dies with the instance; returns the
    /// attachment id.
    fn attach_eni(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> impl Future<Output = Result<String, Ec2Error>> + Send;
    fn detach_eni(&self, attachment_id: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn delete_eni(&self, eni_id: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// Asks EC2 for `count` more secondary IPs on the ENI in one call.
    fn assign_ips(
        &self,
        eni_id: &str,
        count: u32,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn unassign_ips(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// Asks EC2 for `count` more /28 prefixes on the ENI in one call (prefix delegation);
    /// [`Ec2Error::is_insufficient_cidr_blocks`] when the subnet has too few free.
    fn assign_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn unassign_prefixes(
        &self,
        eni_id: &str,
        prefixes: &[Ipv4Net],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}

/// A token bucket: `burst` calls at once, then `per_second` on average.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            per_second,
            burst: f64::from(burst),
            state: tokio::sync::Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// Waits until a call may go out.
    pub async fn acquire(&self) {
        let mut state = self.state.lock().await;
        loop {
            let (tokens, last) = *state;
            let now = Instant::now();
            let tokens =
                (tokens + now.duration_since(last).as_secs_f64() * self.per_second).min(self.burst);
            if tokens >= 1.0 {
                *state = (tokens - 1.0, now);
                return;
            }
            *state = (tokens, now);
            let wait = (1.0 - tokens) / self.per_second;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

pub struct SdkEc2 {
    client: Client,
    limiter: RateLimiter,
}

/// HTTPS on rustls with ring, the crypto the rest of the tree uses (the SDK's default
/// client is built on aws-lc, a large C build).
fn https_client() -> aws_sdk_ec2::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// aws-node's default budget is of the same order: a few calls a second per node.
const CALLS_PER_SECOND: f64 = 5.0;
const BURST: u32 = 10;

impl SdkEc2 {
    /// A client for `region`; `endpoint` overrides the regional endpoint (an emulator).
    /// Credentials come from the SDK's default chain: the environment first, then the
    /// instance profile through IMDS.
    pub async fn new(region: &str, endpoint: Option<&str>) -> SdkEc2 {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            )
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
            .http_client(https_client());
        if let Some(url) = endpoint {
            loader = loader.endpoint_url(url);
        }
        SdkEc2::from_config(&loader.load().await)
    }

    /// A client from a loaded SDK configuration (tests pass static credentials).
    pub fn from_config(config: &aws_config::SdkConfig) -> SdkEc2 {
        // A config loaded elsewhere (tests) may lack a client: the SDK has no default one
        // without its aws-lc feature.
        let conf = aws_sdk_ec2::config::Builder::from(config)
            .http_client(https_client())
            .build();
        SdkEc2 {
            client: Client::from_conf(conf),
            limiter: RateLimiter::new(CALLS_PER_SECOND, BURST),
        }
    }

    async fn describe(&self, op: &'static str, filters: Vec<Filter>) -> Result<Vec<Eni>, Ec2Error> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            self.limiter.acquire().await;
            let page = self
                .client
                .describe_network_interfaces()
                .set_filters(Some(filters.clone()))
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| err(op, e))?;
            for ni in page.network_interfaces() {
                out.push(convert(ni).map_err(|message| Ec2Error::bad_answer(op, message))?);
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }
}

fn err<E, R>(op: &'static str, e: SdkError<E, R>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    Ec2Error {
        op,
        code: e.code().map(str::to_string),
        message: DisplayErrorContext(e).to_string(),
    }
}

fn convert(ni: &NetworkInterface) -> Result<Eni, String> {
    let id = ni
        .network_interface_id()
        .ok_or("an ENI without an id")?
        .to_string();
    let parse = |s: Option<&str>| -> Result<Ipv4Addr, String> {
        s.and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{id}: a private IP that is not IPv4: {s:?}"))
    };
    let primary_ip = parse(ni.private_ip_address())?;
    let mut secondary_ips = Vec::new();
    for a in ni.private_ip_addresses() {
        let ip = parse(a.private_ip_address())?;
        if !a.primary().unwrap_or(false) && ip != primary_ip {
            secondary_ips.push(ip);
        }
    }
    let mut prefixes = Vec::new();
    for p in ni.ipv4_prefixes() {
        let text = p.ipv4_prefix().unwrap_or_default();
        let net: Ipv4Net = text
            .parse()
            .map_err(|_| format!("{id}: an IPv4 prefix that is not a CIDR: {text:?}"))?;
        prefixes.push(net.trunc());
    }
    let attachment = ni.attachment().and_then(|a| {
        Some(EniAttachment {
            id: a.attachment_id()?.to_string(),
            instance_id: a.instance_id()?.to_string(),
            device_index: u32::try_from(a.device_index()?).ok()?,
            status: a
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
        })
    });
    Ok(Eni {
        mac: ni.mac_address().unwrap_or_default().to_ascii_lowercase(),
        subnet_id: ni.subnet_id().unwrap_or_default().to_string(),
        security_groups: ni
            .groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect(),
        primary_ip,
        secondary_ips,
        prefixes,
        attachment,
        tags: ni
            .tag_set()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
        id,
    })
}

impl Ec2 for SdkEc2 {
    async fn attached_enis(&self, instance_id: &str) -> Result<Vec<Eni>, Ec2Error> {
        let by_instance = Filter::builder()
            .name("attachment.instance-id")
            .values(instance_id)
            .build();
        let enis = self
            .describe("DescribeNetworkInterfaces", vec![by_instance])
            .await?;
        // The filter matches past attachments too on some implementations.
        Ok(enis
            .into_iter()
            .filter(|e| {
                e.attachment
                    .as_ref()
                    .is_some_and(|a| a.instance_id == instance_id)
            })
            .collect())
    }

    async fn detached_enis_tagged(&self, key: &str, value: &str) -> Result<Vec<Eni>, Ec2Error> {
        let by_tag = Filter::builder()
            .name(format!("tag:{key}"))
            .values(value)
            .build();
        let enis = self
            .describe("DescribeNetworkInterfaces", vec![by_tag])
            .await?;
        Ok(enis
            .into_iter()
            .filter(|e| e.attachment.is_none())
            .collect())
    }

    async fn create_eni(&self, new: &NewEni) -> Result<Eni, Ec2Error> {
        const OP: &str = "CreateNetworkInterface";
        self.limiter.acquire().await;
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::NetworkInterface)
            .set_tags(Some(
                new.tags
                    .iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .build();
        let mut req = self
            .client
            .create_network_interface()
            .subnet_id(&new.subnet_id)
            .description(&new.description)
            .tag_specifications(tags)
            .set_groups(Some(new.security_groups.clone()));
        if new.secondary_ips > 0 {
            req = req.secondary_private_ip_address_count(new.secondary_ips as i32);
        }
        if new.prefixes > 0 {
            req = req.ipv4_prefix_count(new.prefixes as i32);
        }
        let out = req.send().await.map_err(|e| err(OP, e))?;
        let ni = out
            .network_interface()
            .ok_or_else(|| Ec2Error::bad_answer(OP, "no NetworkInterface in the answer"))?;
        convert(ni).map_err(|message| Ec2Error::bad_answer(OP, message))
    }

    async fn attach_eni(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        self.limiter.acquire().await;
        let out = self
            .client
            .attach_network_interface()
            .network_interface_id(eni_id)
            .instance_id(instance_id)
            .device_index(device_index as i32)
            .send()
            .await
            .map_err(|e| err("AttachNetworkInterface", e))?;
        let attachment_id = out
            .attachment_id()
            .ok_or_else(|| {
                Ec2Error::bad_answer("AttachNetworkInterface", "no AttachmentId in the answer")
            })?
            .to_string();
        self.limiter.acquire().await;
        self.client
            .modify_network_interface_attribute()
            .network_interface_id(eni_id)
            .attachment(
                NetworkInterfaceAttachmentChanges::builder()
                    .attachment_id(&attachment_id)
                    .delete_on_termination(true)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| err("ModifyNetworkInterfaceAttribute", e))?;
        Ok(attachment_id)
    }

    async fn detach_eni(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        self.limiter.acquire().await;
        self.client
            .detach_network_interface()
            .attachment_id(attachment_id)
            .send()
            .await
            .map_err(|e| err("DetachNetworkInterface", e))?;
        Ok(())
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), Ec2Error> {
        self.limiter.acquire().await;
        self.client
            .delete_network_interface()
            .network_interface_id(eni_id)
            .send()
            .await
            .map_err(|e| err("DeleteNetworkInterface", e))?;
        Ok(())
    }

    async fn assign_ips(&self, eni_id: &str, count: u32) -> Result<(), Ec2Error> {
        self.limiter.acquire().await;
        self.client
            .assign_private_ip_addresses()
            .network_interface_id(eni_id)
            .secondary_private_ip_address_count(count as i32)
            .send()
            .await
            .map_err(|e| err("AssignPrivateIpAddresses", e))?;
        Ok(())
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        self.limiter.acquire().await;
        self.client
            .unassign_private_ip_addresses()
            .network_interface_id(eni_id)
            .set_private_ip_addresses(Some(ips.iter().map(|ip| ip.to_string()).collect()))
            .send()
            .await
            .map_err(|e| err("UnassignPrivateIpAddresses", e))?;
        Ok(())
    }

    async fn assign_prefixes(&self, eni_id: &str, count: u32) -> Result<(), Ec2Error> {
        self.limiter.acquire().await;
        self.client
            .assign_private_ip_addresses()
            .network_interface_id(eni_id)
            .ipv4_prefix_count(count as i32)
            .send()
            .await
            .map_err(|e| err("AssignPrivateIpAddresses", e))?;
        Ok(())
    }

    async fn unassign_prefixes(&self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
        self.limiter.acquire().await;
        self.client
            .unassign_private_ip_addresses()
            .network_interface_id(eni_id)
            .set_ipv4_prefixes(Some(prefixes.iter().map(|p| p.to_string()).collect()))
            .send()
            .await
            .map_err(|e| err("UnassignPrivateIpAddresses", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let limiter = RateLimiter::new(50.0, 3);
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(15));
        for _ in 0..10 {
            limiter.acquire().await;
        }
        // 10 more at 50/s: about 200 ms.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(180) && waited < Duration::from_millis(600),
            "{waited:?}"
        );
    }
}
