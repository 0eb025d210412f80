//! May the caller do this: the request mapped onto node attributes exactly as
//! upstream's `nodeAuthorizerAttributesGetter` does, then a SubjectAccessReview
//! (cached) or AlwaysAllow.

use std::time::Duration;

use http::Method;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;

use super::authn::UserInfo;
use super::cache::TtlCache;
use crate::config::AuthorizationMode;

/// What a request to the kubelet amounts to in API terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    pub name: String,
}

impl Attributes {
    /// `nodes/proxy` by default; `stats`, `metrics`, `log` and `spec` for their
    /// subtrees, so access to them can be granted separately.
    pub fn of(method: &Method, path: &str, node_name: &str) -> Self {
        let verb = match *method {
            Method::POST => "create",
            Method::GET => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        };
        let subresource = [
            ("/stats/", "stats"),
            ("/metrics", "metrics"),
            ("/logs/", "log"),
            ("/spec/", "spec"),
        ]
        .into_iter()
        .find(|(prefix, _)| is_subpath(path, prefix))
        .map_or("proxy", |(_, sub)| sub);
        Attributes {
            verb,
            resource: "nodes",
            subresource,
            name: node_name.to_string(),
        }
    }

    /// The 403 body, word for word upstream's.
    pub fn forbidden_message(&self, user: &UserInfo) -> String {
        format!(
            "Forbidden (user={}, verb={}, resource={}, subresource={})",
            user.name, self.verb, self.resource, self.subresource
        )
    }

    /// The 500 body when the decision could not be made.
    pub fn error_message(&self, user: &UserInfo) -> String {
        format!(
            "Authorization error (user={}, verb={}, resource={}, subresource={})",
            user.name, self.verb, self.resource, self.subresource
        )
    }
}

/// Upstream's `isSubpath`: `path` equals `prefix` (without its trailing slash) or lies
/// below it.
fn is_subpath(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

pub struct Authorizer {
    mode: AuthorizationMode,
    client: kube::Client,
    /// The review's spec (as JSON) -> allowed.
    cache: TtlCache<String, bool>,
}

impl Authorizer {
    pub fn new(client: kube::Client, mode: AuthorizationMode) -> Self {
        Authorizer {
            mode,
            client,
            cache: TtlCache::new(),
        }
    }

    pub async fn allowed(&self, user: &UserInfo, attrs: &Attributes) -> Result<bool, kube::Error> {
        let (authorized_ttl, unauthorized_ttl) = match self.mode {
            AuthorizationMode::AlwaysAllow => return Ok(true),
            AuthorizationMode::Webhook {
                authorized_ttl,
                unauthorized_ttl,
            } => (authorized_ttl, unauthorized_ttl),
        };
        let spec = review_spec(user, attrs);
        let key = serde_json::to_string(&spec).unwrap_or_default();
        if let Some(allowed) = self.cache.get(&key) {
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            spec,
            ..Default::default()
        };
        let answer = kube::Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let ttl: Duration = if allowed {
            authorized_ttl
        } else {
            unauthorized_ttl
        };
        self.cache.insert(key, allowed, ttl);
        Ok(allowed)
    }
}

fn review_spec(user: &UserInfo, attrs: &Attributes) -> SubjectAccessReviewSpec {
    SubjectAccessReviewSpec {
        user: Some(user.name.clone()),
        uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
        groups: Some(user.groups.clone()),
        extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
        resource_attributes: Some(ResourceAttributes {
            verb: Some(attrs.verb.into()),
            version: Some("v1".into()),
            resource: Some(attrs.resource.into()),
            subresource: Some(attrs.subresource.into()),
            name: Some(attrs.name.clone()),
            ..Default::default()
        }),
        non_resource_attributes: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_subresources_as_upstream() {
        let sub = |m: Method, p: &str| {
            let a = Attributes::of(&m, p, "n1");
            (a.verb, a.subresource)
        };
        assert_eq!(sub(Method::GET, "/pods"), ("get", "proxy"));
        assert_eq!(sub(Method::POST, "/exec/ns/p/c"), ("create", "proxy"));
        assert_eq!(sub(Method::GET, "/stats/summary"), ("get", "stats"));
        assert_eq!(sub(Method::GET, "/stats"), ("get", "stats"));
        assert_eq!(sub(Method::GET, "/statsx"), ("get", "proxy"));
        assert_eq!(sub(Method::GET, "/metrics"), ("get", "metrics"));
        assert_eq!(sub(Method::GET, "/metrics/resource"), ("get", "metrics"));
        assert_eq!(sub(Method::GET, "/logs/"), ("get", "log"));
        assert_eq!(sub(Method::PUT, "/spec/"), ("update", "spec"));
        assert_eq!(sub(Method::GET, "/containerLogs/a/b/c"), ("get", "proxy"));
        let a = Attributes::of(&Method::GET, "/pods", "n1");
        let user = UserInfo {
            name: "system:serviceaccount:d:s".into(),
            ..Default::default()
        };
        assert_eq!(
            a.forbidden_message(&user),
            "Forbidden (user=system:serviceaccount:d:s, verb=get, resource=nodes, subresource=proxy)"
        );
    }
}
