//! Who is calling: a verified client certificate, a bearer token the API server
//! vouches for (TokenReview), or, only when enabled, `system:anonymous`. Mirrors
//! upstream's chain: presented credentials that do not check out are refused even when
//! anonymous requests are allowed.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;

use super::cache::TtlCache;
use super::x509_name;

pub const ANONYMOUS_USER: &str = "system:anonymous";
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// An authenticated caller, as authorization sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The user a verified client certificate names (CN, O), if it names one.
    pub fn from_client_cert(cert_der: &[u8]) -> Option<UserInfo> {
        let subject = x509_name::subject(cert_der)?;
        let name = subject.common_name.filter(|cn| !cn.is_empty())?;
        Some(
            UserInfo {
                name,
                groups: subject.organizations,
                ..Default::default()
            }
            .authenticated(),
        )
    }

    /// Upstream adds `system:authenticated` to every user that is not anonymous.
    fn authenticated(mut self) -> Self {
        if !self.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            self.groups.push(AUTHENTICATED_GROUP.into());
        }
        self
    }

    fn anonymous() -> Self {
        UserInfo {
            name: ANONYMOUS_USER.into(),
            groups: vec![UNAUTHENTICATED_GROUP.into()],
            ..Default::default()
        }
    }
}

/// Why a request is answered 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error("no credentials and anonymous requests are disabled")]
    NoCredentials,
    #[error("invalid bearer token")]
    InvalidToken,
    #[error("TokenReview failed: {0}")]
    Review(#[from] kube::Error),
}

pub struct Authenticator {
    anonymous_enabled: bool,
    tokens: Option<TokenReviewer>,
}

struct TokenReviewer {
    client: kube::Client,
    ttl: Duration,
    /// token -> the user, or `None` for a token the API server rejected.
    cache: TtlCache<String, Option<UserInfo>>,
}

impl Authenticator {
    /// `token_cache_ttl` of `None` disables bearer tokens.
    pub fn new(
        client: kube::Client,
        anonymous_enabled: bool,
        token_cache_ttl: Option<Duration>,
    ) -> Self {
        Authenticator {
            anonymous_enabled,
            tokens: token_cache_ttl.map(|ttl| TokenReviewer {
                client,
                ttl,
                cache: TtlCache::new(),
            }),
        }
    }

    /// `cert_user` is the user of the connection's verified client certificate.
    pub async fn authenticate(
        &self,
        cert_user: Option<&UserInfo>,
        headers: &HeaderMap,
    ) -> Result<UserInfo, AuthnError> {
        if let Some(user) = cert_user {
            return Ok(user.clone());
        }
        if let (Some(reviewer), Some(token)) = (&self.tokens, bearer_token(headers)) {
            return reviewer.review(token).await;
        }
        if self.anonymous_enabled {
            return Ok(UserInfo::anonymous());
        }
        Err(AuthnError::NoCredentials)
    }
}

impl TokenReviewer {
    async fn review(&self, token: &str) -> Result<UserInfo, AuthnError> {
        let cached = self.cache.get(&token.to_string());
        let user = match cached {
            Some(user) => user,
            None => {
                let review = TokenReview {
                    spec: TokenReviewSpec {
                        token: Some(token.to_string()),
                        audiences: None,
                    },
                    ..Default::default()
                };
                let answer = kube::Api::<TokenReview>::all(self.client.clone())
                    .create(&PostParams::default(), &review)
                    .await?;
                let status = answer.status.unwrap_or_default();
                let user = status
                    .authenticated
                    .unwrap_or(false)
                    .then(|| status.user.unwrap_or_default())
                    .map(|u| {
                        UserInfo {
                            name: u.username.unwrap_or_default(),
                            uid: u.uid.unwrap_or_default(),
                            groups: u.groups.unwrap_or_default(),
                            extra: u.extra.unwrap_or_default(),
                        }
                        .authenticated()
                    });
                self.cache.insert(token.to_string(), user.clone(), self.ttl);
                user
            }
        };
        user.ok_or(AuthnError::InvalidToken)
    }
}

/// The token of `Authorization: Bearer <token>`; anything else counts as no token.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that is never called: these cases need no TokenReview.
    fn unused_client() -> kube::Client {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn credentials_are_tried_in_upstreams_order() {
        let cert_user = UserInfo {
            name: "kube-apiserver-kubelet-client".into(),
            groups: vec!["system:masters".into()],
            ..Default::default()
        }
        .authenticated();
        let mut with_token = HeaderMap::new();
        with_token.insert("authorization", "Bearer abc".parse().unwrap());

        let closed = Authenticator::new(unused_client(), false, None);
        assert!(matches!(
            closed.authenticate(None, &HeaderMap::new()).await,
            Err(AuthnError::NoCredentials)
        ));
        // Without the token webhook a bearer token is not a credential at all.
        assert!(closed.authenticate(None, &with_token).await.is_err());
        let user = closed
            .authenticate(Some(&cert_user), &with_token)
            .await
            .unwrap();
        assert_eq!(user.groups, vec!["system:masters", AUTHENTICATED_GROUP]);

        let open = Authenticator::new(unused_client(), true, None);
        let user = open.authenticate(None, &with_token).await.unwrap();
        assert_eq!(user.name, ANONYMOUS_USER);
        assert_eq!(user.groups, vec![UNAUTHENTICATED_GROUP]);
    }

    #[test]
    fn bearer_tokens_are_read_as_upstream_reads_them() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert("authorization", "bearer  xyz ".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("xyz"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
    }
}
