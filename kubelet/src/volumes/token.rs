//! Service-account tokens for projected volumes, from the TokenRequest API, bound to
//! the pod (so they die with it) and rotated as upstream's token manager does: once
//! 80% of the token's lifetime has passed, or it is older than 24 hours.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;

/// The default `expirationSeconds` of a serviceAccountToken projection.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// Tokens are refreshed after a day even if they live longer (the apiserver extends
/// `kube-api-access-*` tokens to a year).
const MAX_TOKEN_AGE: Duration = Duration::hours(24);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    service_account: String,
    audience: String,
    expiration_seconds: i64,
}

#[derive(Debug, Clone)]
struct IssuedToken {
    token: String,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl IssuedToken {
    fn needs_refresh(&self, now: DateTime<Utc>) -> bool {
        let lifetime = self.expires_at - self.issued_at;
        now >= self.issued_at + MAX_TOKEN_AGE || now >= self.expires_at - lifetime / 5
    }
}

/// The tokens one pod's volumes hold.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: HashMap<TokenKey, IssuedToken>,
}

impl TokenCache {
    /// Whether any token held is due for rotation.
    pub fn refresh_due(&self, now: DateTime<Utc>) -> bool {
        self.tokens.values().any(|t| t.needs_refresh(now))
    }

    /// A valid token for `service_account` of `pod`, requested when missing or due.
    pub async fn get(
        &mut self,
        client: &kube::Client,
        pod: &Pod,
        service_account: &str,
        audience: &str,
        expiration_seconds: i64,
    ) -> Result<String, String> {
        let key = TokenKey {
            service_account: service_account.to_string(),
            audience: audience.to_string(),
            expiration_seconds,
        };
        let now = Utc::now();
        if let Some(t) = self.tokens.get(&key)
            && !t.needs_refresh(now)
        {
            return Ok(t.token.clone());
        }
        let issued = request(client, pod, &key).await?;
        let token = issued.token.clone();
        self.tokens.insert(key, issued);
        Ok(token)
    }
}

async fn request(client: &kube::Client, pod: &Pod, key: &TokenKey) -> Result<IssuedToken, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: if key.audience.is_empty() {
                vec![]
            } else {
                vec![key.audience.clone()]
            },
            expiration_seconds: Some(key.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let issued_at = Utc::now();
    let response = api
        .create_token_request(&key.service_account, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            format!(
                "failed to fetch token: requesting a token for service account {namespace}/{}: {e}",
                key.service_account
            )
        })?;
    let status = response
        .status
        .ok_or("failed to fetch token: the TokenRequest response has no status")?;
    let expires_at = DateTime::<Utc>::from_timestamp(status.expiration_timestamp.0.as_second(), 0)
        .unwrap_or(issued_at + Duration::seconds(key.expiration_seconds));
    Ok(IssuedToken {
        token: status.token,
        issued_at,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(lifetime: Duration) -> IssuedToken {
        let issued_at = Utc::now();
        IssuedToken {
            token: "t".into(),
            issued_at,
            expires_at: issued_at + lifetime,
        }
    }

    #[test]
    fn rotation_at_80_percent_or_a_day() {
        let t = token(Duration::hours(1));
        assert!(!t.needs_refresh(t.issued_at + Duration::minutes(47)));
        assert!(t.needs_refresh(t.issued_at + Duration::minutes(48)));
        let long = token(Duration::days(365));
        assert!(!long.needs_refresh(long.issued_at + Duration::hours(23)));
        assert!(long.needs_refresh(long.issued_at + Duration::hours(24)));
    }
}
