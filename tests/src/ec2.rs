//! An EC2 API emulator (moto) with emulated instances and a live IMDSv2 view of each,
//! from `hack/ec2-emulator.sh`.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::fixture::{ScriptFixture, run_ok};

pub struct Ec2Emulator {
    fixture: ScriptFixture,
}

impl Ec2Emulator {
    /// moto with one VPC, one subnet and `instances` instances (m5.large).
    pub fn start(instances: u32) -> Result<Self> {
        Self::start_with_type(instances, "m5.large")
    }

    /// `instances` instances of `instance_type` (e.g. `t3.medium`).
    pub fn start_with_type(instances: u32, instance_type: &str) -> Result<Self> {
        let n = instances.to_string();
        let fixture = ScriptFixture::start(
            "ec2-emulator.sh",
            &["--instances", &n, "--instance-type", instance_type],
            Duration::from_secs(120),
        )?;
        Ok(Ec2Emulator { fixture })
    }

    pub fn endpoint(&self) -> &str {
        self.published("EC2_ENDPOINT")
    }

    pub fn region(&self) -> &str {
        self.published("AWS_REGION")
    }

    pub fn subnet_id(&self) -> &str {
        self.published("SUBNET_ID")
    }

    pub fn security_group_id(&self) -> &str {
        self.published("SECURITY_GROUP_ID")
    }

    pub fn instance_ids(&self) -> Vec<&str> {
        self.published("INSTANCE_IDS").split_whitespace().collect()
    }

    /// The IMDS endpoint of each instance, in `instance_ids()` order.
    pub fn imds_endpoints(&self) -> Vec<&str> {
        self.published("IMDS_ENDPOINTS")
            .split_whitespace()
            .collect()
    }

    fn published(&self, key: &str) -> &str {
        self.fixture.get(key).expect("published by the script")
    }

    /// One EC2 Query API call; see [`query`].
    pub fn call(&self, action: &str, params: &[(&str, &str)]) -> Result<String> {
        query(self.endpoint(), self.region(), action, params)
    }

    /// GET `/latest/<path>` from instance `index`'s IMDS with the IMDSv2 token flow;
    /// `None` on 404.
    pub fn imds_get(&self, index: usize, path: &str) -> Result<Option<String>> {
        let base = self.imds_endpoints()[index].to_string();
        let token = run_ok(Command::new("curl").args([
            "-sS",
            "--fail",
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
            &format!("{base}/latest/api/token"),
        ]))?;
        let out = run_ok(Command::new("curl").args([
            "-sS",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("X-aws-ec2-metadata-token: {token}"),
            &format!("{base}/latest/{path}"),
        ]))?;
        let (body, code) = out
            .rsplit_once('\n')
            .context("curl output without a status")?;
        match code {
            "200" => Ok(Some(body.to_string())),
            "404" => Ok(None),
            other => anyhow::bail!("IMDS {path}: HTTP {other}: {body}"),
        }
    }
}

/// One EC2 Query API call (`Action=...&Version=2016-11-15&params`) to `endpoint`; the XML
/// answer. moto does not check signatures, but wants a SigV4-shaped Authorization header
/// to pick the account and region.
pub fn query(
    endpoint: &str,
    region: &str,
    action: &str,
    params: &[(&str, &str)],
) -> Result<String> {
    let mut body = format!("Action={action}&Version=2016-11-15");
    for (k, v) in params {
        body.push_str(&format!("&{k}={v}"));
    }
    let auth = format!(
        "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/ec2/aws4_request, SignedHeaders=host, Signature=0"
    );
    run_ok(
        Command::new("curl")
            .args(["-sS", "--fail-with-body", "-H", &auth, "--data", &body])
            .arg(format!("{endpoint}/")),
    )
    .with_context(|| format!("EC2 {action}"))
}

/// The text of the first `<tag>...</tag>` in an EC2 XML answer.
pub fn xml_field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}
