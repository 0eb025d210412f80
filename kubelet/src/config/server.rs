//! Settings of the :10250 server: its serving certificate and who may call it.
//!
//! Upstream has two sets of defaults. Without `--config` the legacy flag defaults
//! apply (anonymous requests allowed, no token webhook, `AlwaysAllow`); a
//! KubeletConfiguration v1beta1 file defaults to the secure set (no anonymous
//! requests, TokenReview on, `Webhook` authorization). Flags given explicitly win.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::{Flags, parse_go_duration};

/// `authentication` in the config file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationFile {
    #[serde(default)]
    pub x509: X509File,
    #[serde(default)]
    pub webhook: WebhookAuthnFile,
    #[serde(default)]
    pub anonymous: AnonymousFile,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509File {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAuthnFile {
    pub enabled: Option<bool>,
    #[serde(rename = "cacheTTL")]
    pub cache_ttl: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct AnonymousFile {
    pub enabled: Option<bool>,
}

/// `authorization` in the config file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationFile {
    pub mode: Option<String>,
    #[serde(default)]
    pub webhook: WebhookAuthzFile,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAuthzFile {
    #[serde(rename = "cacheAuthorizedTTL")]
    pub cache_authorized_ttl: Option<String>,
    #[serde(rename = "cacheUnauthorizedTTL")]
    pub cache_unauthorized_ttl: Option<String>,
}

/// How requests that passed authentication are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationMode {
    AlwaysAllow,
    /// A SubjectAccessReview per request, answers cached for the given times.
    Webhook {
        authorized_ttl: Duration,
        unauthorized_ttl: Duration,
    },
}

/// Everything the :10250 server needs to know about TLS and access control.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `enableServer`: without it the kubelet serves no API at all.
    pub enabled: bool,
    /// Serving certificate and key; `None` means a self-signed pair in `--cert-dir`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    /// CA bundle that client certificates must chain to; `None` disables x509 auth.
    pub client_ca_file: Option<PathBuf>,
    pub anonymous_enabled: bool,
    /// `Some(cache TTL)` when bearer tokens are checked with TokenReview.
    pub token_webhook_cache_ttl: Option<Duration>,
    pub authorization: AuthorizationMode,
}

impl ServerSettings {
    /// `file` is the config file's `(tlsCertFile, tlsPrivateKeyFile, authentication,
    /// authorization)`, `None` without `--config`.
    pub fn resolve(flags: &Flags, file: Option<&super::KubeletConfigFile>) -> Result<Self> {
        let config_file_given = file.is_some();
        let empty = super::KubeletConfigFile::default();
        let file = file.unwrap_or(&empty);
        let authn = file.authentication.clone().unwrap_or_default();
        let authz = file.authorization.clone().unwrap_or_default();
        let duration = |flag: &Option<String>,
                        from_file: &Option<String>,
                        default_secs: u64,
                        name: &str|
         -> Result<Duration> {
            match flag.as_ref().or(from_file.as_ref()) {
                Some(v) => parse_go_duration(v).with_context(|| format!("{name} = {v:?}")),
                None => Ok(Duration::from_secs(default_secs)),
            }
        };

        let anonymous_enabled = flags
            .anonymous_auth
            .or(authn.anonymous.enabled)
            .unwrap_or(!config_file_given);
        let webhook_enabled = flags
            .authentication_token_webhook
            .or(authn.webhook.enabled)
            .unwrap_or(config_file_given);
        let token_ttl = duration(
            &flags.authentication_token_webhook_cache_ttl,
            &authn.webhook.cache_ttl,
            120,
            "authentication.webhook.cacheTTL",
        )?;

        let default_mode = if config_file_given {
            "Webhook"
        } else {
            "AlwaysAllow"
        };
        let mode = flags
            .authorization_mode
            .as_deref()
            .or(authz.mode.as_deref())
            .unwrap_or(default_mode);
        let authorization = match mode {
            "AlwaysAllow" => AuthorizationMode::AlwaysAllow,
            "Webhook" => AuthorizationMode::Webhook {
                authorized_ttl: duration(
                    &flags.authorization_webhook_cache_authorized_ttl,
                    &authz.webhook.cache_authorized_ttl,
                    300,
                    "authorization.webhook.cacheAuthorizedTTL",
                )?,
                unauthorized_ttl: duration(
                    &flags.authorization_webhook_cache_unauthorized_ttl,
                    &authz.webhook.cache_unauthorized_ttl,
                    30,
                    "authorization.webhook.cacheUnauthorizedTTL",
                )?,
            },
            other => {
                bail!("authorization mode {other:?} is not supported: use Webhook or AlwaysAllow")
            }
        };

        let tls_cert_file = flags.tls_cert_file.clone().or(file.tls_cert_file.clone());
        let tls_private_key_file = flags
            .tls_private_key_file
            .clone()
            .or(file.tls_private_key_file.clone());
        if tls_cert_file.is_some() != tls_private_key_file.is_some() {
            bail!("tlsCertFile and tlsPrivateKeyFile must be given together");
        }
        Ok(ServerSettings {
            enabled: flags.enable_server.or(file.enable_server).unwrap_or(true),
            tls_cert_file,
            tls_private_key_file,
            client_ca_file: flags.client_ca_file.clone().or(authn.x509.client_ca_file),
            anonymous_enabled,
            token_webhook_cache_ttl: webhook_enabled.then_some(token_ttl),
            authorization,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::KubeletConfigFile;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("kubelet").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn without_a_config_file_the_legacy_flag_defaults_apply() {
        let s = ServerSettings::resolve(&flags(&[]), None).unwrap();
        assert!(s.anonymous_enabled);
        assert_eq!(s.token_webhook_cache_ttl, None);
        assert_eq!(s.authorization, AuthorizationMode::AlwaysAllow);
        assert_eq!(s.client_ca_file, None);
        assert!(s.enabled);
        let off = ServerSettings::resolve(&flags(&["--enable-server=false"]), None).unwrap();
        assert!(!off.enabled);
    }

    #[test]
    fn a_config_file_brings_the_secure_v1beta1_defaults() {
        let file = KubeletConfigFile::parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             authentication: {x509: {clientCAFile: /ca.crt}}\n",
        )
        .unwrap();
        let s = ServerSettings::resolve(&flags(&[]), Some(&file)).unwrap();
        assert!(!s.anonymous_enabled);
        assert_eq!(s.token_webhook_cache_ttl, Some(Duration::from_secs(120)));
        assert_eq!(
            s.authorization,
            AuthorizationMode::Webhook {
                authorized_ttl: Duration::from_secs(300),
                unauthorized_ttl: Duration::from_secs(30)
            }
        );
        assert_eq!(s.client_ca_file, Some(PathBuf::from("/ca.crt")));
    }

    #[test]
    fn flags_beat_the_file() {
        let file = KubeletConfigFile::parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             authentication: {anonymous: {enabled: false}, webhook: {cacheTTL: 1m}}\n\
             authorization: {mode: Webhook}\ntlsCertFile: /f.crt\ntlsPrivateKeyFile: /f.key\n",
        )
        .unwrap();
        let s = ServerSettings::resolve(
            &flags(&[
                "--anonymous-auth=true",
                "--authentication-token-webhook=false",
                "--authorization-mode=AlwaysAllow",
                "--client-ca-file=/flag-ca.crt",
            ]),
            Some(&file),
        )
        .unwrap();
        assert!(s.anonymous_enabled);
        assert_eq!(s.token_webhook_cache_ttl, None);
        assert_eq!(s.authorization, AuthorizationMode::AlwaysAllow);
        assert_eq!(s.client_ca_file, Some(PathBuf::from("/flag-ca.crt")));
        assert_eq!(s.tls_cert_file, Some(PathBuf::from("/f.crt")));
        assert!(ServerSettings::resolve(&flags(&["--authorization-mode=RBAC"]), None).is_err());
        assert!(ServerSettings::resolve(&flags(&["--tls-cert-file=/x"]), None).is_err());
    }
}
